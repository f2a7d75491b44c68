"""All-or-nothing admission with Kueue: spec.queueName makes the models one JobSet, which real Kueue admits as one
workload and the real JobSet controller runs (tests/cluster/queueing.py starts both beside the control plane)."""

from __future__ import annotations

import json

import pytest

from cluster.queueing import QUEUE, Queueing
from kube import apply, condition, example_manifest, items, jobs, wait_phase


@pytest.fixture(scope="module")
def queueing(cluster, operator):
    queueing = Queueing(cluster).start()
    try:
        yield queueing
    finally:
        queueing.stop()


def test_two_abtests_that_a_queue_fits_one_at_a_time_run_one_after_the_other_each_with_its_models_together(cluster, namespace, queueing):
    """A ClusterQueue with 4 GPUs and two ABTests of two 2-GPU models, applied at once (the node advertises 8, so
    without the queue both would run together). Kueue admits one JobSet, the other's models wait suspended, never one
    model of it alone; then the second runs. Both succeed; their model windows never interleave."""
    queueing.cluster_queue("abtest-gpus", gpus=4)
    queueing.local_queue(namespace.name, "abtest-gpus")
    names = ("first", "second")
    for name in names:
        manifest = example_manifest("abtest-digits.yaml", namespace.name, queueName=QUEUE)
        manifest["metadata"]["name"] = name
        manifest["spec"].update(device="auto", gpusPerModel=2)
        apply(cluster, manifest)

    def one_admitted():
        jobsets = {j["metadata"]["name"]: j["spec"].get("suspend") for j in items(cluster, "jobsets.jobset.x-k8s.io", namespace.name)}
        return jobsets if sorted(jobsets.values()) == [False, True] else None

    admitted = cluster.wait_for(one_admitted, 120, "Kueue to admit one JobSet and hold the other")
    waiting = next(name for name, suspended in admitted.items() if suspended)
    # the waiting ABTest's models are all suspended (none runs alone), and that is no stall
    held = [j for j in jobs(cluster, namespace.name) if j["metadata"]["labels"].get("abtest.dev/name") == waiting]
    assert len(held) == 2 and all(j["spec"]["suspend"] for j in held), held
    # one Kueue workload per ABTest with both models as its pod sets: one admitted, the other not
    workloads = items(cluster, "workloads.kueue.x-k8s.io", namespace.name)
    assert sorted(sorted(p["name"] for p in w["spec"]["podSets"]) for w in workloads) == [["resnet", "vit"]] * 2, workloads
    admitted_workloads = [w for w in workloads if condition(w, "Admitted") == "True"]
    assert len(admitted_workloads) == 1, [w.get("status") for w in workloads]
    done = {name: wait_phase(cluster, namespace.name, name, ("Succeeded", "Failed"), timeout=400) for name in names}
    windows = {}
    for name, abtest in done.items():
        status = abtest["status"]
        assert status["phase"] == "Succeeded", status
        assert condition(abtest, "AllModelsPlaced") == "True"
        assert status["result"]["concurrency"]["concurrent"] is True, status["result"]["concurrency"]
        assert [m["job"] for m in status["models"]] == [f"{name}-resnet-0", f"{name}-vit-0"]
        results = namespace.results / namespace.name / name / abtest["metadata"]["uid"]
        metrics = [json.loads((results / model / "metrics.json").read_text()) for model in ("resnet", "vit")]
        windows[name] = (min(m["started_at"] for m in metrics), max(m["finished_at"] for m in metrics))
    (a_start, a_end), (b_start, b_end) = sorted(windows.values())
    assert a_end < b_start, windows  # the second ABTest's models started after the first's had finished
    # finished JobSets are kept (their Jobs' logs) as Completed, and their workloads Finished: the quota is free
    assert sorted(condition(j, "Completed") for j in items(cluster, "jobsets.jobset.x-k8s.io", namespace.name)) == ["True"] * 2
    finished = lambda: [condition(w, "Finished") for w in items(cluster, "workloads.kueue.x-k8s.io", namespace.name)] == ["True"] * 2  # noqa: E731
    cluster.wait_for(finished, 30, "both Kueue workloads to be Finished")
