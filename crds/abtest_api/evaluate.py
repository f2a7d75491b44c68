"""The evaluate contract: what one model evaluation is asked to do, declared once.

:class:`EvalConfig` is ``abtest evaluate``'s flags, the planner's per-model argument lists and the
evaluator's settings at the same time. Declared as a contract (``abtest_api.contract``): each field says its flag's help and, when the
ABTest sets it, where in the spec it comes from (``spec:batchSize``, ``model:numClasses``); the CLI
parser is generated from the fields (:func:`add_arguments`), the planner fills a config from the spec
(:func:`values_from_spec`) and turns it into argv (:func:`to_argv`), and the evaluator reads it.
Adding an option touches this file and the CRD.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from abtest_api import contract
from abtest_api.constants import ARTEFACT_FORMATS, FP32, PRECISIONS
from abtest_api.contract import flag, option

__all__ = ["EvalConfig", "add_arguments", "flag", "from_args", "parse_argv", "to_argv", "values_from_spec"]


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    model: str = option(
        help="timm/NAME or torchvision/NAME, or an artefact file's format (torchscript, export, onnx) with --checkpoint FILE",
        spec="model:architecture",
    )
    dataset: str = option(help="digits | imagefolder | cifar10 | cifar100 | torchvision", spec="spec:dataset.name")
    path: str | None = option(None, help="dataset directory (all but digits)", spec="spec:dataset.path")
    dataset_class: str | None = option(
        None, help="torchvision.datasets class name, with --dataset torchvision", spec="spec:dataset.className"
    )
    split: str = option("test", help="test (default) or train", spec="spec:dataset.split")
    limit: int | None = option(None, help="evaluate only the first N samples", spec="spec:dataset.limit")
    on_unreadable: str = option(
        "fail",
        help="a sample that cannot be decoded: fail (exit 2 naming it) or skip it (every sample is decoded once before the "
        "model loads; the skipped ids go into metrics.json and the fingerprint, so every model skips the same)",
        spec="spec:dataset.onUnreadable",
        choices=("fail", "skip"),
    )
    checkpoint: str | None = option(
        None, help="state dict file (.pth or .safetensors), or the artefact file", spec="model:checkpoint", group="weights"
    )
    pretrained: bool = option(False, help="hub weights (needs network access)", spec="model:pretrained", group="weights")
    num_classes: int | None = option(None, help="classifier outputs (default: the dataset's class count)", spec="model:numClasses")
    in_chans: int = option(3, help="input channels (1 for grey models)", spec="model:inChans")
    seed: int = option(42, help="seed for weights, data order and workers", spec="spec:seed")
    batch_size: int = option(64, help="images per forward pass", spec="spec:batchSize")
    workers: int | None = option(
        None, help="DataLoader worker processes (default: one per CPU of the container's limit but one, at most 16)", spec="spec:workers"
    )
    threads: int | None = option(None, help="CPU threads (default: the container's CPU limit)")
    device: str = option("auto", help="where the model runs", spec="spec:device", choices=("auto", "cpu", "cuda"))
    warmup_batches: int = option(3, help="untimed passes before the timed loop", spec="spec:warmupBatches")
    amp: bool | None = option(None, help="autocast, float16 on GPU and bfloat16 on CPU (default: on for GPU, off for CPU)", spec="spec:amp")
    amp_dtype: str = option("float16", help="autocast dtype on GPU", choices=("float16", "bfloat16"))
    channels_last: bool | None = option(
        None, help="channels-last memory format (default: on for GPU, off for CPU)", spec="spec:channelsLast"
    )
    nondeterministic: bool = option(
        False,
        help="let cuDNN autotune its kernels (cudnn.benchmark) and allow non-deterministic algorithms: faster on GPU, "
        "but predictions may differ in the last bits between runs",
        spec="spec:nondeterministic",
    )
    preprocess: str = option(
        "device",
        help="where images become normalised floats: device (uint8 batches from the workers, a quarter of the bytes, converted "
        "where the model runs) or host (timm's float32 transform in the workers)",
        choices=("device", "host"),
    )
    precision: str = option(
        FP32,
        help="the precision a timm/torchvision model runs at: fp16 and bf16 cast its weights and inputs (autocast off), int8-dynamic "
        "quantizes its linear layers (PyTorch dynamic quantization, CPU only); artefacts run as exported",
        spec="model:precision",
        choices=PRECISIONS,
    )
    compile: bool = option(False, help="torch.compile the model", spec="spec:compile")
    input_size: int | None = option(None, help="image side in pixels (default: the model's pretrained config)", spec="model:inputSize")
    interpolation: str | None = option(None, help="resize interpolation (default: the model's)", spec="model:interpolation")
    mean: tuple[float, ...] | None = option(None, help="normalisation mean, comma-separated", spec="model:mean")
    std: tuple[float, ...] | None = option(None, help="normalisation std, comma-separated", spec="model:std")
    crop_pct: float | None = option(None, help="centre-crop fraction (1.0: no crop)", spec="model:cropPct")
    metrics_port: int | None = option(None, help="serve Prometheus /metrics on this port while running")
    metrics_addr: str = option("0.0.0.0", help="address for /metrics (in a pod: its IP, from the downward API)")
    pushgateway: str | None = option(None, help="push final metrics to this Pushgateway URL")
    abtest: str = option("", help="ABTest name (metric label)")
    namespace: str = option("", help="ABTest namespace (metric label)")
    name: str = option("", help="the model's name in the ABTest (metric label, default: --model)", spec="model:name")
    progress: str = option("auto", help="progress display", choices=("auto", "bar", "json", "none"))
    shard: str | None = option(
        None,
        help="evaluate part I of N (0-based, I/N) of the shared order and write the shard files (predictions-0000I-of-0000N.parquet, "
        "metrics-…json); the analysis merges them",
    )
    start_with: str | None = option(
        None,
        help="the ABTest's models, comma-separated: once prepared (loaded, warmed up), wait in the results folder (the parent "
        "of --out) until every one of their evaluators (each part, with --shard) is ready, so that the timed loops start "
        "together (default: start at once)",
    )
    start_timeout: int = option(
        600, help="seconds to wait at the start barrier before failing, naming the peers not ready", spec="spec:startTimeoutSeconds"
    )
    looks: int | None = option(
        None,
        help="also publish the predictions of the first samples at K equal looks (a group-sequential analysis reads them)",
        spec="spec:analysis.sequential.looks",
    )
    out: str = option(help="output directory")

    @property
    def model_label(self) -> str:
        return self.name or self.model

    @property
    def artefact(self) -> str | None:
        """The artefact format when the model is a file loaded by its own runtime, else None."""
        return self.model if self.model in ARTEFACT_FORMATS else None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``abtest evaluate``'s flags, one per field."""
    contract.add_arguments(parser, EvalConfig)


def from_args(args: argparse.Namespace) -> EvalConfig:
    return contract.from_args(EvalConfig, args)


to_argv = contract.to_argv


def parse_argv(argv: list[str]) -> EvalConfig:
    """``to_argv``'s inverse (what ``abtest evaluate`` does with its arguments)."""
    return contract.parse_argv(EvalConfig, argv, "abtest evaluate")


def values_from_spec(spec: dict, model: dict) -> dict:
    """The fields an ABTest sets for one of its models, from its (defaulted) spec and that model's entry."""
    return contract.values_from_spec(EvalConfig, spec, model)
