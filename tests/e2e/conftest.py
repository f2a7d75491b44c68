"""E2E fixtures: a real control plane, a real node (kubelet, containerd, runc, CNI, kube-proxy)
running the project's images built from the Dockerfile, and the operator installed by `helm install`.

The operator runs in its pod with the chart's ServiceAccount and RBAC (not admin). Every test
namespace enforces Pod Security "restricted".
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from cluster.controlplane import ControlPlane, build_binaries
from cluster.harness import Prometheus, build_images, helm_template, make_namespace, start_cluster, start_operator
from cluster.node import GATEWAY
from helpers import CACHE

pytestmark = pytest.mark.e2e
EXAMPLE_CHECKPOINTS = {
    "timm/resnet10t": "resnet10t-digits.pth",
    "timm/test_vit": "test_vit-digits.safetensors",
    "torchvision/shufflenet_v2_x0_5": "shufflenet_v2_x0_5-digits.pth",
}
# The chart values a kube-prometheus-stack user sets (docs/operator.md), scraping every second for the tests.
MONITORING = {
    "metrics.serviceMonitor.enabled": "true",
    "metrics.podMonitor.enabled": "true",
    "metrics.prometheusRule.enabled": "true",
    "metrics.serviceMonitor.interval": "1s",
    "metrics.podMonitor.interval": "1s",
    "metrics.additionalLabels.release": "kube-prometheus-stack",
}
PROMETHEUS_SELECTOR = {"release": "kube-prometheus-stack"}  # what kube-prometheus-stack's Prometheus selects on
MONITORING_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}


@pytest.fixture(scope="session")
def binaries() -> Path:
    return build_binaries()


@pytest.fixture(scope="session")
def images() -> dict:
    """operator, evaluator-cpu and the node's pause image: target -> (reference, OCI archive)."""
    return build_images("operator", "evaluator-cpu")


@pytest.fixture(scope="session")
def cluster(binaries, images):
    root = Path(os.environ.get("ABTEST_E2E_DIR", CACHE / "e2e")) / f"run-{os.getpid()}"
    root.mkdir(parents=True, exist_ok=True)
    cp = ControlPlane(root, binaries, address=GATEWAY)
    try:
        start_cluster(cp, images)
        yield cp
    finally:
        if getattr(cp, "node", None):
            cp.node.stop()
        cp.stop()
        timings = {k: round(v, 1) for k, v in cp.timings.items()}
        print("e2e timings (s):", timings)
        (root.parent / "last-timings.json").write_text(json.dumps(timings, indent=1))
        if os.environ.get("ABTEST_E2E_KEEP") is None:
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def operator(cluster, binaries, images):
    """The operator installed by the chart, running from its image with the chart's ServiceAccount."""
    op = start_operator(cluster, binaries, images)
    yield op
    op.uninstall()


@pytest.fixture(scope="session")
def models_dir(cluster, trained_models, exported_models) -> Path:
    """The examples' checkpoints/ folder, with the tests' tiny trained models and the resnet's ONNX export, for the
    models volume."""
    folder = cluster.root / "models" / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    for arch, name in EXAMPLE_CHECKPOINTS.items():
        shutil.copy(trained_models[arch], folder / name)
    shutil.copy(exported_models["onnx"], folder / "resnet10t-digits.onnx")  # examples/abtest-digits-export.yaml
    return folder.parent


@pytest.fixture
def namespace(cluster, operator, models_dir, request):
    ns = make_namespace(cluster, models_dir, request.node.name[5:])
    yield ns
    if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
        print(operator.log())


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


@pytest.fixture(scope="session")
def prometheus(cluster, operator, binaries):
    """Prometheus scraping what the chart's monitors select, every second, and evaluating its alerts."""
    sets = {**operator.values, **MONITORING}
    monitors = [d for d in helm_template(binaries, *(f"{k}={v}" for k, v in sets.items())) if d["kind"] in MONITORING_KINDS]
    prom = Prometheus(cluster.root / "prometheus", cluster, binaries, monitors, PROMETHEUS_SELECTOR)
    yield prom
    prom.stop()
