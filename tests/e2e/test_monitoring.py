"""Real Prometheus scrapes the operator and the evaluator pods; the dashboard's queries return data."""

import json
import re

import pytest

from helpers import ROOT
from kube import apply, example_manifest, wait_phase

pytestmark = pytest.mark.e2e
GPU_PANELS = {"GPU utilization", "GPU memory"}  # no series on CPU: GPU metrics are never faked


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


def test_every_dashboard_panel_returns_data(prometheus, watched):
    ns, _, midpoint, _ = watched
    dashboard = json.loads((ROOT / "charts" / "abtest-operator" / "dashboards" / "abtest.json").read_text())
    values = {"$namespace": ns.name, "$abtest": "watched", "$model": ".*", "$__rate_interval": "1m"}
    for variable in dashboard["templating"]["list"][1:]:
        query = re.sub(r"label_values\((.*), (\w+)\)", r"\1", variable["query"]["query"])
        for key, value in values.items():
            query = query.replace(key, value)
        assert prometheus.query(query, at=midpoint), f"variable {variable['name']}: {query}"
    checked = 0
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for key, value in values.items():
                expr = expr.replace(key, value)
            live = "abtest_result" not in expr and "abtest_abtests" not in expr
            result = prometheus.query(expr, at=midpoint if live else None)
            if panel["title"] in GPU_PANELS:
                assert result == [], f"{panel['title']} shows a GPU series on a CPU run: {result}"
            else:
                assert result, f"panel {panel['title']!r} returned no series: {expr}"
                checked += 1
    assert checked >= 10
