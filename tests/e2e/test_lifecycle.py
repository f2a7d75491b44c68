"""The operator against a real control plane: apply -> Jobs -> analysis -> verdict in status."""

import json
from datetime import datetime

import pyarrow.parquet as pq
import pytest
from statsmodels.stats.contingency_tables import mcnemar

from abtest_api.constants import LABEL_MODEL, LABEL_NAME
from cluster.harness import read_only_claim
from helpers import timm_hub_cache
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
    assert not done["metadata"].get("finalizers")  # deletable while the operator is down; no kopf writes per ABTest
    assert set(done["metadata"].get("annotations") or {}) <= {"kubectl.kubernetes.io/last-applied-configuration"}  # no kopf state
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "ModelsComplete": "True",
        "Analyzed": "True",
        "Ready": "True",
        "Failed": "False",
        "Stalled": "False",
        "AllModelsPlaced": "True",
    }

    # kubectl get shows the printer columns
    table = cluster.kubectl("get", "abtests", "-n", namespace.name).stdout.splitlines()
    assert table[0].split()[:4] == ["NAME", "PHASE", "WINNER", "P-VALUE"]
    assert table[1].split()[1] == "Succeeded" and table[1].split()[3] == status["result"]["pValue"]

    # the p-value in status equals statsmodels on the predictions written to the results volume, under the ABTest's UID
    uid = done["metadata"]["uid"]
    assert status["resultsPath"] == f"/results/{namespace.name}/{name}/{uid}"
    results = namespace.results / namespace.name / name / uid
    correct = {
        m: (lambda t: t.column("pred").to_numpy() == t.column("label").to_numpy())(pq.read_table(results / m / "predictions.parquet"))
        for m in ("resnet", "vit")
    }
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
    # the timed loops started together: each waited at the start barrier for the other
    assert abs(metrics[0]["loop_started_at"] - metrics[1]["loop_started_at"]) < 1.0, [m["start_barrier"] for m in metrics]
    assert all(m["start_barrier"]["peers"] == ["resnet", "vit"] and m["ready_at"] <= m["loop_started_at"] for m in metrics)
    together = status["result"]["concurrency"]
    assert together["concurrent"] is True and together["startSkewSeconds"] < 1.0, together
    assert metrics[0]["image"] == metrics[1]["image"] == containers[0]["image"] == status["image"]
    # the per-model status carries the results once the analysis has run
    assert {m["name"]: m["phase"] for m in status["models"]} == {"resnet": "Succeeded", "vit": "Succeeded"}
    assert all("accuracy" in m for m in status["models"])

    reasons = {e["reason"] for e in events(cluster, namespace.name, name)}
    assert {"JobsCreated", "Succeeded"} <= reasons


def test_a_non_inferiority_test_reaches_its_decision_in_status(cluster, namespace):
    """spec.analysis.hypothesis noninferiority: the analysis Job decides from the 1 - 2 alpha interval and the status
    says so in words; the decision matches the interval computed here from the predictions on the volume."""
    from abtest_evaluator.analysis import stats

    manifest = example_manifest("abtest-digits-noninferior.yaml", namespace.name)
    assert manifest["spec"]["analysis"] == {"alpha": 0.05, "hypothesis": "noninferiority", "margin": 0.1}
    apply(cluster, manifest)
    done = wait_phase(cluster, namespace.name, "digits-vit-noninferior", ("Succeeded", "Failed"))
    status = done["status"]
    assert status["phase"] == "Succeeded", status
    results = namespace.results / namespace.name / "digits-vit-noninferior" / done["metadata"]["uid"]
    correct = [
        (lambda t: t.column("pred").to_numpy() == t.column("label").to_numpy())(pq.read_table(results / m / "predictions.parquet"))
        for m in ("resnet", "vit")
    ]
    lo, hi = stats.paired_diff_ci(stats.Table.from_correct(*correct), 0.90)
    (comparison,) = status["result"]["comparisons"]
    assert status["result"]["hypothesis"] == "noninferiority" and status["result"]["margin"] == 0.1
    assert comparison["ci"] == pytest.approx([lo, hi]) and comparison["ciLevel"] == pytest.approx(0.90)
    assert comparison["decision"] == ("noninferior" if hi < 0.1 else "inconclusive")
    verb = "is non-inferior to" if hi < 0.1 else "is not shown non-inferior to"
    assert status["result"]["verdict"].startswith(f"vit {verb} resnet within 10 points")


