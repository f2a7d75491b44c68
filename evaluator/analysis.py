"""``abtest analyze``: per-model predictions -> result.json + report.html, or a refusal that writes nothing.

Torch-free. Reads only the columns it needs, as numpy arrays, so 10 million samples per model fit
in seconds and well under 2 GiB (benchmarks/analysis_scale.py).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from abtest_evaluator import results, stats
from abtest_operator.errors import UserError

RESULT = "result.json"
REPORT = "report.html"


@dataclass
class ModelData:
    name: str
    metrics: dict
    labels: np.ndarray
    correct: np.ndarray  # bool per sample, in index order
    confidence: np.ndarray


def model_dirs(root: Path, models: list[str] | None = None) -> list[Path]:
    """The model folders, in the given order (A, B, … as the ABTest lists them), else by name."""
    if not root.is_dir():
        raise UserError(f"results folder {root} does not exist; pass the --out folder of the evaluations")
    if models:
        missing = [m for m in models if not (root / m).is_dir()]
        if missing:
            raise UserError(f"{root} has no folder for model(s) {', '.join(missing)}; did their evaluation run?")
        dirs = [root / m for m in models]
    else:
        dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(dirs) < 2:
        raise UserError(f"{root} holds {len(dirs)} model folder(s); an A/B test needs at least 2 evaluated models")
    return dirs


def load_model(model_dir: Path) -> ModelData:
    metrics = results.read_metrics(model_dir)
    expected = metrics.get("predictions_sha256") or {}
    files = results.predictions_files(model_dir)
    for file in files:
        if expected.get(file.name) != results.sha256_file(file):
            raise UserError(f"{file} does not match the sha256 in {model_dir / results.METRICS}; it changed after the evaluation: re-run that model")
    table = results.read_predictions(model_dir)
    for column in results.PREDICTION_COLUMNS:
        if table.column(column).null_count:
            raise UserError(f"{model_dir.name}: predictions column {column!r} has {table.column(column).null_count} missing values; re-run that model")
    index = table.column("index").to_numpy()
    if not np.array_equal(index, np.arange(len(index))):
        raise UserError(f"{model_dir.name}: predictions index is not 0..{len(index) - 1} in order (missing or repeated samples); re-run that model")
    labels = table.column("label").to_numpy()
    confidence = table.column("confidence").to_numpy()
    if np.isnan(confidence).any():
        raise UserError(f"{model_dir.name}: predictions hold NaN confidences (a diverged model or broken AMP); re-run without --amp or check the checkpoint")
    if metrics.get("n") != len(labels):
        raise UserError(f"{model_dir.name}: metrics.json says n={metrics.get('n')} but predictions hold {len(labels)} rows; re-run that model")
    name = metrics.get("model") or model_dir.name
    return ModelData(name, metrics, labels, table.column("pred").to_numpy() == labels, confidence)


def check_same_samples(models: list[ModelData]) -> None:
    """Refuse unless every model saw the same samples, in the same order, with the same labels."""
    ref = models[0]
    for other in models[1:]:
        if len(other.labels) != len(ref.labels):
            raise UserError(f"models saw different numbers of samples ({ref.name}: {len(ref.labels)}, {other.name}: {len(other.labels)}); evaluate all with the same dataset, split and limit")
        if other.metrics.get("fingerprint") != ref.metrics.get("fingerprint"):
            raise UserError(f"models saw different samples or orders (fingerprint of {ref.name} != {other.name}); evaluate all with the same dataset, split, limit and seed")
        if not np.array_equal(other.labels, ref.labels):
            mismatch = int(np.flatnonzero(other.labels != ref.labels)[0])
            raise UserError(f"labels differ between {ref.name} and {other.name} (first at index {mismatch}); evaluate all on the same dataset")


def collect_warnings(models: list[ModelData]) -> list[str]:
    warnings = []
    devices = {m.name: (m.metrics.get("device") or {}) for m in models}
    if len({d.get("type") for d in devices.values()}) > 1:
        warnings.append("models ran on different device types (" + ", ".join(f"{n}: {d.get('type')}" for n, d in devices.items()) + "); efficiency figures are not comparable")
    elif len({d.get("name") for d in devices.values()}) > 1:
        warnings.append("models ran on different hardware (" + ", ".join(f"{n}: {d.get('name')}" for n, d in devices.items()) + "); efficiency figures are not comparable")
    for m in models:
        if m.metrics.get("weights") == "random":
            warnings.append(f"{m.name} has random weights (no checkpoint, not pretrained): its accuracy says nothing about the architecture")
    return warnings


def model_summary(m: ModelData) -> dict:
    met = m.metrics
    gpu = met.get("gpu_memory") or {}
    return {
        "accuracy": float(m.correct.mean()), "n": int(len(m.correct)), "correct": int(m.correct.sum()),
        "top5": met.get("top5"), "throughput": met.get("throughput"), "latency_ms_p50": met["latency"]["batch_ms"]["p50"],
        "latency_ms_p95": met["latency"]["batch_ms"]["p95"], "gpu_memory_bytes": gpu.get("max_allocated_bytes"),
        "gpu_utilization": (met.get("gpu_utilization") or {}).get("mean"), "confidence_mean": float(m.confidence.mean()),
        "ece": met.get("ece"), "device": (met.get("device") or {}).get("name"), "architecture": met.get("architecture"),
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
        "a": a.name, "b": b.name, **stats.table_dict(table), "n": n, "method": mc["method"], "statistic": mc["statistic"],
        "p_value": mc["p"].value, "p_value_text": mc["p"].text, "log10_p_value": mc["p"].log10,
        "accuracy_diff": table.diff, "ci95": [lo, hi], "min_detectable_diff": mde, "latency_ratio": lat,
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
    p_text = stats.format_p(quoted["p_value_adjusted"], quoted["p_value_text"].startswith("<"))
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
            out.append(f"{pair}: {c['n10'] + c['n01']} discordant pairs in n = {c['n']} cannot reach 80% power for any difference; evaluate more samples")
        elif observed < mde:
            out.append(f"{pair}: at n = {c['n']} with {c['n10'] + c['n01']} discordant pairs, only differences of at least "
                       f"{mde * 100:.2f} points are detectable at 80% power (observed {observed * 100:.2f}); evaluate more samples to settle it")
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


def load_models(root: Path, order: list[str] | None = None) -> list[ModelData]:
    """Every model's predictions and metrics, checked to be comparable; a UserError otherwise."""
    models = [load_model(d) for d in model_dirs(root, order)]
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise UserError(f"two model folders report the same model name ({', '.join(names)}); give each model a distinct --name")
    check_same_samples(models)
    return models


