"""Real Prometheus scrapes the operator and the evaluator pods; the dashboard's queries return data."""

import json
import re

import pytest

from cluster.harness import RELEASE, RELEASE_NS
from helpers import ROOT
from kube import apply, example_manifest, jobs, wait_phase

pytestmark = pytest.mark.e2e
GPU_PANELS = {"GPU utilization", "GPU memory"}  # no series on CPU: GPU metrics are never faked
SEQUENTIAL_PANELS = {"Sequential test: z against the boundary"}  # no series for a fixed-sample test


def dashboard() -> dict:
    return json.loads((ROOT / "charts" / "abtest-operator" / "dashboards" / "abtest.json").read_text())


def slow_manifest(namespace: str) -> dict:
    """Two CNNs at 96 px on digits/train: long enough for several 1 s scrapes of each evaluator (at 64 px resnet could
    finish before Prometheus discovered its pod)."""
    manifest = example_manifest("abtest-digits-3way.yaml", namespace, batchSize=16)
    manifest["metadata"]["name"] = "watched"
    manifest["spec"]["dataset"]["split"] = "train"
    manifest["spec"]["models"] = [dict(m, inputSize=96) for m in manifest["spec"]["models"] if m["name"] in ("resnet", "shufflenet")]
    return manifest


@pytest.fixture(scope="module")
def watched(cluster, operator, prometheus, models_dir):
    from cluster.harness import make_namespace

    ns = make_namespace(cluster, models_dir, "monitoring")
    manifest = slow_manifest(ns.name)
    apply(cluster, manifest)
    obj = wait_phase(cluster, ns.name, "watched", ("Succeeded", "Failed"), timeout=300)
    assert obj["status"]["phase"] == "Succeeded", obj["status"]
    results = ns.results / ns.name / "watched" / obj["metadata"]["uid"]
    spans = [json.loads((results / m / "metrics.json").read_text()) for m in ("resnet", "shufflenet")]
    # the end of the overlap: both evaluators have been running (and scraped every second) the longest
    midpoint = min(s["finished_at"] for s in spans) - 0.5
    cluster.wait_for(lambda: prometheus.query('abtest_result_p_value{abtest="watched"}'), 30, "the operator's result gauges in Prometheus")
    # the operator exports the result as soon as the analysis writes it, and the phase on its next pass (the analysis
    # Job's completion): wait for the scrape after that too
    cluster.wait_for(lambda: prometheus.query('abtest_abtests{phase="Succeeded"} >= 1'), 30, "the Succeeded phase gauge in Prometheus")
    return ns, obj, midpoint, spans


def test_evaluator_pods_were_scraped_while_running(prometheus, watched):
    ns, _, _, spans = watched
    series = prometheus.query(f'max_over_time(abtest_samples_processed_total{{namespace="{ns.name}",abtest="watched"}}[10m])')
    seen = {s["metric"]["model"]: float(s["value"][1]) for s in series}
    assert set(seen) == {"resnet", "shufflenet"}, series
    assert all(v > 0 for v in seen.values())
    counts = prometheus.query(f'count_over_time(abtest_samples_processed_total{{namespace="{ns.name}",abtest="watched"}}[10m])')
    assert all(float(s["value"][1]) >= 2 for s in counts), counts  # several scrapes per evaluation, not one
    # discovered through the API server by the chart's PodMonitor (its job label), each pod as its own target
    assert {s["metric"]["job"] for s in series} == {f"{RELEASE_NS}/{RELEASE}-abtest-operator-evaluators"}, series
    assert len({s["metric"]["pod"] for s in series}) == 2, series


def test_operator_result_gauges_match_status(prometheus, watched):
    ns, obj, _, _ = watched
    result = obj["status"]["result"]
    (comparison,) = result["comparisons"]
    (p,) = prometheus.query(f'abtest_result_p_value{{namespace="{ns.name}",abtest="watched"}}')
    assert float(p["value"][1]) == pytest.approx(comparison["pValueAdjusted"], rel=1e-9)
    assert {p["metric"]["a"], p["metric"]["b"]} == {comparison["a"], comparison["b"]}
    for series in prometheus.query(f'abtest_result_accuracy{{namespace="{ns.name}",abtest="watched"}}'):
        assert float(series["value"][1]) == pytest.approx(result["models"][series["metric"]["model"]]["accuracy"])
    phases = {s["metric"]["phase"]: float(s["value"][1]) for s in prometheus.query("abtest_abtests")}
    assert phases["Succeeded"] >= 1
    assert {s["metric"]["job"] for s in prometheus.query("abtest_abtests")} == {f"{RELEASE}-abtest-operator-metrics"}  # the Service's


