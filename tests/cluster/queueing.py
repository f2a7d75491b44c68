"""Kueue and the JobSet controller beside the e2e control plane, for the queue mode's tests.

Test code, not product code. Both are the real controllers, built from their Go modules by
``tests/cluster/build-binaries.sh`` with their CRDs and webhook configurations, run as host processes with the
admin kubeconfig (as the control plane's own controllers are). Their webhook servers listen on 127.0.0.1 with a
certificate from the cluster's CA, and the webhook configurations point at them by URL instead of a Service; the
API server reaches them there. Internal certificate rotation, leader election, the metrics servers and Kueue's visibility server are off.

Kueue reads its metrics certificate from a fixed path, /etc/kueue/metrics/certs, whenever its internal certificate
management is off (even with the metrics server off), so it runs in a private mount namespace whose /etc is an
overlay holding that directory: the host's /etc stays untouched.
"""

from __future__ import annotations

import base64
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from cluster.controlplane import ControlPlane, Processes, _openssl, _sign, free_port

KUEUE, JOBSET = "kueue", "jobset"  # build-binaries.sh links these names to the versions it built
QUEUE = "abtests"  # the LocalQueue each test namespace gets


@dataclass
class Queueing(Processes):
    cluster: ControlPlane
    root: Path = field(init=False)
    bin: Path = field(init=False)
    procs: dict = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    webhooks: list[tuple[str, str]] = field(default_factory=list)  # (kind, name) of each configuration applied

    def __post_init__(self):
        self.root, self.bin = self.cluster.root / "queueing", self.cluster.bin
        self.root.mkdir(parents=True, exist_ok=True)

    def manifests(self, component: str) -> Path:
        return self.bin / "manifests" / component

    def start(self, kueue: bool = True) -> Queueing:
        """JobSet, and Kueue unless ``kueue`` is False (then JobSets stay suspended: nobody admits them)."""
        started = time.monotonic()
        certs = self._serving_certificate()
        components = (JOBSET, KUEUE) if kueue else (JOBSET,)
        for component in components:
            self.cluster.kubectl("apply", "--server-side", "-f", str(self.manifests(component) / "crds"))
        self.cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
        self.ports = {component: free_port() for component in components}
        self._run(JOBSET, "config.jobset.x-k8s.io/v1alpha1", certs)
        if kueue:
            self.cluster.kubectl("create", "namespace", "kueue-system", check=False)
            self._run(
                KUEUE,
                "config.kueue.x-k8s.io/v1beta2",
                certs,
                {"integrations": {"frameworks": ["jobset.x-k8s.io/jobset"]}},
                # its on-demand visibility API server wants certificates of its own; not used here
                args=("--feature-gates=VisibilityOnDemand=false",),
                prefix=self._etc_overlay(certs),
            )
        for component in components:
            self._wait_listening(component)
            webhooks = self._webhooks(component)
            self.cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(webhooks))
            self.webhooks += [(doc["kind"].lower(), doc["metadata"]["name"]) for doc in webhooks]
        self.cluster.timings["queueing"] = time.monotonic() - started
        return self

    def _serving_certificate(self) -> Path:
        """tls.crt/tls.key for 127.0.0.1, signed by the cluster's CA (which the webhook configurations name)."""
        pki = self.cluster.root / "pki"
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "webhook.key", "-out", "webhook.csr", "-subj", "/CN=webhooks", cwd=pki)
        _sign("webhook", "san.cnf", pki)  # the API server's extension file: serverAuth for 127.0.0.1
        certs = self.root / "certs"
        certs.mkdir(exist_ok=True)
        shutil.copy(pki / "webhook.crt", certs / "tls.crt")
        shutil.copy(pki / "webhook.key", certs / "tls.key")
        return certs

    def _run(
        self,
        component: str,
        api_version: str,
        certs: Path,
        extra: dict | None = None,
        args: tuple[str, ...] = (),
        prefix: tuple[str, ...] = (),
    ) -> None:
        config = {
            "apiVersion": api_version,
            "kind": "Configuration",
            "leaderElection": {"leaderElect": False},
            "internalCertManagement": {"enable": False},
            "webhook": {"host": "127.0.0.1", "port": self.ports[component], "certDir": str(certs)},
            "metrics": {"bindAddress": "0"},
            "health": {"healthProbeBindAddress": f"127.0.0.1:{free_port()}"},
            **(extra or {}),
        }
        path = self.root / f"{component}.yaml"
        path.write_text(yaml.safe_dump(config))
        self._start(component, [f"--config={path}", f"--kubeconfig={self.cluster.admin_kubeconfig}", *args], prefix)

    def _etc_overlay(self, certs: Path) -> tuple[str, ...]:
        """A command prefix: a private mount namespace whose /etc is the host's with /etc/kueue/metrics/certs added."""
        upper, work = self.root / "etc-upper", self.root / "etc-work"
        (upper / "kueue" / "metrics").mkdir(parents=True, exist_ok=True)
        work.mkdir(exist_ok=True)
        shutil.copytree(certs, upper / "kueue" / "metrics" / "certs", dirs_exist_ok=True)
        mount = f"mount -t overlay overlay -o lowerdir=/etc,upperdir={upper},workdir={work} /etc"
        return ("unshare", "--mount", "--propagation", "private", "sh", "-c", f'{mount} && exec "$@"', "sh")

    def _wait_listening(self, component: str) -> None:
        def listening() -> bool:
            self.check_alive()
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.ports[component])) == 0

        self.cluster.wait_for(listening, 60, f"{component}'s webhook server")

    def _webhooks(self, component: str) -> list[dict]:
        """The component's webhook configurations, renamed to be its own, calling it at 127.0.0.1; Kueue's only for the
        kinds it serves with the JobSet integration alone (its own and JobSets)."""
        ca = base64.b64encode(self.cluster.ca.read_bytes()).decode()
        out = []
        for doc in yaml.safe_load_all((self.manifests(component) / "webhooks.yaml").read_text()):
            if not doc:
                continue
            doc["metadata"]["name"] = f"{component}-{doc['metadata']['name']}"
            hooks = []
            for hook in doc["webhooks"]:
                path = hook["clientConfig"]["service"]["path"]
                if component == KUEUE and "kueue-x-k8s-io" not in path and "jobset" not in path:
                    continue
                hook["clientConfig"] = {"url": f"https://127.0.0.1:{self.ports[component]}{path}", "caBundle": ca}
                hooks.append(hook)
            doc["webhooks"] = hooks
            out.append(doc)
        return out

    def cluster_queue(self, name: str, gpus: int) -> None:
        """A ClusterQueue whose GPU quota is ``gpus`` (CPU and memory plenty), for every namespace's LocalQueue."""
        self.check_alive()  # a controller that died after opening its port would read as a refused webhook call
        flavor = {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ResourceFlavor", "metadata": {"name": "default"}}
        resources = [
            {"name": "cpu", "nominalQuota": "64"},
            {"name": "memory", "nominalQuota": "256Gi"},
            {"name": "nvidia.com/gpu", "nominalQuota": gpus},
        ]
        queue = {
            "apiVersion": "kueue.x-k8s.io/v1beta2",
            "kind": "ClusterQueue",
            "metadata": {"name": name},
            "spec": {
                "namespaceSelector": {},
                "resourceGroups": [
                    {"coveredResources": [r["name"] for r in resources], "flavors": [{"name": "default", "resources": resources}]}
                ],
            },
        }
        self.cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all([flavor, queue]))

    def local_queue(self, namespace: str, cluster_queue: str, name: str = QUEUE) -> None:
        queue = {
            "apiVersion": "kueue.x-k8s.io/v1beta2",
            "kind": "LocalQueue",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"clusterQueue": cluster_queue},
        }
        self.cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(queue))

    def stop(self) -> None:
        """Webhook configurations first (an unanswered webhook would refuse the next test's Jobs), then the processes."""
        for kind, name in self.webhooks:
            self.cluster.kubectl("delete", kind, name, "--ignore-not-found", check=False)
        self.webhooks.clear()
        for name in list(self.procs):
            self._stop(name, timeout=10)
