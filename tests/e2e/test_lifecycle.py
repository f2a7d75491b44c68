"""The operator against a real control plane: apply -> Jobs -> analysis -> verdict in status."""

import json
from datetime import datetime

import numpy as np
import pyarrow.parquet as pq
import pytest
from statsmodels.stats.contingency_tables import mcnemar

from kube import apply, events, example_manifest, get_abtest, jobs, wait_phase

pytestmark = pytest.mark.e2e


def _ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_two_model_example_succeeds_with_the_right_p_value(cluster, namespace):
    manifest = example_manifest("abtest-digits.yaml", namespace.name)
    name = manifest["metadata"]["name"]
    apply(cluster, manifest)
    running = wait_phase(cluster, namespace.name, name, ("Running", "Analyzing", "Succeeded"), timeout=120)
    assert running["status"]["modelCount"] == 2
    done = wait_phase(cluster, namespace.name, name, ("Succeeded", "Failed"))
    status = done["status"]
    assert status["phase"] == "Succeeded", status
    assert {c["type"]: c["status"] for c in status["conditions"]} == {"ModelsComplete": "True", "Analyzed": "True", "Ready": "True", "Failed": "False"}

    # kubectl get shows the printer columns
    table = cluster.kubectl("get", "abtests", "-n", namespace.name).stdout.splitlines()
    assert table[0].split()[:4] == ["NAME", "PHASE", "WINNER", "P-VALUE"]
    assert table[1].split()[1] == "Succeeded" and table[1].split()[3] == status["result"]["pValue"]

    # the p-value in status equals statsmodels on the predictions written to the results volume
    results = namespace.results / namespace.name / name
    correct = {m: (lambda t: t.column("pred").to_numpy() == t.column("label").to_numpy())(pq.read_table(results / m / "predictions.parquet"))
               for m in ("resnet", "vit")}
    n10 = int((correct["resnet"] & ~correct["vit"]).sum())
    n01 = int((~correct["resnet"] & correct["vit"]).sum())
    both = int((correct["resnet"] & correct["vit"]).sum())
    table2x2 = [[both, n10], [n01, len(correct["vit"]) - both - n10 - n01]]
    expected = mcnemar(table2x2, exact=n10 + n01 < 25, correction=True).pvalue
    (comparison,) = status["result"]["comparisons"]
    assert (comparison["n10"], comparison["n01"]) == (n10, n01)
    assert comparison["pValue"] == pytest.approx(expected, rel=1e-9)
    expected_winner = ("resnet" if n10 > n01 else "vit") if expected < 0.05 else "none"
    assert status["result"]["winner"] == expected_winner
    assert (results / "result.json").exists() and (results / "report.html").exists()

    # both model Jobs: same image and seed, and they overlapped in time
    model_jobs = [j for j in jobs(cluster, namespace.name) if j["metadata"]["labels"]["abtest.dev/role"] == "model"]
    assert len(model_jobs) == 2
    containers = [j["spec"]["template"]["spec"]["containers"][0] for j in model_jobs]
    assert len({c["image"] for c in containers}) == 1
    assert {c["args"][c["args"].index("--seed") + 1] for c in containers} == {"42"}
    metrics = [json.loads((results / m / "metrics.json").read_text()) for m in ("resnet", "vit")]
    assert max(m["started_at"] for m in metrics) < min(m["finished_at"] for m in metrics)
    assert metrics[0]["image"] == metrics[1]["image"] == containers[0]["image"]
    # the per-model status carries the results once the analysis has run
    assert {m["name"]: m["phase"] for m in status["models"]} == {"resnet": "Succeeded", "vit": "Succeeded"}
    assert all("accuracy" in m for m in status["models"])

    reasons = {e["reason"] for e in events(cluster, namespace.name, name)}
    assert {"JobsCreated", "Succeeded"} <= reasons
