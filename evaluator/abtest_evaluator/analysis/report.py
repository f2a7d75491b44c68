"""The analysis in words: the plain-text table the CLI prints, and report.html, one self-contained page
(plots inlined as SVG) from result.json and each model's metrics.json."""

from __future__ import annotations

import html

from abtest_api.result import format_p, runs_as
from abtest_evaluator.analysis import plots

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


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _summary(result: dict) -> str:
    rows = []
    for name, m in result["models"].items():
        mem = m["gpu_memory_bytes"]
        rows.append(
            [
                name + (" (winner)" if name == result["winner"] else ""),
                f"{m['accuracy'] * 100:.2f}%",
                "-" if m["top5"] is None else f"{m['top5'] * 100:.2f}%",
                f"{m['latency_ms_p50']:.2f}",
                f"{m['throughput']:.0f}",
                "-" if m.get("compute_throughput") is None else f"{m['compute_throughput']:.0f}",
                "-" if m.get("loader_wait_fraction") is None else f"{m['loader_wait_fraction'] * 100:.0f}%",
                _not_measured(m, "gpu_memory") if mem is None else f"{mem / 1e9:.2f}",
                f"{m['ece']:.3f}",
                m["device"] or "-",
                m.get("precision", "fp32"),
                m.get("runtime") or "-",
            ]
        )
    header = ["model", "accuracy", "top-5", "latency ms/batch (p50)", "images/s (wall)", "images/s (compute)", "waiting for data"]
    return _table([*header, "GPU mem GB", "ECE", "device", "precision", "runtime"], rows) + _runtime_notes(result)


def _not_measured(m: dict, field: str) -> str:
    """A dash, marked when the runtime cannot measure the field (the note under the table says why)."""
    return "n/a*" if field in (m.get("not_measured") or {}) else "-"


def _runtime_notes(result: dict) -> str:
    """Why a field is not measured, or a setting not applied, for a model's runtime."""
    notes = [
        f"<li>{html.escape(name)}: {html.escape(field)} {kind}: {html.escape(why)}</li>"
        for name, m in result["models"].items()
        for kind, reasons in (("not measured*", m.get("not_measured") or {}), ("not applied", m.get("not_applied") or {}))
        for field, why in reasons.items()
    ]
    return f"<ul class='notes'>{''.join(notes)}</ul>" if notes else ""


def _comparisons(result: dict) -> str:
    parts = []
    for c in result["comparisons"]:
        a, b = html.escape(c["a"]), html.escape(c["b"])
        contingency = (
            f"<table><tr><th></th><th>{b} right</th><th>{b} wrong</th></tr>"
            f"<tr><td>{a} right</td><td>{c['n11']}</td><td>{c['n10']}</td></tr>"
            f"<tr><td>{a} wrong</td><td>{c['n01']}</td><td>{c['n00']}</td></tr></table>"
        )
        lat, odds = c["latency_ratio"], c["odds_ratio"]
        facts = (
            f"accuracy {a} − {b}: <b>{c['accuracy_diff'] * 100:+.2f}</b> points, {c['ci_level'] * 100:g}% CI "
            f"[{c['ci'][0] * 100:+.2f}, {c['ci'][1] * 100:+.2f}]<br>"
            f"McNemar ({c['method']}): statistic {c['statistic']:.3g}, p = {c['p_value_text']}"
            + (f", Holm-adjusted p = {c['p_value_adjusted_text']}" if len(result["comparisons"]) > 1 else "")
            + f" — <b>{'significant' if c['significant'] else 'not significant'}</b> at {result['alpha']:g}<br>"
            + _margin_line(c, result)
            + f"discordant odds ratio ({a} right/{b} wrong : the reverse): {_num(odds['estimate'])} "
            f"[{_num(odds['ci'][0])}, {_num(odds['ci'][1])}] (exact, {odds['ci_level'] * 100:g}%)<br>"
            f"latency ratio (median, {a}/{b}): {lat['estimate']:.2f} [{lat['ci95'][0]:.2f}, {lat['ci95'][1]:.2f}]" + _per_class(c, result)
        )
        parts.append(f"<h3>{a} vs {b}</h3><div class='pair'>{contingency}</div><div class='pair'>{facts}</div>")
    return "".join(parts)


def _num(x: float | None) -> str:
    return "∞" if x is None else f"{x:.3g}"


def _margin_line(c: dict, result: dict) -> str:
    if "margin_test" not in c:
        return ""
    h, mt = result["hypothesis"], c["margin_test"]
    return (
        f"{h['name']} within {h['margin'] * 100:g} points: p = {mt['p_value_adjusted_text']}"
        + (" (Holm-adjusted)" if len(result["comparisons"]) > 1 else "")
        + f" — <b>{c['decision']}</b><br>"
    )


def _per_class(c: dict, result: dict) -> str:
    """The classes whose McNemar test is significant after Holm across classes, else the three smallest p."""
    rows = sorted(c["per_class"], key=lambda r: r["p_value_adjusted"])
    shown = [r for r in rows if r["significant"]] or rows[:3]
    if not shown:
        return ""
    body = [
        [
            str(r["class"]),
            str(r["n"]),
            f"{r['accuracy_a'] * 100:.1f}%",
            f"{r['accuracy_b'] * 100:.1f}%",
            f"{r['n10']}/{r['n01']}",
            format_p(r["p_value_adjusted"], r["p_value_text"].startswith("<")) + (" *" if r["significant"] else ""),
        ]
        for r in shown
    ]
    caption = "significant per-class differences" if shown[0]["significant"] else "no class differs significantly; the closest"
    return f"<br>{caption} (McNemar per class, Holm over {len(rows)} classes):" + _table(
        ["class", "n", c["a"], c["b"], "n10/n01", "p (Holm)"], body
    )


