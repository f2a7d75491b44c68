"""`abtest evaluate` with real tiny models trained on digits: the predictions contract, determinism, errors."""

import pickle
import re
import time
import urllib.request

import numpy as np
import pyarrow.parquet as pq
import pytest
from sklearn.datasets import load_digits

from abtest_evaluator import results
from helpers import INPUT_FLAGS, abtest_cli, read_json


def evaluate_tiny(trained_models, *flags, arch="timm/test_vit", **kwargs):
    """`abtest evaluate` of a trained tiny model on digits, on the CPU, at the tests' input size."""
    checkpoint = trained_models[arch]
    return abtest_cli(
        "evaluate", "--model", arch, "--checkpoint", checkpoint, "--dataset", "digits", *INPUT_FLAGS, "--device", "cpu", *flags, **kwargs
    )


def test_predictions_follow_the_digits_contract(evaluated):
    table = pq.read_table(evaluated / "resnet" / "predictions.parquet")
    targets = load_digits().target
    assert table.column("index").to_pylist() == list(range(360))
    assert table.column("label").to_numpy().tolist() == targets[np.arange(len(targets)) % 5 == 0].tolist()
    assert str(table.schema.field("confidence").type) == "float"
    assert table.column("sample_id").to_pylist()[:3] == ["digits/0", "digits/5", "digits/10"]
    assert (table.column("confidence").to_numpy() <= 1).all()
    # the index as deltas: the analysis reads it ~6x faster than plain pages (benchmarks/analysis_scale.py)
    encodings = pq.ParquetFile(evaluated / "resnet" / "predictions.parquet").metadata.row_group(0).column(0)
    assert encodings.path_in_schema == "index" and "DELTA_BINARY_PACKED" in encodings.encodings


def test_metrics_agree_with_predictions(evaluated):
    for model in ("resnet", "vit"):
        metrics = read_json(evaluated / model / "metrics.json")
        table = pq.read_table(evaluated / model / "predictions.parquet")
        correct = table.column("pred").to_numpy() == table.column("label").to_numpy()
        assert metrics["n"] == 360
        assert metrics["accuracy"] == pytest.approx(correct.mean())
        top5 = np.array(table.column("top5").to_pylist())
        assert metrics["top5"] == pytest.approx((top5 == table.column("label").to_numpy()[:, None]).any(1).mean())
        assert metrics["confidence"]["mean"] == pytest.approx(table.column("confidence").to_numpy().mean(), rel=1e-5)
        assert metrics["predictions_sha256"]["predictions.parquet"] == results.sha256_file(evaluated / model / "predictions.parquet")
        assert np.array(metrics["confusion_matrix"]).sum() == 360
        assert np.trace(np.array(metrics["confusion_matrix"])) == correct.sum()
        assert metrics["gpu_memory"] is None and metrics["gpu_utilization"] is None  # CPU: null, never 0
        assert metrics["throughput"] > 0 and metrics["latency"]["batch_ms"]["p50"] > 0
        # honest figures: wall clock of the loop (waits included) >= summed batch time, so throughput <= compute_throughput
        compute = sum(metrics["latency"]["batches_ms"]) / 1e3
        assert metrics["loop_seconds"] >= compute and metrics["throughput"] == pytest.approx(360 / metrics["loop_seconds"])
        assert metrics["compute_throughput"] == pytest.approx(360 / compute, rel=1e-3)
        assert metrics["compute_throughput"] >= metrics["throughput"]
        assert 0 <= metrics["loader_wait_fraction"] < 1 and metrics["data_bound"] == (metrics["loader_wait_fraction"] >= 0.2)
        assert metrics["latency"]["measures"].startswith("wall clock (perf_counter)")
        assert 0 <= metrics["ece"] <= 1
        assert metrics["seed"] == 42 and metrics["versions"]["torch"]
    # trained models are real: far better than the 10% of chance
    assert read_json(evaluated / "resnet" / "metrics.json")["accuracy"] > 0.9


def test_fingerprints_equal_across_models(evaluated):
    assert read_json(evaluated / "resnet" / "metrics.json")["fingerprint"] == read_json(evaluated / "vit" / "metrics.json")["fingerprint"]


