"""The analysis at scale: 2 models x 10,000,000 synthetic predictions.

    python benchmarks/analysis_scale.py [--samples 10000000] [--repeats 3]

Runs `abtest analyze` (the CLI's main: the real run_analysis with its checks, McNemar, interval and report, and the
process's exit) and a straightforward
pandas implementation of the same checks and statistics, each in its own process, and reports wall
time and peak RSS of both and their ratios (each child's own peak: the files are written by a third process).
Targets: abtest at <= 0.2x the baseline's time in the same run, and <= 1 GiB peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def synthesize(root: Path, n: int) -> None:
    """Two models' files as `abtest evaluate` writes them (predictions, metrics with sha256). Run in a child process
    (``--synthesize``): a measured child forked from a parent holding these arrays would count them in its peak RSS."""
    import numpy as np
    import pyarrow as pa

    from abtest_evaluator import results

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 1000, n, dtype=np.int64)
    for name, acc in (("a", 0.80), ("b", 0.801)):
        right = rng.random(n) < acc
        pred = np.where(right, labels, (labels + 1) % 1000)
        top5 = np.repeat(pred[:, None], 5, axis=1).astype(np.int32)
        table = pa.table(
            {
                "index": np.arange(n, dtype=np.int64),
                "label": labels,
                "pred": pred,
                "confidence": rng.random(n, dtype=np.float32),
                "top5": pa.FixedSizeListArray.from_arrays(pa.array(top5.reshape(-1)), 5),
            }
        )
        folder = root / name
        folder.mkdir(parents=True)
        results.write_parquet(folder / results.PREDICTIONS, table)
        batches = rng.normal(10, 1, n // 256).round(3)
        metrics = {
            "model": name,
            "n": n,
            "accuracy": float(right.mean()),
            "top5": None,
            "throughput": 25600.0,
            "latency": {"batch_ms": {"p50": 10.0, "p95": 11.6}, "batches_ms": batches.tolist(), "batch_sizes": [256] * len(batches)},
            "confusion_matrix": [[0]],
            "per_class_accuracy": [None],
            "ece": 0.1,
            "reliability": {"confidence": [0.5], "accuracy": [0.5]},
            "confidence": {"mean": 0.5, "std": 0.29},
            "fingerprint": "synthetic",
            "device": {"type": "cpu", "name": "x"},
            "weights": "checkpoint:x",
            "predictions_sha256": {results.PREDICTIONS: results.sha256_file(folder / results.PREDICTIONS)},
        }
        (folder / results.METRICS).write_text(json.dumps(metrics))


PANDAS_BASELINE = r"""
import sys, json, numpy as np, pandas as pd, hashlib
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.proportion import proportion_confint
root = sys.argv[1]
frames = {}
for name in ("a", "b"):
    meta = json.load(open(f"{root}/{name}/metrics.json"))
    data = open(f"{root}/{name}/predictions.parquet", "rb").read()
    assert hashlib.sha256(data).hexdigest() == meta["predictions_sha256"]["predictions.parquet"]
    frames[name] = pd.read_parquet(f"{root}/{name}/predictions.parquet")
df = frames["a"].merge(frames["b"], on="index", suffixes=("_a", "_b"))
assert (df["label_a"] == df["label_b"]).all() and not df.isna().any().any()
df["ca"], df["cb"] = df["pred_a"] == df["label_a"], df["pred_b"] == df["label_b"]
tab = pd.crosstab(df["ca"], df["cb"]).reindex(index=[True, False], columns=[True, False], fill_value=0).to_numpy()
res = mcnemar(tab, exact=False, correction=True)
n = tab.sum()
lo, hi = proportion_confint(tab[0].sum(), n, method="wilson")
print(json.dumps({"p": float(res.pvalue), "n10": int(tab[0, 1]), "n01": int(tab[1, 0])}))
"""

OURS = r"""
import sys, json
from abtest_operator.cli import main
code = main(["analyze", sys.argv[1]])  # what the analysis Job runs, process exit included
c = json.load(open(sys.argv[1] + "/result.json"))["comparisons"][0]
print(json.dumps({"p": c["p_value"], "n10": c["n10"], "n01": c["n01"]}))
sys.exit(code)
"""


def measure(code: str, root: Path) -> tuple[float, float, dict]:
    """Wall seconds, peak RSS in GiB (from wait4's rusage of that child alone) and its output."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code, str(root)], stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"benchmark child failed: {out}")
    return elapsed, usage.ru_maxrss / 2**20, json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=10_000_000)
    p.add_argument("--repeats", type=int, default=3, help="runs of each side, alternating; best and median reported")
    p.add_argument("--synthesize", metavar="DIR", help=argparse.SUPPRESS)  # the child that writes the files
    args = p.parse_args()
    if args.synthesize:
        return synthesize(Path(args.synthesize), args.samples)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--samples", str(args.samples), "--synthesize", str(root)], check=True)
        print(
            f"synthesized 2 x {args.samples:,} predictions in {time.perf_counter() - start:.1f}s "
            f"({sum(f.stat().st_size for f in root.rglob('*.parquet')) / 2**20:.0f} MiB parquet)"
        )
        runs = {"ours": [], "base": []}
        for i in range(args.repeats):  # ABAB: drift on this shared machine hits both alike
            for side in ("ours", "base") if i % 2 == 0 else ("base", "ours"):
                runs[side].append(measure(OURS if side == "ours" else PANDAS_BASELINE, root))
    (ours_t, ours_rss, ours), (base_t, base_rss, base) = (min(runs[side], key=lambda r: r[0]) for side in ("ours", "base"))
    ours_med, base_med = (statistics.median(r[0] for r in runs[side]) for side in ("ours", "base"))
    assert (ours["n10"], ours["n01"]) == (base["n10"], base["n01"]) and abs(ours["p"] - base["p"]) <= 1e-9 * max(base["p"], 1e-300)
    print(
        f"abtest analyze   best {ours_t:6.2f} s  median {ours_med:6.2f} s   peak RSS {ours_rss:5.2f} GiB   (targets: <= 0.2x the baseline's time, <= 1 GiB)"
    )
    print(f"pandas baseline  best {base_t:6.2f} s  median {base_med:6.2f} s   peak RSS {base_rss:5.2f} GiB")
    print(
        f"ratio abtest/pandas: time {ours_t / base_t:.3f} best-of-{args.repeats}, {ours_med / base_med:.3f} of medians; "
        f"memory {ours_rss / base_rss:.2f}  (same counts and p = {ours['p']:.3g})"
    )


if __name__ == "__main__":
    main()
