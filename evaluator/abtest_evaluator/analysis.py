"""``abtest analyze``: per-model predictions -> result.json + report.html, or a refusal that writes nothing.

Torch-free. Reads only the columns it needs, as numpy arrays, so 10 million samples per model fit
in seconds and well under 2 GiB (benchmarks/analysis_scale.py).
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import numpy as np

from abtest_api.analyze import AnalysisConfig, check
from abtest_api.constants import (
    EQUIVALENCE,
    METRICS,
    NONINFERIORITY,
    REPORT,
    RESULT,
    SUPERIORITY,
    look_dir,
)
from abtest_api.errors import UserError
from abtest_api.result import P_FLOOR, format_p
from abtest_evaluator import concurrency, report, results, sequential, stats
from abtest_evaluator.results import ModelData, load_model_dirs, load_models, model_dirs


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
    kernels = {n: d.get("kernels") for n, d in devices.items() if d.get("type") == "cpu" and d.get("kernels")}
    if len({tuple(sorted(k.items())) for k in kernels.values()}) > 1:
        warnings.append(
            "models ran with different CPU kernels ("
            + ", ".join(f"{n}: {k['cpu_capability']} {'portable' if k.get('portable') else 'native'}" for n, k in kernels.items())
            + "); each model's predictions stand, but a rerun on another CPU may differ; leave spec.nondeterministic off for the portable ones"
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
        if m.metrics.get("data_bound"):
            warnings.append(
                f"{m.name} waited for data {m.metrics['loader_wait_fraction'] * 100:.0f}% of its timed loop: its throughput measures the "
                "loader, not the model (raise spec.workers, or give the pod more CPU)"
            )
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
        "skipped": len((met.get("dataset") or {}).get("skipped") or []),  # unreadable samples left out of every model
        "correct": int(m.correct.sum()),
        "top5": met.get("top5"),
        "throughput": met.get("throughput"),
        "compute_throughput": met.get("compute_throughput"),
        "loader_wait_fraction": met.get("loader_wait_fraction"),
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


def compare(a: ModelData, b: ModelData, test: str, alpha: float, hypothesis: str = SUPERIORITY, margin: float | None = None) -> dict:
    """One paired comparison of A (the reference, listed first) and B: McNemar, the paired interval at the level
    the hypothesis decides with (1 - alpha, or 1 - 2 alpha for the one-sided margin tests), the discordant odds
    ratio, the detectable effect, latency, and per-class tests."""
    table = stats.Table.from_correct(a.correct, b.correct)
    mc = stats.mcnemar_test(table, test)
    level = 1 - alpha if hypothesis == SUPERIORITY else 1 - 2 * alpha
    lo, hi = stats.paired_diff_ci(table, level)
    n = table.n
    lat = stats.ratio_of_medians(np.asarray(a.metrics["latency"]["batches_ms"]), np.asarray(b.metrics["latency"]["batches_ms"]))
    out = {
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
        "ci": [lo, hi],
        "ci_level": level,
        "odds_ratio": stats.discordant_odds_ratio(table, 1 - alpha),
        "latency_ratio": lat,
        "per_class": stats.per_class(a.labels, a.correct, b.correct, alpha, test),
    }
    if hypothesis != SUPERIORITY:
        mt = stats.margin_test(table, hypothesis, margin, alpha)
        out["margin_test"] = {"p_value": mt["p"].value, "p_value_text": mt["p"].text, "log10_p_value": mt["p"].log10}
    return out


def beaten(names: list[str], comparisons: list[dict]) -> dict[str, list[str]]:
    """For each model, the models it is significantly more accurate than (after correction)."""
    out = {name: [] for name in names}
    for c in comparisons:
        if c["significant"] and c["accuracy_diff"] != 0:
            better, worse = (c["a"], c["b"]) if c["accuracy_diff"] > 0 else (c["b"], c["a"])
            out[better].append(worse)
    return out


def pick_winner(names: list[str], comparisons: list[dict]) -> str | None:
    """The model significantly better than every other after correction, if one exists."""
    return next((name for name, worse in beaten(names, comparisons).items() if len(worse) == len(names) - 1), None)


def decide(c: dict, hypothesis: str, alpha: float) -> str:
    """The comparison's decision in the contract's words (design.md §5)."""
    if hypothesis == SUPERIORITY:
        return ("a_better" if c["accuracy_diff"] > 0 else "b_better") if c["significant"] else "inconclusive"
    holds = c["margin_test"]["p_value_adjusted"] <= alpha
    return ({NONINFERIORITY: "noninferior", EQUIVALENCE: "equivalent"}[hypothesis]) if holds else "inconclusive"


def verdict_sentence(result: dict) -> str:
    """One sentence; a winner is quoted with its weakest evidence (largest adjusted p against any rival)."""
    seq = result.get("sequential")
    if seq and seq["stopped_early"]:
        return (
            f"Stopped early at look {seq['look']} of {seq['looks']} ({seq['samples_used']} of {seq['samples_total']} samples, "
            f"{seq['alpha_spent']:.2g} of alpha {result['alpha']:g} spent): " + _sequential_sentence(result)
        )
    if seq:
        return _sequential_sentence(result)
    return _fixed_sentence(result)


def _sequential_sentence(result: dict) -> str:
    """Significance is the boundary crossed, so the sentence quotes z against it (the p-values are for reference)."""
    seq, winner = result["sequential"], result["winner"]
    crossed = [c for c in result["comparisons"] if c["significant"]]
    if winner:
        others = ", ".join(c["b"] if c["a"] == winner else c["a"] for c in crossed if winner in (c["a"], c["b"]))
        z = min(abs(c["z"]) for c in crossed if winner in (c["a"], c["b"]))
        return f"{winner} is better than {others}: |z| = {z:.2f} crossed the boundary {seq['boundary']:.2f}."
    if crossed:
        said = "; ".join(
            f"{c['a'] if c['accuracy_diff'] > 0 else c['b']} beats {c['b'] if c['accuracy_diff'] > 0 else c['a']}" for c in crossed
        )
        return f"No single best model: {said} (boundary {seq['boundary']:.2f})."
    z = max(abs(c["z"]) for c in result["comparisons"])
    return f"Not distinguishable at {result['alpha']:g} after all {seq['looks']} looks: largest |z| = {z:.2f}, final boundary {seq['boundary']:.2f}."


def _fixed_sentence(result: dict) -> str:
    comps, alpha, winner = result["comparisons"], result["alpha"], result["winner"]
    adjusted = " (Holm-adjusted)" if len(comps) > 1 else ""
    hypothesis = result["hypothesis"]
    if hypothesis["name"] != SUPERIORITY:
        return " ".join(_margin_sentence(c, hypothesis, alpha, adjusted) for c in comps)
    if winner:
        quoted = max((c for c in comps if winner in (c["a"], c["b"])), key=lambda c: c["p_value_adjusted"])
        better_than = "every other model" if len(comps) > 1 else (quoted["b"] if quoted["a"] == winner else quoted["a"])
        return f"{winner} is better than {better_than}: McNemar p = {quoted['p_value_adjusted_text']}{adjusted}, significant at {alpha:g}."
    quoted = min(comps, key=lambda c: c["p_value_adjusted"])
    wins = {name: worse for name, worse in beaten(list(result["models"]), comps).items() if worse}
    if wins:  # some models beat others, but none beats all: say who beats whom
        said = "; ".join(f"{name} beats {', '.join(worse)}" for name, worse in wins.items())
        return f"No single best model at {alpha:g}: {said} (smallest McNemar p = {quoted['p_value_adjusted_text']}{adjusted})."
    return f"Not distinguishable at {alpha:g}: smallest McNemar p = {quoted['p_value_adjusted_text']}{adjusted}."


def _margin_sentence(c: dict, hypothesis: dict, alpha: float, adjusted: str) -> str:
    margin, level = hypothesis["margin"] * 100, c["ci_level"] * 100
    worse_by = -c["ci"][1] * 100  # the lower bound of acc(B) - acc(A), in points
    p = f"p = {c['margin_test']['p_value_adjusted_text']}{adjusted}"
    if c["decision"] == "noninferior":
        return (
            f"{c['b']} is non-inferior to {c['a']} within {margin:g} points ({p}; at worst {-worse_by:+.2f} points, {level:g}% interval)."
        )
    if c["decision"] == "equivalent":
        return f"{c['b']} is equivalent to {c['a']} within ±{margin:g} points ({p}; {level:g}% interval [{-c['ci'][1] * 100:+.2f}, {-c['ci'][0] * 100:+.2f}])."
    what = "non-inferior" if hypothesis["name"] == NONINFERIORITY else "equivalent"
    return (
        f"{c['b']} is not shown {what} to {c['a']} within {margin:g} points at {alpha:g} ({p}): "
        f"its accuracy may differ by {-c['ci'][1] * 100:+.2f} to {-c['ci'][0] * 100:+.2f} points ({level:g}% interval)."
    )


def power_warnings(comparisons: list[dict], alpha: float) -> list[str]:
    """For each pair McNemar did not separate: the smallest difference it could have detected at 80% power, at
    the alpha of Holm's first step (alpha / m) when m pairs share the family-wise alpha."""
    out = []
    first_step = alpha / len(comparisons)
    for c in comparisons:
        if c["significant"]:
            continue
        pair, discordant = f"{c['a']} vs {c['b']}", c["n10"] + c["n01"]
        if discordant == 0:
            out.append(f"{pair}: right and wrong on exactly the same samples (no discordant pairs); McNemar has nothing to compare")
            continue
        mde, observed = stats.min_detectable_diff(c["n"], discordant / c["n"], first_step), abs(c["accuracy_diff"])
        if mde is None:
            out.append(
                f"{pair}: {discordant} discordant pairs in n = {c['n']} cannot reach 80% power for any difference; evaluate more samples"
            )
        elif observed < mde:
            out.append(
                f"{pair}: at n = {c['n']} with {discordant} discordant pairs, only differences of at least "
                f"{mde * 100:.2f} points are detectable at 80% power (observed {observed * 100:.2f}); evaluate more samples to settle it"
            )
    return out


