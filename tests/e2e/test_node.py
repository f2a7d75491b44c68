"""The e2e pods are containers from the project's images, run by a real kubelet and container runtime."""

import json
import os
import subprocess
import sys
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


def test_a_pod_network_left_by_an_earlier_run_is_removed(tmp_path):
    """A pod's network namespace that outlived its node (no CNI DEL when containerd stops) kept its address on the
    bridge, and the next run's operator, given the same address, lost its watch connections to it. Checked in a
    mount namespace of its own, with its own /run/netns, so the running cluster's pods are out of reach."""
    script = tmp_path / "leftover.sh"
    script.write_text(
        "set -e\n"
        "mount -t tmpfs none /run/netns\n"
        "ip netns add cni-leftover && ip -n cni-leftover link add pod0 type veth peer name pod1\n"
        "ip -n cni-leftover addr add 10.244.0.2/24 dev pod0\n"
        "ip netns add cni-elsewhere && ip -n cni-elsewhere link add pod0 type veth peer name pod1\n"
        "ip -n cni-elsewhere addr add 192.168.77.2/24 dev pod0\n"
        f"{sys.executable} -c 'from cluster.node import remove_pod_networks; remove_pod_networks()'\n"
        "ip netns list\n"
    )
    Path("/run/netns").mkdir(parents=True, exist_ok=True)
    out = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "bash", str(script)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert out.returncode == 0, out.stderr
    assert [line.split()[0] for line in out.stdout.splitlines()] == ["cni-elsewhere"], out.stdout
