"""Invalid ABTests are rejected by the API server (schema and CEL), with a message naming the field."""

import copy

import pytest
import yaml

from helpers import INVALID_SPECS
from kube import apply, example_manifest, get_abtest

pytestmark = pytest.mark.e2e

API_MESSAGES = {
    "no models": "spec.models: Required value",
    "one model": "spec.models: Invalid value",
    "17 models": "spec.models: Too many",
    "duplicate names": "spec.models[].name must be unique",
    "model name": "spec.models[0].name",
    "alpha 1.5": "spec.analysis.alpha",
    "alpha 0": "spec.analysis.alpha",
    "negative batch": "spec.batchSize",
    "pretrained and checkpoint": "set either pretrained or checkpoint",
    "unknown device": "spec.device: Unsupported value",
    "unknown dataset": "spec.dataset.name: Unsupported value",
    "dataset without path": "spec.dataset.path is required",
    "architecture": "spec.models[0].architecture",
    "gpus on cpu": "spec.gpusPerModel must be 0",
    "unknown field": 'unknown field "spec.batchsize"',
    "negative deadline": "spec.activeDeadlineSeconds",
    "mean/std": "mean and std need the same number of values",
    "reserved model name": "'analysis' is reserved for the analysis Job",
    "noninferiority without margin": "spec.analysis.margin (accuracy as a fraction, e.g. 0.01 = 1 point) is required",
    "margin with superiority": "and not allowed with superiority",
    "margin 0.5": "spec.analysis.margin",
    "unknown hypothesis": "spec.analysis.hypothesis: Unsupported value",
    "one look": "spec.analysis.sequential.looks: Invalid value",
    "unknown spending": "spec.analysis.sequential.spending: Unsupported value",
    "sequential non-inferiority": "spec.analysis.sequential decides superiority only",
    "sharded sequential": "spec.shardsPerModel above 1 cannot be combined with spec.analysis.sequential",
    "65 shards": "spec.shardsPerModel: Invalid value",
    "9 queued models": "spec.queueName admits the models as one Kueue workload, which holds at most 8 pod sets",
    "artefact without file": "spec.models[].checkpoint is required for an artefact (torchscript, export, onnx)",
    "artefact without preprocessing": "an artefact (torchscript, export, onnx) has no pretrained config; set spec.models[].inputSize",
    "artefact precision": "spec.models[].precision applies to timm/torchvision models",
    "int8 off the cpu": "spec.models[].precision int8-dynamic runs on the CPU only",
    "unknown precision": "spec.models[0].precision: Unsupported value",
}


@pytest.mark.parametrize("case", sorted(INVALID_SPECS))
def test_invalid_manifest_is_rejected_naming_the_field(cluster, namespace, case):
    manifest = example_manifest("abtest-digits.yaml", namespace.name)
    manifest["metadata"]["name"] = f"invalid-{case.replace(' ', '-').replace('/', '')}"
    INVALID_SPECS[case](manifest["spec"])
    message = API_MESSAGES[case]
    proc = cluster.kubectl("apply", "--validate=strict", "-f", "-", input=yaml.safe_dump(manifest), check=False)
    assert proc.returncode != 0, f"{case} was accepted"
    assert message in proc.stderr, proc.stderr
    assert cluster.kubectl("get", "abtest", manifest["metadata"]["name"], "-n", namespace.name, check=False).returncode != 0


def test_spec_is_immutable(cluster, namespace):
    manifest = example_manifest("abtest-digits.yaml", namespace.name)
    manifest["metadata"]["name"] = "immutable"
    apply(cluster, manifest)
    changed = copy.deepcopy(manifest)
    changed["spec"]["seed"] = 7
    proc = apply(cluster, changed, check=False)
    assert proc.returncode != 0 and "spec is immutable" in proc.stderr
    assert get_abtest(cluster, namespace.name, "immutable")["spec"]["seed"] == 42
    # status stays writable (the operator and the analysis use the subresource)
    cluster.kubectl(
        "patch",
        "abtest",
        "immutable",
        "-n",
        namespace.name,
        "--subresource=status",
        "--type=merge",
        "-p",
        '{"status": {"reason": "probe"}}',
    )


def test_defaults_and_explain(cluster, namespace):
    manifest = example_manifest("abtest-digits.yaml", namespace.name)
    manifest["metadata"]["name"] = "defaults"
    for key in ("seed", "batchSize", "analysis"):
        manifest["spec"].pop(key)
    apply(cluster, manifest)
    spec = get_abtest(cluster, namespace.name, "defaults")["spec"]
    assert (spec["seed"], spec["batchSize"], spec["analysis"]) == (42, 64, {"alpha": 0.05, "test": "auto", "hypothesis": "superiority"})
    explained = cluster.kubectl("explain", "abtest.spec.models").stdout
    assert "timm/NAME or torchvision/NAME" in explained and "numClasses" in explained


def test_long_name_is_rejected_naming_the_limit(cluster, namespace):
    manifest = example_manifest("abtest-digits.yaml", namespace.name)
    manifest["metadata"]["name"] = "n" * 64
    proc = cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest), check=False)
    assert proc.returncode != 0 and "metadata.name must be at most 63 characters" in proc.stderr, proc.stderr


def test_status_result_is_checked_by_the_api_server_and_written_only_to_the_analysed_abtest(cluster, namespace):
    """The CRD's status.result schema is enforced by the API server, and the analysis' UID precondition keeps a verdict
    from landing on a re-created namesake."""
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException

    from abtest_api.constants import GROUP, PLURAL, VERSION
    from abtest_api.errors import UserError
    from abtest_api.result import status_result
    from abtest_evaluator.analysis.publish import publish_result
    from helpers import result_json
    from kube import wait_phase

    manifest = example_manifest("abtest-digits.yaml", namespace.name)
    manifest["spec"]["dataset"]["volume"] = {"hostPath": {"path": "/etc"}}  # refused by the operator: it stays Failed, untouched
    name = manifest["metadata"]["name"]
    apply(cluster, manifest)
    uid = wait_phase(cluster, namespace.name, name, ("Failed",), timeout=60)["metadata"]["uid"]
    api = client.CustomObjectsApi(config.new_client_from_config(config_file=str(cluster.admin_kubeconfig)))
    ref = f"{namespace.name}/{name}"
    with pytest.raises(UserError, match="no longer the one analysed"):
        publish_result(ref, status_result(result_json()), api=api, uid="00000000-0000-0000-0000-000000000000", sleep=lambda s: None)
    assert "result" not in get_abtest(cluster, namespace.name, name)["status"]
    publish_result(ref, status_result(result_json()), api=api, uid=uid)
    assert get_abtest(cluster, namespace.name, name)["status"]["result"]["comparisons"][0]["pValue"] == 0.01
    bad = status_result(result_json())
    bad["comparisons"][0]["pValue"] = 2.0
    with pytest.raises(ApiException) as refused:
        api.patch_namespaced_custom_object_status(GROUP, VERSION, namespace.name, PLURAL, name, {"status": {"result": bad}})
    assert refused.value.status == 422 and "pValue" in refused.value.body
