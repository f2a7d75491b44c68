"""The e2e harness outside pytest: the operator process, volumes, namespaces, Prometheus.

Shared by the e2e fixtures (tests/e2e/conftest.py) and benchmarks/operator_scale.py.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import yaml

from cluster.controlplane import ControlPlane, free_port

ROOT = Path(__file__).resolve().parent.parent.parent
RELEASE = "abtest"
RELEASE_NS = "abtest-system"
OPERATOR_SELECTOR = f"app.kubernetes.io/name=abtest-operator,app.kubernetes.io/instance={RELEASE}"


def build_images(*targets: str) -> dict[str, tuple[str, Path]]:
    """The project's images, built from the Dockerfile by hack/build-images.sh (cached by input hash):
    target -> (reference, OCI archive); always includes the node's pause image."""
    out = subprocess.run(["bash", str(ROOT / "hack" / "build-images.sh"), *targets], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"building the images failed:\n{out.stderr[-4000:]}")
    images = {}
    for line in out.stdout.splitlines():
        target, ref, archive = line.split(" ", 2)
        images[target] = (ref, Path(archive))
    return images


def helm_template(binaries: Path, *sets: str) -> list[dict]:
    out = subprocess.run(
        [
            str(binaries / "helm"),
            "template",
            RELEASE,
            str(ROOT / "charts" / "abtest-operator"),
            "--namespace",
            RELEASE_NS,
            "--kube-version",
            "1.37.2",
            *itertools.chain.from_iterable(("--set", s) for s in sets),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return [d for d in yaml.safe_load_all(out.stdout) if d]


class Operator:
    """The operator as users run it: `helm install` of charts/abtest-operator, its image on the node,
    the chart's ServiceAccount and RBAC."""

    def __init__(self, cluster: ControlPlane, binaries: Path, images: dict, values: dict | None = None):
        self.cluster, self.binaries = cluster, binaries
        operator_ref, evaluator_ref = images["operator"][0], images["evaluator-cpu"][0]
        self.values = {
            "crds.enabled": "false",  # the tests apply crds/ themselves: the single source
            "operator.image.repository": operator_ref.rsplit(":", 1)[0],
            "operator.image.tag": operator_ref.rsplit(":", 1)[1],
            "operator.image.pullPolicy": "Never",
            "operator.maxWorkers": "4",
            "evaluator.image.repository": evaluator_ref.rsplit(":", 1)[0],
            "evaluator.image.tag": evaluator_ref.rsplit(":", 1)[1],
            "evaluator.image.pullPolicy": "Never",
            "evaluator.allowedImages": "{localhost/abtest/}",  # our images, and the missing one of the stall test
            "evaluator.defaultResources.requests.cpu": "100m",  # three models fit the 2-core node
            "evaluator.defaultResources.requests.memory": "256Mi",
            **(values or {}),
        }
        self.metrics_port = 8080

    def install(self) -> None:
        self._helm("install", "--create-namespace")
        self.sa = next(
            d for d in helm_template(self.binaries, *(f"{k}={v}" for k, v in self.values.items())) if d["kind"] == "ServiceAccount"
        )["metadata"]["name"]
        self.deployment = f"{RELEASE}-abtest-operator"
        ControlPlane.wait_for(self._healthy, 120, "the operator's /metrics")

    def upgrade(self, values: dict) -> None:
        """`helm upgrade` with these values over the install's (an empty dict returns to the install's)."""
        self._helm("upgrade", values=values)

    def _helm(self, command: str, *flags: str, values: dict | None = None) -> None:
        helm = [str(self.binaries / "helm"), "--kubeconfig", str(self.cluster.admin_kubeconfig)]
        sets = list(itertools.chain.from_iterable(("--set", f"{k}={v}") for k, v in {**self.values, **(values or {})}.items()))
        chart = str(ROOT / "charts" / "abtest-operator")
        out = subprocess.run(
            [*helm, command, RELEASE, chart, "-n", RELEASE_NS, *flags, *sets, "--wait", "--timeout", "3m"], capture_output=True, text=True
        )
        if out.returncode != 0:
            raise RuntimeError(f"helm {command} failed: {out.stderr}\n{self.describe()}")

    def pods(self) -> list[dict]:
        """The operator's live pods (not those terminating)."""
        pods = json.loads(self.cluster.kubectl("get", "pods", "-n", RELEASE_NS, "-l", OPERATOR_SELECTOR, "-o", "json").stdout)["items"]
        return [p for p in pods if not p["metadata"].get("deletionTimestamp")]

    def pod(self) -> dict:
        """The operator's live pod (not one that is terminating)."""
        live = self.pods()
        if len(live) != 1:
            raise LookupError(f"expected one operator pod, found {[p['metadata']['name'] for p in live]}")
        return live[0]

    def _healthy(self) -> bool:
        try:
            return "abtest_abtests" in self.metrics()
        except (OSError, LookupError, KeyError):
            return False

    def metrics(self) -> str:
        import urllib.request

        ip = self.pod()["status"]["podIP"]
        with urllib.request.urlopen(f"http://{ip}:{self.metrics_port}/metrics", timeout=2) as resp:
            return resp.read().decode()

    def _container_id(self) -> str:
        (status,) = self.pod()["status"]["containerStatuses"]
        return status["containerID"]

    def freeze(self) -> None:
        """SIGSTOP: the operator stops mid-whatever, runs no cleanup, and nothing restarts it."""
        os.kill(self.cluster.node.container_pid(self._container_id()), signal.SIGSTOP)

    def kill(self) -> None:
        """SIGKILL of the operator's process (frozen or not); the kubelet restarts the container."""
        pod = self.pod()
        restarts = pod["status"]["containerStatuses"][0]["restartCount"]
        os.kill(self.cluster.node.container_pid(self._container_id()), signal.SIGKILL)

        def restarted():
            status = self.pod()["status"]["containerStatuses"][0]
            return status["restartCount"] > restarts and self._healthy()

        ControlPlane.wait_for(restarted, 120, "the kubelet to restart the operator", interval=0.5)

    def crash(self) -> None:
        """The operator dies without a goodbye and stays down: SIGSTOP (no handler or cleanup runs), then
        the Deployment goes to zero replicas, so the kubelet SIGKILLs the frozen process for good."""
        self.freeze()
        self.cluster.kubectl("scale", "deployment", self.deployment, "-n", RELEASE_NS, "--replicas=0")

    def start(self) -> None:
        """Back to one replica (after crash()); returns once the new pod serves /metrics."""
        self.cluster.kubectl("scale", "deployment", self.deployment, "-n", RELEASE_NS, "--replicas=1")
        ControlPlane.wait_for(self._healthy, 180, "the operator's new pod", interval=0.5)

    def uninstall(self) -> None:
        subprocess.run(
            [
                str(self.binaries / "helm"),
                "--kubeconfig",
                str(self.cluster.admin_kubeconfig),
                "uninstall",
                RELEASE,
                "-n",
                RELEASE_NS,
                "--wait",
                "--timeout",
                "60s",
            ],
            capture_output=True,
            text=True,
        )

    def log(self) -> str:
        out = self.cluster.kubectl("logs", "-n", RELEASE_NS, "-l", OPERATOR_SELECTOR, "--tail=300", check=False)
        return (out.stdout + out.stderr)[-6000:]

    def describe(self) -> str:
        return self.cluster.kubectl("describe", "pods", "-n", RELEASE_NS, check=False).stdout[-4000:]


_ns_counter = itertools.count()


def host_volume(cluster: ControlPlane, namespace: str, claim: str, path: Path, read_only: bool = False) -> None:
    """A hostPath PersistentVolume pre-bound to NAMESPACE/CLAIM (the test node's storage)."""
    path.mkdir(parents=True, exist_ok=True)
    if not read_only:
        path.chmod(0o1777)  # the pods run as UID 65532; a hostPath volume keeps the host's modes
    pv_name = f"{namespace}-{claim}"
    pv = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": pv_name},
        "spec": {
            "capacity": {"storage": "10Gi"},
            "accessModes": ["ReadWriteMany", "ReadOnlyMany"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": "",
            "hostPath": {"path": str(path)},
            "claimRef": {"namespace": namespace, "name": claim},
        },
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(pv))


def read_only_claim(cluster: ControlPlane, namespace: str, claim: str, path: Path) -> None:
    """NAMESPACE/CLAIM, a ReadOnlyMany claim bound to ``path`` on the test node (host_volume)."""
    host_volume(cluster, namespace, claim, path, read_only=True)
    pvc = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": claim},
        "spec": {"accessModes": ["ReadOnlyMany"], "storageClassName": "", "resources": {"requests": {"storage": "1Gi"}}},
    }
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(pvc))


