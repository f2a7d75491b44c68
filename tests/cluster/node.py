"""A real Kubernetes node for the e2e tests: containerd 2.x + runc + CNI (bridge, host-local, loopback,
portmap) + kubelet + kube-proxy, running the project's images built from the Dockerfile.

Test code, not product code. Everything kind puts inside its node container runs here directly, as
root, with its state under the run's root folder:

- a Linux bridge (``abtest0``) carries the pod network; its address is also the API server's
  advertise address, so the ``kubernetes`` Service (kube-proxy, iptables) reaches it from pods;
- containerd serves CRI on a private socket; images are imported from the OCI archives that
  ``hack/build-images.sh`` writes; the sandbox image is the local pause image (nothing is pulled);
- the kubelet authenticates as ``system:node:<name>`` (Node authorizer + NodeRestriction) and runs
  with the two settings this machine kind needs (design.md §7): ``failCgroupV1: false`` and
  containerd's ``restrict_oom_score_adj``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from cluster.controlplane import Processes, free_port, kubeconfig

NODE_NAME = "abtest-node"
BRIDGE = "abtest0"
POD_CIDR = "10.244.0.0/24"
GATEWAY = "10.244.0.1"  # the bridge's address: pods' default gateway and the API server's advertise address
CNI_BIN_DIRS = ["/usr/lib/cni", "/opt/cni/bin"]
RUNC = shutil.which("runc") or "/usr/sbin/runc"
# The test node advertises GPUs as a plain extended resource (the documented node-status patch), so the
# scheduler places `device: auto` pods as on a GPU node; the pods see no device and fall back to CPU.
EXTENDED_RESOURCES = {"nvidia.com/gpu": "8"}


def sh(*args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, check=check, **kwargs)


def prepare_network() -> None:
    """The pod bridge with the gateway address, forwarding, and bridged traffic through iptables; no pod network
    left by an earlier run (one that died before its node stopped)."""
    remove_pod_networks()
    if sh("ip", "link", "show", BRIDGE, check=False).returncode != 0:
        sh("ip", "link", "add", BRIDGE, "type", "bridge")
    addresses = sh("ip", "-o", "-4", "addr", "show", "dev", BRIDGE).stdout
    if f"{GATEWAY}/" not in addresses:
        sh("ip", "addr", "add", f"{GATEWAY}/24", "dev", BRIDGE)
    sh("ip", "link", "set", BRIDGE, "up")
    for key, value in (("net/ipv4/ip_forward", "1"), ("net/bridge/bridge-nf-call-iptables", "1")):
        path = Path("/proc/sys") / key
        if path.exists() and path.read_text().strip() != value:
            path.write_text(value)


def remove_pod_networks() -> None:
    """Deletes the network namespaces of pods on this machine's pod network. Stopping containerd runs no CNI DEL,
    so a pod's namespace outlived its node, its address still answering on the bridge; the first pod of the next
    run (the operator, 10.244.0.2 every time) then shared its address with a dead one, and the server's replies
    after a pause could reach the dead one, which reset the connection: the operator's watches went silent until
    kopf's 70 s inactivity timeout. One node per machine, so every namespace on POD_CIDR is a leftover here."""
    prefix = POD_CIDR.rsplit(".", 1)[0] + "."
    for line in sh("ip", "netns", "list", check=False).stdout.splitlines():
        name = line.split()[0]
        if name.startswith("cni-") and f" {prefix}" in sh("ip", "-n", name, "-o", "-4", "addr", "show", check=False).stdout:
            sh("ip", "netns", "delete", name, check=False)


