"""Did the models' timed loops run together? result.json's concurrency block, its warning, status.result.concurrency, the
operator's gauges and the report's timeline."""

import json

import numpy as np
import pytest

from abtest_api.errors import UserError
from abtest_api.result import check_status_result, status_result
from abtest_evaluator.analysis import compare_models, concurrency, plots, report
from abtest_evaluator.results import ModelData
from abtest_operator.metrics import OperatorMetrics

T0 = 1_700_000_000.0  # epoch seconds
BARRIER = {"peers": ["a", "b"], "waited_seconds": 1.0, "released_at": T0 + 5, "timeout_seconds": 600}


def times(started, ready, loop, finished, barrier=BARRIER) -> dict:
    """One evaluator's times, in seconds after T0 (``ready`` None: older metrics without it)."""
    return {
        "started_at": T0 + started,
        "ready_at": None if ready is None else T0 + ready,
        "loop_started_at": T0 + loop,
        "finished_at": T0 + finished,
        "start_barrier": barrier,
    }


def model(name: str, timing: dict, seed: int = 0, folder=None) -> ModelData:
    """A model of 400 samples as load_models returns it, with its loop's times in its metrics."""
    rng = np.random.default_rng(seed)
    metrics = {
        "device": {"type": "cpu", "name": "x"},
        "latency": {"batch_ms": {"p50": 10.0, "p95": 11.0}, "batches_ms": rng.normal(10, 0.2, 50).tolist()},
        "throughput": 100.0,
        "ece": 0.01,
        "confusion_matrix": [[320, 80], [0, 0]],
        "per_class_accuracy": [0.8, None],
        "reliability": {"confidence": [0.9], "accuracy": [0.8]},
        **timing,
    }
    return ModelData(name, metrics, np.zeros(400, int), rng.random(400) < 0.8, np.full(400, 0.9), folder)


def warned(result: dict) -> list[str]:
    return [w for w in result["warnings"] if "did not run together" in w]


def test_loops_that_start_together_are_concurrent_and_not_warned_about():
    result = compare_models([model("a", times(0, 4, 5, 65)), model("b", times(1, 5, 5.05, 50), 1)], 0.05, "auto")
    block = result["concurrency"]
    assert block["concurrent"] is True and block["barrier"] is True and not warned(result)
    assert block["start_skew_seconds"] == pytest.approx(0.05) and block["overlap"] == pytest.approx((50 - 5.05) / 60)
    assert [(w["model"], w["shard"], w["ready_at"] - T0) for w in block["windows"]] == [("a", None, 4), ("b", None, 5)]
    status = status_result(result)
    assert status["concurrency"] == {"concurrent": True, "startSkewSeconds": block["start_skew_seconds"], "overlap": block["overlap"]}
    assert check_status_result(status) is status


def test_loops_queued_one_after_the_other_are_not_concurrent_and_warned_about():
    """Two models on one GPU: the second starts when the first is done, without a barrier."""
    first, second = times(0, None, 3, 20, barrier=None), times(20, None, 23, 40, barrier=None)
    result = compare_models([model("a", first), model("b", second, 1)], 0.05, "auto")
    block = result["concurrency"]
    assert block["concurrent"] is False and block["overlap"] == 0 and block["start_skew_seconds"] == pytest.approx(20)
    assert block["barrier"] is False and all(w["ready_at"] is None for w in block["windows"])
    (sentence,) = warned(result)
    assert sentence.startswith("the models' timed loops did not run together (start skew 20.0 s, overlap 0% of the longest;")
    assert "no start barrier" in sentence and "the accuracy comparison stays valid" in sentence
    assert status_result(result)["concurrency"]["concurrent"] is False


@pytest.mark.parametrize(
    ("skew", "length", "concurrent"),
    [(0.2, 1, True), (0.3, 1, False), (1.9, 20, True), (2.1, 20, False)],
    ids=["under the floor", "over the floor", "under 10% of the loop", "over 10% of the loop"],
)
def test_the_start_skew_tolerance_is_the_larger_of_a_quarter_second_and_a_tenth_of_the_shortest_loop(skew, length, concurrent):
    block = concurrency.block([model("a", times(0, 1, 1, 1 + length)), model("b", times(0, 1, 1 + skew, 1 + skew + length))])
    assert block["concurrent"] is concurrent and block["skew_tolerance_seconds"] == max(0.25, 0.1 * length)


