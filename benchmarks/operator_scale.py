"""The operator at scale against the real test control plane: its requests per ABTest, its memory, its latency.

    python benchmarks/operator_scale.py [--lifecycles 10] [--small 50] [--large 500]

Runs on the e2e tier's real node (kubelet, containerd, the project's images) with the operator
installed by the chart with its default values (the e2e tier's 4 workers are raised back to the chart's
default, or ``--workers``). Two parts, one cluster, one operator:
1. lifecycles: ``--lifecycles`` two-model ABTests run to Succeeded (random-weight tiny models on 32
   digits samples, real evaluator pods, real analysis); the operator's requests per ABTest lifecycle
   come from the API server's audit log (user = the operator's ServiceAccount).
2. scale: ``--small`` then ``--large`` ABTests applied at once, each with ``queueName`` so its models are one
   suspended JobSet, whose Jobs the real JobSet controller creates suspended; no Kueue runs, so nothing is admitted
   (2 cores cannot run 1,000 evaluator pods; the operator's work, which is what this measures, is the same until
   the JobSet is admitted). Latency is, per ABTest, from the API
   server storing it to the API server storing its last model Job (audit timestamps, microseconds), so
   kubectl's own pace is not counted. The ratio p95(large) / p95(small) is printed from this one run.
The operator's peak RSS (VmHWM) is read at the end, with every ABTest still in its watches and indexes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from datetime import datetime
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from cluster.controlplane import ControlPlane, build_binaries  # noqa: E402
from cluster.harness import build_images, make_namespace, start_cluster, start_operator  # noqa: E402
from cluster.node import GATEWAY  # noqa: E402
from cluster.queueing import Queueing  # noqa: E402

AUDIT_POLICY = "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n  - level: Metadata\n"


def requests_total(cp: ControlPlane) -> float:
    total = 0.0
    for line in cp.get("/metrics").splitlines():
        if line.startswith("apiserver_request_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def terminated_watchers(cp: ControlPlane) -> str:
    """Watches the API server closed because their client read too slowly (its watch cache drops such watchers;
    the client re-watches, and a watch that fell too far behind re-lists)."""
    closed = {}
    for line in cp.get("/metrics").splitlines():
        if line.startswith("apiserver_terminated_watchers_total{"):
            labels, value = line.rsplit(" ", 1)
            closed[re.search(r'resource="([^"]*)"', labels).group(1)] = float(value)
    return ", ".join(f"{resource} {n:.0f}" for resource, n in closed.items()) or "none"


def abtest(name: str, namespace: str, queue: str | None = None) -> dict:
    return {
        "apiVersion": "abtest.dev/v1alpha1",
        "kind": "ABTest",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "device": "cpu",
            "dataset": {"name": "digits", "limit": 32},
            "workers": 0,
            "models": [{"name": "a", "architecture": "timm/resnet10t"}, {"name": "b", "architecture": "timm/test_vit"}],
            **({"queueName": queue} if queue else {}),
        },
    }


class Audit:
    """The API server's audit log, read from an offset: each call returns the events written since the last."""

    def __init__(self, path: Path):
        self.path, self.offset = path, path.stat().st_size

    def read(self) -> list[dict]:
        with open(self.path) as fh:
            fh.seek(self.offset)
            lines = fh.readlines()
        self.offset += sum(len(line.encode()) for line in lines)
        return [json.loads(line) for line in lines if line.strip()]


