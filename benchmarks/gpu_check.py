"""The phases of benchmarks/gpu_check.sh. Each subcommand appends one JSON line to --results; ``table`` prints them.

Run through the shell script, never from the repository root (its ``operator/`` folder would shadow the standard
library's ``operator``). Random weights and a synthetic CIFAR-10 folder: nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import pickle
import re
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

EVALUATE_TARGET = 0.85  # abtest evaluate's wall-clock img/s against the GPU-resident ceiling, resnet50
UTILIZATION_TARGET = 0.90
UTILIZATION_AGREEMENT = 0.10  # |evaluator's /metrics - independent NVML| averaged over the run
FORBIDDEN = ("kopf", "kubernetes", "jsonschema")  # the data plane must run without the operator's dependencies


def record(results: Path, phase: str, **fields) -> None:
    with open(results, "a") as fh:
        fh.write(json.dumps({"phase": phase, **fields}) + "\n")
    print(json.dumps({"phase": phase, **fields}))


def read_results(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def cmd_env(args) -> None:
    import torch

    cuda = torch.cuda.is_available()
    if args.device == "cuda" and not cuda:
        raise SystemExit("no CUDA device visible to torch")
    import abtest_evaluator

    name = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    installed = str(Path(abtest_evaluator.__file__).parent)  # the scratch install, not a checkout on the path
    record(
        args.results,
        "env",
        device=name,
        torch=torch.__version__,
        cuda=torch.version.cuda,
        python=sys.version.split()[0],
        evaluator=installed,
    )


def cmd_dataset(args) -> None:
    """A CIFAR-10 python-pickle folder of random images (the format `--dataset cifar10` reads)."""
    import numpy as np

    root = args.out / "cifar-10-batches-py"
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        data = rng.integers(0, 256, (args.per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, args.per_batch).tolist()
        with open(root / f"data_batch_{i}", "wb") as fh:
            pickle.dump({"data": data, "labels": labels}, fh)
    with open(root / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": [f"class{c}" for c in range(10)]}, fh)
    record(args.results, "dataset", images=5 * args.per_batch, path=str(args.out))


def cmd_ceiling(args) -> None:
    """The model alone on GPU-resident, already normalised data with AMP and channels-last: what the device can do."""
    import torch

    from abtest_evaluator import models, resolve
    from abtest_evaluator.runner import seed_everything

    seed_everything(0, args.device)
    loaded = models.build_model(args.model, 10)
    size = args.input_size or resolve.resolve_data_config(loaded.pretrained_cfg).input_size[1]  # the eval size, as evaluate's
    amp_dtype = resolve.resolve_amp_dtype(args.device, None)
    module = loaded.module.to(args.device, memory_format=torch.channels_last).eval()
    x = torch.randn(args.batch_size, 3, size, size, device=args.device).contiguous(memory_format=torch.channels_last)

    def step():
        with torch.autocast(args.device, dtype=getattr(torch, amp_dtype or "float32"), enabled=amp_dtype is not None):
            module(x).float().softmax(-1).topk(5)

    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    with torch.inference_mode():
        for _ in range(args.warmup):
            step()
        sync()
        start, batches = time.perf_counter(), 0
        while batches < 3 or time.perf_counter() - start < args.seconds:
            step()
            batches += 1
            if batches % 10 == 0:
                sync()  # keep the clock honest without syncing every batch
        sync()
        elapsed = time.perf_counter() - start
    record(
        args.results,
        "ceiling",
        model=args.model,
        size=size,
        batch=args.batch_size,
        amp=amp_dtype,
        img_s=batches * args.batch_size / elapsed,
    )


def parse_prometheus(text: str) -> dict[str, float]:
    """abtest_* samples by metric name (each evaluator serves one model, so names are unique enough)."""
    values = {}
    for line in text.splitlines():
        if match := re.match(r"^(abtest_\w+?)(?:\{[^}]*\})? ([0-9.eE+-]+|NaN)$", line):
            values[match[1]] = float(match[2])
    return values


class Watcher:
    """Scrapes the evaluator's /metrics and reads NVML itself at the same moments: the independent cross-check."""

    def __init__(self, port: int, device: str, interval: float = 0.5):
        self.url, self.interval, self.samples = f"http://127.0.0.1:{port}/metrics", interval, []
        self.nvml = None
        if device == "cuda":
            import pynvml

            pynvml.nvmlInit()
            self.nvml = pynvml, pynvml.nvmlDeviceGetHandleByIndex(0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self._stop.wait(self.interval):
            try:
                scraped = parse_prometheus(urllib.request.urlopen(self.url, timeout=2).read().decode())
            except OSError:
                continue  # not serving yet, or done
            sample = {"metrics": scraped}
            if self.nvml:
                pynvml, handle = self.nvml
                sample["nvml_util"] = pynvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100
                sample["nvml_used"] = pynvml.nvmlDeviceGetMemoryInfo(handle).used
            self.samples.append(sample)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)

    def summary(self) -> dict:
        seen = [s for s in self.samples if s["metrics"].get("abtest_samples_processed_total", 0) > 0]
        out = {"scrapes": len(self.samples), "scrapes_while_running": len(seen)}
        util = [
            (s["metrics"]["abtest_gpu_utilization_ratio"], s["nvml_util"])
            for s in seen
            if "abtest_gpu_utilization_ratio" in s["metrics"] and "nvml_util" in s
        ]
        mem = [
            (s["metrics"]["abtest_gpu_memory_bytes"], s["nvml_used"])
            for s in seen
            if "abtest_gpu_memory_bytes" in s["metrics"] and "nvml_used" in s
        ]
        if util:
            out["util_abs_diff"] = sum(abs(a - b) for a, b in util) / len(util)
            out["util_pairs"] = len(util)
        if mem:
            out["memory_within_nvml"] = all(0 < a <= b for a, b in mem)
            out["memory_bytes"], out["nvml_used_bytes"] = mem[-1]
        return out


