"""Bad data and failing disks: one line naming the file and the fix, the right exit code, nothing left behind.

Each case is run through the real `abtest` entry point; the disks are real tmpfs mounts (full or read-only), which is
why this tier needs root, like the e2e tier's node.
"""

from __future__ import annotations

import contextlib
import errno
import pickle
import subprocess
import uuid

import numpy as np
import pytest
from PIL import Image

from abtest_api.constants import USER_ERROR_EXIT, WRITE_FAILURE_EXIT
from abtest_api.errors import WriteFailure
from abtest_api.result import status_result
from abtest_evaluator import datasets, results
from helpers import INPUT_FLAGS, ROOT, abtest_cli, read_json


def image_folder(root, broken: dict[str, bytes] | None = None, per_class: int = 6):
    """DIR/<class>/<n>.png, two classes of small random images, plus ``broken`` files (name -> bytes) in class a."""
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    for name, data in (broken or {}).items():
        (root / "a" / name).write_bytes(data)
    return root


def truncated_jpeg() -> bytes:
    import io

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()[:400]


def evaluate(data, out, *flags, workers="0"):
    return abtest_cli(
        "evaluate", "--model", "timm/test_resnet", "--dataset", "imagefolder", "--path", data, *INPUT_FLAGS,
        "--device", "cpu", "--workers", workers, "--out", out, *flags,
    )  # fmt: skip


def one_line(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("name", "data", "workers"),
    [("cut.jpg", truncated_jpeg(), "0"), ("cut.jpg", truncated_jpeg(), "1"), ("empty.png", b"", "1")],
    ids=["truncated-jpeg", "truncated-jpeg-in-a-worker", "zero-byte-png"],
)
def test_an_unreadable_image_fails_naming_the_file_and_leaves_nothing(tmp_path, name, data, workers):
    folder = image_folder(tmp_path / "data", {name: data})
    out = tmp_path / "out"
    proc = evaluate(folder, out, workers=workers)
    assert proc.returncode == USER_ERROR_EXIT
    line = one_line(proc)
    assert f"sample a/{name} ({folder / 'a' / name}) cannot be decoded" in line and "spec.dataset.onUnreadable: skip" in line
    assert not out.exists() or not any(out.iterdir())


def test_a_directory_where_an_image_was_listed_is_named(tmp_path):
    folder = image_folder(tmp_path / "data")
    ds = datasets.load_imagefolder(str(folder), "test")
    (folder / "a" / "0.png").unlink()
    (folder / "a" / "0.png").mkdir()  # replaced after the listing
    with pytest.raises(datasets.UnreadableSample, match=r"sample a/0.png \(.*a/0.png\) cannot be decoded: \[Errno 21\] Is a directory"):
        ds.decode(0, "RGB")


def test_skip_leaves_the_same_samples_out_of_every_model_and_records_them(tmp_path):
    folder = image_folder(tmp_path / "data", {"cut.jpg": truncated_jpeg(), "empty.png": b""})
    runs = {}
    for name, workers in (("first", "0"), ("second", "1")):
        proc = evaluate(folder, tmp_path / "out" / name, "--on-unreadable", "skip", "--name", name, workers=workers)
        assert proc.returncode == 0, proc.stderr
        runs[name] = read_json(tmp_path / "out" / name / "metrics.json")
    assert runs["first"]["dataset"]["skipped"] == ["a/cut.jpg", "a/empty.png"]
    assert runs["first"]["n"] == 12 and runs["first"]["fingerprint"] == runs["second"]["fingerprint"]
    analysed = abtest_cli("analyze", tmp_path / "out")
    assert analysed.returncode == 0, analysed.stderr
    result = read_json(tmp_path / "out" / "result.json")
    assert {n: m["skipped"] for n, m in result["models"].items()} == {"first": 2, "second": 2}
    assert status_result(result)["skipped"] == 2  # what status.result shows
    assert "(2 unreadable samples skipped by every model)" in (tmp_path / "out" / "report.html").read_text()

    # a model that skipped other samples saw another dataset: the analysis refuses the pair
    (folder / "a" / "empty.png").unlink()
    proc = evaluate(folder, tmp_path / "out" / "second", "--on-unreadable", "skip", "--name", "second")
    assert proc.returncode == 0, proc.stderr
    refused = abtest_cli("analyze", tmp_path / "out")
    assert refused.returncode == USER_ERROR_EXIT and "skipped different unreadable samples (first: 2, second: 1)" in one_line(refused)