def _sequential(result: dict) -> str:
    """The looks so far: each pair's z against the boundaries, as a table and a plot."""
    seq = result.get("sequential")
    if not seq:
        return ""
    pairs = list(seq["history"][-1]["z"])
    body = [
        [
            str(h["look"]),
            str(h["n"]),
            f"±{h['boundary']:.3f}",
            *(f"{h['z'][p]:+.3f}" + (" *" if abs(h["z"][p]) >= h["boundary"] else "") for p in pairs),
        ]
        for h in seq["history"]
    ]
    state = f"stopped early at look {seq['look']}" if seq["stopped_early"] else f"decided at look {seq['look']}"
    return (
        f"<h2>Sequential design</h2><p>{seq['looks']} looks, Lan-DeMets {html.escape(seq['spending'])} alpha spending; {state} "
        f"({seq['samples_used']} of {seq['samples_total']} samples, alpha spent {seq['alpha_spent']:.3g}). z = (n10 − n01) / √(n10 + n01): "
        "positive when A is ahead; a pair is decided when |z| reaches the boundary.</p>"
        + _table(["look", "samples", "boundary", *(p.replace("|", " vs ") for p in pairs)], body)
        + plots.sequential_paths(seq)
    )


def together_text(result: dict) -> str:
    """The header's word on concurrency: whether the timed loops ran together, and their start skew."""
    block = result.get("concurrency")
    if not block:
        return ""
    said = "yes" if block["concurrent"] else "no"
    return f" · timed loops together: {said} (start skew {block['start_skew_seconds']:.2f} s, overlap {block['overlap'] * 100:.0f}%)"


def _timeline(result: dict) -> str:
    block = result.get("concurrency")
    if not block:
        return ""
    return (
        "<h2>Did the models run together?</h2><p>Each evaluator's preparation, wait at the start barrier and timed loop. "
        "Latency, throughput and GPU figures compare only when the timed loops ran at the same time.</p>" + plots.timeline(block["windows"])
    )


def skipped_text(result: dict) -> str:
    return f" ({result['skipped']} unreadable samples skipped by every model)" if result.get("skipped") else ""


def render(result: dict, metrics: dict[str, dict]) -> str:
    """The page."""
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
<p class="muted">{result["n"]} samples{skipped_text(result)} · fingerprint {html.escape(str(result["fingerprint"])[:16])}… · α = {result["alpha"]:g} · {html.escape(result["method"])} · intervals: {html.escape(result["ci_method"])}{together_text(result)}</p>
<div class="verdict {"win" if winner else "tie"}">{html.escape(result["verdict"])}</div>
{alerts}
<h2>Summary</h2>{_summary(result)}
{omnibus}
<h2>Paired comparisons</h2>{_comparisons(result)}
{_sequential(result)}
{_timeline(result)}
{"".join(f"<h2>{title}</h2>{figure}" for title, figure in plots.metric_figures(metrics).items())}
</body></html>
"""


def text_table(result: dict) -> str:
    """The plain-text table of design.md §1."""
    # what each model runs as, when not all are PyTorch fp32 (an artefact's format, a variant's precision)
    variants = {name: runs_as(m) for name, m in result["models"].items()}
    shown = set(variants.values()) != {"fp32"}
    rows = [("model", "accuracy", "latency ms/batch", "img/s", "GPU mem GB", *(["runs as"] if shown else []))]
    for name, m in result["models"].items():
        mem = m["gpu_memory_bytes"]
        rows.append(
            (
                name,
                f"{m['accuracy'] * 100:.1f}%",
                f"{m['latency_ms_p50']:.1f}",
                f"{m['throughput']:.0f}",
                ("n/a" if "gpu_memory" in (m.get("not_measured") or {}) else "-") if mem is None else f"{mem / 1e9:.1f}",
                *([variants[name]] if shown else []),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths))) for r in rows]
    for c in result["comparisons"]:
        lines.append(
            f"{c['a']} vs {c['b']}: diff {c['accuracy_diff'] * 100:+.2f} pts "
            f"[{c['ci'][0] * 100:+.2f}, {c['ci'][1] * 100:+.2f}], n01={c['n01']} n10={c['n10']}, "
            f"McNemar {c['method']} p = {c['p_value_text']}"
            + (f" (Holm {c['p_value_adjusted_text']})" if len(result["comparisons"]) > 1 else "")
            + (" *" if c["significant"] else "")
        )
    if result["omnibus"]:
        o = result["omnibus"]
        lines.append(f"Cochran's Q = {o['statistic']:.2f} (df {o['df']}), p = {o['p_value_text']}")
    lines.append(result["verdict"])
    lines += [f"warning: {w}" for w in result["warnings"]]
    lines += [f"note: {n}" for n in result["notes"]]
    return "\n".join(lines)