def analyze(root: Path, alpha: float = 0.05, test: str = "auto", order: list[str] | None = None) -> dict:
    return compare_models(load_models(root, order), alpha, test)


def compare_models(models: list[ModelData], alpha: float, test: str) -> dict:
    if not 0 < alpha < 1:
        raise UserError(f"--alpha must be in (0, 1), got {alpha}")
    names = [m.name for m in models]
    comparisons = [compare(a, b, test, alpha) for a, b in itertools.combinations(models, 2)]
    adjusted, reject = stats.holm([c["p_value"] for c in comparisons], alpha)
    for c, p_adj, sig in zip(comparisons, adjusted, reject):
        c["p_value_adjusted"] = max(p_adj, stats.P_FLOOR)
        c["significant"] = sig
    omnibus = stats.cochran_q(np.column_stack([m.correct for m in models]), alpha) if len(models) >= 3 else None
    summaries = {m.name: model_summary(m) for m in models}
    methods = sorted({c["method"] for c in comparisons})
    result = {
        "alpha": alpha, "test": test,
        "method": "McNemar (" + ", ".join({"exact": "exact binomial", "chi2": "chi-square with continuity correction"}[m] for m in methods) + ")"
                  + (", Holm-adjusted, Cochran's Q omnibus" if omnibus else ""),
        "ci_method": "Newcombe (1998) method 10 score interval for paired proportions",
        "fingerprint": models[0].metrics.get("fingerprint"), "n": int(len(models[0].correct)),
        "models": summaries, "comparisons": comparisons, "omnibus": omnibus,
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


def summary_table(result: dict) -> str:
    """The plain-text table of design.md §1."""
    rows = [("model", "accuracy", "latency ms/batch", "img/s", "GPU mem GB")]
    for name, m in result["models"].items():
        mem = m["gpu_memory_bytes"]
        rows.append((name, f"{m['accuracy'] * 100:.1f}%", f"{m['latency_ms_p50']:.1f}", f"{m['throughput']:.0f}",
                     "-" if mem is None else f"{mem / 1e9:.1f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths))) for r in rows]
    for c in result["comparisons"]:
        lines.append(f"{c['a']} vs {c['b']}: diff {c['accuracy_diff'] * 100:+.2f} pts "
                     f"[{c['ci95'][0] * 100:+.2f}, {c['ci95'][1] * 100:+.2f}], n01={c['n01']} n10={c['n10']}, "
                     f"McNemar {c['method']} p = {c['p_value_text']}" + (f" (Holm {stats.format_p(c['p_value_adjusted'])})" if len(result['comparisons']) > 1 else "")
                     + (" *" if c["significant"] else ""))
    if result["omnibus"]:
        o = result["omnibus"]
        lines.append(f"Cochran's Q = {o['statistic']:.2f} (df {o['df']}), p = {o['p_value_text']}")
    lines.append(result["verdict"])
    lines += [f"warning: {w}" for w in result["warnings"]]
    lines += [f"note: {n}" for n in result["notes"]]
    return "\n".join(lines)


def status_summary(result: dict) -> dict:
    """The part of result.json that goes into the ABTest's status.result (camelCase, small)."""
    best = min(result["comparisons"], key=lambda c: c["p_value_adjusted"])
    return {
        "winner": result["winner"] or "none",
        "verdict": result["verdict"],
        "pValue": stats.format_p(best["p_value_adjusted"], best["p_value_text"].startswith("<")),
        "significant": any(c["significant"] for c in result["comparisons"]),
        "alpha": result["alpha"], "method": result["method"], "n": result["n"],
        "models": {n: {"accuracy": m["accuracy"], "throughput": m["throughput"], "latencyMsP50": m["latency_ms_p50"]} for n, m in result["models"].items()},
        "comparisons": [{"a": c["a"], "b": c["b"], "n01": c["n01"], "n10": c["n10"], "pValue": c["p_value"],
                         "pValueAdjusted": c["p_value_adjusted"], "significant": c["significant"],
                         "accuracyDiff": c["accuracy_diff"], "ci95": c["ci95"], "method": c["method"]} for c in result["comparisons"]],
        "omnibus": None if not result["omnibus"] else {"test": "cochrans_q", "statistic": result["omnibus"]["statistic"], "pValue": result["omnibus"]["p_value"]},
        "warnings": result["warnings"],
    }