def test_identical_runs_give_identical_predictions(tmp_path, trained_models):
    outs = []
    for run in ("a", "b"):
        proc = evaluate_tiny(trained_models, "--workers", "2", "--batch-size", "32", "--out", tmp_path / run)
        assert proc.returncode == 0, proc.stderr
        outs.append(pq.read_table(tmp_path / run / "predictions.parquet"))
    for column in ("pred", "confidence", "top5"):
        assert outs[0].column(column).equals(outs[1].column(column))


def test_uint8_batches_normalised_in_the_loop_predict_exactly_as_the_host_transform(tmp_path, trained_models):
    """The default data path (uint8 from the workers, float and normalised where the model runs) against timm's
    float32 transform in the workers: the same predictions and confidences to the bit, and the settings recorded."""
    tables, devices = {}, {}
    for preprocess in ("device", "host"):
        out = tmp_path / preprocess
        proc = evaluate_tiny(trained_models, "--preprocess", preprocess, "--batch-size", "24", "--out", out, arch="timm/resnet10t")
        assert proc.returncode == 0, proc.stderr
        tables[preprocess], devices[preprocess] = pq.read_table(out / "predictions.parquet"), read_json(out / "metrics.json")["device"]
    for column in ("pred", "confidence", "top5"):
        assert tables["device"].column(column).equals(tables["host"].column(column)), column
    assert devices["device"]["preprocess"] == "device" and devices["host"]["preprocess"] == "host"
    # unset on CPU: float32 and NCHW as before; workers from the CPU limit; deterministic kernels
    assert devices["device"]["amp_dtype"] is None and devices["device"]["channels_last"] is False
    assert devices["device"]["automatic"] == ["amp", "channels_last", "workers"] and devices["device"]["workers"] >= 1
    assert devices["device"]["deterministic"] is True


def test_random_weights_are_seeded(tmp_path):
    tables = []
    for seed in ("7", "7", "8"):
        out = tmp_path / f"s{seed}-{len(tables)}"
        proc = abtest_cli(
            "evaluate",
            "--model",
            "timm/test_resnet",
            "--dataset",
            "digits",
            "--limit",
            "40",
            *INPUT_FLAGS,
            "--device",
            "cpu",
            "--seed",
            seed,
            "--workers",
            "0",
            "--out",
            out,
        )
        assert proc.returncode == 0, proc.stderr
        assert read_json(out / "metrics.json")["weights"] == "random"
        tables.append(pq.read_table(out / "predictions.parquet").column("confidence").to_numpy())
    assert np.array_equal(tables[0], tables[1])
    assert not np.array_equal(tables[0], tables[2])


def test_amp_and_channels_last_on_cpu(tmp_path, trained_models):
    proc = evaluate_tiny(trained_models, "--amp", "--channels-last", "--workers", "0", "--out", tmp_path, arch="timm/resnet10t")
    assert proc.returncode == 0, proc.stderr
    metrics = read_json(tmp_path / "metrics.json")
    assert metrics["device"]["amp_dtype"] == "bfloat16" and metrics["device"]["channels_last"]
    assert metrics["device"]["automatic"] == []  # both set, workers too: nothing chosen for the device
    assert metrics["accuracy"] > 0.85  # bfloat16 keeps a trained model trained


def _state_dict_variants(tmp_path, checkpoint):
    import torch

    state = torch.load(checkpoint, weights_only=True)
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, wrapped)
    return wrapped


def test_checkpoint_wrappers_and_prefixes_are_unwrapped(tmp_path, trained_models, evaluated):
    wrapped = _state_dict_variants(tmp_path, trained_models["timm/resnet10t"])
    proc = abtest_cli(
        "evaluate",
        "--model",
        "timm/resnet10t",
        "--checkpoint",
        wrapped,
        "--dataset",
        "digits",
        *INPUT_FLAGS,
        "--device",
        "cpu",
        "--workers",
        "0",
        "--out",
        tmp_path / "out",
    )
    assert proc.returncode == 0, proc.stderr
    assert read_json(tmp_path / "out" / "metrics.json")["accuracy"] == read_json(evaluated / "resnet" / "metrics.json")["accuracy"]