def test_a_failed_abtest_fires_its_alert_naming_it_and_the_next_step(cluster, prometheus, namespace):
    """The chart's PrometheusRule, evaluated by the Prometheus that scrapes the operator: an ABTest the policy fails
    (an image outside evaluator.allowedImages) raises ABTestFailed with its namespace and name and the command to run."""
    manifest = example_manifest("abtest-digits.yaml", namespace.name)
    manifest["metadata"]["name"] = "refused"
    manifest["spec"]["image"] = "registry.example.com/other/evaluator:1"
    apply(cluster, manifest)
    assert wait_phase(cluster, namespace.name, "refused", ("Failed",), timeout=60)["status"]["phase"] == "Failed"

    def firing():
        return [
            a
            for a in prometheus.alerts()
            if a["labels"].get("alertname") == "ABTestFailed" and a["labels"].get("abtest") == "refused" and a["state"] == "firing"
        ]

    (alert,) = cluster.wait_for(firing, 30, "ABTestFailed firing for the refused ABTest")
    assert alert["labels"]["namespace"] == namespace.name and alert["labels"]["severity"] == "warning"
    assert f"kubectl describe abtest refused -n {namespace.name}" in alert["annotations"]["description"]
    assert not [a for a in prometheus.alerts() if a["labels"].get("alertname") == "ABTestOperatorDown"]  # it is scraped


def test_every_dashboard_panel_returns_data(prometheus, watched):
    ns, _, midpoint, _ = watched
    board = dashboard()
    values = {"$namespace": ns.name, "$abtest": "watched", "$model": ".*", "$__rate_interval": "1m"}
    for variable in board["templating"]["list"][1:]:
        query = re.sub(r"label_values\((.*), (\w+)\)", r"\1", variable["query"]["query"])
        for key, value in values.items():
            query = query.replace(key, value)
        assert prometheus.query(query, at=midpoint), f"variable {variable['name']}: {query}"
    checked = 0
    for panel in board["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for key, value in values.items():
                expr = expr.replace(key, value)
            live = "abtest_result" not in expr and "abtest_abtests" not in expr
            result = prometheus.query(expr, at=midpoint if live else None)
            if panel["title"] in GPU_PANELS | SEQUENTIAL_PANELS:
                assert result == [], f"{panel['title']} shows a series it should not (GPU on CPU, sequential on a fixed test): {result}"
            else:
                assert result, f"panel {panel['title']!r} returned no series: {expr}"
                checked += 1
    assert checked >= 10


def test_a_sequential_test_stops_early_and_the_dashboard_shows_its_boundary(cluster, operator, prometheus, models_dir):
    """A trained model against an untrained one, 10 looks: the analysis runs beside the evaluators, crosses the
    boundary at an early look, and the operator stops the evaluations still running."""
    from cluster.harness import make_namespace

    ns = make_namespace(cluster, models_dir, "sequential")
    manifest = example_manifest("abtest-digits-3way.yaml", ns.name, batchSize=16)
    manifest["metadata"]["name"] = "early"
    manifest["spec"]["dataset"]["split"] = "train"
    trained = next(m for m in manifest["spec"]["models"] if m["name"] == "resnet")
    untrained = {k: v for k, v in trained.items() if k != "checkpoint"} | {"name": "untrained"}
    manifest["spec"]["models"] = [dict(trained, inputSize=128), dict(untrained, inputSize=128)]
    manifest["spec"]["analysis"] = {"sequential": {"looks": 10}}
    apply(cluster, manifest)
    obj = wait_phase(cluster, ns.name, "early", ("Succeeded", "Failed"), timeout=300)
    status = obj["status"]
    assert status["phase"] == "Succeeded", status
    result, seq = status["result"], status["sequential"]
    n = 1437  # digits/train
    assert result["stoppedEarly"] is True and result["samplesUsed"] == seq["samplesUsed"] < n
    assert result["winner"] == "resnet" and result["verdict"].startswith(f"Stopped early at look {seq['look']} of 10")
    (stat,) = seq["statistics"]
    assert stat["z"] >= seq["boundary"] and stat["crossed"] and seq["stoppedEarly"]
    assert 0 < result["alphaSpent"] < 0.05

    # the remaining work stopped: a model Job still evaluating was suspended, and wrote no final predictions
    model_jobs = {
        j["metadata"]["labels"]["abtest.dev/model"]: j
        for j in jobs(cluster, ns.name)
        if j["metadata"]["labels"]["abtest.dev/role"] == "model"
    }
    stopped = [m for m, j in model_jobs.items() if j["spec"].get("suspend")]
    assert stopped, {m: j.get("status") for m, j in model_jobs.items()}
    results = ns.results / ns.name / "early" / obj["metadata"]["uid"]
    for m in stopped:
        assert not (results / m / "predictions.parquet").exists()
        assert next(e for e in status["models"] if e["name"] == m)["phase"] == "Stopped"
    saved = json.loads((results / "result.json").read_text())["sequential"]
    assert saved["history"][-1]["n"] == seq["samplesUsed"] and "Sequential design" in (results / "report.html").read_text()

    # the dashboard's sequential panel: z and the boundary, from the operator's gauges
    panel = next(p for p in dashboard()["panels"] if p["title"] in SEQUENTIAL_PANELS)
    for target in panel["targets"]:
        expr = target["expr"].replace("$namespace", ns.name).replace("$abtest", "early")
        series = cluster.wait_for(lambda e=expr: prometheus.query(e), 30, f"the sequential panel's {expr}")
        if target["refId"] == "A":
            assert float(series[0]["value"][1]) == pytest.approx(stat["z"], rel=1e-9)
