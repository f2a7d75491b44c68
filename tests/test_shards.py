"""One model over several pods: `abtest evaluate --shard I/N` writes a part, the analysis merges the parts, and the
merged predictions and figures equal an unsharded run's."""

import pyarrow.parquet as pq
import pytest

from abtest_api.constants import shard_range
from abtest_evaluator import results
from helpers import INPUT_FLAGS, abtest_cli, local_manifest, read_json

MODELS = {"resnet": "timm/resnet10t", "vit": "timm/test_vit"}


def evaluate(root, name, trained_models, *flags):
    arch = MODELS[name]
    proc = abtest_cli(
        "evaluate", "--model", arch, "--checkpoint", trained_models[arch], "--dataset", "digits", *INPUT_FLAGS,
        "--device", "cpu", "--workers", "0", "--name", name, "--out", root / name, *flags,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc


def test_shard_ranges_cover_the_order_once():
    for n, count in ((360, 3), (10, 4), (7, 7)):
        parts = [shard_range(n, i, count) for i in range(count)]
        assert parts[0][0] == 0 and parts[-1][1] == n and all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
        assert max(e - s for s, e in parts) - min(e - s for s, e in parts) <= 1


def test_merged_shards_equal_the_unsharded_run(tmp_path, trained_models):
    whole, sharded = tmp_path / "whole", tmp_path / "sharded"
    for name in MODELS:
        evaluate(whole, name, trained_models)
        for i in range(3):
            evaluate(sharded, name, trained_models, "--shard", f"{i}/3")
    files = sorted(p.name for p in (sharded / "resnet").iterdir())
    assert files == [f"{kind}-0000{i}-of-00003.{ext}" for kind, ext in (("metrics", "json"), ("predictions", "parquet")) for i in range(3)]
    for name in MODELS:
        assert results.read_predictions(sharded / name, columns=("index", "label", "pred", "confidence", "top5", "sample_id")).equals(
            pq.read_table(whole / name / "predictions.parquet")
        )
        merged, alone = results.read_metrics(sharded / name), read_json(whole / name / "metrics.json")
        for key in ("n", "correct", "accuracy", "confusion_matrix", "class_support", "per_class_accuracy", "fingerprint"):
            assert merged[key] == alone[key], key
        for key in ("top5", "ece"):
            assert merged[key] == pytest.approx(alone[key], abs=1e-12), key
        assert merged["confidence"]["mean"] == pytest.approx(alone["confidence"]["mean"], rel=1e-6)
        assert merged["confidence"]["std"] == pytest.approx(alone["confidence"]["std"], rel=1e-4)
        assert len(merged["latency"]["batches_ms"]) == sum(
            len(read_json(p)["latency"]["batches_ms"]) for p in (sharded / name).glob("metrics-*")
        )
    for root in (whole, sharded):
        assert abtest_cli("analyze", root, "--models", "resnet,vit").returncode == 0
    a, b = read_json(whole / "result.json"), read_json(sharded / "result.json")
    assert [(c["n10"], c["n01"], c["p_value"]) for c in a["comparisons"]] == [(c["n10"], c["n01"], c["p_value"]) for c in b["comparisons"]]
    assert a["verdict"] == b["verdict"]
    assert [(w["model"], w["shard"]) for w in b["concurrency"]["windows"]] == [(m, f"{i}/3") for m in MODELS for i in range(3)]


def test_a_missing_shard_is_named(tmp_path, trained_models):
    for i in (0, 2):
        evaluate(tmp_path, "resnet", trained_models, "--shard", f"{i}/3")
    evaluate(tmp_path, "vit", trained_models)
    proc = abtest_cli("analyze", tmp_path, "--models", "resnet,vit")
    assert proc.returncode == 2 and "has the metrics of shards [0, 2] of 3; wait for every shard or rerun the missing ones" in proc.stderr


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--shard", "3/3"], "--shard must be I/N with 0 <= I < N <= 64 (part I of N, 0-based), got '3/3'"),
        (["--shard", "0/3", "--looks", "2"], "--shard and --looks cannot be combined"),
    ],
)
def test_bad_shard_flags_are_refused_in_one_line(tmp_path, trained_models, flags, message):
    arch = MODELS["resnet"]
    proc = abtest_cli("evaluate", "--model", arch, "--checkpoint", trained_models[arch], "--dataset", "digits", "--out", tmp_path, *flags)
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())


def test_abtest_run_shards_each_model(tmp_path, trained_models):
    models = [{"name": n, "architecture": a, "checkpoint": str(trained_models[a])} for n, a in MODELS.items()]
    path = local_manifest(tmp_path / "sharded.yaml", "sharded", models, shardsPerModel=2)
    proc = abtest_cli("run", path, "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    whole = tmp_path / "whole"
    for name in MODELS:
        evaluate(whole, name, trained_models)
        assert sorted(p.name for p in (tmp_path / "out" / name).glob("predictions-*")) == [
            "predictions-00000-of-00002.parquet",
            "predictions-00001-of-00002.parquet",
        ]
    assert abtest_cli("analyze", whole, "--models", "resnet,vit").returncode == 0
    ours, alone = read_json(tmp_path / "out" / "result.json"), read_json(whole / "result.json")
    assert ours["comparisons"][0]["p_value"] == alone["comparisons"][0]["p_value"] and ours["n"] == 360
