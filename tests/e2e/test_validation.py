"""Invalid ABTests are rejected by the API server (schema and CEL), with a message naming the field."""

import copy

import pytest
import yaml

from kube import apply, example_manifest, get_abtest

pytestmark = pytest.mark.e2e

INVALID = {
    "no models": (lambda s: s.pop("models"), "spec.models: Required value"),
    "one model": (lambda s: s.update(models=s["models"][:1]), "spec.models: Invalid value"),
    "17 models": (lambda s: s.update(models=[dict(s["models"][0], name=f"m{i}") for i in range(17)]), "spec.models: Too many"),
    "duplicate names": (lambda s: s["models"][1].update(name=s["models"][0]["name"]), "spec.models[].name must be unique"),
    "model name": (lambda s: s["models"][0].update(name="Res_Net"), "spec.models[0].name"),
    "alpha 1.5": (lambda s: s.update(analysis={"alpha": 1.5}), "spec.analysis.alpha"),
    "negative batch": (lambda s: s.update(batchSize=-8), "spec.batchSize"),
    "pretrained and checkpoint": (lambda s: s["models"][0].update(pretrained=True), "set either pretrained or checkpoint"),
    "unknown device": (lambda s: s.update(device="tpu"), "spec.device: Unsupported value"),
    "unknown dataset": (lambda s: s["dataset"].update(name="imagenet22k"), "spec.dataset.name: Unsupported value"),
    "dataset without path": (lambda s: s["dataset"].update(name="cifar10"), "spec.dataset.path is required"),
    "architecture": (lambda s: s["models"][0].update(architecture="resnet18"), "spec.models[0].architecture"),
    "gpus on cpu": (lambda s: s.update(gpusPerModel=2), "spec.gpusPerModel must be 0"),
    "unknown field": (lambda s: s.update(batchsize=32), 'unknown field "spec.batchsize"'),
    "negative deadline": (lambda s: s.update(activeDeadlineSeconds=-1), "spec.activeDeadlineSeconds"),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_manifest_is_rejected_naming_the_field(cluster, namespace, case):
    manifest = example_manifest("abtest-digits.yaml", namespace.name)
    manifest["metadata"]["name"] = f"invalid-{case.replace(' ', '-').replace('/', '')}"
    mutate, message = INVALID[case]
    mutate(manifest["spec"])
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
    cluster.kubectl("patch", "abtest", "immutable", "-n", namespace.name, "--subresource=status", "--type=merge",
                    "-p", '{"status": {"reason": "probe"}}')


def test_defaults_and_explain(cluster, namespace):
    manifest = example_manifest("abtest-digits.yaml", namespace.name)
    manifest["metadata"]["name"] = "defaults"
    for key in ("seed", "batchSize", "analysis"):
        manifest["spec"].pop(key)
    apply(cluster, manifest)
    spec = get_abtest(cluster, namespace.name, "defaults")["spec"]
    assert (spec["seed"], spec["batchSize"], spec["analysis"]) == (42, 64, {"alpha": 0.05, "test": "auto"})
    explained = cluster.kubectl("explain", "abtest.spec.models").stdout
    assert "timm/NAME or torchvision/NAME" in explained and "numClasses" in explained