def cmd_evaluate(args) -> None:
    """`abtest evaluate` end to end on the synthetic CIFAR-10, /metrics scraped meanwhile."""
    out = args.out / f"{args.tag}"
    command = [
        sys.executable, "-m", "abtest_operator.cli", "evaluate", "--model", args.model, "--dataset", "cifar10",
        "--path", str(args.data), "--split", "train", "--num-classes", "10", "--batch-size", str(args.batch_size),
        "--device", args.device, "--metrics-port", str(args.port), "--metrics-addr", "127.0.0.1", "--progress", "none",
        "--out", str(out), *args.extra,
    ]  # fmt: skip
    if args.input_size:
        command += ["--input-size", str(args.input_size)]
    with Watcher(args.port, args.device, interval=0.5 if args.device == "cuda" else 0.05) as watcher:
        started = time.perf_counter()
        proc = subprocess.run(command, capture_output=True, text=True)
        wall = time.perf_counter() - started
    if proc.returncode:
        raise SystemExit(f"abtest evaluate failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    record(
        args.results,
        args.tag,
        model=args.model,
        size=metrics["data_config"]["input_size"][1],
        throughput=metrics["throughput"],
        compute_throughput=metrics["compute_throughput"],
        loader_wait_fraction=metrics["loader_wait_fraction"],
        gpu_utilization=metrics["gpu_utilization"],
        device=metrics["device"],
        n=metrics["n"],
        process_seconds=wall,
        watch=watcher.summary(),
    )


def cmd_imports(args) -> None:
    """The evaluator's import graph holds none of the operator's dependencies (the GPU machine has none of them)."""
    before = set(sys.modules)
    import abtest_evaluator.evaluate  # noqa: F401
    import abtest_operator.cli  # noqa: F401

    loaded = sorted(name for name in FORBIDDEN if name in set(sys.modules) - before)
    record(args.results, "imports", forbidden_loaded=loaded)
    if loaded:
        raise SystemExit(f"the evaluator imports {loaded}")


def fmt_status(ok: bool | None) -> str:
    return {True: "PASS", False: "MISS", None: "info"}[ok]


