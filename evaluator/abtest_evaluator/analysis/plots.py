"""The report's plots as inline SVG: text stays text (sharp at any zoom, searchable), and drawing all of them takes
milliseconds where matplotlib's import alone took ~0.6 s of a 10-million-sample analysis on two cores. A confusion
matrix's cells are one PNG (Pillow) stretched over its axes, so 1,000 classes stay one image, not a million shapes."""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass
from html import escape

import numpy as np

COLORS = ["#2563eb", "#f97316", "#16a34a", "#9333ea", "#dc2626", "#0891b2", "#ca8a04", "#db2777"]
GRID, MUTED, INK = "#e5e7eb", "#9ca3af", "#111827"
# Matplotlib's "Blues" at 0 and 1: the confusion matrices' share of each true class, interpolated in RGB.
BLUES = np.array([[247, 251, 255], [8, 48, 107]], dtype=float)
FONT = 'font-family="system-ui,sans-serif" font-size="11"'


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About ``count`` round values (1, 2 or 5 times a power of ten apart) covering lo..hi, as an axis labels them."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= 0.75 * raw)  # at most a third more ticks than asked
    first = math.ceil(lo / step - 1e-9)
    return [round(i * step, 12) for i in range(first, math.floor(hi / step + 1e-9) + 1)]


@dataclass
class Axes:
    """A plot area of ``width`` x ``height`` px whose top-left corner is at (left, top), showing the data ranges
    ``xs`` and ``ys`` (y grows upwards, as on paper)."""

    xs: tuple[float, float]
    ys: tuple[float, float]
    left: float = 52
    top: float = 10
    width: float = 420
    height: float = 220

    def x(self, v: float) -> float:
        return self.left + (v - self.xs[0]) / (self.xs[1] - self.xs[0]) * self.width

    def y(self, v: float) -> float:
        return self.top + (self.ys[1] - v) / (self.ys[1] - self.ys[0]) * self.height

    def frame(self, xlabel: str, ylabel: str, xticks=None, yticks=None, *, grid: bool = True) -> str:
        """Grid lines at the y ticks (``grid``), tick marks and labels, the axis titles and a border."""
        parts = []
        xticks = nice_ticks(*self.xs) if xticks is None else xticks
        yticks = nice_ticks(*self.ys) if yticks is None else yticks
        bottom, right = self.top + self.height, self.left + self.width
        for t in yticks:
            y = self.y(t)
            if grid:
                parts.append(f'<line x1="{self.left}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}" stroke="{GRID}"/>')
            parts.append(f'<line x1="{self.left - 4}" y1="{y:.1f}" x2="{self.left}" y2="{y:.1f}" stroke="{MUTED}"/>')
            parts.append(f'<text x="{self.left - 4}" y="{y + 4:.1f}" text-anchor="end">{t:g}</text>')
        for t in xticks:
            x = self.x(t)
            parts.append(f'<line x1="{x:.1f}" y1="{bottom}" x2="{x:.1f}" y2="{bottom + 4}" stroke="{MUTED}"/>')
            parts.append(f'<text x="{x:.1f}" y="{bottom + 16}" text-anchor="middle">{t:g}</text>')
        parts.append(f'<rect x="{self.left}" y="{self.top}" width="{self.width}" height="{self.height}" fill="none" stroke="{MUTED}"/>')
        parts.append(f'<text x="{self.left + self.width / 2}" y="{bottom + 32}" text-anchor="middle">{escape(xlabel)}</text>')
        cx, cy = self.left - 40, self.top + self.height / 2
        parts.append(f'<text x="{cx}" y="{cy}" text-anchor="middle" transform="rotate(-90 {cx} {cy})">{escape(ylabel)}</text>')
        return "".join(parts)

    def line(self, xs, ys, color: str, *, dashed: bool = False, markers: bool = True) -> str:
        points = " ".join(f"{self.x(x):.1f},{self.y(y):.1f}" for x, y in zip(xs, ys))
        dash = ' stroke-dasharray="5 4"' if dashed else ""
        out = f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="1.8"{dash}/>'
        if markers:
            out += "".join(f'<circle cx="{self.x(x):.1f}" cy="{self.y(y):.1f}" r="3" fill="{color}"/>' for x, y in zip(xs, ys))
        return out


