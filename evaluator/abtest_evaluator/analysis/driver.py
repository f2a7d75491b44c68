"""The analysis as ``abtest analyze`` runs it: load the models' predictions, build the result, write result.json and
report.html together or nothing; and the group-sequential form, which decides look by look as the evaluators publish."""

from __future__ import annotations

import time
from pathlib import Path

from abtest_api.analyze import AnalysisConfig, check
from abtest_api.constants import METRICS, REPORT, RESULT, SUPERIORITY, look_dir
from abtest_api.errors import UserError
from abtest_evaluator import results
from abtest_evaluator.analysis import report, sequential
from abtest_evaluator.analysis.comparisons import Look
from abtest_evaluator.analysis.result import compare_models
from abtest_evaluator.results import ModelData, load_model_dirs, load_models, model_dirs


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


def analyze(root: Path, alpha: float = 0.05, test: str = "auto", order: list[str] | None = None, **hypothesis) -> dict:
    """The result for the models under ``root``, written nowhere."""
    return compare_models(load_models(root, order), alpha, test, **hypothesis)


def run_analysis(root: Path, alpha: float = 0.05, test: str = "auto", order: list[str] | None = None, **hypothesis) -> dict:
    """Analyze and write result.json and report.html atomically; nothing is written on refusal. ``hypothesis``:
    ``hypothesis=`` superiority (default) | noninferiority | equivalence, and ``margin=``."""
    models = load_model_dirs(model_dirs(root, order))
    result = compare_models(models, alpha, test, **hypothesis)
    write_result(root, result, models)
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
    for number in range(1, looks + 1):
        dirs = [root / name / look_dir(number, looks) if number < looks else root / name for name in names]
        wait_for_look(root, names, dirs, number, looks, poll, idle)
        models = load_model_dirs(dirs)
        design = sequential.Design(looks, spending, alpha, design_total(models, looks), len(models) * (len(models) - 1) // 2)
        result = compare_models(models, alpha, test, look=Look(design, number, history))
        history = result["sequential"]["history"]
        last = result["sequential"]["stopped_early"] or number == looks
        if last:
            write_result(root, result, models)
        if on_look:
            on_look(result)
        if last:
            return result
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
