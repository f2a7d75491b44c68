"""The measurements in metrics.json, from per-sample arrays: accuracy, calibration, per-class accuracy, confusion, latency. Torch-free."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import confusion_matrix

ECE_BINS = 15
PERCENTILES = (50, 90, 95, 99)


def reliability(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> dict:
    """Equal-width confidence bins: count, accuracy and mean confidence each, and the expected calibration error."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    hits = np.bincount(which, weights=correct.astype(np.float64), minlength=bins)
    conf_sum = np.bincount(which, weights=confidence.astype(np.float64), minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.where(count > 0, hits / count, np.nan)
        conf = np.where(count > 0, conf_sum / count, np.nan)
    ece = float(np.nansum(np.abs(acc - conf) * count) / max(len(confidence), 1))
    return {
        "ece": ece,
        "bins": {
            "edges": edges.round(6).tolist(),
            "count": count.tolist(),
            "accuracy": [None if np.isnan(a) else float(a) for a in acc],
            "confidence": [None if np.isnan(c) else float(c) for c in conf],
        },
    }


DATA_BOUND = 0.2  # a loop that waited for data this share of its time measured the loader, not the model


def throughputs(images: int, compute_seconds: float, loop_seconds: float, wait_seconds: float) -> dict:
    """Honest figures (design.md §4): ``throughput`` over the loop's wall clock, data waits included;
    ``compute_throughput`` over the summed device time of the batches; the share of the loop spent waiting."""
    wall = loop_seconds if loop_seconds > 0 else compute_seconds  # a loop of one batch has no waits to count
    wait = wait_seconds / wall if wall else 0.0
    return {
        "throughput": images / wall if wall else 0.0,
        "compute_throughput": images / compute_seconds if compute_seconds else 0.0,
        "loop_seconds": wall,
        "loader_wait_fraction": wait,
        "data_bound": wait >= DATA_BOUND,
    }


def latency_summary(batch_seconds: np.ndarray, batch_sizes: np.ndarray) -> dict:
    batch_ms = batch_seconds * 1e3
    image_ms = batch_ms / batch_sizes

    def pcts(values):
        return {f"p{p}": float(np.percentile(values, p)) for p in PERCENTILES} | {"mean": float(values.mean())}

    return {
        "batch_ms": pcts(batch_ms),
        "image_ms": pcts(image_ms),
        "batches_ms": batch_ms.round(4).tolist(),  # raw, for intervals and plots in the analysis
        "batch_sizes": batch_sizes.tolist(),
    }


def summarize(
    labels: np.ndarray,
    preds: np.ndarray,
    top5_hit: np.ndarray | None,
    confidence: np.ndarray,
    batch_seconds: np.ndarray,
    batch_sizes: np.ndarray,
    num_classes: int,
    loop_seconds: float = 0.0,
    wait_seconds: float = 0.0,
    timing: str = "",
) -> dict:
    """``loop_seconds``: the timed loop's wall clock, data waits included (``wait_seconds`` of it); ``timing``: what
    the per-batch seconds measure."""
    correct = preds == labels
    matrix = confusion_matrix(labels, preds, labels=np.arange(num_classes))
    support = matrix.sum(axis=1)
    per_class = [float(matrix[c, c] / support[c]) if support[c] else None for c in range(num_classes)]
    calib = reliability(confidence, correct)
    return {
        "n": int(len(labels)),
        "correct": int(correct.sum()),
        "accuracy": float(correct.mean()),
        "top5": float(top5_hit.mean()) if top5_hit is not None else None,
        **throughputs(int(batch_sizes.sum()), float(batch_seconds.sum()), loop_seconds, wait_seconds),
        "latency": latency_summary(batch_seconds, batch_sizes) | {"measures": timing},
        "confidence": {"mean": float(confidence.mean()), "std": float(confidence.std())},
        "ece": calib["ece"],
        "reliability": calib["bins"],
        "per_class_accuracy": per_class,
        "class_support": support.tolist(),
        "confusion_matrix": matrix.tolist(),
    }