def rows(results: list[dict], status: dict[str, int], logs: Path, device: str) -> list[tuple[str, str, str, str]]:
    """(phase, figure, target, status) for the table; a phase that failed shows its exit code and last log line. The
    targets are the GPU's: on the CPU (toy models, 32 px, two cores) the figures only show that each phase works."""
    gpu = device == "cuda"
    by_phase: dict[str, list[dict]] = {}
    for r in results:
        by_phase.setdefault(r["phase"], []).append(r)
    out = []
    for name, rc in status.items():
        if rc != 0:
            log = logs / f"{name}.log"
            last = (log.read_text().strip().splitlines() or ["(no output)"])[-1][:70] if log.exists() else "(no log)"
            out.append((name, f"{'TIMED OUT' if rc == 124 else f'exit {rc}'}: {last}", "", "FAILED"))
    if env := by_phase.get("env"):
        e = env[0]
        out.append(
            ("env", f"{e['device']}, torch {e['torch']}, CUDA {e['cuda']}, Python {e['python']}, abtest from {e['evaluator']}", "", "ok")
        )
    if imports := by_phase.get("imports"):
        loaded = imports[0]["forbidden_loaded"]
        out.append(("imports", f"evaluator loads {', '.join(loaded) or 'none'} of {', '.join(FORBIDDEN)}", "none", fmt_status(not loaded)))
    ceilings = {r["model"]: r for r in by_phase.get("ceiling", [])}
    for model, r in ceilings.items():
        out.append(
            (f"ceiling {model}", f"{r['img_s']:,.0f} img/s @ {r['size']} px, batch {r['batch']}, {r['amp'] or 'fp32'}, NHWC", "", "info")
        )
    for tag in ("evaluate", "nondeterministic"):
        for r in by_phase.get(tag, []):
            ceiling = ceilings.get(r["model"])
            ratio = r["throughput"] / ceiling["img_s"] if ceiling else None
            d = r["device"]
            figure = (
                f"{r['throughput']:,.0f} img/s wall ({f'{ratio:.2f}x ceiling' if ratio else 'no ceiling'}), compute "
                f"{r['compute_throughput']:,.0f}, data wait {r['loader_wait_fraction']:.0%}, {d['workers']} workers, "
                f"{d['amp_dtype'] or 'fp32'}{', NHWC' if d['channels_last'] else ''}"
            )
            target = f">= {EVALUATE_TARGET}x" if tag == "evaluate" and gpu else ""
            ok = (ratio >= EVALUATE_TARGET if ratio else None) if tag == "evaluate" and gpu else None
            out.append((f"{tag} {r['model']}", figure, target, fmt_status(ok)))
            if tag == "evaluate":
                if util := r["gpu_utilization"]:
                    out.append(("GPU utilization", f"evaluator p50 {util['p50']:.2f}, mean {util['mean']:.2f} ({util['samples']} samples)",
                                f">= {UTILIZATION_TARGET}", fmt_status(util["p50"] >= UTILIZATION_TARGET)))  # fmt: skip
                elif gpu:
                    out.append(("GPU utilization", "no NVML samples in metrics.json", f">= {UTILIZATION_TARGET}", "MISS"))
                w = r["watch"]
                if "util_abs_diff" in w:
                    agree = w["util_abs_diff"] <= UTILIZATION_AGREEMENT and w.get("memory_within_nvml", False)
                    figure = (f"utilization |diff| {w['util_abs_diff']:.3f} over {w['util_pairs']} scrapes; memory "
                              f"{w['memory_bytes'] / 2**30:.2f} GiB <= NVML used {w['nvml_used_bytes'] / 2**30:.2f} GiB")  # fmt: skip
                    out.append(("/metrics vs NVML", figure, f"<= {UTILIZATION_AGREEMENT}", fmt_status(agree)))
                else:
                    out.append(
                        ("/metrics vs NVML", f"n/a without a GPU; /metrics answered {w['scrapes_while_running']} scrapes", "", "info")
                    )
    evaluated = {r["model"]: r for r in by_phase.get("evaluate", [])}
    for r in by_phase.get("nondeterministic", []):
        if base := evaluated.get(r["model"]):
            out.append(("determinism cost", f"--nondeterministic: {r['compute_throughput'] / base['compute_throughput']:.2f}x compute, "
                        f"{r['throughput'] / base['throughput']:.2f}x wall img/s against the deterministic default", "", "info"))  # fmt: skip
    return out


def cmd_table(args) -> None:
    status = {}
    if args.status.exists():
        for line in args.status.read_text().splitlines():
            name, rc = line.rsplit(" ", 1)
            status[name] = int(rc)
    table = rows(read_results(args.results), status, args.logs, args.device)
    widths = [max(len(row[i]) for row in table + [("phase", "figure", "target", "status")]) for i in range(4)]
    for row in [("phase", "figure", "target", "status"), *table]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    if any(row[3] in ("FAILED", "MISS") for row in table):
        raise SystemExit(1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, required=True)
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("env").set_defaults(run=cmd_env)
    sub.add_parser("imports").set_defaults(run=cmd_imports)
    d = sub.add_parser("dataset")
    d.add_argument("--out", type=Path, required=True)
    d.add_argument("--per-batch", type=int, default=10000)
    d.set_defaults(run=cmd_dataset)
    for name, run in (("ceiling", cmd_ceiling), ("evaluate", cmd_evaluate)):
        s = sub.add_parser(name)
        s.add_argument("--model", required=True)
        s.add_argument("--batch-size", type=int, default=256)
        s.add_argument("--input-size", type=int, help="default: the model's eval size")
        s.set_defaults(run=run)
    c = sub.choices["ceiling"]
    c.add_argument("--seconds", type=float, default=5.0)
    c.add_argument("--warmup", type=int, default=10)
    e = sub.choices["evaluate"]
    e.add_argument("--data", type=Path, required=True)
    e.add_argument("--out", type=Path, required=True)
    e.add_argument("--port", type=int, default=9477)
    e.add_argument("--tag", default="evaluate")
    e.add_argument("extra", nargs="*", help="more abtest evaluate flags, after --")
    t = sub.add_parser("table")
    t.add_argument("--status", type=Path, required=True)
    t.add_argument("--logs", type=Path, required=True)
    t.set_defaults(run=cmd_table)
    args = p.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