def cifar_batch(folder, keys_as_bytes: bool):
    rng = np.random.default_rng(0)
    entry = {"data": rng.integers(0, 255, (10, 3072), dtype=np.uint8), "labels": [i % 10 for i in range(10)]}
    meta = {"label_names": [f"c{i}" for i in range(10)]}
    if keys_as_bytes:  # what `pickle.load(f, encoding="bytes")` and a dump back write
        entry, meta = ({k.encode(): v for k, v in d.items()} for d in (entry, meta))
    folder.mkdir(parents=True)
    (folder / "test_batch").write_bytes(pickle.dumps(entry))
    (folder / "batches.meta").write_bytes(pickle.dumps(meta))


def test_cifar_batches_with_bytes_keys_load_and_other_layouts_get_one_line(tmp_path):
    for keys_as_bytes in (False, True):
        folder = tmp_path / str(keys_as_bytes) / "cifar-10-batches-py"
        cifar_batch(folder, keys_as_bytes)
        ds = datasets.load_dataset("cifar10", "test", str(folder.parent))
        assert len(ds) == 10 and ds.classes[3] == "c3" and ds.decode(0, "RGB").size == (32, 32)
    (folder / "test_batch").write_bytes(pickle.dumps([1, 2, 3]))
    proc = abtest_cli("evaluate", "--model", "timm/test_resnet", "--dataset", "cifar10", "--path", folder.parent, "--out", tmp_path / "o")
    assert proc.returncode == USER_ERROR_EXIT and "holds a list, not a CIFAR batch" in one_line(proc)
    (folder / "test_batch").write_bytes(pickle.dumps({"pixels": []}))
    proc = abtest_cli("evaluate", "--model", "timm/test_resnet", "--dataset", "cifar10", "--path", folder.parent, "--out", tmp_path / "o")
    assert proc.returncode == USER_ERROR_EXIT and "no 'data', 'labels' key (it has 'pixels')" in one_line(proc)


@contextlib.contextmanager
def tmpfs(path, *options):
    """A real tmpfs at ``path`` (root only): a tiny one fills up, a read-only one refuses writes."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(options), f"abtest-test-{uuid.uuid4().hex[:8]}", path], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", path], check=True)


def test_a_full_results_volume_fails_with_one_line_and_no_half_written_model_folder(tmp_path):
    with tmpfs(tmp_path / "full", "size=12k") as full:
        out = full / "model"
        proc = abtest_cli("evaluate", "--model", "timm/test_resnet", "--dataset", "digits", *INPUT_FLAGS, "--device", "cpu", "--out", out)
        assert proc.returncode == WRITE_FAILURE_EXIT
        line = one_line(proc)
        assert f"cannot write {out}/" in line and "No space left on device; free space on the results volume (spec.results)" in line
        assert list(out.iterdir()) == []  # neither predictions.parquet nor metrics.json nor a temporary file


def test_a_read_only_results_volume_fails_with_one_line(tmp_path):
    with tmpfs(tmp_path / "ro", "ro", "size=1m") as read_only:
        proc = abtest_cli("evaluate", "--model", "timm/test_resnet", "--dataset", "digits", *INPUT_FLAGS, "--out", read_only / "m")
        assert proc.returncode == WRITE_FAILURE_EXIT
        assert "Read-only file system; mount the results volume read-write" in one_line(proc)
        run = abtest_cli("run", ROOT / "examples" / "abtest-digits.yaml", "--out", read_only / "sub" / "run")
        assert run.returncode == WRITE_FAILURE_EXIT and "Read-only file system" in one_line(run)
        assert list(read_only.iterdir()) == []


def test_a_checkpoint_on_a_full_disk_leaves_nothing(tmp_path):
    from abtest_evaluator.train import train_digits

    with tmpfs(tmp_path / "full", "size=8k") as full:
        with pytest.raises(WriteFailure, match=r"cannot write .*vit.pth: No space left on device"):
            train_digits("timm/test_vit", full / "vit.pth", input_size=32, crop_pct=1.0, epochs=1)
        assert list(full.iterdir()) == []


def test_staged_files_appear_together_or_not_at_all(tmp_path):
    with results.staged(tmp_path) as stage:
        results.write_bytes(stage("first"), b"1")
        results.write_bytes(stage("last"), b"2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first", "last"]

    folder = tmp_path / "failing"
    failing = pytest.raises(WriteFailure, match=r"cannot write .*failing/last: No space left on device; free space")
    with failing, results.staged(folder) as stage:
        results.write_bytes(stage("first"), b"1")
        stage("last")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert list(folder.iterdir()) == []
