"""A real Kubernetes control plane on loopback for the e2e tests: etcd, kube-apiserver,
kube-controller-manager and kube-scheduler, built by ``tests/cluster/build-binaries.sh``.

Test code, not product code. Certificates come from openssl; the admin is a static token in
``system:masters``; service-account tokens are real (issuer, signing keys, TokenRequest).
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ADMIN_TOKEN = "abtest-e2e-admin-token"
NODE_TOKEN = "abtest-e2e-node-token"  # the kubelet: system:node:<name> in system:nodes (Node authorizer)
PROXY_TOKEN = "abtest-e2e-proxy-token"  # kube-proxy: system:kube-proxy (bound to system:node-proxier)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_binaries() -> Path:
    """Builds (or finds in the cache) the binaries; an error, never a skip, when that fails."""
    out = subprocess.run(["bash", str(HERE / "build-binaries.sh")], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"building the control-plane binaries failed:\n{out.stderr[-4000:]}")
    return Path(out.stdout.strip().splitlines()[-1])


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _sign(name: str, extfile: str, pki: Path) -> None:
    """NAME.csr -> NAME.crt, signed by the test CA for two days, with the [ext] section of EXTFILE."""
    args = f"x509 -req -in {name}.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out {name}.crt -days 2 -extfile {extfile} -extensions ext"
    _openssl(*args.split(), cwd=pki)


def make_pki(pki: Path, address: str) -> None:
    """A CA, the apiserver's serving certificate (its address, the Service IP, in-cluster names), its
    client certificate for kubelets (logs, exec), and service-account keys."""
    pki.mkdir(parents=True, exist_ok=True)
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=abtest-e2e-ca",
        cwd=pki,
    )
    (pki / "san.cnf").write_text(
        "[req]\ndistinguished_name=dn\n[dn]\n[ext]\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
        f"extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,IP:{address},IP:10.0.0.1,DNS:localhost,DNS:kubernetes,"
        "DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\n"
    )
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "apiserver.key", "-out", "apiserver.csr", "-subj", "/CN=kube-apiserver", cwd=pki
    )
    _sign("apiserver", "san.cnf", pki)
    (pki / "client.cnf").write_text(
        "[ext]\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n"
    )
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "kubelet-client.key",
        "-out",
        "kubelet-client.csr",
        "-subj",
        "/O=system:masters/CN=kube-apiserver-kubelet-client",
        cwd=pki,
    )
    _sign("kubelet-client", "client.cnf", pki)
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=pki)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)


def kubeconfig(server: str, ca: Path, token: str, user: str = "admin") -> dict:
    import base64

    return {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "e2e",
        "clusters": [
            {"name": "e2e", "cluster": {"server": server, "certificate-authority-data": base64.b64encode(ca.read_bytes()).decode()}}
        ],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": user}}],
    }


class Processes:
    """Long-running binaries from ``self.bin``, logged to ``self.root/<name>.log``, kept in ``self.procs``."""

    root: Path
    bin: Path
    procs: dict[str, subprocess.Popen]

    def _start(self, name: str, args: list[str], prefix: tuple[str, ...] = ()) -> None:
        log = open(self.root / f"{name}.log", "a")  # noqa: SIM115 (open for the process's lifetime; a restart appends)
        env = {**os.environ, "PATH": f"{self.bin}:{os.environ['PATH']}"}  # containerd finds its shim there
        self.procs[name] = subprocess.Popen(
            [*prefix, str(self.bin / name.split("#")[0]), *args], stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.log_tail(name)}")

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.root / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def _stop(self, name: str, timeout: float = 15) -> None:
        proc = self.procs.get(name)
        if proc and proc.poll() is None:
            os.killpg(proc.pid, 15)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()


@dataclass
class ControlPlane(Processes):
    root: Path
    bin: Path
    address: str = "127.0.0.1"  # where the API server listens and what it advertises (the node's bridge for pods)
    apiserver_args: list[str] = field(default_factory=list)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    port: int = 0
    etcd_port: int = 0
    node_token: str = NODE_TOKEN
    proxy_token: str = PROXY_TOKEN
    timings: dict[str, float] = field(default_factory=dict)  # seconds per start-up step, for docs/testing.md

    @property
    def server(self) -> str:
        return f"https://{self.address}:{self.port}"

    @property
    def admin_kubeconfig(self) -> Path:
        return self.root / "admin.kubeconfig"

    @property
    def ca(self) -> Path:
        return self.root / "pki" / "ca.crt"

    def start(self) -> ControlPlane:
        pki = self.root / "pki"
        make_pki(pki, self.address)
        self.port, self.etcd_port, peer = free_port(), free_port(), free_port()
        from cluster.node import NODE_NAME

        (self.root / "tokens.csv").write_text(
            f"{ADMIN_TOKEN},admin,admin-uid,system:masters\n"
            f'{NODE_TOKEN},system:node:{NODE_NAME},node-uid,"system:nodes"\n'
            f"{PROXY_TOKEN},system:kube-proxy,proxy-uid\n"
        )
        self.admin_kubeconfig.write_text(yaml.safe_dump(kubeconfig(self.server, self.ca, ADMIN_TOKEN)))
        self._start(
            "etcd",
            [
                "--name",
                "e2e",
                "--data-dir",
                str(self.root / "etcd"),
                "--listen-client-urls",
                f"http://127.0.0.1:{self.etcd_port}",
                "--advertise-client-urls",
                f"http://127.0.0.1:{self.etcd_port}",
                "--listen-peer-urls",
                f"http://127.0.0.1:{peer}",
                "--initial-advertise-peer-urls",
                f"http://127.0.0.1:{peer}",
                "--initial-cluster",
                f"e2e=http://127.0.0.1:{peer}",
                "--unsafe-no-fsync",
                "--log-level",
                "warn",
            ],
        )
        self._apiserver_argv = [
            f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
            f"--bind-address={self.address}",
            f"--secure-port={self.port}",
            f"--advertise-address={self.address}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--token-auth-file={self.root / 'tokens.csv'}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction,OwnerReferencesPermissionEnforcement",
            f"--kubelet-client-certificate={pki / 'kubelet-client.crt'}",
            f"--kubelet-client-key={pki / 'kubelet-client.key'}",
            "--kubelet-preferred-address-types=InternalIP",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--service-cluster-ip-range=10.0.0.0/24",
            "--allow-privileged=false",
            "--profiling=false",
            "--enable-priority-and-fairness=false",
            *self.apiserver_args,
        ]
        self._start("kube-apiserver", self._apiserver_argv)
        self.wait_ready()
        common = [
            f"--kubeconfig={self.admin_kubeconfig}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            f"--secure-port={free_port()}",
        ]
        self._start(
            "kube-controller-manager",
            [
                *common,
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                "--use-service-account-credentials=true",
                # Jobs, Deployments (the operator), EndpointSlices, node lifecycle (lifts the not-ready taint), garbage collector, service accounts and their
                # tokens, namespaces, PV binding, the CA publisher, the TTL-after-finished controller and resource quotas
                "--controllers=job,deployment-controller,replicaset-controller,endpointslice-controller,endpointslice-mirroring-controller,"
                "node-lifecycle-controller,garbage-collector-controller,serviceaccount-controller,serviceaccount-token-controller,namespace-controller,"
                "persistentvolume-binder-controller,root-ca-certificate-publisher-controller,ttl-after-finished-controller,resourcequota-controller",
            ],
        )
        self._start(
            "kube-scheduler",
            [f"--kubeconfig={self.admin_kubeconfig}", "--leader-elect=false", "--bind-address=127.0.0.1", f"--secure-port={free_port()}"],
        )
        self.wait_for(
            lambda: self.kubectl("get", "serviceaccount", "default", "-n", "default", check=False).returncode == 0,
            60,
            "the serviceaccount controller to create default/default",
        )
        return self

    def restart_apiserver(self, down: float) -> None:
        """The API server stops (SIGTERM), stays away ``down`` seconds, and comes back with the same flags: every
        watch and client in the cluster loses its connection meanwhile."""
        self._stop("kube-apiserver")
        time.sleep(down)
        self._start("kube-apiserver", self._apiserver_argv)
        self.wait_ready()

    def _ssl(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))

    def get(self, path: str) -> str:
        req = urllib.request.Request(self.server + path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        with urllib.request.urlopen(req, context=self._ssl(), timeout=5) as resp:
            return resp.read().decode()

    def wait_ready(self, timeout: float = 90) -> None:
        def ready():
            self.check_alive()
            try:
                return self.get("/readyz") == "ok"
            except OSError:
                return False

        self.wait_for(ready, timeout, "kube-apiserver /readyz")

    @staticmethod
    def wait_for(predicate, timeout: float, what: str, interval: float = 0.25):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(interval)
        raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None, kubeconfig: Path | None = None
    ) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [str(self.bin / "kubectl"), f"--kubeconfig={kubeconfig or self.admin_kubeconfig}", *args],
            capture_output=True,
            text=True,
            input=input,
            timeout=120,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed: {proc.stderr}")
        return proc

    def stop(self) -> None:
        for name in reversed(list(self.procs)):
            self._stop(name, timeout=10)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
