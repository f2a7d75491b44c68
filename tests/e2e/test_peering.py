"""Two operator replicas with kopf peering: one active, the other takes over when the active one hangs."""

import json
import os
import signal
import time
import urllib.request

import pytest

from kube import apply, example_manifest, get_abtest

pytestmark = pytest.mark.e2e

LIFETIME = 20  # peering.lifetimeSeconds: how long a silent replica stays active


def peers(cluster) -> dict[str, dict]:
    """The ClusterKopfPeering's status: pod name -> {priority, lastseen, lifetime}."""
    out = cluster.kubectl("get", "clusterkopfpeering", "abtest-operator", "-o", "json", check=False)
    return (json.loads(out.stdout).get("status") or {}) if out.returncode == 0 else {}


def reconciles(pod: dict) -> float:
    """The replica's own count of reconcile passes (its /metrics): what a paused replica never does."""
    with urllib.request.urlopen(f"http://{pod['status']['podIP']}:8080/metrics", timeout=5) as resp:
        lines = resp.read().decode().splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith("abtest_reconciles_total{"))


def handled(cluster, namespace: str, name: str) -> bool:
    return bool((get_abtest(cluster, namespace, name).get("status") or {}).get("phase"))


def test_two_replicas_one_active_and_the_other_takes_over_from_a_hung_one(cluster, operator, namespace):
    operator.upgrade({"operator.replicas": "2", "peering.enabled": "true", "peering.lifetimeSeconds": str(LIFETIME)})
    frozen = None
    try:
        names = {p["metadata"]["name"] for p in operator.pods()}
        assert len(names) == 2
        cluster.wait_for(lambda: set(peers(cluster)) >= names, 90, "both replicas in the peering object", interval=1)
        priorities = {name: peers(cluster)[name]["priority"] for name in names}
        assert len(set(priorities.values())) == 2, f"replicas tie and would pause each other: {priorities}"
        active = max(priorities, key=priorities.get)
        paused = next(n for n in names if n != active)
        by_name = {p["metadata"]["name"]: p for p in operator.pods()}
        time.sleep(3)  # the lower replica reads the peering object and pauses
        before = {n: reconciles(by_name[n]) for n in names}  # (passes over older ABTests while they started do not count)

        first = example_manifest("abtest-digits.yaml", namespace.name, stallTimeoutSeconds=600)
        first["metadata"]["name"] = "served-by-the-active"
        apply(cluster, first)
        cluster.wait_for(lambda: handled(cluster, namespace.name, "served-by-the-active"), 60, "the active replica to take the ABTest")
        assert reconciles(by_name[active]) > before[active] and reconciles(by_name[paused]) == before[paused]  # one serves, one waits

        # The active replica hangs (SIGSTOP: no goodbye, no peering cleanup); after its lifetime the other one serves.
        pod = next(p for p in operator.pods() if p["metadata"]["name"] == active)
        frozen = cluster.node.container_pid(pod["status"]["containerStatuses"][0]["containerID"])
        os.kill(frozen, signal.SIGSTOP)
        second = example_manifest("abtest-digits.yaml", namespace.name, stallTimeoutSeconds=600)
        second["metadata"]["name"] = "served-after-handover"
        apply(cluster, second)
        cluster.wait_for(lambda: handled(cluster, namespace.name, "served-after-handover"), LIFETIME + 60, "the other replica to take over")
        assert reconciles(by_name[paused]) > before[paused]  # the waiting replica took over
    finally:
        if frozen:
            os.kill(frozen, signal.SIGKILL)
        operator.upgrade({})  # back to one standalone replica for the other tests
        cluster.wait_for(lambda: len(operator.pods()) == 1 and operator._healthy(), 120, "one operator again", interval=1)