def test_the_export_example_checks_an_onnx_export_and_an_int8_variant_in_the_cluster(cluster, namespace):
    """examples/abtest-digits-export.yaml: the PyTorch model, its ONNX export (ONNX Runtime in the CPU evaluator image)
    and its int8 variant, each a non-inferiority candidate; the files on the volume say what ran each model."""
    manifest = example_manifest("abtest-digits-export.yaml", namespace.name)
    apply(cluster, manifest)
    done = wait_phase(cluster, namespace.name, "digits-resnet-export", ("Succeeded", "Failed"))
    status = done["status"]
    assert status["phase"] == "Succeeded", status
    results = namespace.results / namespace.name / "digits-resnet-export" / done["metadata"]["uid"]
    metrics = {m: json.loads((results / m / "metrics.json").read_text()) for m in ("pytorch", "onnx", "int8")}
    assert metrics["onnx"]["runtime"]["name"] == "onnxruntime" and metrics["onnx"]["runtime"]["providers"] == ["CPUExecutionProvider"]
    assert (metrics["pytorch"]["precision"], metrics["int8"]["precision"]) == ("fp32", "int8-dynamic")
    assert {m: s["runsAs"] for m, s in status["result"]["models"].items()} == {"pytorch": "fp32", "onnx": "onnx", "int8": "int8-dynamic"}
    preds = {m: pq.read_table(results / m / "predictions.parquet").column("pred").to_pylist() for m in metrics}
    assert preds["onnx"] == preds["pytorch"]  # the export kept every prediction (tests/test_artefacts.py: to 1e-5)
    assert [(c["a"], c["b"]) for c in status["result"]["comparisons"]] == [("pytorch", "onnx"), ("pytorch", "int8")]
    assert status["result"]["hypothesis"] == "noninferiority" and status["result"]["margin"] == 0.02
    onnx = status["result"]["comparisons"][0]
    assert onnx["decision"] == ("noninferior" if onnx["ci"][1] < 0.02 else "inconclusive")


