"""What the e2e tests do to the cluster: apply, read, wait (kubectl against the test control plane)."""

from __future__ import annotations

import json
import subprocess

import yaml

from cluster.controlplane import ControlPlane
from helpers import ROOT


def example_manifest(name: str, namespace: str, **spec_updates) -> dict:
    manifest = yaml.safe_load((ROOT / "examples" / name).read_text())
    manifest["metadata"]["namespace"] = namespace
    manifest["spec"].update(device="cpu", workers=0, **spec_updates)
    return manifest


def apply(cluster: ControlPlane, manifest: dict, check: bool = True) -> subprocess.CompletedProcess:
    return cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest), check=check)


def get_abtest(cluster: ControlPlane, namespace: str, name: str) -> dict:
    return json.loads(cluster.kubectl("get", "abtest", name, "-n", namespace, "-o", "json").stdout)


def wait_phase(cluster: ControlPlane, namespace: str, name: str, phases: tuple[str, ...], timeout: float = 240) -> dict:
    def reached():
        obj = get_abtest(cluster, namespace, name)
        return obj if (obj.get("status") or {}).get("phase") in phases else None

    try:
        return ControlPlane.wait_for(reached, timeout, f"ABTest {namespace}/{name} to reach {phases}", interval=1)
    except TimeoutError:
        obj = get_abtest(cluster, namespace, name)
        pods = cluster.kubectl("get", "pods,jobs", "-n", namespace, "-o", "wide", check=False).stdout
        raise AssertionError(f"status: {json.dumps(obj.get('status'), indent=1)}\n{pods}") from None


def items(cluster: ControlPlane, kind: str, namespace: str) -> list[dict]:
    """Every object of ``kind`` (a resource name kubectl knows, e.g. ``jobsets.jobset.x-k8s.io``) in the namespace."""
    return json.loads(cluster.kubectl("get", kind, "-n", namespace, "-o", "json").stdout)["items"]


def jobs(cluster: ControlPlane, namespace: str) -> list[dict]:
    return items(cluster, "jobs", namespace)


def condition(obj: dict, kind: str) -> str | None:
    """The status ("True", "False", "Unknown") of the object's condition ``kind``; None when it has none."""
    return next((c["status"] for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == kind), None)


def events(cluster: ControlPlane, namespace: str, name: str) -> list[dict]:
    items = json.loads(cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout)["items"]
    return [e for e in items if e["involvedObject"].get("name") == name and e["involvedObject"].get("kind") == "ABTest"]