def class_notes(comparisons: list[dict], class_names: list[str] | None) -> list[str]:
    """The classes on which a model is significantly worse than the other (McNemar per class, Holm across classes)."""
    notes = []
    for c in comparisons:
        for row in c["per_class"]:
            if not row["significant"]:
                continue
            name = class_names[row["class"]] if class_names and row["class"] < len(class_names) else str(row["class"])
            worse, better = (c["b"], c["a"]) if row["n10"] > row["n01"] else (c["a"], c["b"])
            acc = {c["a"]: row["accuracy_a"], c["b"]: row["accuracy_b"]}
            notes.append(
                f"class {name}: {worse} is worse than {better} ({acc[worse] * 100:.1f}% vs {acc[better] * 100:.1f}% of {row['n']}, "
                f"McNemar p = {format_p(row['p_value_adjusted'], row['p_value_text'].startswith('<'))} Holm-adjusted over classes)"
            )
    return notes


def pareto_notes(comparisons: list[dict]) -> list[str]:
    """A significantly more accurate model that is also slower, when the latency ratio's interval excludes 1."""
    notes = []
    for c in comparisons:
        if not c["significant"]:
            continue
        better, worse = (c["a"], c["b"]) if c["accuracy_diff"] > 0 else (c["b"], c["a"])
        lat = c["latency_ratio"]
        ratio, (lo, hi) = lat["estimate"], lat["ci95"]
        if better != c["a"]:
            ratio, lo, hi = 1 / ratio, 1 / hi, 1 / lo
        if lo > 1:
            notes.append(f"{better} is more accurate but {ratio:.2f}x slower per batch than {worse}: a trade-off, not a dominance")
    return notes