def test_pretrained_weights_come_from_the_weights_cache_with_the_hubs_offline(cluster, namespace):
    """spec.weightsCache: the vit's pretrained weights from a hub cache the test builds (never downloaded) on a claim of
    its own, mounted read-only at /weights with the hubs switched offline (the cluster reaches no hub either)."""
    from safetensors.torch import load_file

    cache = cluster.root / "weights" / namespace.name
    weights = timm_hub_cache(cache)
    read_only_claim(cluster, namespace.name, "hub-weights", cache)
    manifest = example_manifest("abtest-digits.yaml", namespace.name)
    manifest["metadata"]["name"] = "pretrained-offline"
    vit = manifest["spec"]["models"][1]
    vit.pop("checkpoint")
    vit["pretrained"] = True
    manifest["spec"]["weightsCache"] = {"persistentVolumeClaim": {"claimName": "hub-weights", "readOnly": True}}
    apply(cluster, manifest)
    done = wait_phase(cluster, namespace.name, "pretrained-offline", ("Succeeded", "Failed"))
    (vit_job,) = [j for j in jobs(cluster, namespace.name) if j["metadata"]["labels"].get(LABEL_MODEL) == "vit"
                  and j["metadata"]["labels"].get(LABEL_NAME) == "pretrained-offline"]  # fmt: skip
    log = cluster.kubectl("logs", "-n", namespace.name, f"job/{vit_job['metadata']['name']}", check=False)
    assert done["status"]["phase"] == "Succeeded", log.stdout[-2000:] + log.stderr[-500:]
    results = namespace.results / namespace.name / "pretrained-offline" / done["metadata"]["uid"]
    assert json.loads((results / "vit" / "metrics.json").read_text())["weights"] == "pretrained"
    pod = vit_job["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["HF_HUB_OFFLINE"] == "1" and env["HF_HOME"] == "/weights/huggingface"
    assert len(load_file(str(weights))) > 0


def test_three_models_get_cochran_q_and_holm(cluster, namespace):
    from statsmodels.stats.multitest import multipletests

    manifest = example_manifest("abtest-digits-3way.yaml", namespace.name)
    apply(cluster, manifest)
    status = wait_phase(cluster, namespace.name, manifest["metadata"]["name"], ("Succeeded", "Failed"))["status"]
    assert status["phase"] == "Succeeded", status
    result = status["result"]
    assert result["omnibus"]["test"] == "cochrans_q" and 0 <= result["omnibus"]["pValue"] <= 1
    raw = [c["pValue"] for c in result["comparisons"]]
    assert len(raw) == 3
    holm = multipletests(raw, method="holm")[1]
    assert [c["pValueAdjusted"] for c in result["comparisons"]] == pytest.approx([max(p, 1e-300) for p in holm], rel=1e-9)
    assert "Holm" in result["method"] and "Cochran" in result["method"]


def test_operator_killed_mid_run_resumes_without_duplicates(cluster, namespace, operator):
    manifest = example_manifest("abtest-digits.yaml", namespace.name, batchSize=8)
    manifest["spec"]["dataset"]["split"] = "train"  # 1,437 samples: long enough to kill the operator mid-run
    name = manifest["metadata"]["name"]
    apply(cluster, manifest)
    wait_phase(cluster, namespace.name, name, ("Running",), timeout=120)
    operator.crash()  # frozen, then SIGKILLed: no cleanup, no goodbye
    try:
        cluster.wait_for(
            lambda: all((j.get("status") or {}).get("succeeded") for j in jobs(cluster, namespace.name)),
            180,
            "the model Jobs to finish while the operator is down",
            interval=1,
        )
        assert get_abtest(cluster, namespace.name, name)["status"]["phase"] == "Running"  # nobody advanced it meanwhile
    finally:
        operator.start()
    status = wait_phase(cluster, namespace.name, name, ("Succeeded", "Failed"))["status"]
    assert status["phase"] == "Succeeded", status
    observed = jobs(cluster, namespace.name)
    roles = sorted(j["metadata"]["labels"]["abtest.dev/role"] for j in observed)
    assert roles == ["analysis", "model", "model"], [j["metadata"]["name"] for j in observed]
    pods = json.loads(cluster.kubectl("get", "pods", "-n", namespace.name, "-o", "json").stdout)["items"]
    assert len(pods) == 3  # one run per Job: nothing evaluated twice


def test_broken_checkpoint_fails_naming_the_model(cluster, namespace):
    manifest = example_manifest("abtest-digits.yaml", namespace.name)
    manifest["spec"]["models"][1]["checkpoint"] = "checkpoints/resnet10t-digits.pth"  # a ResNet's weights for the ViT
    name = manifest["metadata"]["name"]
    apply(cluster, manifest)
    status = wait_phase(cluster, namespace.name, name, ("Failed", "Succeeded"))["status"]
    assert status["phase"] == "Failed"
    assert status["reason"].startswith("model vit failed:") and "does not fit timm/test_vit" in status["reason"], status["reason"]
    assert {c["type"]: c["status"] for c in status["conditions"]}["Failed"] == "True"
    warnings = [e for e in events(cluster, namespace.name, name) if e["type"] == "Warning"]
    assert any("model vit failed" in e["message"] for e in warnings)
    # a bad-input exit is final: the pod failure policy fails the Job without retries, and no analysis runs
    assert not [j for j in jobs(cluster, namespace.name) if j["metadata"]["labels"]["abtest.dev/role"] == "analysis"]
    assert "kubectl describe" not in status["reason"]
    described = cluster.kubectl("describe", "abtest", name, "-n", namespace.name).stdout
    assert "model vit failed" in described


OPERATOR_REFUSALS = {
    "relative checkpoint without a models volume": (lambda s: s.pop("modelsVolume"), ["spec.models[0].checkpoint", "spec.modelsVolume"]),
    "image outside the allowlist": (
        lambda s: s.update(image="docker.io/someone/miner:1"),
        ["spec.image 'docker.io/someone/miner:1' is not allowed"],
    ),
    "hostPath volume": (
        lambda s: s["dataset"].update(volume={"hostPath": {"path": "/etc"}}),
        ["spec.dataset.volume uses hostPath, which this operator does not allow"],
    ),
}


@pytest.mark.parametrize("case", sorted(OPERATOR_REFUSALS))
def test_operator_only_rejection_marks_failed(cluster, namespace, case):
    """What only the operator can refuse (its allowlists, where files live): Failed with the reason, no Job at all."""
    mutate, expected = OPERATOR_REFUSALS[case]
    manifest = example_manifest("abtest-digits.yaml", namespace.name)
    mutate(manifest["spec"])
    name = manifest["metadata"]["name"]
    apply(cluster, manifest)
    status = wait_phase(cluster, namespace.name, name, ("Failed",), timeout=60)["status"]
    assert all(text in status["reason"] for text in expected), status["reason"]
    assert jobs(cluster, namespace.name) == []
    assert any(e["reason"] == "InvalidSpec" for e in events(cluster, namespace.name, name))


def test_deleting_the_abtest_collects_jobs_and_pods_but_keeps_results(cluster, namespace):
    manifest = example_manifest("abtest-digits.yaml", namespace.name)
    name = manifest["metadata"]["name"]
    apply(cluster, manifest)
    first = wait_phase(cluster, namespace.name, name, ("Succeeded",))
    results = namespace.results / namespace.name / name / first["metadata"]["uid"]
    verdict = (results / "result.json").read_bytes()
    cluster.kubectl("delete", "abtest", name, "-n", namespace.name, "--wait=true", "--timeout=60s")

    def collected():
        left = cluster.kubectl("get", "jobs,pods", "-n", namespace.name, "-o", "name").stdout.split()
        return not left

    cluster.wait_for(collected, 90, "garbage collection of the Jobs and Pods", interval=1)
    assert (results / "result.json").exists() and (results / "resnet" / "predictions.parquet").exists()
    # the shared results claim is not owned by the ABTest: it stays too
    assert cluster.kubectl("get", "pvc", "abtest-results", "-n", namespace.name, check=False).returncode == 0
    # the same name again is another ABTest: its own folder, and the first verdict is never rewritten
    apply(cluster, manifest)
    second = wait_phase(cluster, namespace.name, name, ("Succeeded", "Failed"))
    assert second["status"]["phase"] == "Succeeded" and second["metadata"]["uid"] != first["metadata"]["uid"]
    assert (namespace.results / namespace.name / name / second["metadata"]["uid"] / "result.json").exists()
    assert (results / "result.json").read_bytes() == verdict


def test_default_device_requests_a_gpu_and_falls_back_to_cpu(cluster, namespace):
    """device: auto asks the scheduler for nvidia.com/gpu (the test node advertises 8); without a CUDA
    device in the process the evaluator falls back to the CPU and records it."""
    manifest = example_manifest("abtest-digits.yaml", namespace.name)
    manifest["spec"]["device"] = "auto"
    name = manifest["metadata"]["name"]
    apply(cluster, manifest)
    done = wait_phase(cluster, namespace.name, name, ("Succeeded", "Failed"))
    status = done["status"]
    assert status["phase"] == "Succeeded", status
    pods = json.loads(cluster.kubectl("get", "pods", "-n", namespace.name, "-l", "abtest.dev/role=model", "-o", "json").stdout)["items"]
    assert {p["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] for p in pods} == {"1"}
    # the chart's default requests (set small for this 2-core node) and the GPU taint's toleration
    requests = [p["spec"]["containers"][0]["resources"]["requests"] for p in pods]  # (the API server adds the GPU request)
    assert all(r["cpu"] == "100m" and r["memory"] == "256Mi" for r in requests), requests
    assert all({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in p["spec"]["tolerations"] for p in pods)
    metrics = json.loads((namespace.results / namespace.name / name / done["metadata"]["uid"] / "resnet" / "metrics.json").read_text())
    assert metrics["device"]["type"] == "cpu" and metrics["gpu_memory"] is None


def test_models_the_node_cannot_place_together_fail_the_abtest_naming_the_model_and_the_cause(cluster, namespace):
    """Each model asks for all 8 GPUs the test node advertises: one model's pod runs and waits at the start barrier, the
    other's is unschedulable. The ABTest says so at once (AllModelsPlaced False, a Warning Event) and fails after
    spec.startTimeoutSeconds instead of succeeding with one model's timed loop after the other's, or holding the GPUs."""
    manifest = example_manifest("abtest-digits.yaml", namespace.name, startTimeoutSeconds=30, stallTimeoutSeconds=600)
    manifest["spec"].update(device="auto", gpusPerModel=8)
    name = manifest["metadata"]["name"]
    apply(cluster, manifest)

    def apart():
        conditions = (get_abtest(cluster, namespace.name, name).get("status") or {}).get("conditions") or []
        return next((c for c in conditions if c["type"] == "AllModelsPlaced" and c["status"] == "False"), None)

    condition = cluster.wait_for(apart, 90, "AllModelsPlaced False")
    placed, unplaced = ("resnet", "vit") if condition["message"].startswith("model vit") else ("vit", "resnet")
    assert condition["message"].startswith(
        f"model {unplaced} cannot be placed while {placed} wait(s) at the start barrier: unschedulable: "
    )
    assert "Insufficient nvidia.com/gpu" in condition["message"], condition
    assert any(e["reason"] == "ModelUnschedulable" and e["type"] == "Warning" for e in events(cluster, namespace.name, name))
    status = wait_phase(cluster, namespace.name, name, ("Succeeded", "Failed"), timeout=180)["status"]
    assert status["phase"] == "Failed", status
    # whichever gave up first (the operator's timer or the waiting evaluator's), the reason names the cause
    # (the evaluator's frees its GPUs as it fails, so the peer may be placed a moment later: the condition still named it)
    named = (f"model {unplaced} could not be placed", f"model {unplaced} cannot be placed while {placed} wait")
    assert any(n in status["reason"] for n in named) and "Insufficient nvidia.com/gpu" in status["reason"], status["reason"]

    # the GPUs are given back: no model pod is left running or pending
    def holding():
        pods = json.loads(cluster.kubectl("get", "pods", "-n", namespace.name, "-l", "abtest.dev/role=model", "-o", "json").stdout)["items"]
        return [p["metadata"]["name"] for p in pods if p["status"].get("phase") in ("Pending", "Running")]

    cluster.wait_for(lambda: not holding(), 60, "the model pods to go")
    assert not any(j["metadata"]["labels"]["abtest.dev/role"] == "analysis" for j in jobs(cluster, namespace.name))


def test_finished_abtest_stays_finished_when_its_jobs_are_deleted(cluster, namespace, operator):
    """Jobs removed by hand (or by ttlSecondsAfterFinished) and an operator restart do not re-run a finished test."""
    manifest = example_manifest("abtest-digits.yaml", namespace.name)
    name = manifest["metadata"]["name"]
    apply(cluster, manifest)
    finished = wait_phase(cluster, namespace.name, name, ("Succeeded",))
    before = finished["status"]
    result_file = namespace.results / namespace.name / name / finished["metadata"]["uid"] / "result.json"
    written = result_file.stat().st_mtime_ns
    cluster.kubectl("delete", "jobs", "--all", "-n", namespace.name, "--wait=true")
    operator.kill()  # and the resume pass after a restart
    cluster.wait_for(lambda: "abtest_abtests" in operator.metrics(), 60, "the restarted operator")
    import time

    time.sleep(10)  # several event and resume passes
    assert jobs(cluster, namespace.name) == []
    after = get_abtest(cluster, namespace.name, name)["status"]
    assert after["phase"] == "Succeeded" and after["result"] == before["result"]
    assert result_file.stat().st_mtime_ns == written


def test_job_name_collision_across_abtests_fails_the_newcomer_only(cluster, namespace):
    """ABTest "coll-b" with model "c" and ABTest "coll" with model "b-c" both need the Job "coll-b-c"."""
    first = example_manifest("abtest-digits.yaml", namespace.name)
    first["metadata"]["name"] = "coll-b"
    first["spec"]["models"][0]["name"] = "c"
    apply(cluster, first)
    cluster.wait_for(lambda: any(j["metadata"]["name"] == "coll-b-c" for j in jobs(cluster, namespace.name)), 60, "the Job coll-b-c")
    second = example_manifest("abtest-digits.yaml", namespace.name)
    second["metadata"]["name"] = "coll"
    second["spec"]["models"][0]["name"] = "b-c"
    apply(cluster, second)
    status = wait_phase(cluster, namespace.name, "coll", ("Failed", "Succeeded"), timeout=60)["status"]
    assert status["phase"] == "Failed"
    assert "coll-b-c already exists and belongs to something else" in status["reason"], status["reason"]
    assert any(e["reason"] == "NameConflict" for e in events(cluster, namespace.name, "coll"))
    assert wait_phase(cluster, namespace.name, "coll-b", ("Succeeded", "Failed"))["status"]["phase"] == "Succeeded"
    owners = {j["metadata"]["name"]: j["metadata"]["ownerReferences"][0]["name"] for j in jobs(cluster, namespace.name)}
    assert owners["coll-b-c"] == "coll-b" and "coll-analysis" not in owners


STALLS = {
    "unschedulable": ({"nodeSelector": {"abtest.dev/pool": "nowhere"}}, "unschedulable: 0/1 nodes are available"),
    "image": ({"image": "localhost/abtest/missing:0"}, "ErrImageNeverPull"),
    "quota": ({}, "exceeded quota: no-pods"),  # a ResourceQuota of zero pods in the namespace: the Job controller is refused
}


@pytest.mark.parametrize("case", sorted(STALLS))
def test_a_pod_that_cannot_start_is_stalled_then_failed(cluster, namespace, case):
    """No silent stalls: a Stalled condition and a Warning Event at once, Failed after spec.stallTimeoutSeconds,
    the reason naming the model and the cause, and the unfinished Jobs suspended."""
    spec_update, cause = STALLS[case]
    if case == "quota":
        cluster.kubectl("create", "quota", "no-pods", "--hard=pods=0", "-n", namespace.name)
    manifest = example_manifest("abtest-digits.yaml", namespace.name, stallTimeoutSeconds=20, **spec_update)
    name = manifest["metadata"]["name"]
    apply(cluster, manifest)

    def stalled():
        conditions = {c["type"]: c for c in (get_abtest(cluster, namespace.name, name).get("status") or {}).get("conditions", [])}
        return conditions.get("Stalled", {}).get("status") == "True" and conditions["Stalled"]

    # The message follows the current cause: a claim still being bound may be named first, then the lasting one.
    condition = cluster.wait_for(
        lambda: (c := stalled()) and cause in c["message"] and c, 60, f"a Stalled condition naming {cause}", interval=1
    )
    assert condition["reason"] == "PodCannotStart", condition
    status = wait_phase(cluster, namespace.name, name, ("Failed", "Succeeded"), timeout=90)["status"]
    assert status["phase"] == "Failed"
    assert status["reason"].startswith("model ") and " stalled for " in status["reason"] and cause in status["reason"], status["reason"]
    assert any(e["reason"] == "Stalled" and e["type"] == "Warning" for e in events(cluster, namespace.name, name))
    model_jobs = [j for j in jobs(cluster, namespace.name) if j["metadata"]["labels"]["abtest.dev/role"] == "model"]
    assert model_jobs and all(j["spec"].get("suspend") for j in model_jobs)


def running_model_pod(cluster, namespace: str, model: str) -> dict:
    def find():
        pods = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-l", f"abtest.dev/model={model}", "-o", "json").stdout)["items"]
        running = [p for p in pods if p["status"].get("phase") == "Running"]
        return running[0] if running else None

    return cluster.wait_for(find, 120, f"a running pod of model {model}", interval=0.5)


def test_an_evicted_model_pod_is_replaced_and_not_counted_as_a_failure(cluster, namespace):
    """An eviction (drain, preemption) is not the model's fault: the Job's pod failure policy ignores it, a new pod
    evaluates again, and the ABTest ends with one set of Jobs and one verdict."""
    manifest = example_manifest("abtest-digits.yaml", namespace.name, batchSize=8)
    manifest["spec"]["dataset"]["split"] = "train"  # long enough to evict mid-run
    name = manifest["metadata"]["name"]
    apply(cluster, manifest)
    pod = running_model_pod(cluster, namespace.name, "vit")["metadata"]["name"]
    eviction = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": pod, "namespace": namespace.name}}
    cluster.kubectl("create", "--raw", f"/api/v1/namespaces/{namespace.name}/pods/{pod}/eviction", "-f", "-", input=json.dumps(eviction))
    status = wait_phase(cluster, namespace.name, name, ("Succeeded", "Failed"))["status"]
    assert status["phase"] == "Succeeded", status
    observed = jobs(cluster, namespace.name)
    assert sorted(j["metadata"]["labels"]["abtest.dev/role"] for j in observed) == ["analysis", "model", "model"]
    vit = next(j for j in observed if j["metadata"]["labels"].get("abtest.dev/model") == "vit")
    # backoffLimit is 0: had the eviction counted as a failure, the Job (and the ABTest) would have failed
    assert vit["spec"]["backoffLimit"] == 0 and vit["status"].get("succeeded") == 1


def test_a_model_job_deleted_mid_run_is_recreated_once(cluster, namespace):
    manifest = example_manifest("abtest-digits.yaml", namespace.name, batchSize=8)
    manifest["spec"]["dataset"]["split"] = "train"
    name = manifest["metadata"]["name"]
    apply(cluster, manifest)
    running_model_pod(cluster, namespace.name, "resnet")
    job = f"{name}-resnet"
    first_uid = next(j["metadata"]["uid"] for j in jobs(cluster, namespace.name) if j["metadata"]["name"] == job)
    cluster.kubectl("delete", "job", job, "-n", namespace.name, "--cascade=foreground", "--wait=true", "--timeout=60s")
    status = wait_phase(cluster, namespace.name, name, ("Succeeded", "Failed"))["status"]
    assert status["phase"] == "Succeeded", status
    observed = jobs(cluster, namespace.name)
    assert sorted(j["metadata"]["name"] for j in observed) == sorted([f"{name}-resnet", f"{name}-vit", f"{name}-analysis"])
    assert next(j["metadata"]["uid"] for j in observed if j["metadata"]["name"] == job) != first_uid  # re-created, once
    created = [e["message"] for e in events(cluster, namespace.name, name) if e["reason"] == "JobsCreated"]
    assert sum(job in message.split("created ", 1)[1].split(", ") for message in created) == 2, created


def test_api_server_down_for_10_seconds_mid_run_changes_nothing(cluster, namespace, operator):
    """Every watch and client loses the API server for 10 s while the models run: the operator reconnects, derives the
    same status and creates nothing twice; the ABTest ends with one set of Jobs, one evaluation per model, one verdict."""
    manifest = example_manifest("abtest-digits.yaml", namespace.name, batchSize=8)
    manifest["spec"]["dataset"]["split"] = "train"
    name = manifest["metadata"]["name"]
    apply(cluster, manifest)
    wait_phase(cluster, namespace.name, name, ("Running",), timeout=120)
    cluster.restart_apiserver(down=10)
    status = wait_phase(cluster, namespace.name, name, ("Succeeded", "Failed"))["status"]
    assert status["phase"] == "Succeeded", status
    assert sorted(j["metadata"]["labels"]["abtest.dev/role"] for j in jobs(cluster, namespace.name)) == ["analysis", "model", "model"]
    pods = json.loads(cluster.kubectl("get", "pods", "-n", namespace.name, "-o", "json").stdout)["items"]
    assert len(pods) == 3  # one run per Job: nothing evaluated twice
    assert operator._healthy()  # the same operator process, reconnected


def test_operator_killed_between_its_job_creates_resumes_without_duplicates(cluster, namespace, operator):
    """The crash after the first Job create and before the second: a quota of one Job makes the second create fail, the
    operator is SIGKILLed in that state, the quota goes; the restarted operator creates only what is missing."""
    cluster.kubectl("create", "quota", "one-job", "--hard=count/jobs.batch=1", "-n", namespace.name)
    cluster.wait_for(
        lambda: cluster.kubectl("get", "quota", "one-job", "-n", namespace.name, "-o", "jsonpath={.status.hard}").stdout.strip(),
        60,
        "the quota controller to take up the quota",
    )
    manifest = example_manifest("abtest-digits.yaml", namespace.name)
    name = manifest["metadata"]["name"]
    apply(cluster, manifest)
    cluster.wait_for(lambda: len(jobs(cluster, namespace.name)) == 1, 60, "the first Job")
    operator.kill()  # one Job created, the second refused: the operator dies in between
    cluster.kubectl("delete", "quota", "one-job", "-n", namespace.name)
    status = wait_phase(cluster, namespace.name, name, ("Succeeded", "Failed"))["status"]
    assert status["phase"] == "Succeeded", status
    names = sorted(j["metadata"]["name"] for j in jobs(cluster, namespace.name))
    assert names == sorted([f"{name}-resnet", f"{name}-vit", f"{name}-analysis"])
    pods = json.loads(cluster.kubectl("get", "pods", "-n", namespace.name, "-o", "json").stdout)["items"]
    assert len(pods) == 3  # one run per Job


def test_operator_killed_during_the_analysis_resumes_without_a_second_analysis(cluster, namespace, operator):
    manifest = example_manifest("abtest-digits.yaml", namespace.name)
    name = manifest["metadata"]["name"]
    apply(cluster, manifest)

    def analysis_running():
        job = next((j for j in jobs(cluster, namespace.name) if j["metadata"]["name"] == f"{name}-analysis"), None)
        return job is not None and not (job.get("status") or {}).get("succeeded")

    cluster.wait_for(analysis_running, 240, "the analysis Job to be running", interval=0.25)
    operator.kill()
    status = wait_phase(cluster, namespace.name, name, ("Succeeded", "Failed"))["status"]
    assert status["phase"] == "Succeeded" and status["result"]["winner"] in ("resnet", "vit", "none"), status
    analysis_pods = cluster.kubectl("get", "pods", "-n", namespace.name, "-l", "abtest.dev/role=analysis", "-o", "name").stdout.split()
    assert len(analysis_pods) == 1 and len(jobs(cluster, namespace.name)) == 3  # one analysis, nothing created twice


def test_two_models_in_three_shards_each_equal_the_unsharded_run(cluster, namespace):
    """spec.shardsPerModel: each model is one Indexed Job of 3 pods; the analysis merges the parts, and the merged
    predictions and verdict equal the same ABTest's without shards."""
    from abtest_evaluator import results as result_files

    done = {}
    for name, shards in (("whole", 1), ("sharded", 3)):
        manifest = example_manifest("abtest-digits.yaml", namespace.name, shardsPerModel=shards)
        manifest["metadata"]["name"] = name
        apply(cluster, manifest)
    for name in ("whole", "sharded"):
        obj = wait_phase(cluster, namespace.name, name, ("Succeeded", "Failed"), timeout=300)
        assert obj["status"]["phase"] == "Succeeded", obj["status"]
        done[name] = (obj, namespace.results / namespace.name / name / obj["metadata"]["uid"])
    sharded_jobs = [j for j in jobs(cluster, namespace.name) if j["metadata"]["labels"]["abtest.dev/name"] == "sharded"]
    model_jobs = [j for j in sharded_jobs if j["metadata"]["labels"]["abtest.dev/role"] == "model"]
    assert len(model_jobs) == 2 and all(j["spec"]["completionMode"] == "Indexed" and j["status"]["succeeded"] == 3 for j in model_jobs)
    columns = ("index", "label", "pred", "confidence", "top5", "sample_id")
    for model in ("resnet", "vit"):
        shards = sorted(p.name for p in (done["sharded"][1] / model).glob("predictions-*"))
        assert shards == [f"predictions-0000{i}-of-00003.parquet" for i in range(3)]
        merged = result_files.read_predictions(done["sharded"][1] / model, columns=columns)
        assert merged.equals(pq.read_table(done["whole"][1] / model / "predictions.parquet"))
    whole, sharded = (done[n][0]["status"]["result"] for n in ("whole", "sharded"))
    assert [(c["n10"], c["n01"], c["pValue"]) for c in sharded["comparisons"]] == [
        (c["n10"], c["n01"], c["pValue"]) for c in whole["comparisons"]
    ]
    assert sharded["models"]["resnet"]["accuracy"] == whole["models"]["resnet"]["accuracy"] and sharded["n"] == whole["n"]


def test_a_corrupt_image_fails_the_abtest_naming_the_file_and_skip_succeeds_with_the_count(cluster, namespace, models_dir):
    """An imagefolder on a dataset volume with one truncated JPEG among good PNGs: with the default the ABTest fails
    at once (exit 2, not retried) quoting the file; with onUnreadable: skip both models leave it out and succeed."""
    import io

    import numpy as np
    from PIL import Image

    folder = models_dir / f"data-{namespace.name}"  # the models claim's host folder, mounted again as the dataset
    rng = np.random.default_rng(0)
    for cls in range(3):
        (folder / str(cls)).mkdir(parents=True, exist_ok=True)
        for i in range(8):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(folder / str(cls) / f"{i}.png")
    broken = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(broken, "JPEG")
    (folder / "1" / "cut.jpg").write_bytes(broken.getvalue()[:300])
    dataset = {
        "name": "imagefolder",
        "path": f"/data/{folder.name}",
        "volume": {"persistentVolumeClaim": {"claimName": "abtest-models", "readOnly": True}},
    }
    names = {}
    for policy in ("fail", "skip"):
        manifest = example_manifest("abtest-digits.yaml", namespace.name, dataset={**dataset, "onUnreadable": policy})
        manifest["metadata"]["name"] = names[policy] = f"corrupt-{policy}"
        apply(cluster, manifest)
    failed = wait_phase(cluster, namespace.name, names["fail"], ("Failed", "Succeeded"))["status"]
    assert failed["phase"] == "Failed"
    assert "sample 1/cut.jpg (/data/" in failed["reason"] and "cannot be decoded" in failed["reason"], failed["reason"]
    model_jobs = [j for j in jobs(cluster, namespace.name) if j["metadata"]["name"].startswith(names["fail"])]
    assert all((j["status"].get("failed") or 0) <= 1 for j in model_jobs)  # the bad-input exit is not retried
    skipped = wait_phase(cluster, namespace.name, names["skip"], ("Failed", "Succeeded"))["status"]
    assert skipped["phase"] == "Succeeded", skipped.get("reason")
    assert skipped["result"]["skipped"] == 1 and skipped["result"]["n"] == 24
