"""The e2e harness outside pytest: the operator process, volumes, namespaces, Prometheus.

Shared by the e2e fixtures (tests/e2e/conftest.py) and benchmarks/operator_scale.py.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import yaml
from kubernetes import client

from cluster.controlplane import ControlPlane, free_port

ROOT = Path(__file__).resolve().parent.parent.parent
IMAGE = "localhost/abtest/evaluator:e2e"
RELEASE_NS = "abtest-system"


def helm_template(binaries: Path, *sets: str) -> list[dict]:
    out = subprocess.run([str(binaries / "helm"), "template", "abtest", str(ROOT / "charts" / "abtest-operator"), "--namespace", RELEASE_NS, "--kube-version", "1.37.2",
                          *itertools.chain.from_iterable(("--set", s) for s in sets)], capture_output=True, text=True, check=True)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


class Operator:
    """`abtest operator` as a process with the chart's ServiceAccount and RBAC."""

    def __init__(self, cluster: ControlPlane, kubeconfig_path: Path, log_dir: Path, env: dict | None = None):
        self.cluster, self.kubeconfig, self.log_dir, self.extra_env = cluster, kubeconfig_path, log_dir, env or {}
        self.metrics_port = free_port()
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        log = open(self.log_dir / f"operator-{self.starts}.log", "w")
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "ABTEST_EVALUATOR_IMAGE": IMAGE, "ABTEST_MAX_WORKERS": "4", **self.extra_env}
        self.proc = subprocess.Popen([sys.executable, "-m", "abtest_operator.cli", "operator", "--metrics-port", str(self.metrics_port),
                                      "--health-port", str(free_port())], stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        ControlPlane.wait_for(self._healthy, 60, "the operator's /metrics")

    def _healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"operator exited {self.proc.returncode}:\n{self.log()}")
        try:
            return "abtest_abtests" in self.metrics()
        except OSError:
            return False

    def metrics(self) -> str:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2) as resp:
            return resp.read().decode()

    def kill(self, sig=signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=30)

    def log(self) -> str:
        return (self.log_dir / f"operator-{self.starts}.log").read_text(errors="replace")[-6000:]


_ns_counter = itertools.count()


def host_volume(cluster: ControlPlane, namespace: str, claim: str, path: Path, read_only: bool = False) -> None:
    """A hostPath PersistentVolume pre-bound to NAMESPACE/CLAIM (the test node's storage)."""
    path.mkdir(parents=True, exist_ok=True)
    pv_name = f"{namespace}-{claim}"
    pv = {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv_name},
          "spec": {"capacity": {"storage": "10Gi"}, "accessModes": ["ReadWriteMany", "ReadOnlyMany"], "persistentVolumeReclaimPolicy": "Retain",
                   "storageClassName": "", "hostPath": {"path": str(path)}, "claimRef": {"namespace": namespace, "name": claim}}}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(pv))


def make_namespace(cluster: ControlPlane, models_dir: Path, label: str):
    """A fresh namespace enforcing Pod Security "restricted", with results and models volumes."""
    name = f"e2e-{next(_ns_counter)}-{label[:20].replace('_', '-').strip('-').lower()}"
    cluster.kubectl("create", "namespace", name)
    cluster.kubectl("label", "namespace", name, "pod-security.kubernetes.io/enforce=restricted", "pod-security.kubernetes.io/enforce-version=latest")
    results = cluster.root / "results" / name
    host_volume(cluster, name, "abtest-results", results)
    host_volume(cluster, name, "abtest-models", models_dir)
    cluster.kubectl("apply", "-n", name, "-f", "-", input=json.dumps(
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "abtest-models"},
         "spec": {"accessModes": ["ReadOnlyMany"], "storageClassName": "", "resources": {"requests": {"storage": "1Gi"}}}}))
    ns = type("Namespace", (), {})()
    ns.name, ns.results = name, results
    return ns


