"""The planner: one ABTest spec -> what to run per model and for the analysis.

One code path, two executors: the operator renders these argument lists as Jobs, ``abtest run``
runs them as local processes. Every model gets the same seed, dataset arguments, batch size and
evaluation settings; only the model flags and the output folder differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

from abtest_operator.spec import ABTestSpec, ModelSpec


@dataclass(frozen=True)
class ModelRun:
    name: str
    argv: tuple[str, ...]  # arguments after the `abtest` command
    out: str


def _model_flags(model: ModelSpec, models_dir: str | None) -> list[str]:
    flags = ["--model", model.architecture]
    if model.pretrained:
        flags.append("--pretrained")
    if model.checkpoint:
        path = PurePosixPath(model.checkpoint)
        if not path.is_absolute() and models_dir:
            path = PurePosixPath(models_dir) / path
        flags += ["--checkpoint", str(path)]
    optional = {
        "--num-classes": model.num_classes, "--in-chans": model.in_chans, "--input-size": model.input_size,
        "--interpolation": model.interpolation, "--crop-pct": model.crop_pct,
        "--mean": ",".join(map(str, model.mean)) if model.mean else None,
        "--std": ",".join(map(str, model.std)) if model.std else None,
    }
    return flags + [x for flag, value in optional.items() if value is not None for x in (flag, str(value))]


def shared_flags(spec: ABTestSpec, device: str | None = None) -> list[str]:
    """The flags every model shares: the experiment's controlled variables."""
    ds = spec.dataset
    flags = ["--dataset", ds.name, "--split", ds.split, "--seed", str(spec.seed), "--batch-size", str(spec.batch_size),
             "--workers", str(spec.workers), "--warmup-batches", str(spec.warmup_batches), "--device", device or spec.device,
             "--abtest", spec.name, "--namespace", spec.namespace]
    if ds.path:
        flags += ["--path", ds.path]
    if ds.class_name:
        flags += ["--dataset-class", ds.class_name]
    if ds.limit:
        flags += ["--limit", str(ds.limit)]
    flags += [flag for flag, on in (("--amp", spec.amp), ("--channels-last", spec.channels_last), ("--compile", spec.compile)) if on]
    return flags


def plan_models(spec: ABTestSpec, results_dir: str, models_dir: str | None = None, device: str | None = None,
                extra: tuple[str, ...] = ()) -> list[ModelRun]:
    """One run per model, writing to ``results_dir/<model>``."""
    runs = []
    for model in spec.models:
        out = str(PurePosixPath(results_dir) / model.name)
        argv = ("evaluate", *_model_flags(model, models_dir), *shared_flags(spec, device), "--name", model.name, *extra, "--out", out)
        runs.append(ModelRun(model.name, argv, out))
    return runs


def plan_analysis(spec: ABTestSpec, results_dir: str, publish: bool = False) -> tuple[str, ...]:
    argv = ["analyze", results_dir, "--alpha", str(spec.alpha), "--test", spec.test, "--models", ",".join(m.name for m in spec.models)]
    if publish:
        argv += ["--abtest", f"{spec.namespace}/{spec.name}"]
    return tuple(argv)