def apply_boundary(comparisons: list[dict], design: sequential.Design, look: int, before: list[dict]) -> dict:
    """Decide each pair by its z against this look's boundary; the look's record, with every look so far."""
    boundary = design.boundaries()[look - 1]
    for c in comparisons:
        c["z"] = sequential.z_statistic(c["n10"], c["n01"])
        c["significant"] = abs(c["z"]) >= boundary
    n = design.sizes[look - 1]
    history = [*before, {"look": look, "n": n, "boundary": boundary, "z": {f"{c['a']}|{c['b']}": c["z"] for c in comparisons}}]
    return {
        "looks": design.looks,
        "spending": design.spending,
        "look": look,
        "samples_used": n,
        "samples_total": design.n_total,
        "boundary": boundary,
        "boundaries": list(design.boundaries()),
        "information_fractions": list(design.fractions),
        "alpha_spent": design.spent(look),
        "history": history,
    }


def analyze(root: Path, alpha: float = 0.05, test: str = "auto", order: list[str] | None = None, **hypothesis) -> dict:
    return compare_models(load_models(root, order), alpha, test, **hypothesis)


def holm_adjust(comparisons: list[dict], alpha: float, hypothesis: str) -> None:
    """Holm's step-down adjustment over the family of comparisons: of the McNemar p-values (which decide
    significance) and, for the margin hypotheses, of the margin tests' p-values."""
    adjusted, reject = stats.holm([c["p_value"] for c in comparisons], alpha)
    for c, p_adj, sig in zip(comparisons, adjusted, reject):
        c["p_value_adjusted"], c["significant"] = max(p_adj, P_FLOOR), sig
        c["p_value_adjusted_text"] = format_p(c["p_value_adjusted"], c["p_value_text"].startswith("<"))
    if hypothesis != SUPERIORITY:
        adjusted, _ = stats.holm([c["margin_test"]["p_value"] for c in comparisons], alpha)
        for c, p_adj in zip(comparisons, adjusted):
            mt = c["margin_test"]
            mt["p_value_adjusted"] = max(p_adj, P_FLOOR)
            mt["p_value_adjusted_text"] = format_p(mt["p_value_adjusted"], mt["p_value_text"].startswith("<"))


