"""The operator at scale against the real test control plane: N ABTests applied at once.

    python benchmarks/operator_scale.py [--abtests 50]

Runs on the e2e tier's real node (kubelet, containerd, the project's images) with the operator
installed by the chart; each ABTest evaluates two tiny random-weight models on 32 digits samples,
so the pods are short and the operator's work dominates. Measures:
- time from apply to all of an ABTest's model Jobs created (p50/p95), and to Succeeded;
- API requests per ABTest lifecycle made by the operator's identity (from the API server's audit log),
  and by every client together (apiserver_request_total);
- the operator's peak RSS (VmHWM).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from cluster.controlplane import ControlPlane, build_binaries  # noqa: E402
from cluster.harness import build_images, make_namespace, start_cluster, start_operator  # noqa: E402
from cluster.node import GATEWAY  # noqa: E402

AUDIT_POLICY = "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n  - level: Metadata\n"


def requests_total(cp: ControlPlane) -> float:
    total = 0.0
    for line in cp.get("/metrics").splitlines():
        if line.startswith("apiserver_request_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def abtest(name: str, namespace: str) -> dict:
    return {
        "apiVersion": "abtest.dev/v1alpha1",
        "kind": "ABTest",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "device": "cpu",
            "dataset": {"name": "digits", "limit": 32},
            "workers": 0,
            "models": [{"name": "a", "architecture": "timm/resnet10t"}, {"name": "b", "architecture": "timm/test_vit"}],
        },
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--abtests", type=int, default=50)
    p.add_argument("--timeout", type=float, default=900)
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
            "--audit-log-maxsize=1000",
        ],
    )
    try:
        start_cluster(cp, images)
        operator = start_operator(cp, cp.bin, images)
        ns = make_namespace(cp, root / "models", "scale")
        user = f"system:serviceaccount:abtest-system:{operator.sa}"
        before_all = requests_total(cp)
        audit_start = (root / "audit.log").stat().st_size
        names = [f"scale-{i:03d}" for i in range(args.abtests)]
        docs = "\n---\n".join(json.dumps(abtest(n, ns.name)) for n in names)
        applied = time.time()
        cp.kubectl("apply", "-f", "-", input=docs)
        jobs_created, succeeded = {}, {}
        deadline = time.time() + args.timeout
        while len(succeeded) < len(names) and time.time() < deadline:
            jobs = json.loads(cp.kubectl("get", "jobs", "-n", ns.name, "-o", "json").stdout)["items"]
            per = {}
            for j in jobs:
                if j["metadata"]["labels"].get("abtest.dev/role") == "model":
                    per.setdefault(j["metadata"]["labels"]["abtest.dev/name"], []).append(j)
            for name, js in per.items():
                if name not in jobs_created and len(js) == 2:
                    jobs_created[name] = max(j["metadata"]["creationTimestamp"] for j in js)
            items = json.loads(cp.kubectl("get", "abtests", "-n", ns.name, "-o", "json").stdout)["items"]
            for item in items:
                phase = (item.get("status") or {}).get("phase")
                if phase in ("Succeeded", "Failed") and item["metadata"]["name"] not in succeeded:
                    succeeded[item["metadata"]["name"]] = (time.time(), phase)
            time.sleep(0.5)
        operator_pid = cp.node.container_pid(operator.pod()["status"]["containerStatuses"][0]["containerID"])
        rss_kib = int(
            next(line.split()[1] for line in Path(f"/proc/{operator_pid}/status").read_text().splitlines() if line.startswith("VmHWM"))
        )
        total_requests = requests_total(cp) - before_all
        with open(root / "audit.log") as fh:
            fh.seek(audit_start)
            by_operator = [json.loads(line) for line in fh if f'"{user}"' in line]
        verbs = {}
        for event in by_operator:
            key = f"{event['verb']} {event.get('objectRef', {}).get('resource', '?')}"
            verbs[key] = verbs.get(key, 0) + 1

        def to_epoch(ts: str) -> float:
            from datetime import datetime

            return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()

        create_lat = sorted(to_epoch(t) - applied for t in jobs_created.values())
        done_lat = sorted(t - applied for t, _ in succeeded.values())
        failed = [n for n, (_, phase) in succeeded.items() if phase != "Succeeded"]

        def pct(values, q):
            return (
                statistics.quantiles(values, n=100, method="inclusive")[q - 1]
                if len(values) > 1
                else (values[0] if values else float("nan"))
            )

        print(
            f"{args.abtests} ABTests x 2 models applied at once; real evaluator pods on 32 samples, real analysis; operator with 4 workers"
        )
        print(
            f"apply -> both model Jobs created: p50 {pct(create_lat, 50):.2f} s, p95 {pct(create_lat, 95):.2f} s, max {max(create_lat):.2f} s ({len(create_lat)} ABTests)"
        )
        print(
            f"apply -> Succeeded:               p50 {pct(done_lat, 50):.1f} s, p95 {pct(done_lat, 95):.1f} s ({len(done_lat)} finished, {len(failed)} failed)"
        )
        print(f"API requests by the operator: {len(by_operator)} = {len(by_operator) / args.abtests:.1f} per ABTest lifecycle")
        print("  " + ", ".join(f"{k}: {v / args.abtests:.1f}" for k, v in sorted(verbs.items(), key=lambda kv: -kv[1])[:10]))
        print(
            f"API requests by every client (apiserver_request_total): {total_requests:.0f} = {total_requests / args.abtests:.1f} per ABTest"
        )
        print(f"operator peak RSS: {rss_kib / 1024:.0f} MiB")
    finally:
        if getattr(cp, "node", None):
            cp.node.stop()
        cp.stop()
        if not os.environ.get("ABTEST_KEEP"):
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
