"""``abtest analyze``: per-model predictions -> result.json + report.html, or a refusal that writes nothing.

Torch-free. Reads only the columns it needs, as numpy arrays, so 10 million samples per model fit
in seconds and well under 2 GiB (benchmarks/analysis_scale.py).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

from abtest_api.constants import REPORT, RESULT
from abtest_api.errors import UserError
from abtest_api.result import P_FLOOR, format_p
from abtest_evaluator import results, stats
from abtest_evaluator.results import ModelData, load_models


def collect_warnings(models: list[ModelData]) -> list[str]:
    warnings = []
    devices = {m.name: (m.metrics.get("device") or {}) for m in models}
    if len({d.get("type") for d in devices.values()}) > 1:
        warnings.append(
            "models ran on different device types ("
            + ", ".join(f"{n}: {d.get('type')}" for n, d in devices.items())
            + "); efficiency figures are not comparable"
        )
    elif len({d.get("name") for d in devices.values()}) > 1:
        warnings.append(
            "models ran on different hardware ("
            + ", ".join(f"{n}: {d.get('name')}" for n, d in devices.items())
            + "); efficiency figures are not comparable"
        )
    images = {m.name: m.metrics.get("image") for m in models}
    if len(set(images.values())) > 1:
        warnings.append(
            "models ran different evaluator images ("
            + ", ".join(f"{n}: {i}" for n, i in images.items())
            + "); the comparison is not controlled"
        )
    if any(m.metrics.get("versions") != models[0].metrics.get("versions") for m in models[1:]):
        warnings.append("models ran with different library versions (see each metrics.json's versions); figures may not be comparable")
    for m in models:
        if m.metrics.get("weights") == "random":
            warnings.append(
                f"{m.name} has random weights (no checkpoint, not pretrained): its accuracy says nothing about the architecture"
            )
    return warnings


def model_summary(m: ModelData) -> dict:
    met = m.metrics
    gpu = met.get("gpu_memory") or {}
    return {
        "accuracy": float(m.correct.mean()),
        "n": int(len(m.correct)),
        "correct": int(m.correct.sum()),
        "top5": met.get("top5"),
        "throughput": met.get("throughput"),
        "latency_ms_p50": met["latency"]["batch_ms"]["p50"],
        "latency_ms_p95": met["latency"]["batch_ms"]["p95"],
        "gpu_memory_bytes": gpu.get("max_allocated_bytes"),
        "gpu_utilization": (met.get("gpu_utilization") or {}).get("mean"),
        "confidence_mean": float(m.confidence.mean()),
        "ece": met.get("ece"),
        "device": (met.get("device") or {}).get("name"),
        "architecture": met.get("architecture"),
        "weights": met.get("weights"),
    }


def compare(a: ModelData, b: ModelData, test: str, alpha: float) -> dict:
    table = stats.Table.from_correct(a.correct, b.correct)
    mc = stats.mcnemar_test(table, test)
    lo, hi = stats.paired_diff_ci(table)
    n = table.n
    mde = stats.min_detectable_diff(n, table.discordant / n, alpha)
    lat = stats.ratio_of_medians(np.asarray(a.metrics["latency"]["batches_ms"]), np.asarray(b.metrics["latency"]["batches_ms"]))
    return {
        "a": a.name,
        "b": b.name,
        **stats.table_dict(table),
        "n": n,
        "method": mc["method"],
        "statistic": mc["statistic"],
        "p_value": mc["p"].value,
        "p_value_text": mc["p"].text,
        "log10_p_value": mc["p"].log10,
        "accuracy_diff": table.diff,
        "ci95": [lo, hi],
        "min_detectable_diff": mde,
        "latency_ratio": lat,
    }


def pick_winner(names: list[str], comparisons: list[dict]) -> str | None:
    """The model significantly better than every other after correction, if one exists."""
    for name in names:
        beats = 0
        for c in comparisons:
            if c["significant"] and ((c["a"] == name and c["accuracy_diff"] > 0) or (c["b"] == name and c["accuracy_diff"] < 0)):
                beats += 1
        if beats == len(names) - 1:
            return name
    return None


def verdict_sentence(result: dict) -> str:
    """One sentence; a winner is quoted with its weakest evidence (largest adjusted p against any rival)."""
    comps, alpha, winner = result["comparisons"], result["alpha"], result["winner"]
    if winner:
        quoted = max((c for c in comps if winner in (c["a"], c["b"])), key=lambda c: c["p_value_adjusted"])
    else:
        quoted = min(comps, key=lambda c: c["p_value_adjusted"])
    p_text = format_p(quoted["p_value_adjusted"], quoted["p_value_text"].startswith("<"))
    adjusted = " (Holm-adjusted)" if len(comps) > 1 else ""
    if winner:
        better_than = "every other model" if len(comps) > 1 else (quoted["b"] if quoted["a"] == winner else quoted["a"])
        return f"{winner} is better than {better_than}: McNemar p = {p_text}{adjusted}, significant at {alpha:g}."
    return f"Not distinguishable at {alpha:g}: smallest McNemar p = {p_text}{adjusted}."


def power_warnings(comparisons: list[dict]) -> list[str]:
    out = []
    for c in comparisons:
        if c["significant"]:
            continue
        mde, observed = c["min_detectable_diff"], abs(c["accuracy_diff"])
        pair = f"{c['a']} vs {c['b']}"
        if mde is None:
            out.append(
                f"{pair}: {c['n10'] + c['n01']} discordant pairs in n = {c['n']} cannot reach 80% power for any difference; evaluate more samples"
            )
        elif observed < mde:
            out.append(
                f"{pair}: at n = {c['n']} with {c['n10'] + c['n01']} discordant pairs, only differences of at least "
                f"{mde * 100:.2f} points are detectable at 80% power (observed {observed * 100:.2f}); evaluate more samples to settle it"
            )
    return out


def pareto_notes(comparisons: list[dict]) -> list[str]:
    notes = []
    for c in comparisons:
        if not c["significant"]:
            continue
        better, worse = (c["a"], c["b"]) if c["accuracy_diff"] > 0 else (c["b"], c["a"])
        ratio = c["latency_ratio"]["estimate"] if better == c["a"] else 1 / c["latency_ratio"]["estimate"]
        if ratio > 1:
            notes.append(f"{better} is more accurate but {ratio:.2f}x slower per batch than {worse}: a trade-off, not a dominance")
    return notes


def analyze(root: Path, alpha: float = 0.05, test: str = "auto", order: list[str] | None = None) -> dict:
    return compare_models(load_models(root, order), alpha, test)


def compare_models(models: list[ModelData], alpha: float, test: str) -> dict:
    if not 0 < alpha < 1:
        raise UserError(f"--alpha must be in (0, 1), got {alpha}")
    names = [m.name for m in models]
    comparisons = [compare(a, b, test, alpha) for a, b in itertools.combinations(models, 2)]
    adjusted, reject = stats.holm([c["p_value"] for c in comparisons], alpha)
    for c, p_adj, sig in zip(comparisons, adjusted, reject):
        c["p_value_adjusted"] = max(p_adj, P_FLOOR)
        c["significant"] = sig
    omnibus = stats.cochran_q(np.column_stack([m.correct for m in models]), alpha) if len(models) >= 3 else None
    summaries = {m.name: model_summary(m) for m in models}
    methods = sorted({c["method"] for c in comparisons})
    result = {
        "alpha": alpha,
        "test": test,
        "method": "McNemar ("
        + ", ".join({"exact": "exact binomial", "chi2": "chi-square with continuity correction"}[m] for m in methods)
        + ")"
        + (", Holm-adjusted, Cochran's Q omnibus" if omnibus else ""),
        "ci_method": "Newcombe (1998) method 10 score interval for paired proportions",
        "fingerprint": models[0].metrics.get("fingerprint"),
        "n": int(len(models[0].correct)),
        "models": summaries,
        "comparisons": comparisons,
        "omnibus": omnibus,
        "winner": pick_winner(names, comparisons),
        "warnings": collect_warnings(models) + power_warnings(comparisons),
        "notes": pareto_notes(comparisons),
    }
    result["verdict"] = verdict_sentence(result)
    return result


def run_analysis(root: Path, alpha: float = 0.05, test: str = "auto", order: list[str] | None = None) -> dict:
    """Analyze and write result.json and report.html atomically; nothing is written on refusal."""
    from abtest_evaluator import report

    models = load_models(root, order)
    result = compare_models(models, alpha, test)
    html = report.render(result, {m.name: m.metrics for m in models})
    results.atomic_write_json(root / RESULT, result)
    results.atomic_write_bytes(root / REPORT, html.encode())
    return result