@dataclass
class Node(Processes):
    """containerd, kubelet and kube-proxy for one node, registered with the control plane ``cluster``."""

    cluster: object  # cluster.controlplane.ControlPlane
    images: dict[str, tuple[str, Path]]  # target -> (image reference, OCI archive)
    root: Path = field(init=False)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def __post_init__(self):
        self.root = self.cluster.root / "node"
        self.sock = self.root / "containerd" / "containerd.sock"
        self.bin = self.cluster.bin

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return sh(str(self.bin / "ctr"), "--address", str(self.sock), "--namespace", "k8s.io", *args, check=check)

    # --- start ----------------------------------------------------------------------------------

    def start(self) -> Node:
        self.root.mkdir(parents=True, exist_ok=True)
        self._start_containerd()
        for target, (_ref, archive) in self.images.items():
            started = time.monotonic()
            self.ctr("images", "import", str(archive))  # named by the archive's ref.name annotation
            self.cluster.timings[f"import {target}"] = time.monotonic() - started

        cfg = self.root / "kubelet"
        cfg.mkdir(exist_ok=True)
        (cfg / "kubeconfig").write_text(
            yaml.safe_dump(kubeconfig(self.cluster.server, self.cluster.ca, self.cluster.node_token, user=f"system:node:{NODE_NAME}"))
        )
        self.kubelet_port = free_port()
        (cfg / "config.yaml").write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kubelet.config.k8s.io/v1beta1",
                    "kind": "KubeletConfiguration",
                    "failCgroupV1": False,
                    "cgroupDriver": "cgroupfs",  # this machine kind has cgroups v1
                    "containerRuntimeEndpoint": f"unix://{self.sock}",
                    "address": GATEWAY,
                    "port": self.kubelet_port,
                    "readOnlyPort": 0,
                    "healthzBindAddress": "127.0.0.1",
                    "healthzPort": free_port(),
                    "authentication": {
                        "anonymous": {"enabled": False},
                        "webhook": {"enabled": True},
                        "x509": {"clientCAFile": str(self.cluster.ca)},
                    },
                    "authorization": {"mode": "Webhook"},
                    "podCIDR": POD_CIDR,
                    "maxPods": 110,
                    "failSwapOn": False,
                    "podLogsDir": str(self.root / "pod-logs"),
                    "resolvConf": "/etc/resolv.conf",
                    "imageGCHighThresholdPercent": 100,
                    "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
                    "serializeImagePulls": False,
                    "fileCheckFrequency": "5s",
                    "syncFrequency": "5s",
                    "nodeStatusUpdateFrequency": "5s",
                    "nodeStatusReportFrequency": "10s",
                    "shutdownGracePeriod": "0s",
                    "logging": {"verbosity": 1},
                }
            )
        )
        self._start(
            "kubelet",
            [
                f"--config={cfg / 'config.yaml'}",
                f"--kubeconfig={cfg / 'kubeconfig'}",
                f"--root-dir={self.root / 'kubelet-root'}",
                f"--cert-dir={cfg / 'pki'}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={GATEWAY}",
            ],
        )
        self.cluster.wait_for(self._ready, 120, f"node {NODE_NAME} to be Ready", interval=0.5)
        # Extended resources are advertised through the node's status (kubernetes.io docs, "Advertise Extended Resources").
        self.cluster.kubectl(
            "patch",
            "node",
            NODE_NAME,
            "--subresource=status",
            "--type=merge",
            "-p",
            json.dumps({"status": {"capacity": EXTENDED_RESOURCES}}),
        )
        self.cluster.wait_for(
            self._advertises_extended_resources, 60, "the kubelet to make the extended resources allocatable", interval=0.5
        )

        proxy = self.root / "kube-proxy"
        proxy.mkdir(exist_ok=True)
        (proxy / "kubeconfig").write_text(
            yaml.safe_dump(kubeconfig(self.cluster.server, self.cluster.ca, self.cluster.proxy_token, user="system:kube-proxy"))
        )
        (proxy / "config.yaml").write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
                    "kind": "KubeProxyConfiguration",
                    "mode": "iptables",
                    "clientConnection": {"kubeconfig": str(proxy / "kubeconfig")},
                    "hostnameOverride": NODE_NAME,
                    "clusterCIDR": POD_CIDR,
                    "healthzBindAddress": f"127.0.0.1:{free_port()}",
                    "metricsBindAddress": f"127.0.0.1:{free_port()}",
                    # leave the host's conntrack sysctls alone
                    "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
                }
            )
        )
        self._start("kube-proxy", [f"--config={proxy / 'config.yaml'}"])
        self.cluster.wait_for(self._service_rules, 60, "kube-proxy's rules for the kubernetes Service", interval=0.5)
        return self

    def _start_containerd(self) -> None:
        state = self.root / "containerd"
        state.mkdir(parents=True, exist_ok=True)
        cni_conf = self.root / "cni"
        cni_conf.mkdir(exist_ok=True)
        (cni_conf / "10-abtest.conflist").write_text(
            json.dumps(
                {
                    "cniVersion": "1.0.0",
                    "name": "abtest",
                    "plugins": [
                        {
                            "type": "bridge",
                            "bridge": BRIDGE,
                            "isGateway": True,
                            "ipMasq": False,
                            "hairpinMode": True,
                            "ipam": {
                                "type": "host-local",
                                "ranges": [[{"subnet": POD_CIDR, "gateway": GATEWAY}]],
                                "routes": [{"dst": "0.0.0.0/0"}],
                                "dataDir": str(self.root / "cni-ipam"),
                            },
                        },
                        {"type": "portmap", "capabilities": {"portMappings": True}},
                    ],
                },
                indent=1,
            )
        )
        pause_ref = self.images["pause"][0]
        (state / "config.toml").write_text(f"""version = 3
root = "{state / "root"}"
state = "{state / "state"}"
[grpc]
  address = "{self.sock}"
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{pause_ref}"
[plugins."io.containerd.cri.v1.runtime"]
  # lowering a container's oom_score_adj needs CAP_SYS_RESOURCE, which this machine kind lacks
  restrict_oom_score_adj = true
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "{RUNC}"
        Root = "{state / "runc"}"
        SystemdCgroup = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = {json.dumps(CNI_BIN_DIRS)}
    conf_dir = "{cni_conf}"
[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
""")
        self._start("containerd", ["--config", str(state / "config.toml")])
        self.cluster.wait_for(
            lambda: self.check_alive() or (self.sock.exists() and self.ctr("version", check=False).returncode == 0),
            60,
            "containerd's socket",
            interval=0.2,
        )

    def _ready(self) -> bool:
        self.check_alive()
        out = self.cluster.kubectl("get", "node", NODE_NAME, "-o", "json", check=False)
        if out.returncode != 0:
            return False
        conditions = {c["type"]: c["status"] for c in json.loads(out.stdout)["status"].get("conditions", [])}
        return conditions.get("Ready") == "True"

    def _advertises_extended_resources(self) -> bool:
        node = json.loads(self.cluster.kubectl("get", "node", NODE_NAME, "-o", "json").stdout)
        return all(node["status"].get("allocatable", {}).get(k) == v for k, v in EXTENDED_RESOURCES.items())

    def _service_rules(self) -> bool:
        self.check_alive()
        return "default/kubernetes:https" in sh("iptables-save", "-t", "nat", check=False).stdout

    # --- what tests ask of the node -------------------------------------------------------------

    def info(self) -> dict:
        return json.loads(self.cluster.kubectl("get", "node", NODE_NAME, "-o", "json").stdout)["status"]["nodeInfo"]

    def tasks(self) -> dict[str, int]:
        """Running containers on the node: container ID -> host PID of its main process."""
        rows = (line.split() for line in self.ctr("task", "ls", check=False).stdout.splitlines()[1:])
        return {row[0]: int(row[1]) for row in rows if len(row) >= 2 and row[1].isdigit()}

    def container_pid(self, container_id: str) -> int:
        """The host PID of a container's main process (``containerd://ID`` from a pod's status)."""
        pid = self.tasks().get(container_id.removeprefix("containerd://"))
        if pid is None:
            raise LookupError(f"no running task for {container_id}")
        return pid

    # --- stop -----------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stops the pods' containers first (so nothing outlives the run), then the node's processes."""
        if "containerd" in self.procs and self.procs["containerd"].poll() is None:
            for pid in self.tasks().values():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for name in ("kube-proxy", "kubelet"):
            self._stop(name)
        sh(str(self.bin / "kube-proxy"), "--cleanup", check=False)  # its iptables rules belong to this run only
        # The runc shims outlive containerd by design; stop them so their mounts can go.
        sh("pkill", "-KILL", "-f", f"containerd-shim-runc-v2.* -address {self.sock}", check=False)
        self._stop("containerd")
        remove_pod_networks()
        self._cleanup_mounts()

    def _cleanup_mounts(self) -> None:
        """Unmounts whatever the kubelet and containerd left under the node's root (deepest first)."""
        root = str(self.root)
        mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
        for mount in sorted((m for m in mounts if m.startswith(root)), key=len, reverse=True):
            sh("umount", "-l", mount.replace("\\040", " "), check=False)