METHOD_NAMES = {"exact": "exact binomial", "midp": "mid-p", "chi2": "chi-square with continuity correction"}


def method_sentence(comparisons: list[dict], omnibus: bool, hypothesis: str, alpha: float) -> str:
    """How the result was computed, as the report and status.result.method say it."""
    methods = sorted({c["method"] for c in comparisons})
    return (
        "McNemar ("
        + ", ".join(METHOD_NAMES[m] for m in methods)
        + ")"
        + (", Holm-adjusted, Cochran's Q omnibus" if omnibus else "")
        + (
            ""
            if hypothesis == SUPERIORITY
            else f"; {hypothesis} by the paired interval at {(1 - 2 * alpha) * 100:g}% (two one-sided tests)"
        )
    )


def compare_models(
    models: list[ModelData],
    alpha: float,
    test: str,
    hypothesis: str = SUPERIORITY,
    margin: float | None = None,
    look: tuple[sequential.Design, int, list] | None = None,
) -> dict:
    """The whole result. ``look``: (design, look number, the looks before) for a group-sequential look, whose
    boundary then decides significance."""
    check(alpha, hypothesis, margin, looks=look[0].looks if look else None)
    names = [m.name for m in models]
    # Superiority compares every pair; the margin hypotheses compare each candidate with the reference (listed first).
    pairs = itertools.combinations(models, 2) if hypothesis == SUPERIORITY else ((models[0], m) for m in models[1:])
    comparisons = [compare(a, b, test, alpha, hypothesis, margin) for a, b in pairs]
    holm_adjust(comparisons, alpha, hypothesis)
    if look:
        look_block = apply_boundary(comparisons, *look)
    for c in comparisons:
        c["decision"] = decide(c, hypothesis, alpha)
    omnibus = stats.cochran_q(np.column_stack([m.correct for m in models]), alpha) if len(models) >= 3 else None
    summaries = {m.name: model_summary(m) for m in models}
    together = concurrency.block(models)
    result = {
        "alpha": alpha,
        "test": test,
        "hypothesis": {"name": hypothesis, "margin": margin},
        "method": method_sentence(comparisons, omnibus is not None, hypothesis, alpha),
        "ci_method": "Newcombe (1998) method 10 score interval for paired proportions",
        "fingerprint": models[0].metrics.get("fingerprint"),
        "n": int(len(models[0].correct)),
        "skipped": summaries[models[0].name]["skipped"],  # the same for every model (check_same_samples)
        "models": summaries,
        "comparisons": comparisons,
        "omnibus": omnibus,
        "winner": pick_winner(names, comparisons),
        "concurrency": together,
        "warnings": collect_warnings(models) + concurrency.warnings(together) + power_warnings(comparisons, alpha),
        "notes": pareto_notes(comparisons) + class_notes(comparisons, (models[0].metrics.get("dataset") or {}).get("classes")),
    }
    if look:
        design = look[0]
        result["method"] += (
            f"; group-sequential: z of the discordant pairs against Lan-DeMets {design.spending} boundaries at {design.looks} looks"
            + (f" (alpha / {design.pairs} per pair)" if design.pairs > 1 else "")
            + ", p-values fixed-sample for reference"
        )
        look_block["stopped_early"] = look[1] < design.looks and (
            result["winner"] is not None or all(c["significant"] for c in comparisons)
        )
        result["sequential"] = look_block
    result["verdict"] = verdict_sentence(result)
    return result


