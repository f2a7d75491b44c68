"""report.html: one self-contained page (plots inlined as PNG) from result.json and each model's metrics.json."""

from __future__ import annotations

import base64
import html
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from abtest_evaluator.stats import format_p  # noqa: E402

COLORS = ["#2563eb", "#f97316", "#16a34a", "#9333ea", "#dc2626", "#0891b2", "#ca8a04", "#db2777"]

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#111827;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem} h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #e5e7eb;padding-bottom:.3rem}
.verdict{font-size:1.2rem;padding:.8rem 1rem;border-radius:.5rem;margin:1rem 0}
.win{background:#dcfce7;border:1px solid #86efac} .tie{background:#f3f4f6;border:1px solid #d1d5db}
table{border-collapse:collapse;margin:.5rem 0} th,td{padding:.35rem .7rem;border-bottom:1px solid #e5e7eb;text-align:right}
th:first-child,td:first-child{text-align:left} th{background:#f9fafb}
.warn{background:#fef3c7;border:1px solid #fcd34d;padding:.5rem .8rem;border-radius:.4rem;margin:.3rem 0}
.note{background:#e0f2fe;border:1px solid #7dd3fc;padding:.5rem .8rem;border-radius:.4rem;margin:.3rem 0}
.muted{color:#6b7280;font-size:.9rem} .pair{display:inline-block;margin-right:2rem;vertical-align:top}
img{max-width:100%}
"""


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _confusion_plots(metrics: dict[str, dict]) -> str:
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
    return _png(fig)


def _per_class_plot(metrics: dict[str, dict]) -> str:
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
    return _png(fig)


def _latency_plot(metrics: dict[str, dict]) -> str:
    fig, ax = plt.subplots(figsize=(7, 3.2))
    data = [np.asarray(m["latency"]["batches_ms"]) for m in metrics.values()]
    parts = ax.violinplot(data, showmedians=True, orientation="horizontal")
    for body, color in zip(parts["bodies"], COLORS):
        body.set_facecolor(color)
    ax.set_yticks(range(1, len(data) + 1), list(metrics))
    ax.set_xlabel("ms per batch")
    return _png(fig)


def _reliability_plot(metrics: dict[str, dict]) -> str:
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
    return _png(fig)


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _summary(result: dict) -> str:
    rows = []
    for name, m in result["models"].items():
        mem = m["gpu_memory_bytes"]
        rows.append([name + (" (winner)" if name == result["winner"] else ""), f"{m['accuracy'] * 100:.2f}%",
                     "-" if m["top5"] is None else f"{m['top5'] * 100:.2f}%", f"{m['latency_ms_p50']:.2f}",
                     f"{m['throughput']:.0f}", "-" if mem is None else f"{mem / 1e9:.2f}", f"{m['ece']:.3f}", m["device"] or "-"])
    return _table(["model", "accuracy", "top-5", "latency ms/batch (p50)", "images/s", "GPU mem GB", "ECE", "device"], rows)


def _comparisons(result: dict) -> str:
    parts = []
    for c in result["comparisons"]:
        a, b = html.escape(c["a"]), html.escape(c["b"])
        contingency = (f"<table><tr><th></th><th>{b} right</th><th>{b} wrong</th></tr>"
                       f"<tr><td>{a} right</td><td>{c['n11']}</td><td>{c['n10']}</td></tr>"
                       f"<tr><td>{a} wrong</td><td>{c['n01']}</td><td>{c['n00']}</td></tr></table>")
        lat = c["latency_ratio"]
        facts = (f"accuracy {a} − {b}: <b>{c['accuracy_diff'] * 100:+.2f}</b> points, 95% CI "
                 f"[{c['ci95'][0] * 100:+.2f}, {c['ci95'][1] * 100:+.2f}]<br>"
                 f"McNemar ({c['method']}): statistic {c['statistic']:.3g}, p = {c['p_value_text']}"
                 + (f", Holm-adjusted p = {format_p(c['p_value_adjusted'])}" if len(result["comparisons"]) > 1 else "")
                 + f" — <b>{'significant' if c['significant'] else 'not significant'}</b> at {result['alpha']:g}<br>"
                 f"latency ratio (median, {a}/{b}): {lat['estimate']:.2f} [{lat['ci95'][0]:.2f}, {lat['ci95'][1]:.2f}]")
        parts.append(f"<h3>{a} vs {b}</h3><div class='pair'>{contingency}</div><div class='pair'>{facts}</div>")
    return "".join(parts)


def render(result: dict, metrics: dict[str, dict]) -> str:
    winner = result["winner"]
    omnibus = ""
    if result["omnibus"]:
        o = result["omnibus"]
        omnibus = f"<p>Cochran's Q = {o['statistic']:.3f} (df {o['df']}), p = {o['p_value_text']} — {'the models differ' if o['significant'] else 'no overall difference'} at {result['alpha']:g}.</p>"
    alerts = "".join(f"<div class='warn'>⚠ {html.escape(w)}</div>" for w in result["warnings"])
    alerts += "".join(f"<div class='note'>{html.escape(n)}</div>" for n in result["notes"])
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>A/B test report</title><style>{CSS}</style></head><body>
<h1>A/B test report</h1>
<p class="muted">{result['n']} samples · fingerprint {html.escape(str(result['fingerprint'])[:16])}… · α = {result['alpha']:g} · {html.escape(result['method'])} · intervals: {html.escape(result['ci_method'])}</p>
<div class="verdict {'win' if winner else 'tie'}">{html.escape(result['verdict'])}</div>
{alerts}
<h2>Summary</h2>{_summary(result)}
{omnibus}
<h2>Paired comparisons</h2>{_comparisons(result)}
<h2>Confusion matrices</h2>{_confusion_plots(metrics)}
<h2>Per-class accuracy</h2>{_per_class_plot(metrics)}
<h2>Latency per batch</h2>{_latency_plot(metrics)}
<h2>Reliability</h2>{_reliability_plot(metrics)}
</body></html>
"""