def svg(width: float, height: float, body: str, label: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" '
        f'role="img" aria-label="{escape(label)}" {FONT} fill="{INK}">{body}</svg>'
    )


def with_legend(ax: Axes, body: str, entries: list[tuple[str, str]], label: str, *, dashed: tuple[str, ...] = ()) -> str:
    """The figure: ``body`` drawn on ``ax`` and a legend to its right, one row per (label, color); labels in
    ``dashed`` get a dashed swatch. Its width allows 6.5 px per character (no text metrics without a renderer)."""
    x, y = ax.left + ax.width + 16, ax.top + 8
    rows = []
    for i, (text, color) in enumerate(entries):
        ry = y + 16 * i
        dash = ' stroke-dasharray="4 3"' if text in dashed else ""
        rows.append(f'<line x1="{x}" y1="{ry}" x2="{x + 18}" y2="{ry}" stroke="{color}" stroke-width="3"{dash}/>')
        rows.append(f'<text x="{x + 24}" y="{ry + 4}">{escape(text)}</text>')
    width = x + 40 + 6.5 * max((len(text) for text, _ in entries), default=0)
    return svg(width, ax.top + ax.height + 44, body + "".join(rows), label)


def heatmap_png(share: np.ndarray, size: int) -> str:
    """A (rows x columns) array of values in 0..1 as a base64 PNG, white to dark blue, each cell a square of whole
    pixels (at least ``size`` pixels in all), so a viewer that smooths a stretched image still shows sharp cells."""
    from PIL import Image  # only where a page is drawn

    rgb = BLUES[0] + np.clip(share, 0, 1)[..., None] * (BLUES[1] - BLUES[0])
    cell = max(1, -(-size // len(share)))
    buf = io.BytesIO()
    Image.fromarray(rgb.round().astype(np.uint8), "RGB").resize((cell * share.shape[1], cell * len(share)), Image.NEAREST).save(
        buf, format="PNG"
    )
    return base64.b64encode(buf.getvalue()).decode()


def confusion_matrices(metrics: dict[str, dict]) -> str:
    """Each model's confusion matrix as the share of each true class (row) predicted as each class; counts written in
    the cells up to 12 classes."""
    panels, size, gap = [], 240, 70
    for i, (name, m) in enumerate(metrics.items()):
        matrix = np.asarray(m["confusion_matrix"], dtype=float)
        rows = matrix.sum(axis=1, keepdims=True)
        share = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
        k = len(matrix)
        ax = Axes((-0.5, k - 0.5), (k - 0.5, -0.5), left=52 + i * (size + gap), top=24, width=size, height=size)
        ticks = nice_ticks(0, k - 1) if k > 12 else list(range(k))
        panels.append(
            f'<text x="{ax.left + size / 2}" y="16" text-anchor="middle" font-weight="600">{escape(name)}</text>'
            f'<image x="{ax.left}" y="{ax.top}" width="{size}" height="{size}" preserveAspectRatio="none" '
            f'style="image-rendering:pixelated" href="data:image/png;base64,{heatmap_png(share, size)}"/>'
            + ax.frame("predicted", "true", ticks, ticks, grid=False)
        )
        if k <= 12:
            for (r, c), v in np.ndenumerate(matrix):
                if v:
                    color = "white" if share[r, c] > 0.5 else INK
                    panels.append(
                        f'<text x="{ax.x(c):.1f}" y="{ax.y(r) + 4:.1f}" text-anchor="middle" font-size="9" fill="{color}">{int(v)}</text>'
                    )
    return svg(52 + len(metrics) * (size + gap), size + 70, "".join(panels), "confusion matrices")


def per_class_accuracy(metrics: dict[str, dict]) -> str:
    """Each class's accuracy, the models' bars side by side."""
    names = list(metrics)
    k = len(next(iter(metrics.values()))["per_class_accuracy"])
    ax = Axes((-0.5, k - 0.5), (0, 1.05), width=min(900, max(240, 14 * k * len(names))))
    width = 0.8 / len(names)
    bars = []
    for i, name in enumerate(names):
        color = COLORS[i % len(COLORS)]
        for cls, acc in enumerate(metrics[name]["per_class_accuracy"]):
            if acc is not None:  # a class absent from the data has no accuracy: no bar
                x0, top = ax.x(cls - 0.4 + i * width), ax.y(acc)
                bars.append(
                    f'<rect x="{x0:.2f}" y="{top:.1f}" width="{width * ax.width / k:.2f}" height="{ax.y(0) - top:.1f}" fill="{color}">'
                    f"<title>{escape(name)}, class {cls}: {acc:.3f}</title></rect>"
                )
    xticks = list(range(k)) if k <= 30 else nice_ticks(0, k - 1)
    body = ax.frame("class", "accuracy", xticks, [0, 0.2, 0.4, 0.6, 0.8, 1.0]) + "".join(bars)
    return with_legend(ax, body, [(n, COLORS[i % len(COLORS)]) for i, n in enumerate(names)], "per-class accuracy")


def batch_latency(metrics: dict[str, dict]) -> str:
    """Each model's milliseconds per batch as a box: whiskers at the 5th and 95th percentiles, the box from the 25th
    to the 75th, a bar at the median."""
    names = list(metrics)
    quantiles = {n: np.percentile(np.asarray(m["latency"]["batches_ms"], dtype=float), [5, 25, 50, 75, 95]) for n, m in metrics.items()}
    lo = min(q[0] for q in quantiles.values())
    hi = max(q[-1] for q in quantiles.values())
    pad = (hi - lo) * 0.08 or max(hi * 0.05, 0.1)
    left = 20 + 6.5 * max(len(n) for n in names)
    ax = Axes((max(0.0, lo - pad), hi + pad), (len(names) - 0.5, -0.5), left=left, width=440, height=44 * len(names))
    body = ax.frame("ms per batch", "", yticks=[])
    for i, name in enumerate(names):
        p5, p25, p50, p75, p95 = (ax.x(v) for v in quantiles[name])
        y, color = ax.y(i), COLORS[i % len(COLORS)]
        body += (
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{escape(name)}</text>'
            f'<line x1="{p5:.1f}" y1="{y:.1f}" x2="{p95:.1f}" y2="{y:.1f}" stroke="{color}" stroke-width="1.5"/>'
            f'<rect x="{p25:.1f}" y="{y - 12:.1f}" width="{max(p75 - p25, 1):.1f}" height="24" fill="{color}" fill-opacity="0.35" stroke="{color}"/>'
            f'<line x1="{p50:.1f}" y1="{y - 12:.1f}" x2="{p50:.1f}" y2="{y + 12:.1f}" stroke="{color}" stroke-width="2.5"/>'
            f"<title>{escape(name)}: p5 {quantiles[name][0]:.2f}, median {quantiles[name][2]:.2f}, p95 {quantiles[name][4]:.2f} ms</title>"
        )
    return svg(ax.left + ax.width + 20, ax.top + ax.height + 44, body, "latency per batch")


def reliability(metrics: dict[str, dict]) -> str:
    """Accuracy against confidence per confidence bin; the diagonal is perfect calibration."""
    ax = Axes((0, 1), (0, 1), width=260, height=260)
    body = ax.frame("confidence", "accuracy") + ax.line([0, 1], [0, 1], MUTED, dashed=True, markers=False)
    entries = [("perfect calibration", MUTED)]
    for i, (name, m) in enumerate(metrics.items()):
        bins, color = m["reliability"], COLORS[i % len(COLORS)]
        pts = [(c, a) for c, a in zip(bins["confidence"], bins["accuracy"]) if c is not None]
        if pts:
            body += ax.line(*zip(*pts), color)
            entries.append((f"{name} (ECE {m['ece']:.3f})", color))
    return with_legend(ax, body, entries, "reliability diagram", dashed=("perfect calibration",))


# The timeline's segments: preparing (loading the model and the data, warming up), waiting at the start barrier, timing.
PHASE_COLORS = {"prepare": "#cbd5e1", "wait at the barrier": "#f59e0b", "timed loop": "#2563eb"}


def window_label(w: dict) -> str:
    return w["model"] if w["shard"] is None else f"{w['model']} {w['shard']}"


def window_segments(w: dict) -> list[tuple[str, float, float]]:
    """(phase, start, end) in epoch seconds; without ``ready_at`` (older metrics) preparing runs up to the loop."""
    loop = w["loop_started_at"]
    ready = loop if w["ready_at"] is None else w["ready_at"]
    started = ready if w["started_at"] is None else w["started_at"]
    parts = [("prepare", started, ready), ("wait at the barrier", ready, loop), ("timed loop", loop, w["finished_at"])]
    return [(phase, a, b) for phase, a, b in parts if b > a]


def timeline(windows: list[dict]) -> str:
    """One bar per evaluator process (each model, each shard): its preparation, its wait at the start barrier and its
    timed loop, in seconds since the first one started."""
    origin = min(a for w in windows for _, a, _ in window_segments(w))
    end = max(w["finished_at"] for w in windows) - origin
    left = 20 + 6.5 * max(len(window_label(w)) for w in windows)
    ax = Axes((0, end * 1.02 or 1.0), (len(windows) - 0.5, -0.5), left=left, width=440, height=28 * len(windows))
    body = ax.frame("seconds since the first evaluator started", "", yticks=[])
    for i, w in enumerate(windows):
        y, label = ax.y(i), escape(window_label(w))
        body += f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{label}</text>'
        for phase, a, b in window_segments(w):
            x0, x1 = ax.x(a - origin), ax.x(b - origin)
            body += (
                f'<rect x="{x0:.2f}" y="{y - 9:.1f}" width="{x1 - x0:.2f}" height="18" fill="{PHASE_COLORS[phase]}">'
                f"<title>{label}: {phase} {a - origin:.2f} s to {b - origin:.2f} s</title></rect>"
            )
    return with_legend(ax, body, list(PHASE_COLORS.items()), "timed loops of the models")


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
    fractions, bounds = seq["information_fractions"], seq["boundaries"]
    pairs = list(seq["history"][-1]["z"])
    zs = [h["z"][p] for h in seq["history"] for p in pairs]
    reach = max([*bounds, *(abs(z) for z in zs)]) * 1.1
    ax = Axes((0, 1.02), (-reach, reach))
    body = ax.frame("information fraction (samples analysed / all)", "z of the discordant pairs")
    body += f'<line x1="{ax.left}" y1="{ax.y(0):.1f}" x2="{ax.left + ax.width}" y2="{ax.y(0):.1f}" stroke="{MUTED}"/>'
    for sign in (1, -1):
        body += ax.line(fractions, [sign * b for b in bounds], MUTED, dashed=True)
    entries = [("boundary", MUTED)]
    at = [fractions[h["look"] - 1] for h in seq["history"]]
    for i, pair in enumerate(pairs):
        color = COLORS[i % len(COLORS)]
        body += ax.line(at, [h["z"][pair] for h in seq["history"]], color)
        entries.append((pair.replace("|", " vs "), color))
    return with_legend(ax, body, entries, "sequential design", dashed=("boundary",))