BAD_INPUTS = {
    "unknown model": (["--model", "timm/resnet18x", "--dataset", "digits"], r"unknown model 'timm/resnet18x'; did you mean timm/resnet18"),
    "bad library": (["--model", "keras/resnet", "--dataset", "digits"], r"must be timm/NAME or torchvision/NAME"),
    "missing checkpoint": (
        ["--model", "timm/resnet10t", "--checkpoint", "/nonexistent/x.pth", "--dataset", "digits"],
        r"checkpoint /nonexistent/x.pth does not exist",
    ),
    "class count": (["--model", "timm/resnet10t", "--dataset", "digits", "--num-classes", "5"], r"has 10 classes .* --num-classes 10"),
    "dataset path": (
        ["--model", "timm/resnet10t", "--dataset", "imagefolder", "--path", "/nonexistent/data"],
        r"dataset path /nonexistent/data is not a readable directory",
    ),
    "unknown dataset": (["--model", "timm/resnet10t", "--dataset", "mnistt"], r"--dataset 'mnistt' is unknown"),
    "cuda absent": (
        ["--model", "timm/resnet10t", "--dataset", "digits", "--device", "cuda"],
        r"--device cuda was requested but no CUDA GPU",
    ),
    "batch size": (["--model", "timm/resnet10t", "--dataset", "digits", "--batch-size", "0"], r"--batch-size must be at least 1"),
    "pretrained offline": (
        ["--model", "timm/resnet10t", "--dataset", "digits", "--pretrained"],
        r"could not fetch pretrained weights for timm/resnet10t .* --checkpoint",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_gives_one_line_and_no_files(tmp_path, case):
    args, message = BAD_INPUTS[case]
    out = tmp_path / "out"
    env = {"HF_HUB_OFFLINE": "1"} if case == "pretrained offline" else None
    proc = abtest_cli("evaluate", *args, *INPUT_FLAGS, "--workers", "0", "--out", out, env=env)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert re.search(message, lines[0]), lines[0]
    assert not out.exists() or not any(out.iterdir())


def test_mismatched_checkpoint_is_explained(tmp_path, trained_models):
    proc = abtest_cli(
        "evaluate",
        "--model",
        "timm/test_vit",
        "--checkpoint",
        trained_models["timm/resnet10t"],
        "--dataset",
        "digits",
        *INPUT_FLAGS,
        "--out",
        tmp_path / "out",
    )
    assert proc.returncode == 2 and "does not fit timm/test_vit" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_checkpoint_with_other_class_count_suggests_the_flag(tmp_path, trained_models):
    import torch

    from abtest_api.errors import UserError
    from abtest_evaluator.models import build_model

    with pytest.raises(UserError, match=r"has 10 classes .* set --num-classes 10"):
        build_model("timm/resnet10t", 100, checkpoint=str(trained_models["timm/resnet10t"]))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a readable .pth/.safetensors"):
        build_model("timm/resnet10t", 10, checkpoint=str(garbage))
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(UserError, match="holds no state dict"):
        build_model("timm/resnet10t", 10, checkpoint=str(tmp_path / "list.pth"))


def test_out_of_memory_suggests_a_smaller_batch():
    import torch

    from abtest_api.errors import UserError
    from abtest_evaluator.runner import Runner

    class Exhausted(torch.nn.Module):
        def forward(self, x):
            raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(UserError, match=r"out of memory on cpu at batch size 64; retry with --batch-size 32"):
        Runner(Exhausted(), "cpu")(torch.zeros(64, 3, 8, 8))


def _scrape(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as resp:
        text = resp.read().decode()
    match = re.search(r'^abtest_samples_processed_total\{abtest="live",model="resnet",namespace="ns"\} (\S+)$', text, re.M)
    return float(match.group(1)) if match else None, text


def test_metrics_endpoint_shows_progress_while_running(tmp_path, trained_models):
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "abtest_operator.cli",
            "evaluate",
            "--model",
            "timm/resnet10t",
            "--checkpoint",
            str(trained_models["timm/resnet10t"]),
            "--dataset",
            "digits",
            "--split",
            "train",
            "--input-size",
            "96",
            "--crop-pct",
            "1",
            "--batch-size",
            "8",
            "--workers",
            "0",
            "--device",
            "cpu",
            "--metrics-port",
            str(port),
            "--abtest",
            "live",
            "--namespace",
            "ns",
            "--name",
            "resnet",
            "--out",
            str(tmp_path),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    seen, text = [], ""
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline:
        try:
            value, text = _scrape(port)
            if value is not None and (not seen or value != seen[-1]):
                seen.append(value)
        except OSError:
            pass
        time.sleep(0.05)
    assert proc.wait(timeout=30) == 0, proc.stderr.read()
    assert len(seen) >= 3 and seen == sorted(seen) and seen[-1] > seen[0], seen
    for family in (
        "abtest_samples_total",
        "abtest_batch_latency_seconds_bucket",
        "abtest_running_accuracy",
        "abtest_confidence_mean",
        "abtest_throughput_images_per_second",
        "abtest_loader_wait_ratio",
    ):
        assert family in text
    assert "abtest_gpu_memory_bytes{" not in text  # CPU: no series at all, never a fake 0


# --- dataset loaders on small generated fixtures ---------------------------------------------


def _digits_images(n):
    digits = load_digits()
    return (digits.images[:n] * 255 / 16).astype(np.uint8), digits.target[:n]


def test_imagefolder(tmp_path):
    from PIL import Image

    images, labels = _digits_images(30)
    for i, (img, label) in enumerate(zip(images, labels)):
        folder = tmp_path / "data" / "test" / f"class_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).resize((16, 16)).save(folder / f"{i:03d}.png")
    proc = abtest_cli(
        "evaluate",
        "--model",
        "timm/test_resnet",
        "--dataset",
        "imagefolder",
        "--path",
        tmp_path / "data",
        *INPUT_FLAGS,
        "--workers",
        "0",
        "--out",
        tmp_path / "out",
    )
    assert proc.returncode == 0, proc.stderr
    table = pq.read_table(tmp_path / "out" / "predictions.parquet")
    ids = table.column("sample_id").to_pylist()
    assert ids == sorted(ids) and len(ids) == 30  # ImageFolder order: class folders, then file names
    classes = sorted({f"class_{label}" for label in labels})
    assert [classes[c] for c in table.column("label").to_pylist()] == [i.split("/")[0] for i in ids]


@pytest.mark.parametrize("variant", ["cifar10", "cifar100"])
def test_cifar_pickle_batches(tmp_path, variant):
    rng = np.random.default_rng(0)
    n, classes = 20, 10 if variant == "cifar10" else 100
    data = rng.integers(0, 255, (n, 3072), dtype=np.uint8)
    labels = rng.integers(0, classes, n).tolist()
    folder = tmp_path / ("cifar-10-batches-py" if variant == "cifar10" else "cifar-100-python")
    folder.mkdir()
    key, batch = ("labels", "test_batch") if variant == "cifar10" else ("fine_labels", "test")
    with open(folder / batch, "wb") as fh:
        pickle.dump({"data": data, key: labels}, fh)
    proc = abtest_cli(
        "evaluate",
        "--model",
        "timm/test_resnet",
        "--dataset",
        variant,
        "--path",
        tmp_path,
        "--limit",
        "15",
        *INPUT_FLAGS,
        "--workers",
        "0",
        "--out",
        tmp_path / "out",
    )
    assert proc.returncode == 0, proc.stderr
    table = pq.read_table(tmp_path / "out" / "predictions.parquet")
    assert table.column("label").to_pylist() == labels[:15]
    assert table.column("sample_id").to_pylist()[0] == f"{batch}/0"
    assert read_json(tmp_path / "out" / "metrics.json")["dataset"]["limit"] == 15


def test_torchvision_dataset_class_reads_local_files(tmp_path):
    """MNIST's idx files written by hand: any torchvision class loads from a path, never downloading."""
    images, labels = _digits_images(12)
    big = np.kron(images, np.ones((4, 4), dtype=np.uint8))[:, 2:30, 2:30]  # 28x28 like MNIST
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for split in ("t10k", "train"):  # MNIST checks that both splits are present
        (raw / f"{split}-images-idx3-ubyte").write_bytes(np.array([0x803, 12, 28, 28], ">i4").tobytes() + big.tobytes())
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(np.array([0x801, 12], ">i4").tobytes() + labels.astype(np.uint8).tobytes())
    proc = abtest_cli(
        "evaluate",
        "--model",
        "timm/test_resnet",
        "--dataset",
        "torchvision",
        "--dataset-class",
        "MNIST",
        "--path",
        tmp_path,
        *INPUT_FLAGS,
        "--workers",
        "0",
        "--out",
        tmp_path / "out",
    )
    assert proc.returncode == 0, proc.stderr
    assert pq.read_table(tmp_path / "out" / "predictions.parquet").column("label").to_pylist() == labels.tolist()
    proc = abtest_cli(
        "evaluate",
        "--model",
        "timm/test_resnet",
        "--dataset",
        "torchvision",
        "--dataset-class",
        "NoSuchSet",
        "--path",
        tmp_path,
        *INPUT_FLAGS,
        "--out",
        tmp_path / "out2",
    )
    assert proc.returncode == 2 and "torchvision dataset class 'NoSuchSet' is unknown" in proc.stderr


def test_compile_on_cpu(tmp_path, trained_models):
    """torch.compile (inductor's C++ backend on CPU) gives the same predictions as eager mode."""
    outs = {}
    for mode, extra in (("eager", []), ("compiled", ["--compile"])):
        proc = abtest_cli(
            "evaluate",
            "--model",
            "timm/resnet10t",
            "--checkpoint",
            trained_models["timm/resnet10t"],
            "--dataset",
            "digits",
            "--limit",
            "64",
            *INPUT_FLAGS,
            "--device",
            "cpu",
            "--workers",
            "0",
            "--batch-size",
            "32",
            *extra,
            "--out",
            tmp_path / mode,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        outs[mode] = pq.read_table(tmp_path / mode / "predictions.parquet")
    assert read_json(tmp_path / "compiled" / "metrics.json")["device"]["compile"] is True
    assert outs["eager"].column("pred").equals(outs["compiled"].column("pred"))
    np.testing.assert_allclose(outs["eager"].column("confidence").to_numpy(), outs["compiled"].column("confidence").to_numpy(), atol=1e-4)


def test_pushgateway_receives_the_final_values(tmp_path, trained_models):
    """Short Jobs may end between scrapes: the final values go to a real Pushgateway (Debian's)."""
    import shutil
    import socket
    import subprocess

    binary = shutil.which("prometheus-pushgateway")
    assert binary, "prometheus-pushgateway is not installed (hack/test.sh installs it)"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    gateway = subprocess.Popen(
        [binary, f"--web.listen-address=127.0.0.1:{port}", f"--persistence.file={tmp_path / 'push.db'}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        proc = evaluate_tiny(
            trained_models,
            "--workers",
            "0",
            "--abtest",
            "pushed",
            "--namespace",
            "ns",
            "--name",
            "vit",
            "--pushgateway",
            f"http://127.0.0.1:{port}",
            "--out",
            tmp_path / "out",
        )
        assert proc.returncode == 0, proc.stderr
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        sample = re.search(r"^abtest_samples_processed_total\{(.*)\} (\S+)$", text, re.M)
        assert sample and float(sample.group(2)) == 360, text[:2000]
        assert 'abtest="pushed"' in sample.group(1) and 'model="vit"' in sample.group(1) and 'job="abtest-evaluator"' in sample.group(1)
        assert re.search(r"^abtest_evaluation_completed\{.*\} 1$", text, re.M)
    finally:
        gateway.terminate()
        gateway.wait(timeout=10)


def test_trained_checkpoints_are_readable_by_other_users(trained_models):
    """Evaluator pods run as UID 65532: a checkpoint the user trained must not be owner-only (safetensors writes 0600)."""
    for path in trained_models.values():
        assert path.stat().st_mode & 0o044 == 0o044, f"{path.name} is {oct(path.stat().st_mode & 0o777)}"


def test_throughput_counts_the_waits_for_data():
    from abtest_evaluator.measurements import throughputs

    figures = throughputs(images=100, compute_seconds=1.0, loop_seconds=2.0, wait_seconds=1.0)
    assert figures == {
        "throughput": 50.0,
        "compute_throughput": 100.0,
        "loop_seconds": 2.0,
        "loader_wait_fraction": 0.5,
        "data_bound": True,
    }
    assert throughputs(10, 0.5, 0.0, 0.0)["throughput"] == 20.0  # one batch: its time is the loop's


def test_loading_in_the_loop_shows_as_waiting_for_data(tmp_path, trained_models):
    """With --workers 0 every batch is decoded and resized inside the loop: the wait is measured, not hidden."""
    proc = evaluate_tiny(trained_models, "--workers", "0", "--batch-size", "16", "--input-size", "64", "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr
    metrics = read_json(tmp_path / "metrics.json")
    assert metrics["loader_wait_fraction"] > 0 and metrics["throughput"] < metrics["compute_throughput"]
    assert f"{metrics['loader_wait_fraction'] * 100:.0f}% waiting for data" in proc.stdout
