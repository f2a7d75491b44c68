"""result.json's content for one set of models: the per-model summaries, the comparisons, the omnibus test, the
winner, and the words (verdict, method, warnings, notes); with a group-sequential look's record when there is one."""

from __future__ import annotations

import numpy as np

from abtest_api.analyze import check
from abtest_api.constants import SUPERIORITY
from abtest_evaluator.analysis import concurrency, stats, verdict
from abtest_evaluator.analysis.comparisons import Hypothesis, Look, compare_all, pick_winner
from abtest_evaluator.results import ModelData


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
        "precision": met.get("precision", "fp32"),
        "format": (met.get("runtime") or {}).get("format", "pytorch"),  # pytorch, or the artefact's: torchscript, export, onnx
        "runtime": runtime_label(met.get("runtime")),
        # metrics.json fields the model's runtime cannot measure (null there), and settings that do not apply to it
        "not_measured": (met.get("runtime") or {}).get("not_measured") or {},
        "not_applied": (met.get("runtime") or {}).get("not_applied") or {},
    }


def runtime_label(runtime: dict | None) -> str:
    """What ran the model, e.g. "onnxruntime 1.32.0 (CPUExecutionProvider)"; PyTorch eager for older metrics.json."""
    if not runtime:
        return "PyTorch eager"
    if runtime.get("format") == "pytorch":
        return f"PyTorch eager {runtime['version']}"
    providers = f" ({', '.join(runtime['providers'])})" if runtime.get("providers") else ""
    return f"{runtime['format']}: {runtime['name']} {runtime['version']}{providers}"


def compare_models(
    models: list[ModelData],
    alpha: float,
    test: str,
    hypothesis: str = SUPERIORITY,
    margin: float | None = None,
    look: Look | None = None,
) -> dict:
    """The whole result; at a group-sequential ``look`` its boundary decides significance."""
    check(alpha, hypothesis, margin, looks=look.design.looks if look else None)
    comparisons = [c.as_dict() for c in compare_all(models, alpha, test, Hypothesis(hypothesis, margin), look)]
    omnibus = stats.cochran_q(np.column_stack([m.correct for m in models]), alpha) if len(models) >= 3 else None
    summaries = {m.name: model_summary(m) for m in models}
    together = concurrency.block(models)
    winner = pick_winner([m.name for m in models], comparisons)
    result = {
        "alpha": alpha,
        "test": test,
        "hypothesis": {"name": hypothesis, "margin": margin},
        "method": verdict.method_sentence(comparisons, omnibus is not None, hypothesis, alpha),
        "ci_method": "Newcombe (1998) method 10 score interval for paired proportions",
        "fingerprint": models[0].metrics.get("fingerprint"),
        "n": int(len(models[0].correct)),
        "skipped": summaries[models[0].name]["skipped"],  # the same for every model (check_same_samples)
        "models": summaries,
        "comparisons": comparisons,
        "omnibus": omnibus,
        "winner": winner,
        "concurrency": together,
        "warnings": verdict.collect_warnings(models) + concurrency.warnings(together) + verdict.power_warnings(comparisons, alpha),
        "notes": verdict.pareto_notes(comparisons)
        + verdict.class_notes(comparisons, (models[0].metrics.get("dataset") or {}).get("classes")),
    }
    if look:
        result["method"] += verdict.sequential_method(look.design)
        stops = look.number < look.design.looks and (winner is not None or all(c["significant"] for c in comparisons))
        result["sequential"] = look_record(look, comparisons, stopped_early=stops)
    result["verdict"] = verdict.verdict_sentence(result)
    return result


def look_record(look: Look, comparisons: list[dict], stopped_early: bool) -> dict:
    """status.sequential's content: this look's boundary and samples, with every look so far."""
    design, n = look.design, look.design.sizes[look.number - 1]
    z = {f"{c['a']}|{c['b']}": c["z"] for c in comparisons}
    return {
        "looks": design.looks,
        "spending": design.spending,
        "look": look.number,
        "samples_used": n,
        "samples_total": design.n_total,
        "boundary": look.boundary,
        "boundaries": list(design.boundaries()),
        "information_fractions": list(design.fractions),
        "alpha_spent": design.spent(look.number),
        "history": [*look.before, {"look": look.number, "n": n, "boundary": look.boundary, "z": z}],
        "stopped_early": stopped_early,
    }