def test_overlapping_loops_that_started_apart_are_not_concurrent_and_a_late_restart_is_named():
    block = concurrency.block([model("a", times(0, 1, 1, 100)), model("b", times(0, 30, 30, 90))])
    assert block["overlap"] == pytest.approx(60 / 99) and block["concurrent"] is False and block["barrier"] is True
    (sentence,) = concurrency.warnings(block)
    assert "overlap 61% of the longest" in sentence and "restarted after the start barrier released" in sentence


def test_each_shard_is_a_window_of_its_own(tmp_path):
    """A sharded model: each pod's metrics file is read by itself (the merged metrics span all shards)."""
    folder = tmp_path / "vit"
    folder.mkdir()
    for i in range(3):
        shard = {"index": i, "count": 3, "start": 10 * i, "n_total": 30}
        (folder / f"metrics-{i:05d}-of-00003.json").write_text(json.dumps(times(i, 4, 5 + i / 100, 50 + i) | {"shard": shard}))
    merged = times(0, 4, 5, 52) | {"shard": {"count": 3, "n_total": 30}}
    block = concurrency.block([model("resnet", times(0, 4, 5, 60)), model("vit", merged, 1, folder)])
    assert [(w["model"], w["shard"]) for w in block["windows"]] == [("resnet", None), ("vit", "0/3"), ("vit", "1/3"), ("vit", "2/3")]
    assert [w["finished_at"] - T0 for w in block["windows"]] == [60, 50, 51, 52]
    assert block["concurrent"] is True and block["start_skew_seconds"] == pytest.approx(0.02)


def test_metrics_without_the_loops_times_give_no_block():
    """Older metrics (and hand-made fixtures) lack the times: no block, no warning, no status field."""
    timing = times(0, 1, 1, 10)
    models = [model("a", timing), model("b", {k: v for k, v in timing.items() if k != "finished_at"}, 1)]
    result = compare_models(models, 0.05, "auto")
    assert result["concurrency"] is None and not warned(result) and "concurrency" not in status_result(result)
    page = report.render(result, {m.name: m.metrics for m in models})
    assert "timed loops together" not in page and "Did the models run together?" not in page


@pytest.mark.parametrize(
    ("field", "value"), [("overlap", 1.5), ("startSkewSeconds", -1), ("concurrent", "yes")], ids=["overlap", "skew", "concurrent"]
)
def test_a_concurrency_outside_the_schema_is_refused(field, value):
    status = status_result(compare_models([model("a", times(0, 1, 1, 10)), model("b", times(0, 1, 1, 10), 1)], 0.05, "auto"))
    status["concurrency"][field] = value
    with pytest.raises(UserError, match=rf"status.result is invalid: concurrency.{field}"):
        check_status_result(status)


def test_the_operator_exports_the_concurrency_and_forgets_it():
    result = compare_models([model("a", times(0, None, 3, 20, None)), model("b", times(20, None, 23, 40, None), 1)], 0.05, "auto")
    metrics = OperatorMetrics()
    metrics.observe("ns", "t", {"phase": "Succeeded", "result": status_result(result)})
    assert metrics.start_skew.labels("t", "ns")._value.get() == pytest.approx(20)
    assert metrics.concurrent.labels("t", "ns")._value.get() == 0 and metrics.loop_overlap.labels("t", "ns")._value.get() == 0
    metrics.forget("ns", "t")
    names = {s.name for m in metrics.registry.collect() for s in m.samples}
    assert not names & {"abtest_result_start_skew_seconds", "abtest_result_concurrent", "abtest_result_loop_overlap_ratio"}


def test_the_report_says_whether_the_loops_ran_together_and_draws_their_timeline():
    models = [model("a", times(0, 4, 5, 65)), model("<b & c>", times(1, 5, 5.05, 50), 1)]
    result = compare_models(models, 0.05, "auto")
    page = report.render(result, {m.name: m.metrics for m in models})
    assert "timed loops together: yes (start skew 0.05 s, overlap 75%)" in page
    figure = plots.timeline(result["concurrency"]["windows"])
    assert figure in page and "&lt;b &amp; c&gt;" in figure
