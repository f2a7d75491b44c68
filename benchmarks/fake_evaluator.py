"""A fast stand-in for `abtest evaluate`, for the operator benchmark: same flags, same files, no model.

Writes contract-valid predictions.parquet and metrics.json (random predictions, fixed labels) in a
fraction of a second, so the benchmark measures the control plane, not inference.
"""

import argparse
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from abtest_evaluator import results
from abtest_evaluator.datasets import fingerprint


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--name", default="m")
    p.add_argument("--seed", type=int, default=42)
    args, _ = p.parse_known_args()
    n = 360
    labels = np.arange(n, dtype=np.int64) % 10
    rng = np.random.default_rng(abs(hash(args.name)) % 2**32)
    pred = np.where(rng.random(n) < 0.9, labels, (labels + 1) % 10)
    started = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = pa.table({"index": np.arange(n, dtype=np.int64), "label": labels, "pred": pred, "confidence": rng.random(n, dtype=np.float32)})
    results.atomic_write_parquet(out / results.PREDICTIONS, table)
    metrics = {"model": args.name, "n": n, "accuracy": float((pred == labels).mean()), "top5": None, "throughput": 1000.0,
               "latency": {"batch_ms": {"p50": 1.0, "p95": 1.2}, "batches_ms": [1.0, 1.1, 0.9, 1.2], "batch_sizes": [90] * 4},
               "confusion_matrix": np.eye(10, dtype=int).tolist(), "per_class_accuracy": [1.0] * 10, "ece": 0.0,
               "reliability": {"confidence": [0.5], "accuracy": [0.5]}, "confidence": {"mean": 0.5, "std": 0.1},
               "fingerprint": fingerprint([f"digits/{i}" for i in range(n)], labels), "device": {"type": "cpu", "name": "fake"},
               "weights": "checkpoint:fake", "seed": args.seed, "started_at": started, "finished_at": time.time(),
               "predictions_sha256": {results.PREDICTIONS: results.sha256_file(out / results.PREDICTIONS)}}
    results.atomic_write_json(out / results.METRICS, metrics)


if __name__ == "__main__":
    main()
