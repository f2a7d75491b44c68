"""The report's plots, drawn with matplotlib (Agg, no display) and inlined as base64 PNG."""

from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

COLORS = ["#2563eb", "#f97316", "#16a34a", "#9333ea", "#dc2626", "#0891b2", "#ca8a04", "#db2777"]


def png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def confusion_matrices(metrics: dict[str, dict]) -> str:
    names = list(metrics)
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.8), squeeze=False)
    for ax, name in zip(axes[0], names):
        matrix = np.asarray(metrics[name]["confusion_matrix"], dtype=float)
        rows = matrix.sum(axis=1, keepdims=True)
        norm = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        ax.set_title(name)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        if len(matrix) <= 12:
            for (i, j), v in np.ndenumerate(matrix):
                if v:
                    ax.text(j, i, int(v), ha="center", va="center", fontsize=7, color="white" if norm[i, j] > 0.5 else "black")
    return png(fig)


def per_class_accuracy(metrics: dict[str, dict]) -> str:
    names = list(metrics)
    k = len(next(iter(metrics.values()))["per_class_accuracy"])
    fig, ax = plt.subplots(figsize=(min(14, 2 + 0.5 * k * len(names) / 2), 3.5))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        acc = [np.nan if a is None else a for a in metrics[name]["per_class_accuracy"]]
        ax.bar(np.arange(k) + i * width - 0.4 + width / 2, acc, width, label=name, color=COLORS[i % len(COLORS)])
    ax.set_xlabel("class")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.05)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    if k <= 30:
        ax.set_xticks(range(k))
    return png(fig)


def batch_latency(metrics: dict[str, dict]) -> str:
    fig, ax = plt.subplots(figsize=(7, 3.2))
    data = [np.asarray(m["latency"]["batches_ms"]) for m in metrics.values()]
    parts = ax.violinplot(data, showmedians=True, orientation="horizontal")
    for body, color in zip(parts["bodies"], COLORS):
        body.set_facecolor(color)
    ax.set_yticks(range(1, len(data) + 1), list(metrics))
    ax.set_xlabel("ms per batch")
    return png(fig)


def reliability(metrics: dict[str, dict]) -> str:
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], "--", color="#9ca3af", label="perfect calibration")
    for i, (name, m) in enumerate(metrics.items()):
        bins = m["reliability"]
        pts = [(c, a) for c, a in zip(bins["confidence"], bins["accuracy"]) if c is not None]
        if pts:
            ax.plot(*zip(*pts), "o-", color=COLORS[i % len(COLORS)], label=f"{name} (ECE {m['ece']:.3f})")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    return png(fig)


def metric_figures(metrics: dict[str, dict]) -> dict[str, str]:
    """The report's figures that need only each model's metrics.json, by section title."""
    return {
        "Confusion matrices": confusion_matrices(metrics),
        "Per-class accuracy": per_class_accuracy(metrics),
        "Latency per batch": batch_latency(metrics),
        "Reliability": reliability(metrics),
    }


def sequential_paths(seq: dict) -> str:
    """Each pair's z at every look so far, between the planned boundaries of all looks."""
    fig, ax = plt.subplots(figsize=(7, 3.4))
    fractions, bounds = np.asarray(seq["information_fractions"]), np.asarray(seq["boundaries"])
    for sign in (1, -1):
        ax.plot(fractions, sign * bounds, "--o", color="#9ca3af", markersize=3, label="boundary" if sign > 0 else None)
    looks = [h["look"] for h in seq["history"]]
    for i, pair in enumerate(seq["history"][-1]["z"]):
        z = [h["z"][pair] for h in seq["history"]]
        ax.plot(fractions[np.asarray(looks) - 1], z, "o-", color=COLORS[i % len(COLORS)], label=pair.replace("|", " vs "))
    ax.axhline(0, color="#e5e7eb", linewidth=1)
    ax.set_xlabel("information fraction (samples analysed / all)")
    ax.set_ylabel("z of the discordant pairs")
    ax.set_xlim(0, 1.02)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return png(fig)