class Prometheus:
    """Debian's prometheus on loopback, scraping the operator and the evaluator pods.

    Debian builds Prometheus without kubernetes_sd, so a small thread stands in for it: it lists the
    pods annotated prometheus.io/scrape (what the PodMonitor selects) and writes them as file_sd targets.
    """

    def __init__(self, root: Path, cluster: ControlPlane, operator_port: int):
        self.port = free_port()
        self.cluster = cluster
        root.mkdir(parents=True, exist_ok=True)
        self.targets = root / "evaluators.json"
        self.targets.write_text("[]")
        cfg = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [
                {"job_name": "abtest-operator", "static_configs": [{"targets": [f"127.0.0.1:{operator_port}"]}]},
                {"job_name": "abtest-evaluators", "honor_labels": True,
                 "file_sd_configs": [{"files": [str(self.targets)], "refresh_interval": "1s"}]},
            ],
        }
        self._stop = threading.Event()
        threading.Thread(target=self._discover, daemon=True).start()
        (root / "prometheus.yml").write_text(yaml.safe_dump(cfg))
        self.log = open(root / "prometheus.log", "w")
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError("prometheus is not installed: apt-get install prometheus (hack/test.sh does)")
        self.proc = subprocess.Popen([binary, f"--config.file={root / 'prometheus.yml'}", f"--storage.tsdb.path={root / 'data'}",
                                      f"--web.listen-address=127.0.0.1:{self.port}"], stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
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

    def _discover(self) -> None:
        core = client.CoreV1Api(self.cluster.api)
        while not self._stop.wait(0.5):
            try:
                pods = core.list_pod_for_all_namespaces(field_selector="status.phase=Running").items
            except Exception:
                continue
            groups = [{"targets": [f"{p.status.pod_ip}:{p.metadata.annotations['prometheus.io/port']}"],
                       "labels": {"pod": p.metadata.name}}
                      for p in pods if (p.metadata.annotations or {}).get("prometheus.io/scrape") == "true" and p.status.pod_ip]
            tmp = self.targets.with_suffix(".tmp")
            tmp.write_text(json.dumps(groups))
            tmp.replace(self.targets)

    def stop(self) -> None:
        self._stop.set()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)


def start_cluster(cp: ControlPlane, rewrite=None) -> ControlPlane:
    """Control plane, the ABTest CRD and the test node agent; ``cp.api`` is an admin client."""
    from kubernetes import config

    from cluster.node_agent import NodeAgent

    cp.start()
    cp.kubectl("apply", "-f", str(ROOT / "crds" / "abtest.yaml"))
    cp.kubectl("wait", "--for=condition=Established", "crd/abtests.abtest.dev", "--timeout=60s")
    cp.api = config.new_client_from_config(str(cp.admin_kubeconfig))
    cp.agent = NodeAgent(cp.api, cp.root / "node", cp.port, cp.ca, Path(sys.executable).parent, rewrite=rewrite).start()
    return cp


def start_operator(cluster: ControlPlane, binaries: Path, env: dict | None = None) -> Operator:
    """Installs the chart's ServiceAccount and RBAC, then runs the operator with that identity's token."""
    from cluster.controlplane import kubeconfig

    cluster.kubectl("create", "namespace", RELEASE_NS)
    docs = helm_template(binaries, "crds.enabled=false")
    rbac = [d for d in docs if d["kind"] in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding")]
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(rbac))
    sa = next(d for d in rbac if d["kind"] == "ServiceAccount")["metadata"]["name"]
    token = cluster.kubectl("create", "token", sa, "-n", RELEASE_NS, "--duration=4h").stdout.strip()
    path = cluster.root / "operator.kubeconfig"
    path.write_text(yaml.safe_dump(kubeconfig(cluster.server, cluster.ca, token, user=f"system:serviceaccount:{RELEASE_NS}:{sa}")))
    op = Operator(cluster, path, cluster.root, env)
    op.sa = sa
    op.start()
    return op
