"""Control-plane units without a cluster: manifests (golden), typed models, security, status derivation, schema."""

import copy
import dataclasses
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
import yaml
from kubernetes import client

from abtest_api.crd import load_crd
from abtest_api.errors import UserError
from abtest_operator import jobs, manifests, names, policy, status
from abtest_operator.settings import OperatorConfig, config_from_env
from abtest_operator.spec import load_manifest, parse_abtest, validate_manifest
from helpers import INVALID_SPECS, ROOT

GOLDEN = ROOT / "tests" / "golden"
CFG = OperatorConfig(image="registry.example/abtest/evaluator:test")
UID = "11111111-2222-3333-4444-555555555555"


def example(name="abtest-digits.yaml", namespace="team-a") -> dict:
    manifest = load_manifest(ROOT / "examples" / name)
    manifest["metadata"].update(namespace=namespace, uid=UID)
    return manifest


@pytest.mark.parametrize("name", ["abtest-digits.yaml", "abtest-digits-3way.yaml"])
def test_rendered_objects_match_golden_yaml(name):
    rendered = yaml.safe_dump_all(manifests.render_all(parse_abtest(example(name)), CFG), sort_keys=False)
    golden = GOLDEN / name.replace(".yaml", ".rendered.yaml")
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(rendered)
    assert rendered == golden.read_text(), f"rendering changed; review and run UPDATE_GOLDEN=1 pytest {__file__}"


def test_rendered_objects_parse_as_kubernetes_models_without_loss():
    api = client.ApiClient()
    for obj in manifests.render_all(parse_abtest(example()), CFG):
        model = getattr(client, "V1" + obj["kind"]).from_dict(obj)
        assert api.sanitize_for_serialization(model) == obj, f"{obj['kind']} has fields the API does not know"


def _pod_specs(objs):
    return [o["spec"]["template"]["spec"] for o in objs if o["kind"] == "Job"]


def test_every_pod_is_restricted():
    objs = manifests.render_all(parse_abtest(example()), CFG)
    for pod in _pod_specs(objs):
        assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
            assert sc["readOnlyRootFilesystem"] and sc["runAsNonRoot"] and sc["runAsUser"] != 0
            assert {"/tmp", "/results"} <= {m["mountPath"] for m in c["volumeMounts"]}
        assert not any("hostPath" in v for v in pod["volumes"])


