"""A test node agent: a Node whose pods run as local processes. Test code; not a kubelet.

It registers a Node with cpu, memory and ``nvidia.com/gpu`` capacity, watches the pods the real
scheduler binds to it and runs each container's command with the project's installed code standing
in for the image: env (with the downward API fields used here), ``$(VAR)`` expansion, volumes
bind-mounted at their mount paths in a private mount namespace (root read-only when the container
asks for it), a real ServiceAccount token from the TokenRequest API at the standard path. It reports
Running, then Succeeded/Failed with exit codes and termination messages, so the real Job controller
completes the Jobs. Deleting a pod kills its processes. What it does not do: images, cgroups, user
switching, probes, restarts, networking beyond giving each pod its own loopback address.
"""

from __future__ import annotations

import base64
import itertools
import logging
import os
import re
import shlex
import signal
import subprocess
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

log = logging.getLogger("node-agent")
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class PodProcess:
    def __init__(self, uid: str, proc: subprocess.Popen, log_path: Path, container: dict, started: str):
        self.uid, self.proc, self.log_path, self.container, self.started = uid, proc, log_path, container, started
        self.killed = False


class NodeAgent:
    def __init__(self, api: client.ApiClient, state_dir: Path, server_port: int, ca_file: Path, bin_dir: Path, name: str = "test-node",
                 rewrite=None):
        self.core = client.CoreV1Api(api)
        self.name = name
        self.state = state_dir
        self.server_port = server_port
        self.ca_file = ca_file
        self.bin_dir = bin_dir
        self.rewrite = rewrite  # argv -> argv, e.g. a fast stand-in evaluator for benchmarks
        self.pods: dict[str, PodProcess] = {}
        self.seen: set[str] = set()
        self.ips = (f"127.10.{n // 250}.{n % 250 + 1}" for n in itertools.count())  # one loopback address per pod
        self.pod_ips: dict[str, str] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    # --- the Node -----------------------------------------------------------------------------

    def register(self) -> None:
        capacity = {"cpu": "16", "memory": "64Gi", "nvidia.com/gpu": "8", "pods": "110", "ephemeral-storage": "100Gi"}
        node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": self.name, "labels": {"kubernetes.io/hostname": self.name,
                                                                                              "kubernetes.io/os": "linux"}}}
        try:
            self.core.create_node(node)
        except ApiException as err:
            if err.status != 409:
                raise
        self.core.patch_node(self.name, {"spec": {"taints": []}})  # no node-lifecycle controller here to lift not-ready
        self.core.patch_node_status(self.name, {"status": {"capacity": capacity, "allocatable": capacity,
                                                           "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
                                                           "conditions": [self._ready()],
                                                           "nodeInfo": {"kubeletVersion": "test-agent", "operatingSystem": "linux", "architecture": "amd64",
                                                                        "containerRuntimeVersion": "local-process://1", "kernelVersion": "", "osImage": "",
                                                                        "kubeProxyVersion": "", "machineID": "", "systemUUID": "", "bootID": ""}}})

    def _ready(self) -> dict:
        return {"type": "Ready", "status": "True", "reason": "AgentReady", "message": "test node agent is running",
                "lastHeartbeatTime": now(), "lastTransitionTime": now()}

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> NodeAgent:
        self.register()
        for target in (self._watch, self._heartbeat):
            t = threading.Thread(target=target, daemon=True, name=f"node-agent-{target.__name__}")
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            for pp in self.pods.values():
                self._kill(pp)

    def _heartbeat(self) -> None:
        while not self._stop.wait(10):
            try:
                self.core.patch_node_status(self.name, {"status": {"conditions": [self._ready()]}})
            except Exception as err:  # the control plane may be shutting down
                log.debug("heartbeat failed: %s", err)

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                stream = watch.Watch().stream(self.core.list_pod_for_all_namespaces, field_selector=f"spec.nodeName={self.name}",
                                              timeout_seconds=30)
                for event in stream:
                    if self._stop.is_set():
                        return
                    self._handle(event["type"], event["object"])
            except Exception as err:
                if not self._stop.is_set():
                    log.warning("pod watch restarted: %s", err)
                    time.sleep(0.5)

    def _handle(self, kind: str, pod: client.V1Pod) -> None:
        uid = pod.metadata.uid
        if kind == "DELETED":
            with self._lock:
                if uid in self.pods:
                    self._kill(self.pods.pop(uid))
            return
        if pod.metadata.deletion_timestamp:
            with self._lock:
                if uid in self.pods:
                    self._kill(self.pods.pop(uid))
            try:  # we are the "kubelet": confirm the deletion
                self.core.delete_namespaced_pod(pod.metadata.name, pod.metadata.namespace, grace_period_seconds=0,
                                                body=client.V1DeleteOptions(grace_period_seconds=0, preconditions=client.V1Preconditions(uid=uid)))
            except ApiException as err:
                if err.status not in (404, 409):
                    raise
            return
        if uid in self.seen or (pod.status and pod.status.phase not in (None, "Pending")):
            return
        self.seen.add(uid)
        try:
            self._start_pod(pod)
        except Exception as err:
            log.exception("starting pod %s/%s failed", pod.metadata.namespace, pod.metadata.name)
            self._report_failed_start(pod, str(err))

    # --- running a pod -------------------------------------------------------------------------

    def _volume_sources(self, pod: client.V1Pod, pod_dir: Path) -> dict[str, Path]:
        ns = pod.metadata.namespace
        sources = {}
        for vol in pod.spec.volumes or []:
            target = pod_dir / "volumes" / vol.name
            if vol.empty_dir is not None:
                target.mkdir(parents=True, exist_ok=True)
                sources[vol.name] = target
            elif vol.persistent_volume_claim is not None:
                claim = self.core.read_namespaced_persistent_volume_claim(vol.persistent_volume_claim.claim_name, ns)
                pv = self.core.read_persistent_volume(claim.spec.volume_name)
                sources[vol.name] = Path(pv.spec.host_path.path)
            elif vol.host_path is not None:
                sources[vol.name] = Path(vol.host_path.path)
            elif vol.projected is not None:
                target.mkdir(parents=True, exist_ok=True)
                for src in vol.projected.sources:
                    if src.service_account_token is not None:
                        self._write_token(pod, target / src.service_account_token.path, src.service_account_token)
                    elif src.config_map is not None:
                        self._write_items(self.core.read_namespaced_config_map(src.config_map.name, ns).data or {}, src.config_map.items, target)
                    elif src.downward_api is not None:
                        for item in src.downward_api.items:
                            (target / item.path).write_text(self._field(pod, item.field_ref.field_path))
                sources[vol.name] = target
            elif vol.config_map is not None:
                target.mkdir(parents=True, exist_ok=True)
                self._write_items(self.core.read_namespaced_config_map(vol.config_map.name, ns).data or {}, vol.config_map.items, target)
                sources[vol.name] = target
            elif vol.secret is not None:
                target.mkdir(parents=True, exist_ok=True)
                data = {k: base64.b64decode(v).decode() for k, v in (self.core.read_namespaced_secret(vol.secret.secret_name, ns).data or {}).items()}
                self._write_items(data, vol.secret.items, target)
                sources[vol.name] = target
            else:
                raise RuntimeError(f"volume {vol.name}: this test agent supports emptyDir, persistentVolumeClaim (hostPath PVs), hostPath, projected, configMap and secret")
        return sources

    @staticmethod
    def _write_items(data: dict, items, target: Path) -> None:
        for key, path in ([(i.key, i.path) for i in items] if items else [(k, k) for k in data]):
            (target / path).write_text(data[key])

    def _write_token(self, pod: client.V1Pod, path: Path, source) -> None:
        request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(
            audiences=[source.audience] if source.audience else [], expiration_seconds=source.expiration_seconds or 3600,
            bound_object_ref=client.V1BoundObjectReference(kind="Pod", api_version="v1", name=pod.metadata.name, uid=pod.metadata.uid)))
        token = self.core.create_namespaced_service_account_token(pod.spec.service_account_name or "default", pod.metadata.namespace, request)
        path.write_text(token.status.token)

    def _field(self, pod: client.V1Pod, field_path: str) -> str:
        values = {"metadata.name": pod.metadata.name, "metadata.namespace": pod.metadata.namespace, "metadata.uid": pod.metadata.uid,
                  "spec.nodeName": self.name, "spec.serviceAccountName": pod.spec.service_account_name or "default",
                  "status.podIP": self.pod_ips.get(pod.metadata.uid, "127.0.0.1"), "status.hostIP": "127.0.0.1"}
        if field_path not in values:
            raise RuntimeError(f"fieldRef {field_path} is not supported by the test agent")
        return values[field_path]

    def _env(self, pod: client.V1Pod, container) -> dict[str, str]:
        env = {"PATH": f"{self.bin_dir}:/usr/local/bin:/usr/bin:/bin", "KUBERNETES_SERVICE_HOST": "127.0.0.1",
               "KUBERNETES_SERVICE_PORT": str(self.server_port), "HOSTNAME": pod.metadata.name, "PYTHONDONTWRITEBYTECODE": "1"}
        for var in container.env or []:
            if var.value is not None:
                env[var.name] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), var.value)
            elif var.value_from and var.value_from.field_ref:
                env[var.name] = self._field(pod, var.value_from.field_ref.field_path)
            elif var.value_from and var.value_from.config_map_key_ref:
                ref = var.value_from.config_map_key_ref
                env[var.name] = self.core.read_namespaced_config_map(ref.name, pod.metadata.namespace).data[ref.key]
            elif var.value_from and var.value_from.secret_key_ref:
                ref = var.value_from.secret_key_ref
                env[var.name] = base64.b64decode(self.core.read_namespaced_secret(ref.name, pod.metadata.namespace).data[ref.key]).decode()
        return env

    def _start_pod(self, pod: client.V1Pod) -> None:
        uid = pod.metadata.uid
        self.pod_ips[uid] = next(self.ips)
        pod_dir = self.state / "pods" / uid
        pod_dir.mkdir(parents=True, exist_ok=True)
        sources = self._volume_sources(pod, pod_dir)
        if len(pod.spec.containers) != 1:
            raise RuntimeError("the test agent runs single-container pods")
        container = pod.spec.containers[0]
        env = self._env(pod, container)
        argv = [re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), a) for a in [*(container.command or []), *(container.args or [])]]
        if self.rewrite:
            argv = self.rewrite(argv)
        script = []
        for mount in sorted(container.volume_mounts or [], key=lambda m: m.mount_path.count("/")):
            src = sources[mount.name] / (mount.sub_path or "")
            script.append(f"mkdir -p {shlex.quote(mount.mount_path)} && mount --bind {shlex.quote(str(src))} {shlex.quote(mount.mount_path)}")
            if mount.read_only:
                script.append(f"mount -o remount,bind,ro {shlex.quote(mount.mount_path)}")
        sc = container.security_context
        if sc and sc.read_only_root_filesystem:
            script.append("mount -o remount,bind,ro /")
        script.append('cd / && exec "$@"')
        log_path = pod_dir / f"{container.name}.log"
        with open(log_path, "wb") as out:
            proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", " && ".join(script), "sh", *argv],
                                    stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        pp = PodProcess(uid, proc, log_path, container.to_dict(), now())
        with self._lock:
            self.pods[uid] = pp
        self._patch_status(pod, "Running", pp)
        threading.Thread(target=self._wait, args=(pod, pp), daemon=True).start()

    def _wait(self, pod: client.V1Pod, pp: PodProcess) -> None:
        code = pp.proc.wait()
        with self._lock:
            if pp.killed or self.pods.get(pp.uid) is not pp:
                return
            del self.pods[pp.uid]
        self._patch_status(pod, "Succeeded" if code == 0 else "Failed", pp, code)

    def _kill(self, pp: PodProcess) -> None:
        pp.killed = True
        if pp.proc.poll() is None:
            try:
                os.killpg(pp.proc.pid, signal.SIGTERM)
                pp.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(pp.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _termination_message(self, pp: PodProcess, code: int) -> str:
        if code == 0 or pp.container.get("termination_message_policy") != "FallbackToLogsOnError":
            return ""
        lines = pp.log_path.read_text(errors="replace").strip().splitlines()[-80:]
        return "\n".join(lines)[-4096:]

    def _patch_status(self, pod: client.V1Pod, phase: str, pp: PodProcess, code: int | None = None) -> None:
        running = phase == "Running"
        state = {"running": {"startedAt": pp.started}} if running else {"terminated": {
            "exitCode": code, "reason": "Completed" if code == 0 else "Error", "message": self._termination_message(pp, code),
            "startedAt": pp.started, "finishedAt": now(), "containerID": f"local://{pp.uid}"}}
        ip = self.pod_ips[pp.uid]
        status = {
            "phase": phase, "hostIP": "127.0.0.1", "podIP": ip, "podIPs": [{"ip": ip}], "startTime": pp.started,
            "conditions": [{"type": t, "status": "True" if (running or t in ("PodScheduled", "Initialized")) else "False",
                            "lastTransitionTime": now(), **({} if running or t in ("PodScheduled", "Initialized") else {"reason": "PodCompleted"})}
                           for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")],
            "containerStatuses": [{"name": pp.container["name"], "image": pp.container["image"], "imageID": "local://project",
                                   "containerID": f"local://{pp.uid}", "ready": running, "started": running, "restartCount": 0, "state": state}],
        }
        try:
            self.core.patch_namespaced_pod_status(pod.metadata.name, pod.metadata.namespace, {"status": status})
        except ApiException as err:
            if err.status != 404:
                raise

    def _report_failed_start(self, pod: client.V1Pod, message: str) -> None:
        status = {"phase": "Failed", "reason": "AgentError", "message": message[:1000],
                  "containerStatuses": [{"name": c.name, "image": c.image, "imageID": "", "ready": False, "restartCount": 0,
                                         "state": {"terminated": {"exitCode": 128, "reason": "StartError", "message": message[:1000]}}}
                                        for c in pod.spec.containers]}
        try:
            self.core.patch_namespaced_pod_status(pod.metadata.name, pod.metadata.namespace, {"status": status})
        except ApiException:
            pass
