"""The planner: one ABTest spec -> what to run per model and for the analysis.

One code path, two executors: the operator renders these argument lists as Jobs, ``abtest run``
runs them as local processes. Every model gets the same seed, dataset arguments, batch size and
evaluation settings (the spec's fields of the evaluate contract); only the model's own fields and the
output folder differ.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import PurePosixPath

from abtest_api import analyze
from abtest_api.analyze import AnalysisConfig
from abtest_api.evaluate import EvalConfig, to_argv
from abtest_operator.spec import ABTestSpec, ModelSpec


@dataclass(frozen=True)
class ModelRun:
    name: str
    config: EvalConfig

    @property
    def argv(self) -> tuple[str, ...]:  # arguments after the `abtest` command
        return ("evaluate", *to_argv(self.config))

    @property
    def out(self) -> str:
        return self.config.out


def model_config(spec: ABTestSpec, model: ModelSpec, out: str, models_dir: str | None = None, **executor) -> EvalConfig:
    """The spec's settings for this model, plus what the executor decides (a device override, threads, metrics);
    an executor value of None keeps the spec's."""
    settings = {**model.settings, "out": out, "abtest": spec.name, "namespace": spec.namespace}
    if model.checkpoint and models_dir and not PurePosixPath(model.checkpoint).is_absolute():
        settings["checkpoint"] = str(PurePosixPath(models_dir) / model.checkpoint)
    return EvalConfig(**settings | {k: v for k, v in executor.items() if v is not None})


def plan_models(spec: ABTestSpec, results_dir: str, models_dir: str | None = None, together: bool = True, **executor) -> list[ModelRun]:
    """One run per model, writing to ``results_dir/<model>``; ``together``: they wait for each other at the start
    barrier in ``results_dir`` (every model, every shard), so that their timed loops start at the same time."""
    start_with = ",".join(m.name for m in spec.models) if together else None
    return [
        ModelRun(m.name, model_config(spec, m, str(PurePosixPath(results_dir) / m.name), models_dir, start_with=start_with, **executor))
        for m in spec.models
    ]


def plan_shards(runs: list[ModelRun], count: int) -> list[ModelRun]:
    """Each run split into ``count`` parts (``abtest run`` starts one process per part; in a cluster one Indexed Job
    per model runs them)."""
    if count <= 1:
        return runs
    return [ModelRun(f"{r.name} {i + 1}/{count}", replace(r.config, shard=f"{i}/{count}")) for r in runs for i in range(count)]


def analysis_config(spec: ABTestSpec, results_dir: str, publish: bool = False) -> AnalysisConfig:
    """The analysis of the ABTest's models in ``results_dir``; ``publish`` adds the ABTest to patch, with its UID as a
    precondition (a re-created ABTest of the same name never receives the old one's verdict)."""
    return AnalysisConfig(
        dir=results_dir,
        alpha=spec.alpha,
        test=spec.test,
        models=tuple(m.name for m in spec.models),
        hypothesis=spec.hypothesis,
        margin=spec.margin,
        looks=spec.looks,  # a sequential analysis runs alongside the evaluators, deciding at each look
        spending=spec.spending if spec.looks else None,
        abtest=f"{spec.namespace}/{spec.name}" if publish else None,
        abtest_uid=(spec.uid or None) if publish else None,
    )


def plan_analysis(spec: ABTestSpec, results_dir: str, publish: bool = False) -> tuple[str, ...]:
    """The analysis Job's argv (after the ``abtest`` command)."""
    return ("analyze", *analyze.to_argv(analysis_config(spec, results_dir, publish)))