def run_sequential(
    root: Path,
    alpha: float,
    test: str,
    order: list[str] | None,
    looks: int,
    spending: str,
    *,
    poll: float = 1.0,
    idle=None,
    on_look=None,
) -> dict:
    """A group-sequential analysis as the evaluators run: at each look, wait until every model has published it,
    decide, tell ``on_look(result)``, and stop at the first look whose boundary is crossed (or the last). Writes
    result.json and report.html of the look it stopped at. ``idle()`` runs between polls (it may raise to abort)."""
    check(alpha, SUPERIORITY, None, looks, spending)
    names = order or [d.name for d in results.model_dirs(root)]
    history: list[dict] = []
    for look in range(1, looks + 1):
        dirs = [root / name / look_dir(look, looks) if look < looks else root / name for name in names]
        wait_for_look(root, names, dirs, look, looks, poll, idle)
        models = load_model_dirs(dirs)
        design = sequential.Design(looks, spending, alpha, design_total(models, looks), len(models) * (len(models) - 1) // 2)
        result = compare_models(models, alpha, test, look=(design, look, history))
        history = result["sequential"]["history"]
        if result["sequential"]["stopped_early"] or look == looks:
            write_result(root, result, models)
            if on_look:
                on_look(result)
            return result
        if on_look:
            on_look(result)
    raise AssertionError("unreachable: the last look always returns")


def wait_for_look(root: Path, names: list[str], dirs: list[Path], look: int, looks: int, poll: float, idle) -> None:
    while not all((d / METRICS).is_file() for d in dirs):
        for name, d in zip(names, dirs):
            if look < looks and (root / name / METRICS).is_file() and not (d / METRICS).is_file():
                raise UserError(
                    f"model {name} finished without publishing look {look} of {looks}; evaluate it with --looks {looks} "
                    "(spec.analysis.sequential sets it)"
                )
        if idle:
            idle()
        time.sleep(poll)


def design_total(models: list[ModelData], looks: int) -> int:
    """Every model's samples in all (its look record's n_total), checked to be one plan of ``looks`` looks."""
    plans = {m.name: m.metrics.get("look") or {} for m in models}
    for name, plan in plans.items():
        if plan.get("looks") != looks:
            raise UserError(
                f"model {name} was evaluated with --looks {plan.get('looks')}, the analysis asks for {looks}; use the same "
                "spec.analysis.sequential.looks for both"
            )
    totals = {plan["n_total"] for plan in plans.values()}
    if len(totals) > 1:
        raise UserError(f"models planned their looks over different sample counts ({sorted(totals)}); evaluate all on the same dataset")
    return totals.pop()


def write_result(root: Path, result: dict, models: list[ModelData]) -> None:
    html = report.render(result, {m.name: m.metrics for m in models})
    with results.staged(root) as stage:  # the report and the verdict appear together, result.json last
        results.write_bytes(stage(REPORT), html.encode())
        results.write_json(stage(RESULT), result)


def run_analysis(
    root: Path,
    alpha: float = 0.05,
    test: str = "auto",
    order: list[str] | None = None,
    **hypothesis,
) -> dict:
    """Analyze and write result.json and report.html atomically; nothing is written on refusal. ``hypothesis``:
    ``hypothesis=`` superiority (default) | noninferiority | equivalence, and ``margin=``."""
    models = load_model_dirs(model_dirs(root, order))
    result = compare_models(models, alpha, test, **hypothesis)
    write_result(root, result, models)
    return result


def run(config: AnalysisConfig, *, on_look=None, poll: float = 1.0, idle=None) -> dict:
    """The analysis ``config`` asks for (what ``abtest analyze`` and ``abtest run`` call): the fixed-sample test, or
    with ``looks`` the group-sequential one (``on_look``, ``poll`` and ``idle`` as :func:`run_sequential` takes them)."""
    config.check()
    root, order = Path(config.dir), list(config.models) if config.models else None
    if config.looks:
        return run_sequential(
            root, config.alpha, config.test, order, config.looks, config.spending_function, poll=poll, idle=idle, on_look=on_look
        )
    return run_analysis(root, config.alpha, config.test, order, hypothesis=config.hypothesis, margin=config.margin)