def to_epoch(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def pct(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def by_verb(events: list[dict], per: int) -> str:
    verbs = Counter(
        f"{e['verb']} {e.get('objectRef', {}).get('resource', '?')}{'/' + e['objectRef']['subresource'] if e.get('objectRef', {}).get('subresource') else ''}"
        for e in events
    )
    return ", ".join(f"{k}: {v / per:.1f}" for k, v in verbs.most_common(12))


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """User + system CPU seconds each process has used so far (/proc/PID/stat fields 14 and 15)."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for name, pid in pids.items():
        if not Path(f"/proc/{pid}").exists():  # restarted (reported at the end)
            out[name] = float("nan")
            continue
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        out[name] = (int(fields[11]) + int(fields[12])) / tick
    return out


def phases(cp: ControlPlane, namespace: str) -> dict[str, str]:
    items = json.loads(cp.kubectl("get", "abtests", "-n", namespace, "-o", "json").stdout)["items"]
    return {i["metadata"]["name"]: (i.get("status") or {}).get("phase", "") for i in items}


def lifecycles(cp: ControlPlane, audit: Audit, user: str, namespace: str, n: int, timeout: float) -> None:
    audit.read()
    before = requests_total(cp)
    cp.kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(abtest(f"life-{i:03d}", namespace)) for i in range(n)))
    deadline = time.time() + timeout
    done = phases(cp, namespace)
    while time.time() < deadline and not all(phase in ("Succeeded", "Failed") for phase in done.values()):
        time.sleep(2)
        done = phases(cp, namespace)
    time.sleep(20)  # the last Events and any late pass
    events = [e for e in audit.read() if e["user"]["username"] == user]
    ops = [e for e in events if (e.get("objectRef") or {}).get("namespace") == namespace]  # about these ABTests
    background = [e for e in events if e not in ops]  # watch renewals, discovery: per operator, not per ABTest
    failed = [name for name, phase in done.items() if phase != "Succeeded"]
    print(
        f"1. {n} two-model ABTests run to the end (real pods, real analysis): {n - len(failed)} Succeeded, {len(failed)} not {failed[:3]}"
    )
    print(f"   API requests by the operator per ABTest lifecycle: {len(ops) / n:.1f}  (target <= 20)")
    print(f"     {by_verb(ops, n)}")
    print(f"     and {len(background)} for the operator itself meanwhile (watch renewals, discovery): {by_verb(background, 1)}")
    conflicts = sum(1 for e in ops if (e.get("responseStatus") or {}).get("code") == 409)
    print(f"     of which answered 409 (a stale read or an idempotent create): {conflicts / n:.1f}")
    print(f"   API requests by every client per ABTest: {(requests_total(cp) - before) / n:.1f}")


def wait_for_watches(audit: Audit, user: str, timeout: float) -> None:
    """Until the operator watches ABTests, Jobs and pods: its pod is ready before kopf has listed and watched, and
    ABTests sent meanwhile would measure the operator's start (lists and watches among their requests)."""
    missing, deadline = {"abtests", "jobs", "pods"}, time.time() + timeout
    while missing and time.time() < deadline:
        missing -= {
            (e.get("objectRef") or {}).get("resource") for e in audit.read() if e["user"]["username"] == user and e["verb"] == "watch"
        }
        time.sleep(1)
    if missing:
        raise SystemExit(f"the operator did not watch {', '.join(sorted(missing))} within {timeout:.0f} s")


def operator_metric(operator, prefix: str) -> float:
    """The sum of the operator's own metric lines that start with ``prefix`` (its /metrics, by the pod's IP)."""
    port = 8080  # the chart's operator.metricsPort
    with urllib.request.urlopen(f"http://{operator.pod()['status']['podIP']}:{port}/metrics", timeout=10) as answer:
        lines = answer.read().decode().splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(prefix))


def garbage_collections(operator) -> list[tuple[float, float]]:
    """How many garbage collections of each generation (0, 1, 2) the operator has made so far, and their seconds."""
    name = "abtest_operator_gc_pause_seconds"
    return [tuple(operator_metric(operator, f'{name}_{k}{{generation="{g}"}}') for k in ("count", "sum")) for g in range(3)]


def scale(cp: ControlPlane, audit: Audit, user: str, namespace: str, n: int, timeout: float, pids: dict[str, int], operator) -> list[float]:
    audit.read()
    cpu_before, gc_before = cpu_seconds(pids), garbage_collections(operator)
    names = [f"q{n}-{i:04d}" for i in range(n)]
    cp.kubectl("create", "-f", "-", input="\n---\n".join(json.dumps(abtest(name, namespace, queue="bench")) for name in names))
    stored, job_times, picked, ops = {}, {}, {}, []
    deadline = time.time() + timeout
    while time.time() < deadline and not (len(stored) == n and all(len(job_times.get(name, ())) == 2 for name in names)):
        time.sleep(2)
        for e in audit.read():
            ref, ok = e.get("objectRef") or {}, (e.get("responseStatus") or {}).get("code") == 201
            if e["user"]["username"] == user:
                ops.append(e)
            if e["verb"] == "create" and ok and ref.get("namespace") == namespace and not ref.get("subresource"):
                if ref.get("resource") == "abtests":
                    stored[ref["name"]] = to_epoch(e["stageTimestamp"])
                elif ref.get("resource") == "jobs" and ref["name"].endswith(("-a-0", "-b-0")):  # the JobSet controller's
                    job_times.setdefault(ref["name"][:-4], []).append(to_epoch(e["stageTimestamp"]))
                elif ref.get("resource") == "jobsets":  # the operator's one create per ABTest
                    received = to_epoch(e["requestReceivedTimestamp"])
                    picked[ref["name"]] = min(picked.get(ref["name"], received), received)
    passes = operator_metric(operator, f'abtest_reconciles_total{{namespace="{namespace}"}}')  # before the last ABTests' first resync
    gc_during = [(n - n0, t - t0) for (n, t), (n0, t0) in zip(garbage_collections(operator), gc_before, strict=True)]
    time.sleep(20)  # anything the operator still does about them
    ops += [e for e in audit.read() if e["user"]["username"] == user]
    latency = sorted(max(job_times[name]) - stored[name] for name in names if len(job_times.get(name, ())) == 2 and name in stored)
    print(
        f"   {n:4d} ABTests: apply -> both model Jobs created p50 {pct(latency, 50):.2f} s, p95 {pct(latency, 95):.2f} s, "
        f"max {max(latency):.2f} s ({len(latency)}/{n}); operator requests per ABTest {len(ops) / n:.1f}"
    )
    waits = sorted(picked[name] - stored[name] for name in names if name in picked and name in stored)
    print(
        f"     of which until the operator's JobSet create reached the API server: p50 {pct(waits, 50):.2f} s, p95 {pct(waits, 95):.2f} s"
    )
    print(f"     {by_verb(ops, n)}; reconcile passes per ABTest until the last Job: {passes / n:.1f}")
    if stored and job_times:
        window = max(stored.values()) - min(stored.values())
        busy = max(t for ts in job_times.values() for t in ts) - min(stored.values())
        print(
            f"     kubectl stored them over {window:.1f} s ({n / max(window, 1e-3):.0f}/s); the operator kept up at {n / busy:.0f} ABTests/s"
        )
    used = {k: v - cpu_before[k] for k, v in cpu_seconds(pids).items()}
    print("     CPU seconds spent meanwhile (2 cores): " + ", ".join(f"{k} {v:.1f}" for k, v in used.items()))
    print(
        "     the operator's garbage collections meanwhile (generation: count, seconds in all): "
        + ", ".join(f"{g}: {n:.0f}, {t:.2f} s" for g, (n, t) in enumerate(gc_during))
    )
    return latency


def restarts(cp: ControlPlane, operator) -> str:
    """How often the operator's container restarted during the run, why, and its last log lines before: a restart
    re-lists every object, and the latencies after it measure the restart, not the operator."""
    pod = operator.pod()
    container = pod["status"]["containerStatuses"][0]
    if not container["restartCount"]:
        logs = cp.kubectl("logs", "-n", pod["metadata"]["namespace"], pod["metadata"]["name"], check=False).stdout.splitlines()
        noted = [line for line in logs if "WARNING" in line or "ERROR" in line]  # kopf's and ours; INFO is not logged
        return f"no operator restart; {len(noted)} warning/error lines in its log" + "".join(f"\n     {line[:300]}" for line in noted[-12:])
    last = container.get("lastState", {}).get("terminated", {})
    namespace, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
    logs = cp.kubectl("logs", "-n", namespace, name, "--previous", "--tail", "15", check=False)
    warnings = cp.kubectl("get", "events", "-n", namespace, "--field-selector", "type=Warning", check=False)
    return (
        f"OPERATOR RESTARTED {container['restartCount']} time(s): {last.get('reason')} (exit code {last.get('exitCode')}); "
        f"its last lines:\n{logs.stdout}{logs.stderr}\nWarning Events:\n{warnings.stdout}"
    )


def peak_rss_mib(cp: ControlPlane, operator) -> float:
    pid = cp.node.container_pid(operator.pod()["status"]["containerStatuses"][0]["containerID"])
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    return int(next(line.split()[1] for line in status if line.startswith("VmHWM"))) / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lifecycles", type=int, default=10)
    p.add_argument("--small", type=int, default=50)
    p.add_argument("--large", type=int, default=500)
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--workers", type=int, help="operator.maxWorkers (default: the chart's)")
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="operator-scale-", dir=Path.home() / ".cache" / "abtest"))
    (root / "audit-policy.yaml").write_text(AUDIT_POLICY)
    images = build_images("operator", "evaluator-cpu")
    cp = ControlPlane(
        root,
        build_binaries(),
        address=GATEWAY,
        apiserver_args=[
            f"--audit-policy-file={root / 'audit-policy.yaml'}",
            f"--audit-log-path={root / 'audit.log'}",
            "--audit-log-maxsize=4000",
            "--audit-log-mode=batch",
        ],
    )
    try:
        start_cluster(cp, images)
        chart_values = yaml.safe_load((ROOT / "charts" / "abtest-operator" / "values.yaml").read_text())
        audit = Audit(root / "audit.log")
        operator = start_operator(cp, cp.bin, images, {"operator.maxWorkers": str(args.workers or chart_values["operator"]["maxWorkers"])})
        user = f"system:serviceaccount:abtest-system:{operator.sa}"
        wait_for_watches(audit, user, args.timeout)
        workers = operator.values["operator.maxWorkers"]
        print(f"operator installed by the chart, {workers} workers; {os.cpu_count()} cores shared by the control plane, node and operator")
        if args.lifecycles:
            lifecycles(cp, audit, user, make_namespace(cp, root / "models", "lifecycle").name, args.lifecycles, args.timeout)
        Queueing(cp).start(kueue=False)
        print("2. ABTests applied at once, each one JobSet created suspended (queueName) and left queued:")
        pids = {
            name: proc.pid for name, proc in cp.procs.items() if name.split("#")[0] in ("kube-apiserver", "etcd", "kube-controller-manager")
        }
        pids["operator"] = cp.node.container_pid(operator.pod()["status"]["containerStatuses"][0]["containerID"])
        small = scale(cp, audit, user, make_namespace(cp, root / "models", "small").name, args.small, args.timeout, pids, operator)
        large = scale(cp, audit, user, make_namespace(cp, root / "models", "large").name, args.large, args.timeout, pids, operator)
        idle = 60  # four resync periods: every ABTest not yet finished gets a pass each 15 s
        before = cpu_seconds({"operator": pids["operator"]})["operator"]
        time.sleep(idle)
        busy = (cpu_seconds({"operator": pids["operator"]})["operator"] - before) / idle
        print(f"   idle with {args.small + args.large} ABTests queued (their resync passes): the operator used {busy:.3f} of a core")
        ratio = pct(large, 95) / pct(small, 95)
        print(f"   p95 at {args.large} / p95 at {args.small}: {ratio:.2f}x  (target <= 2)")
        print(f"   {restarts(cp, operator)}")
        print(f"   watches the API server closed as too slow: {terminated_watchers(cp)}")
        print(
            f"3. operator peak RSS (VmHWM) with {args.lifecycles + args.small + args.large} ABTests watched: {peak_rss_mib(cp, operator):.0f} MiB  (target <= 300)"
        )
    finally:
        if getattr(cp, "node", None):
            cp.node.stop()
        cp.stop()
        if not os.environ.get("ABTEST_KEEP"):
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