def test_model_jobs_share_everything_but_the_model():
    spec = parse_abtest(example("abtest-digits-3way.yaml"))
    jobs = manifests.model_jobs(spec, CFG)
    assert [j["metadata"]["name"] for j in jobs] == ["digits-3way-resnet", "digits-3way-vit", "digits-3way-shufflenet"]

    def shared(job):
        c = job["spec"]["template"]["spec"]["containers"][0]
        args = c["args"]
        flags = dict(zip(args[1::2], args[2::2]))
        return c["image"], flags["--seed"], flags["--dataset"], flags["--split"], flags["--batch-size"], c["resources"]

    assert len({repr(shared(j)) for j in jobs}) == 1
    for job in jobs:
        c = job["spec"]["template"]["spec"]["containers"][0]
        assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert job["metadata"]["ownerReferences"][0]["uid"] == UID
        assert job["metadata"]["labels"][names.LABEL_NAME] == "digits-3way"
        assert job["spec"]["template"]["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
        assert c["args"][c["args"].index("--checkpoint") + 1].startswith("/models/checkpoints/")


def test_cpu_device_requests_no_gpu_and_parity_fields_apply_to_all():
    manifest = example()
    manifest["spec"].update(
        device="cpu",
        nodeSelector={"pool": "a100"},
        tolerations=[{"key": "gpu", "operator": "Exists"}],
        activeDeadlineSeconds=600,
        resources={"limits": {"cpu": 2, "memory": "4Gi"}},
    )
    jobs = manifests.model_jobs(parse_abtest(manifest), CFG)
    for job in jobs:
        pod = job["spec"]["template"]["spec"]
        assert "nvidia.com/gpu" not in pod["containers"][0]["resources"].get("limits", {})
        assert pod["containers"][0]["resources"]["limits"]["cpu"] == "2"
        assert pod["nodeSelector"] == {"pool": "a100"} and pod["tolerations"][0]["key"] == "gpu"
        assert "kueue.x-k8s.io/queue-name" not in job["metadata"]["labels"] and "suspend" not in job["spec"]
        assert job["spec"]["activeDeadlineSeconds"] == 600


def test_long_names_stay_valid_and_deterministic():
    name = names.object_name("a" * 50, "model-with-a-long-name")
    assert len(name) <= 63 and name == names.object_name("a" * 50, "model-with-a-long-name")
    assert name != names.object_name("a" * 50, "model-with-a-long-namf")


def test_analysis_rbac_is_scoped_to_one_abtest_status():
    spec = parse_abtest(example())
    sa, role, binding = manifests.build_analysis_rbac(spec)
    assert role["rules"] == [
        {"apiGroups": ["abtest.dev"], "resources": ["abtests/status"], "resourceNames": [spec.name], "verbs": ["get", "patch"]}
    ]
    job = manifests.build_analysis_job(spec, CFG)
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == sa["metadata"]["name"] == binding["subjects"][0]["name"]
    assert job["spec"]["template"]["spec"]["containers"][0]["args"][:2] == ["analyze", f"/results/team-a/digits-resnet-vs-vit/{UID}"]
    assert "--abtest" in job["spec"]["template"]["spec"]["containers"][0]["args"]


def test_results_claim_is_shared_and_not_owned():
    spec = parse_abtest(example())
    claim = manifests.build_results_claim(spec, CFG)
    assert claim["metadata"]["name"] == "abtest-results" and "ownerReferences" not in claim  # results outlive the ABTest
    manifest = example()
    manifest["spec"]["results"] = {"claimName": "mine"}
    assert manifests.build_results_claim(parse_abtest(manifest), CFG) is None


def test_render_cli_prints_the_jobs():
    proc = subprocess.run(
        [sys.executable, "-m", "abtest_operator.cli", "render", str(ROOT / "examples" / "abtest-digits.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    kinds = [d["kind"] for d in yaml.safe_load_all(proc.stdout)]
    assert kinds == ["PersistentVolumeClaim", "Job", "Job", "ServiceAccount", "Role", "RoleBinding", "Job"]


# --- status derivation: observed Job states -> phase and conditions ---------------------------

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def job(state: str, reason="", message="") -> jobs.JobState:
    return jobs.JobState(jobs.JobPhase(state), reason, message, start="2026-01-01T00:00:00Z" if state != "Missing" else None)


@pytest.mark.parametrize(
    "a, b, analysis, phase, reason",
    [
        ("Missing", "Missing", "Missing", "Pending", ""),
        ("Pending", "Missing", "Missing", "Pending", ""),
        ("Running", "Pending", "Missing", "Running", ""),
        ("Succeeded", "Running", "Missing", "Running", ""),
        ("Succeeded", "Succeeded", "Missing", "Analyzing", ""),
        ("Succeeded", "Succeeded", "Running", "Analyzing", ""),
        ("Succeeded", "Succeeded", "Succeeded", "Succeeded", ""),
        ("Failed", "Running", "Missing", "Failed", "model resnet failed: BackoffLimitExceeded: checkpoint broken"),
        ("Succeeded", "Succeeded", "Failed", "Failed", "analysis failed: BackoffLimitExceeded: checkpoint broken"),
    ],
)
def test_status_table(a, b, analysis, phase, reason):
    spec = parse_abtest(example())
    states = {"resnet": job(a, "BackoffLimitExceeded", "checkpoint broken"), "vit": job(b)}
    st = status.derive_status(spec, 1, states, job(analysis, "BackoffLimitExceeded", "checkpoint broken"), now=NOW)
    assert st["phase"] == phase and st["reason"] == reason
    conds = {c["type"]: c for c in st["conditions"]}
    assert conds["Ready"]["status"] == str(phase == "Succeeded")
    assert conds["Failed"]["status"] == str(phase == "Failed")
    assert conds["ModelsComplete"]["status"] == (
        "True"
        if phase in ("Analyzing", "Succeeded") or (phase == "Failed" and a == "Succeeded")
        else "False"
        if a == "Failed"
        else "Unknown"
    )
    assert [m["phase"] for m in st["models"]] == [a, b]
    assert ("completionTime" in st) == (phase in ("Succeeded", "Failed"))
    make_models, make_analysis = status.wanted_objects(spec, phase)
    assert make_models == (phase in ("Pending", "Running")) and make_analysis == (phase == "Analyzing")


def test_condition_times_only_move_on_transitions():
    spec = parse_abtest(example())
    first = status.derive_status(spec, 1, {"resnet": job("Running"), "vit": job("Running")}, job("Missing"), now=NOW)
    later = datetime(2026, 1, 2, tzinfo=UTC)
    again = status.derive_status(spec, 1, {"resnet": job("Running"), "vit": job("Succeeded")}, job("Missing"), previous=first, now=later)
    ready = {c["type"]: c for c in again["conditions"]}["Ready"]
    assert ready["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    done = status.derive_status(spec, 1, {"resnet": job("Succeeded"), "vit": job("Succeeded")}, job("Succeeded"), previous=again, now=later)
    assert {c["type"]: c for c in done["conditions"]}["Ready"]["lastTransitionTime"] == "2026-01-02T00:00:00Z"


def test_results_from_the_analysis_flow_into_models():
    spec = parse_abtest(example())
    previous = {"result": {"models": {"resnet": {"accuracy": 0.98, "throughput": 1000.0}}}}
    st = status.derive_status(spec, 1, {"resnet": job("Succeeded"), "vit": job("Succeeded")}, job("Succeeded"), previous=previous, now=NOW)
    assert st["models"][0]["accuracy"] == 0.98 and "accuracy" not in st["models"][1]


def test_job_state_reads_job_conditions():
    assert jobs.job_state(None).phase == "Missing"
    assert jobs.job_state({"status": {}}).phase == "Pending"
    assert jobs.job_state({"status": {"active": 1, "startTime": "t"}}).phase == "Running"
    done = jobs.job_state({"status": {"conditions": [{"type": "Complete", "status": "True"}], "completionTime": "t2"}})
    assert done.phase == "Succeeded" and done.completion == "t2"
    failed = jobs.job_state(
        {"status": {"conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded", "message": "too long"}]}}
    )
    assert (failed.phase, failed.reason, failed.message) == ("Failed", "DeadlineExceeded", "too long")


# --- the CRD schema: valid and invalid manifests (locally; the API server test is e2e) ---------


def test_crd_basics():
    crd = load_crd()
    assert crd["spec"]["group"] == "abtest.dev" and crd["spec"]["names"]["shortNames"] == ["abt"]
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"] if "priority" not in c] == ["Phase", "Winner", "P-Value", "Age"]


def _described(node, path="spec"):
    """Every property of the spec has a description, so `kubectl explain` teaches the API."""
    missing = []
    for key, sub in (node.get("properties") or {}).items():
        if not sub.get("description"):
            missing.append(f"{path}.{key}")
        missing += _described(sub, f"{path}.{key}")
    if "items" in node:
        missing += _described(node["items"], f"{path}[]")
    return missing


def test_every_spec_field_is_described_and_bounded():
    spec = load_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert _described(spec) == []

    def unbounded(node, path="spec"):
        out = []
        if node.get("type") == "string" and "enum" not in node and "maxLength" not in node:
            out.append(path)
        if node.get("type") == "array" and "maxItems" not in node:
            out.append(path)
        for key, sub in (node.get("properties") or {}).items():
            out += unbounded(sub, f"{path}.{key}")
        return out

    assert unbounded(spec) == []


LOCAL_MESSAGES = {
    "no models": "models",
    "one model": "spec.models",
    "17 models": "spec.models",
    "duplicate names": "model names must be unique",
    "model name": "spec.models[0].name",
    "alpha 1.5": "spec.analysis.alpha",
    "alpha 0": "spec.analysis.alpha",
    "negative batch": "spec.batchSize",
    "pretrained and checkpoint": "either pretrained or checkpoint",
    "unknown device": "spec.device",
    "unknown dataset": "spec.dataset.name",
    "dataset without path": "spec.dataset.path is required",
    "architecture": "spec.models[0].architecture",
    "gpus on cpu": "gpusPerModel must be 0",
    "unknown field": "batchsize",
    "negative deadline": "spec.activeDeadlineSeconds",
    "mean/std": "mean and std",
    "reserved model name": "spec.models[1].name 'analysis' is reserved",
    "noninferiority without margin": "spec.analysis.margin (accuracy as a fraction, e.g. 0.01 = 1 point) is required",
    "margin with superiority": "and not allowed with superiority",
    "margin 0.5": "spec.analysis.margin",
    "unknown hypothesis": "spec.analysis.hypothesis",
    "one look": "spec.analysis.sequential.looks",
    "unknown spending": "spec.analysis.sequential.spending",
    "sequential non-inferiority": "spec.analysis.sequential decides superiority only",
    "sharded sequential": "spec.shardsPerModel above 1 cannot be combined with spec.analysis.sequential",
    "65 shards": "spec.shardsPerModel",
    "9 queued models": "spec.queueName admits the models as one Kueue workload, which holds at most 8 pod sets",
    "artefact without file": "spec.models[0].checkpoint is required for an artefact",
    "artefact without preprocessing": "spec.models[0]: an artefact (torchscript, export, onnx) has no pretrained config",
    "artefact precision": "spec.models[0].precision applies to timm/torchvision models",
    "int8 off the cpu": "int8-dynamic runs on the CPU only; set spec.device to cpu",
    "unknown precision": "spec.models[0].precision",
}


def test_a_queued_model_whose_jobset_job_name_is_too_long_is_refused_naming_the_field():
    manifest = example()
    manifest["metadata"]["name"] = "n" * 50
    manifest["spec"].update(queueName="team-gpus")
    manifest["spec"]["models"][1]["name"] = "a-rather-long-model-name"
    spec = parse_abtest(manifest)
    with pytest.raises(UserError, match=r"spec.models\[1\].name 'a-rather-long-model-name': with spec.queueName its Job is the JobSet's"):
        policy.check(spec, CFG)
    policy.check(parse_abtest(example()), CFG)


def test_long_names_are_rejected_locally():
    manifest = example()
    manifest["metadata"]["name"] = "n" * 64
    with pytest.raises(UserError, match="metadata.name must be at most 63 characters"):
        validate_manifest(manifest)


@pytest.mark.parametrize("case", sorted(INVALID_SPECS))
def test_invalid_manifests_name_the_field(case):
    manifest = example()
    INVALID_SPECS[case](manifest["spec"])
    field = LOCAL_MESSAGES[case]
    with pytest.raises(UserError) as err:
        validate_manifest(manifest)
    assert field in str(err.value) and "\n" not in str(err.value)


def test_defaults_are_applied():
    manifest = example()
    for key in ("seed", "batchSize", "analysis"):
        manifest["spec"].pop(key, None)
    spec = validate_manifest(manifest)["spec"]
    assert (spec["seed"], spec["batchSize"], spec["analysis"]["alpha"], spec["analysis"]["test"], spec["dataset"]["split"]) == (
        42,
        64,
        0.05,
        "auto",
        "test",
    )
    assert copy.deepcopy(spec) == validate_manifest({**manifest, "spec": spec})["spec"]  # idempotent


def test_terminal_phases_latch():
    from abtest_operator.status import is_terminal

    assert is_terminal({"phase": "Succeeded"}) and is_terminal({"phase": "Failed", "reason": "x"})
    assert not any(is_terminal(s) for s in (None, {}, {"phase": "Pending"}, {"phase": "Running"}, {"phase": "Analyzing"}))


def test_already_exists_counts_as_created_only_for_our_own_objects():
    from types import SimpleNamespace

    from kubernetes.client.exceptions import ApiException

    from abtest_api.errors import NameConflict
    from abtest_operator.reconcile import create_if_missing

    def exists(namespace, body, **_):
        raise ApiException(status=409, reason="AlreadyExists")

    def created(namespace, body):  # the API server's answer, as a dict
        return json.loads(json.dumps(body))

    def read_owned_by(uid):
        return lambda name, namespace: SimpleNamespace(metadata=SimpleNamespace(owner_references=[SimpleNamespace(uid=uid)]))

    job = {"kind": "Job", "metadata": {"name": "a-b-c", "ownerReferences": [{"uid": "mine"}]}}
    assert create_if_missing(created, "ns", job, read_owned_by("mine")) == job
    assert create_if_missing(exists, "ns", job, read_owned_by("mine")) is None
    with pytest.raises(NameConflict, match="Job ns/a-b-c already exists and belongs to something else"):
        create_if_missing(exists, "ns", job, read_owned_by("theirs"))


# --- stalls: pods that can never start ----------------------------------------------------------


@pytest.mark.parametrize(
    "pod, cause",
    [
        (
            {
                "status": {
                    "conditions": [
                        {
                            "type": "PodScheduled",
                            "status": "False",
                            "reason": "Unschedulable",
                            "message": "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector.",
                        }
                    ]
                }
            },
            "unschedulable: 0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector.",
        ),
        (
            {"status": {"containerStatuses": [{"state": {"waiting": {"reason": "ErrImageNeverPull", "message": "image x not present"}}}]}},
            "ErrImageNeverPull: image x not present",
        ),
        (
            {"status": {"containerStatuses": [{"state": {"waiting": {"reason": "ImagePullBackOff"}}}]}},
            "ImagePullBackOff: the container cannot start",
        ),
        ({"status": {"containerStatuses": [{"state": {"waiting": {"reason": "ContainerCreating"}}}]}}, ""),  # still starting
        ({"status": {"conditions": [{"type": "PodScheduled", "status": "True"}], "containerStatuses": [{"state": {"running": {}}}]}}, ""),
        ({}, ""),
    ],
)
def test_pod_stall_names_causes_that_do_not_resolve(pod, cause):
    assert jobs.pod_stall(pod, NOW) == cause


def test_a_pod_unschedulable_for_a_moment_is_not_stalled():
    """While its claim is being bound a pod is briefly unschedulable ("pod has unbound immediate
    PersistentVolumeClaims"); the scheduler retries it when the claim binds, so only a lasting one is a stall."""
    since = NOW - timedelta(seconds=jobs.UNSCHEDULABLE_GRACE_SECONDS - 1)
    condition = {
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "lastTransitionTime": since.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    condition["message"] = "0/1 nodes are available: pod has unbound immediate PersistentVolumeClaims."
    pod = {"status": {"conditions": [condition]}}
    assert jobs.pod_stall(pod, NOW) == ""
    later = NOW + timedelta(seconds=1)
    assert jobs.pod_stall(pod, later) == "unschedulable: " + condition["message"]


def test_a_stall_is_a_condition_at_once_and_a_failure_after_the_timeout():
    from dataclasses import replace

    manifest = example()
    manifest["spec"]["stallTimeoutSeconds"] = 60
    spec = parse_abtest(manifest)
    stuck = replace(job("Pending"), stall="unschedulable: 0/1 nodes are available")
    first = status.derive_status(spec, 1, {"resnet": job("Running"), "vit": stuck}, job("Missing"), now=NOW)
    conds = {c["type"]: c for c in first["conditions"]}
    assert first["phase"] == "Running"
    assert conds["Stalled"]["status"] == "True" and conds["Stalled"]["message"] == "model vit: unschedulable: 0/1 nodes are available"
    later = status.derive_status(
        spec, 1, {"resnet": job("Running"), "vit": stuck}, job("Missing"), previous=first, now=NOW.replace(second=59)
    )
    assert later["phase"] == "Running"
    failed = status.derive_status(
        spec, 1, {"resnet": job("Running"), "vit": stuck}, job("Missing"), previous=later, now=NOW.replace(minute=1)
    )
    assert failed["phase"] == "Failed"
    assert failed["reason"] == "model vit stalled for 60s (spec.stallTimeoutSeconds 60): unschedulable: 0/1 nodes are available"
    recovered = status.derive_status(spec, 1, {"resnet": job("Running"), "vit": job("Running")}, job("Missing"), previous=first, now=NOW)
    assert {c["type"]: c["status"] for c in recovered["conditions"]}["Stalled"] == "False" and recovered["phase"] == "Running"


def test_a_model_that_cannot_be_placed_beside_its_waiting_peers_fails_after_the_start_timeout():
    """resnet runs (it waits at the start barrier, holding its GPU) while no node fits vit: AllModelsPlaced is False at
    once naming vit and the cause, and after spec.startTimeoutSeconds (shorter than the stall timeout here) it fails."""
    from dataclasses import replace

    manifest = example()
    manifest["spec"].update(stallTimeoutSeconds=600, startTimeoutSeconds=30)
    spec = parse_abtest(manifest)
    waiting = replace(job("Running"), ready=True)
    cause = "unschedulable: 0/1 nodes are available: 1 Insufficient nvidia.com/gpu."
    stuck = replace(job("Running"), stall=cause)  # its pod is active, but not placed
    first = status.derive_status(spec, 1, {"resnet": waiting, "vit": stuck}, job("Missing"), now=NOW)
    placed = {c["type"]: c for c in first["conditions"]}["AllModelsPlaced"]
    assert first["phase"] == "Running" and placed["status"] == "False" and placed["reason"] == "ModelUnschedulable"
    assert placed["message"].startswith(f"model vit cannot be placed while resnet wait(s) at the start barrier: {cause}")
    failed = status.derive_status(spec, 1, {"resnet": waiting, "vit": stuck}, job("Missing"), previous=first, now=NOW.replace(second=30))
    assert failed["phase"] == "Failed"
    assert failed["reason"] == f"model vit could not be placed beside its waiting peers for 30s (spec.startTimeoutSeconds 30): {cause}"
    # resnet gave up waiting (exit 2) and its pod's end let vit be placed: the reason still says why they were apart
    # (a pass may see vit placed, not yet ready, before resnet's Job is Failed: the condition stays False through it)
    gave_up = job("Failed", "PodFailurePolicy", "start barrier: vit not ready after 30 s")
    loading = job("Running")
    between = status.derive_status(spec, 1, {"resnet": job("Running"), "vit": loading}, job("Missing"), previous=first, now=NOW)
    assert {c["type"]: c for c in between["conditions"]}["AllModelsPlaced"] == placed
    apart = status.derive_status(spec, 1, {"resnet": gave_up, "vit": loading}, job("Missing"), previous=between, now=NOW)
    assert apart["reason"] == (
        f"model resnet failed: PodFailurePolicy: start barrier: vit not ready after 30 s; model vit cannot be placed while resnet "
        f"wait(s) at the start barrier: {cause}"
    )
    # both placed: True; nobody placed yet (both unschedulable): no peer holds anything, so only the stall rule applies
    both = status.derive_status(spec, 1, {"resnet": waiting, "vit": waiting}, job("Missing"), previous=first, now=NOW)
    assert {c["type"]: c["status"] for c in both["conditions"]}["AllModelsPlaced"] == "True"
    neither = status.derive_status(spec, 1, {"resnet": stuck, "vit": stuck}, job("Missing"), now=NOW.replace(minute=5))
    assert {c["type"]: c["status"] for c in neither["conditions"]}["AllModelsPlaced"] == "Unknown" and neither["phase"] != "Failed"


def test_status_patches_are_conditional_on_the_version_the_pass_read():
    """Concurrent passes (Job events, the resync): an older pass must not overwrite a newer verdict."""
    from types import SimpleNamespace

    from kubernetes.client.exceptions import ApiException

    from abtest_operator.reconcile import patch_status

    sent = []

    def patch(group, version, namespace, plural, name, body):
        sent.append(body)
        if body["metadata"]["resourceVersion"] != "7":
            raise ApiException(status=409, reason="Conflict")
        return {"metadata": {"resourceVersion": "8"}, "status": body["status"]}

    clients = SimpleNamespace(custom=SimpleNamespace(patch_namespaced_custom_object_status=patch))
    meta = {"namespace": "ns", "name": "t", "resourceVersion": "7"}
    assert patch_status(clients, meta, {"phase": "Failed"})["metadata"]["resourceVersion"] == "8"  # the ABTest as written
    assert patch_status(clients, dict(meta, resourceVersion="6"), {"phase": "Pending"}) is None
    assert [b["status"]["phase"] for b in sent] == ["Failed", "Pending"]


@pytest.mark.parametrize(
    "image, allowed, ok",
    [
        ("registry.example/abtest/evaluator:v2", ("registry.example/abtest/evaluator",), True),
        ("registry.example/abtest/evaluator@sha256:" + "a" * 64, ("registry.example/abtest/evaluator",), True),
        ("registry.example/abtest/evaluator-evil:v1", ("registry.example/abtest/evaluator",), False),
        ("registry.example/ml/any:1", ("registry.example/ml/",), True),
        ("docker.io/attacker/miner:latest", ("registry.example/ml/",), False),
        ("localhost:5000/abtest/evaluator:1", ("localhost:5000/abtest/evaluator",), True),
    ],
)
def test_image_allowlist_matches_repositories_and_prefixes(image, allowed, ok):
    assert policy.image_allowed(image, allowed) is ok


def test_policy_refuses_unlisted_images_and_volume_sources_naming_the_field():
    manifest = example()
    manifest["spec"]["image"] = "docker.io/attacker/miner:latest"
    with pytest.raises(
        UserError, match=r"spec.image 'docker.io/attacker/miner:latest' is not allowed .*allowed: registry.example/abtest/evaluator\)"
    ):
        policy.check(parse_abtest(manifest), CFG)
    manifest = example()
    manifest["spec"]["dataset"]["volume"] = {"hostPath": {"path": "/etc"}}
    with pytest.raises(UserError, match="spec.dataset.volume uses hostPath, which this operator does not allow"):
        policy.check(parse_abtest(manifest), CFG)
    policy.check(parse_abtest(example()), CFG)  # the example passes
    nfs = example()
    nfs["spec"]["modelsVolume"] = {"nfs": {"server": "nas", "path": "/models"}}
    policy.check(parse_abtest(nfs), dataclasses.replace(CFG, allowed_volume_sources=("nfs", "persistentVolumeClaim")))


def test_a_weights_cache_is_mounted_read_only_with_the_hubs_offline_on_model_pods_only():
    manifest = example()
    manifest["spec"]["weightsCache"] = {"persistentVolumeClaim": {"claimName": "hub-weights", "readOnly": True}}
    manifest["spec"]["models"][0].update(pretrained=True)
    manifest["spec"]["models"][0].pop("checkpoint")
    spec = parse_abtest(manifest)
    policy.check(spec, CFG)
    rendered = manifests.render_all(spec, CFG)
    pods = {d["metadata"]["name"]: d["spec"]["template"]["spec"] for d in rendered if d["kind"] == "Job"}
    for job, pod in pods.items():
        (container,) = pod["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        if job.endswith("-analysis"):  # the analysis reads predictions, never weights
            assert "weights" not in mounts and "HF_HUB_OFFLINE" not in env
            continue
        assert mounts["weights"] == {"name": "weights", "mountPath": "/weights", "readOnly": True}
        assert {"name": "weights", "persistentVolumeClaim": {"claimName": "hub-weights", "readOnly": True}} in pod["volumes"]
        assert (env["HF_HOME"], env["TORCH_HOME"], env["HF_HUB_OFFLINE"]) == ("/weights/huggingface", "/weights/torch", "1")
    assert len(pods) == 3
    manifest["spec"]["weightsCache"] = {"hostPath": {"path": "/root/.cache"}}
    with pytest.raises(UserError, match="spec.weightsCache uses hostPath, which this operator does not allow"):
        policy.check(parse_abtest(manifest), CFG)


def test_render_refuses_what_the_operator_would_refuse(tmp_path):
    manifest = example()
    manifest["spec"]["dataset"]["volume"] = {"hostPath": {"path": "/etc"}}
    path = tmp_path / "abtest.yaml"
    path.write_text(yaml.safe_dump(manifest))
    out = subprocess.run([sys.executable, "-m", "abtest_operator.cli", "render", str(path)], capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.startswith("error: spec.dataset.volume uses hostPath")


def test_default_requests_fill_in_but_never_exceed_a_user_limit():
    manifest = example()
    manifest["spec"]["resources"] = {"limits": {"memory": "1Gi"}, "requests": {"cpu": "3"}}
    resources = manifests.model_resources(parse_abtest(manifest), CFG)
    assert resources["requests"] == {"cpu": "3"}  # the user's cpu; no default memory request above the 1Gi limit
    assert resources["limits"] == {"memory": "1Gi", "nvidia.com/gpu": "1"}
    plain = manifests.model_resources(parse_abtest(example()), CFG)
    assert plain["requests"] == {"cpu": "1", "memory": "2Gi"}


def test_gpu_pods_tolerate_the_gpu_taint_and_cpu_pods_do_not_ask():
    job = manifests.model_jobs(parse_abtest(example()), CFG)[0]
    assert job["spec"]["template"]["spec"]["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    cpu = example()
    cpu["spec"]["device"] = "cpu"
    assert "tolerations" not in manifests.model_jobs(parse_abtest(cpu), CFG)[0]["spec"]["template"]["spec"]
    own = example()
    own["spec"]["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Equal", "value": "a100", "effect": "NoSchedule"}]
    assert manifests.model_jobs(parse_abtest(own), CFG)[0]["spec"]["template"]["spec"]["tolerations"] == own["spec"]["tolerations"]


def test_settings_come_from_the_charts_environment():
    env = {
        "ABTEST_EVALUATOR_IMAGE": "r/e:1",
        "ABTEST_ALLOWED_IMAGES": "r/e, r/ml/",
        "ABTEST_ALLOWED_VOLUME_SOURCES": "persistentVolumeClaim,nfs",
        "ABTEST_MODEL_DEFAULT_RESOURCES": '{"requests": {"cpu": "2"}}',
        "ABTEST_ANALYSIS_RESOURCES": '{"limits": {"memory": "8Gi"}}',
        "ABTEST_MAX_WORKERS": "3",
    }
    cfg = config_from_env(env)
    assert cfg.allowed_images == ("r/e", "r/ml/") and cfg.allowed_volume_sources == ("persistentVolumeClaim", "nfs")
    assert cfg.model_default_resources == {"requests": {"cpu": "2"}} and cfg.analysis_resources == {"limits": {"memory": "8Gi"}}
    assert cfg.max_workers == 3 and config_from_env({}) == OperatorConfig()
    job = manifests.build_analysis_job(parse_abtest(example()), cfg)
    assert job["spec"]["template"]["spec"]["containers"][0]["resources"] == {"limits": {"memory": "8Gi"}}


def test_the_image_is_frozen_by_the_first_job():
    spec = parse_abtest(example())
    running = jobs.JobState(jobs.JobPhase.RUNNING, image="registry.example/abtest/evaluator:v1")
    derived = status.derive_status(
        spec,
        1,
        {"resnet": running, "vit": jobs.JobState(jobs.JobPhase.MISSING)},
        jobs.JobState(jobs.JobPhase.MISSING),
        default_image="new:v2",
    )
    assert derived["image"] == "registry.example/abtest/evaluator:v1"
    fresh = status.derive_status(
        spec,
        1,
        {"resnet": jobs.JobState(jobs.JobPhase.MISSING), "vit": jobs.JobState(jobs.JobPhase.MISSING)},
        jobs.JobState(jobs.JobPhase.MISSING),
        default_image="new:v2",
    )
    assert fresh["image"] == "new:v2"


def test_the_operator_times_its_garbage_collections_by_generation():
    import gc

    from abtest_operator.metrics import OperatorMetrics

    metrics = OperatorMetrics()
    ticks = iter([10.0, 10.25])
    stop = metrics.time_gc(clock=lambda: next(ticks))
    try:
        gc.collect()
    finally:
        stop()
    count = metrics.registry.get_sample_value("abtest_operator_gc_pause_seconds_count", {"generation": "2"})
    assert count == 1 and metrics.registry.get_sample_value("abtest_operator_gc_pause_seconds_sum", {"generation": "2"}) == 0.25
    gc.collect()  # no longer timed
    assert metrics.registry.get_sample_value("abtest_operator_gc_pause_seconds_count", {"generation": "2"}) == 1


def test_default_limits_never_turn_into_requests_nor_undercut_a_user_request():
    """The chart's defaults arrive as JSON with "limits" before "requests": a default memory limit must not count as
    a user limit (which would leave the request at the 8Gi limit), nor cap a request the user set above it."""
    cfg = OperatorConfig(
        image=CFG.image, model_default_resources={"limits": {"memory": "8Gi"}, "requests": {"cpu": "100m", "memory": "256Mi"}}
    )
    plain = manifests.model_resources(parse_abtest(example()), cfg)
    assert plain["requests"] == {"cpu": "100m", "memory": "256Mi"} and plain["limits"]["memory"] == "8Gi"
    big = example()
    big["spec"]["resources"] = {"requests": {"memory": "16Gi"}}
    sized = manifests.model_resources(parse_abtest(big), cfg)
    assert sized["requests"] == {"cpu": "100m", "memory": "16Gi"} and "memory" not in sized["limits"]


def test_a_queued_abtest_renders_one_suspended_jobset_whose_jobs_are_the_unqueued_model_jobs():
    manifest = example()
    manifest["spec"].update(queueName="team-gpus")
    queued, plain = parse_abtest(manifest), parse_abtest(example())
    rendered = manifests.render_all(queued, CFG)
    assert [o["kind"] for o in rendered].count("Job") == 1  # the analysis only: the models are the JobSet's
    (jobset,) = [o for o in rendered if o["kind"] == "JobSet"]
    assert jobset["apiVersion"] == "jobset.x-k8s.io/v1alpha2" and jobset["metadata"]["name"] == queued.name
    assert jobset["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-gpus"
    assert jobset["spec"]["suspend"] is True
    assert jobset["metadata"]["ownerReferences"][0]["uid"] == UID
    unqueued = {job["metadata"]["labels"]["abtest.dev/model"]: job for job in manifests.model_jobs(plain, CFG)}
    assert [r["name"] for r in jobset["spec"]["replicatedJobs"]] == list(unqueued)
    for replicated in jobset["spec"]["replicatedJobs"]:
        job = unqueued[replicated["name"]]
        assert replicated["replicas"] == 1
        assert replicated["template"]["spec"] == job["spec"]  # exactly the Job the model gets without a queue
        assert replicated["template"]["metadata"]["labels"] == {**job["metadata"]["labels"], "abtest.dev/uid": UID}
        assert names.model_job_name(queued, replicated["name"]) == f"{queued.name}-{replicated['name']}-0"


def test_a_placement_condition_carried_over_past_its_deadline_with_every_model_placed_fails_nothing():
    # AllModelsPlaced stays False until every model has run; once the blocked model is placed nothing is unplaced,
    # and the deadline must not fire (it once raised IndexError here, failing every pass of the ABTest).
    spec = parse_abtest(example())
    now = datetime(2026, 12, 4, tzinfo=UTC)
    placed = {"status": "False", "lastTransitionTime": (now - timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ")}
    verdict = status.Verdict("Running")
    assert status.placement_deadline(spec, {}, verdict, placed, now) is verdict