def make_namespace(cluster: ControlPlane, models_dir: Path, label: str):
    """A fresh namespace enforcing Pod Security "restricted", with results and models volumes."""
    name = f"e2e-{next(_ns_counter)}-{label[:20].replace('_', '-').strip('-').lower()}"
    cluster.kubectl("create", "namespace", name)
    cluster.kubectl(
        "label", "namespace", name, "pod-security.kubernetes.io/enforce=restricted", "pod-security.kubernetes.io/enforce-version=latest"
    )
    results = cluster.root / "results" / name
    host_volume(cluster, name, "abtest-results", results)
    read_only_claim(cluster, name, "abtest-models", models_dir)
    ns = type("Namespace", (), {})()
    ns.name, ns.results = name, results
    return ns


class Prometheus:
    """Prometheus 3 (built by build-binaries.sh) on loopback, discovering the operator's Service and the evaluator pods
    through the API server (kubernetes_sd) with the scrape configs the chart's ServiceMonitor and PodMonitor stand
    for, and evaluating the chart's PrometheusRule (``monitors``: those objects as the chart renders them; only those
    labelled ``select`` are taken, as a Prometheus resource's selectors do)."""

    def __init__(self, root: Path, cluster: ControlPlane, binaries: Path, monitors: list[dict], select: dict):
        from cluster.controlplane import ADMIN_TOKEN
        from cluster.monitors import prometheus_config

        self.port = free_port()
        self.cluster = cluster
        root.mkdir(parents=True, exist_ok=True)
        cfg = prometheus_config(monitors, select, cluster.server, cluster.ca, ADMIN_TOKEN, root / "rules.yaml")
        (root / "prometheus.yml").write_text(yaml.safe_dump(cfg))
        self.log = open(root / "prometheus.log", "w")  # noqa: SIM115 (open for the server's lifetime)
        self.proc = subprocess.Popen(
            [
                str(binaries / "prometheus"),
                f"--config.file={root / 'prometheus.yml'}",
                f"--storage.tsdb.path={root / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        ControlPlane.wait_for(self._ready, 60, "prometheus /-/ready")

    def _ready(self) -> bool:
        import urllib.request

        if self.proc.poll() is not None:
            raise RuntimeError(f"prometheus exited {self.proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        import urllib.parse
        import urllib.request

        params = {"query": expr, **({"time": f"{at:.3f}"} if at else {})}
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/v1/query?{urllib.parse.urlencode(params)}", timeout=10) as resp:
            body = json.loads(resp.read())
        assert body["status"] == "success", body
        return body["data"]["result"]

    def alerts(self) -> list[dict]:
        """The alerts Prometheus holds now (pending and firing), with their labels and annotations."""
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/v1/alerts", timeout=10) as resp:
            return json.loads(resp.read())["data"]["alerts"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)


def start_cluster(cp: ControlPlane, images: dict) -> ControlPlane:
    """Control plane, the ABTest CRD and the real node with ``images`` imported; ``cp.api`` is an admin client."""
    from kubernetes import config

    from cluster.node import Node, prepare_network

    prepare_network()
    started = time.monotonic()
    cp.start()
    cp.timings["control plane"] = time.monotonic() - started
    cp.kubectl("apply", "-f", str(ROOT / "crds" / "abtest.yaml"))
    cp.kubectl("wait", "--for=condition=Established", "crd/abtests.abtest.dev", "--timeout=60s")
    cp.api = config.new_client_from_config(str(cp.admin_kubeconfig))
    started = time.monotonic()
    cp.node = Node(cp, images).start()
    cp.timings["node"] = time.monotonic() - started
    return cp


def start_operator(cluster: ControlPlane, binaries: Path, images: dict, values: dict | None = None) -> Operator:
    """`helm install` of the chart; also a kubeconfig with the operator's ServiceAccount token (op.kubeconfig)."""
    from cluster.controlplane import kubeconfig

    op = Operator(cluster, binaries, images, values)
    started = time.monotonic()
    op.install()
    cluster.timings["operator install"] = time.monotonic() - started
    token = cluster.kubectl("create", "token", op.sa, "-n", RELEASE_NS, "--duration=4h").stdout.strip()
    op.kubeconfig = cluster.root / "operator.kubeconfig"
    op.kubeconfig.write_text(
        yaml.safe_dump(kubeconfig(cluster.server, cluster.ca, token, user=f"system:serviceaccount:{RELEASE_NS}:{op.sa}"))
    )
    return op
