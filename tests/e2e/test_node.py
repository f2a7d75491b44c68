"""The e2e pods are containers from the project's images, run by a real kubelet and container runtime."""

import json
import tarfile
from datetime import datetime
from pathlib import Path

import pytest

from cluster.node import NODE_NAME
from kube import apply, example_manifest, get_abtest, wait_phase

pytestmark = pytest.mark.e2e


def _ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def image_digests(archive: Path) -> set[str]:
    """The manifest and config digests inside an OCI archive (what a pod's imageID can name)."""
    with tarfile.open(archive) as tar:
        (manifest,) = json.load(tar.extractfile("index.json"))["manifests"]
        blob = json.load(tar.extractfile(f"blobs/sha256/{manifest['digest'].split(':')[1]}"))
    return {manifest["digest"], blob["config"]["digest"]}


def host_view(cluster, container_id: str) -> tuple[dict, str, str]:
    """What the host kernel says of a container's main process: /proc status fields, root mount, environ."""
    pid = cluster.node.container_pid(container_id)
    status = dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":\t" in line)
    root_mount = next(line for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines() if line.split()[4] == "/")
    return status, root_mount, Path(f"/proc/{pid}/environ").read_text()


def test_the_node_is_a_kubelet_with_containerd(cluster):
    info = cluster.node.info()
    assert info["kubeletVersion"] == "v1.37.2"
    assert info["containerRuntimeVersion"].startswith("containerd://2."), info
    node = json.loads(cluster.kubectl("get", "node", NODE_NAME, "-o", "json").stdout)
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "8"


def test_operator_runs_from_its_image_as_non_root_through_the_service(cluster, operator, images):
    pod = operator.pod()
    (container,) = pod["status"]["containerStatuses"]
    assert container["image"] == images["operator"][0]
    assert any(d in container["imageID"] for d in image_digests(images["operator"][1])), container["imageID"]
    assert pod["status"]["podIP"].startswith("10.244.0.")
    status, root_mount, environ = host_view(cluster, container["containerID"])
    assert status["Uid"].split()[:2] == ["65532", "65532"]  # runAsUser enforced by the runtime, not only by admission
    assert status["CapEff"].strip() == "0000000000000000"  # capabilities dropped
    assert " ro," in f" {root_mount.split()[5]},"  # readOnlyRootFilesystem
    # in-cluster config reaches the API server through the kubernetes Service (kube-proxy), not a host address
    assert "KUBERNETES_SERVICE_HOST=10.0.0.1" in environ.split("\0")
    assert "abtest_abtests" in operator.metrics()


def test_evaluator_pods_are_containers_from_the_evaluator_image(cluster, namespace, images):
    manifest = example_manifest("abtest-digits.yaml", namespace.name)
    apply(cluster, manifest)
    status = wait_phase(cluster, namespace.name, manifest["metadata"]["name"], ("Succeeded", "Failed"))["status"]
    assert status["phase"] == "Succeeded", status
    pods = json.loads(cluster.kubectl("get", "pods", "-n", namespace.name, "-o", "json").stdout)["items"]
    created = get_abtest(cluster, namespace.name, manifest["metadata"]["name"])["metadata"]["creationTimestamp"]
    first_start = min(p["status"]["containerStatuses"][0]["state"]["terminated"]["startedAt"] for p in pods)
    cluster.timings["apply -> first evaluator container running"] = (_ts(first_start) - _ts(created)).total_seconds()
    assert first_start >= created
    digests = image_digests(images["evaluator-cpu"][1])
    assert len(pods) == 3
    for pod in pods:
        (container,) = pod["status"]["containerStatuses"]
        assert container["image"] == images["evaluator-cpu"][0]
        assert container["containerID"].startswith("containerd://")
        assert any(d in container["imageID"] for d in digests), container["imageID"]
        assert container["state"]["terminated"]["exitCode"] == 0
        assert pod["status"]["podIP"].startswith("10.244.0.")
