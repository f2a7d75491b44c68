"""What an analysis says in words: the verdict sentence, how it was computed, and the warnings and notes a reader
needs (incomparable runs, too few samples to decide, per-class regressions, accuracy bought with latency).

Every function reads comparisons in their result.json form (comparisons.Comparison.as_dict), as the report does.
"""

from __future__ import annotations

from abtest_api.constants import NONINFERIORITY, SUPERIORITY
from abtest_api.result import format_p
from abtest_evaluator.analysis import sequential, stats
from abtest_evaluator.analysis.comparisons import beaten
from abtest_evaluator.results import ModelData


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


def sequential_method(design: sequential.Design) -> str:
    """What a group-sequential look adds to the method sentence."""
    return (
        f"; group-sequential: z of the discordant pairs against Lan-DeMets {design.spending} boundaries at {design.looks} looks"
        + (f" (alpha / {design.pairs} per pair)" if design.pairs > 1 else "")
        + ", p-values fixed-sample for reference"
    )
