"""``abtest evaluate``: one model on one dataset -> predictions.parquet + metrics.json, live /metrics meanwhile."""

from __future__ import annotations

import itertools
import json
import os
import platform
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import DataLoader

from abtest_api.constants import FP32, MAX_LOOKS, METRICS, PREDICTIONS, look_dir, look_sizes, shard_file, shard_range
from abtest_api.errors import UserError
from abtest_api.evaluate import EvalConfig
from abtest_evaluator import datasets, kernels, loader, measurements, models, resolve, results
from abtest_evaluator.barrier import Release, StartBarrier, peer_id, peer_ids
from abtest_evaluator.runner import Runner, seed_everything, seed_worker
from abtest_evaluator.telemetry import EvalTelemetry, GpuSampler


def library_versions() -> dict:
    import timm
    import torchvision

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "numpy": np.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
    }


def predictions_table(labels, topk, confidence, ids, start: int = 0) -> pa.Table:
    """One row per sample; ``index`` is its position in the shared order (a shard's rows start at ``start``)."""
    k = topk.shape[1]
    return pa.table(
        {
            "index": pa.array(np.arange(start, start + len(labels), dtype=np.int64)),
            "label": pa.array(labels.astype(np.int64)),
            "pred": pa.array(topk[:, 0].astype(np.int64)),
            "confidence": pa.array(confidence.astype(np.float32)),
            "top5": pa.FixedSizeListArray.from_arrays(pa.array(topk.reshape(-1).astype(np.int32)), k),
            "sample_id": pa.array(ids),
        }
    )


class Progress:
    """A bar on a terminal, JSON lines for a parent process (``abtest run``), or nothing."""

    def __init__(self, mode: str, label: str, total: int):
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "none"
        self.mode, self.label, self.total, self.done, self._last = mode, label, total, 0, 0.0
        self._bar = None
        if mode == "bar":
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(transient=False)
            self._task = self._bar.add_task(label, total=total)

    def __enter__(self):
        if self._bar:
            self._bar.start()
        return self

    def __exit__(self, *exc):
        if self._bar:
            self._bar.stop()

    def advance(self, n: int, accuracy: float) -> None:
        self.done += n
        if self._bar:
            self._bar.update(self._task, advance=n, description=f"{self.label} acc {accuracy:.3f}")
        elif self.mode == "json" and (time.monotonic() - self._last > 0.25 or self.done == self.total):
            self._last = time.monotonic()
            print(json.dumps({"progress": self.done, "total": self.total, "accuracy": accuracy}), file=sys.stderr, flush=True)


class Shard(NamedTuple):
    """Which part of the shared order a sharded run evaluates (``--shard index/count``)."""

    index: int
    count: int
    start: int  # the part's first sample in the shared order
    total: int  # samples in the whole order


@dataclass
class Prepared:
    """Everything the timed loop needs, resolved and loaded."""

    cfg: EvalConfig
    started: float  # the run's start (before loading), for parity checks across models
    device: str
    amp_dtype: str | None
    channels_last: bool
    threads: int
    workers: int
    dataset: datasets.EvalDataset
    num_classes: int
    model: models.LoadedModel
    data_config: resolve.DataConfig
    loader: loader.DeviceBatches
    runner: Runner
    fingerprint: str  # of every sample in the shared order (a shard evaluates a part of it)
    shard: Shard | None = None
    skipped: tuple[str, ...] = ()  # ids of the unreadable samples left out (spec.dataset.onUnreadable: skip)
    barrier: StartBarrier | None = None  # where the timed loop waits for its peers (--start-with)


@dataclass
class Loop:
    """What the timed loop measured."""

    topk: np.ndarray  # (n, k) class indices, best first
    confidence: np.ndarray
    batch_seconds: list[float]
    batch_sizes: list[int]
    started: float
    finished: float
    gpu_utilization: dict | None
    loop_seconds: float = 0.0  # wall clock of the timed loop: from the first timed batch to the last one's bookkeeping
    wait_seconds: float = 0.0  # of which the loop waited for the loader
    ready_at: float = 0.0  # when preparation and warm-up were done (the arrival at the start barrier)
    release: Release | None = None  # what the start barrier measured

    def prefix(self, n: int) -> Loop:
        """What the loop had measured by its first ``n`` samples (the batches so far, for a look)."""
        return replace(self, topk=self.topk[:n], confidence=self.confidence[:n], batch_seconds=list(self.batch_seconds),
                       batch_sizes=list(self.batch_sizes), finished=time.time())  # fmt: skip


def prepare(cfg: EvalConfig) -> Prepared:
    """Resolve the settings, load the data and the model, build the loader and the runner; UserError on bad input."""
    # Long because the order of its steps is the contract (settings, then data and its fingerprint, then the model, then loader and runner), and each step needs most earlier results.
    started = time.time()
    if cfg.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {cfg.batch_size}")
    if cfg.looks is not None and not 2 <= cfg.looks <= MAX_LOOKS:
        raise UserError(f"--looks (spec.analysis.sequential.looks) must be in 2..{MAX_LOOKS}, got {cfg.looks}")
    device = resolve.resolve_device(cfg.device, torch.cuda.is_available())
    precision = resolve.resolve_precision(device, cfg.precision, cfg.artefact)
    # autocast is for full-precision PyTorch models: an artefact runs as exported, a variant at its own precision
    amp_dtype = resolve.resolve_amp_dtype(device, cfg.amp, cfg.amp_dtype) if precision == FP32 and not cfg.artefact else None
    channels_last = resolve.resolve_channels_last(device, cfg.channels_last)
    if cfg.preprocess not in loader.PREPROCESS:
        raise UserError(f"--preprocess {cfg.preprocess!r} is unknown; use one of {', '.join(loader.PREPROCESS)}")
    threads = resolve.resolve_threads(cfg.threads)
    workers = resolve.resolve_workers(cfg.workers, threads)
    torch.set_num_threads(threads)
    seed_everything(cfg.seed, device, deterministic=not cfg.nondeterministic)

    ds = datasets.load_dataset(cfg.dataset, cfg.split, cfg.path, cfg.limit, cfg.dataset_class)
    mode = "L" if cfg.in_chans == 1 else "RGB"
    skipped = ()
    if cfg.on_unreadable == "skip":  # decided before the model loads, the same for every model: it is in the fingerprint
        bad = ds.unreadable(mode)
        skipped, ds = tuple(ds.ids[i] for i in bad), ds.without(bad)
        if not len(ds):
            raise UserError(f"every sample of {ds.name} at {cfg.path} is unreadable; check --path (spec.dataset.path)")
    fingerprint, shard = ds.fingerprint(), None
    index = count = None
    if cfg.shard:
        index, count = resolve.parse_shard(cfg.shard)
        if cfg.looks:
            raise UserError("--shard and --looks cannot be combined (a sequential test needs each model's whole order in one pod)")
        start, end = shard_range(len(ds), index, count)
        if start == end:
            raise UserError(f"--shard {cfg.shard}: {len(ds)} samples leave part {index} empty; use at most {len(ds)} shards")
        shard, ds = Shard(index, count, start, len(ds)), ds.part(start, end)
    if cfg.looks and len(ds) < cfg.looks:
        raise UserError(f"dataset {ds.name} has {len(ds)} samples, fewer than --looks {cfg.looks}; lower spec.analysis.sequential.looks")
    num_classes = cfg.num_classes or ds.num_classes
    if num_classes < ds.num_classes or int(ds.labels.max()) >= num_classes:
        raise UserError(
            f"dataset {ds.name} has {ds.num_classes} classes but the model outputs {num_classes}; set --num-classes {ds.num_classes} (spec.models[].numClasses)"
        )
    barrier = start_barrier(cfg, (index, count) if count else None)
    loaded, data_cfg = load_model(cfg, num_classes, device, threads)
    transform = loader.build_transform(data_cfg, cfg.preprocess)
    compile = cfg.compile and loaded.runtime is None  # torch.compile is for PyTorch eager models (metrics.json says so)
    runner = Runner(
        models.apply_precision(loaded.module, precision), device, amp_dtype, channels_last, compile, pad_to=cfg.batch_size,
        input_dtype=models.HALF_DTYPES.get(precision), host_timed=bool(loaded.runtime and loaded.runtime.host_timed),
    )  # fmt: skip
    batches = DataLoader(
        loader.TransformedDataset(ds, transform, mode),
        batch_size=cfg.batch_size,
        shuffle=False,
        num_workers=workers,
        worker_init_fn=seed_worker,
        generator=torch.Generator().manual_seed(cfg.seed),
        pin_memory=device == "cuda",
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers else None,  # a few batches of slack per worker against decode-time jitter
    )
    to_input = loader.ToModelInput(data_cfg, cfg.preprocess, runner.device, runner.memory_format)
    return Prepared(
        cfg=cfg, started=started, device=device, amp_dtype=amp_dtype, channels_last=channels_last, threads=threads,
        workers=workers, dataset=ds, num_classes=num_classes, model=loaded, data_config=data_cfg,
        loader=loader.DeviceBatches(batches, runner.device, to_input), runner=runner, fingerprint=fingerprint, shard=shard,
        skipped=skipped, barrier=barrier,
    )  # fmt: skip


def load_model(cfg: EvalConfig, num_classes: int, device: str, threads: int) -> tuple[models.LoadedModel, resolve.DataConfig]:
    """The model and its preprocessing: a timm/torchvision model's config fills what the flags leave unset; an
    artefact has none, so every setting must be given (and it is probed with a batch of that shape)."""
    settings = (cfg.input_size, cfg.interpolation, cfg.mean, cfg.std, cfg.crop_pct)
    if not cfg.artefact:
        loaded = models.build_model(cfg.model, num_classes, cfg.in_chans, cfg.pretrained, cfg.checkpoint)
        return loaded, resolve.resolve_data_config(loaded.pretrained_cfg, cfg.in_chans, *settings)
    flags = ("--input-size", "--interpolation", "--mean", "--std", "--crop-pct")
    resolve.check_artefact_settings(cfg.artefact, cfg.checkpoint, cfg.pretrained, dict(zip(flags, settings)))
    data_cfg = resolve.resolve_data_config(None, cfg.in_chans, *settings)
    return models.load_artefact_model(cfg.artefact, cfg.checkpoint, data_cfg.input_size, num_classes, device, threads), data_cfg


def start_barrier(cfg: EvalConfig, shard: tuple[int, int] | None) -> StartBarrier | None:
    """The barrier this evaluator meets its peers at (``--start-with``), in the results folder (the parent of --out)."""
    if not cfg.start_with:
        return None
    if cfg.start_timeout < 1:
        raise UserError(f"--start-timeout (spec.startTimeoutSeconds) must be at least 1 second, got {cfg.start_timeout}")
    peers = peer_ids([m for m in cfg.start_with.split(",") if m], shard[1] if shard else None)
    return StartBarrier(Path(cfg.out).parent, peer_id(cfg.model_label, shard), peers, cfg.start_timeout)


def run(prep: Prepared, telemetry: EvalTelemetry, on_look=None) -> Loop:
    """The timed loop over every batch in the shared order, feeding telemetry and the progress display. With
    ``cfg.looks``, ``on_look(look, loop_so_far)`` runs as soon as the samples of each look but the last are in."""
    cfg, runner = prep.cfg, prep.runner
    n, k = len(prep.dataset), min(5, prep.num_classes)
    topk = np.empty((n, k), dtype=np.int64)
    confidence = np.empty(n, dtype=np.float32)
    batch_seconds, batch_sizes = [], []
    sampler = (
        GpuSampler(runner.device.index or 0, on_sample=lambda r: telemetry.set_gpu(None, r)) if prep.device == "cuda" else nullcontext()
    )
    batches = iter(prep.loader)
    first = next(batches)  # for the warm-up; the workers go on loading the next batches meanwhile, and at the barrier
    if cfg.warmup_batches:
        runner.warmup(first[0], cfg.warmup_batches)
    ready_at = time.time()
    release = prep.barrier.wait() if prep.barrier else None
    started = time.time()
    loop = Loop(topk, confidence, batch_seconds, batch_sizes, started, started, None, ready_at=ready_at, release=release)
    looks = list(enumerate(look_sizes(n, cfg.looks)[:-1], 1)) if cfg.looks else []
    with sampler, Progress(cfg.progress, cfg.model_label, n) as progress:
        pos = queued = 0  # samples collected to the host / queued on the device
        pending = []  # (BatchOutput, labels) queued and not yet collected

        def collect():
            nonlocal pos
            group_topk, group_confidence, seconds = runner.collect([out for out, _ in pending])
            topk[pos : pos + len(group_topk)], confidence[pos : pos + len(group_topk)] = group_topk, group_confidence
            for (_, labels), batch_time in zip(pending, seconds):
                size, end = len(labels), pos + len(labels)
                correct = int((topk[pos:end, 0] == labels.numpy()).sum())
                batch_seconds.append(batch_time)
                batch_sizes.append(size)
                telemetry.observe_batch(size, correct, float(confidence[pos:end].sum()), batch_time)
                progress.advance(size, telemetry.running_accuracy)
                pos = end
            pending.clear()
            if (memory := runner.gpu_memory()) is not None:
                telemetry.set_gpu(memory["max_allocated_bytes"], None)
            while looks and looks[0][1] <= pos:
                look, samples = looks.pop(0)
                on_look(look, loop.prefix(samples))

        timed_from, ready = time.perf_counter(), None  # the loop's clock starts after the warm-up and the barrier
        for images, labels in itertools.chain([first], batches):
            if ready is not None:
                loop.wait_seconds += time.perf_counter() - ready
            pending.append((runner(images), labels))
            queued += len(labels)
            if len(pending) >= runner.collect_every or queued == n or (looks and looks[0][1] <= queued):
                collect()
                loop.loop_seconds = time.perf_counter() - timed_from
                telemetry.observe_loop(loop.loop_seconds, loop.wait_seconds)
            ready = time.perf_counter()
    gpu = sampler.summary() if prep.device == "cuda" else None
    return replace(loop, finished=time.time(), gpu_utilization=gpu)


def runtime_summary(prep: Prepared) -> dict:
    """What ran the model (PyTorch eager for a timm/torchvision model, else the artefact's runtime), the fields of
    metrics.json it cannot measure (null there, never 0) and the settings asked for that do not apply to it, with why."""
    runtime, cfg = prep.model.runtime, prep.cfg
    not_applied = {}
    if cfg.compile and runtime is not None:
        not_applied["compile"] = "torch.compile is for PyTorch eager models; the artefact runs as exported"
    if cfg.amp and prep.amp_dtype is None:
        not_applied["amp"] = (
            f"autocast is for full-precision PyTorch models; this one runs {'as exported' if runtime else 'at ' + cfg.precision}"
        )
    return {
        "format": cfg.artefact or "pytorch",
        "name": runtime.name if runtime else "torch",
        "version": runtime.version if runtime else torch.__version__,
        "providers": list(runtime.providers) if runtime else [],
        # on CPU no model reports GPU memory, so there is nothing the runtime leaves out
        "not_measured": dict(runtime.not_measured) if runtime and prep.device == "cuda" else {},
        "not_applied": not_applied,
    }


def build_metrics(prep: Prepared, loop: Loop, look: int | None = None) -> dict:
    """metrics.json's content (but the predictions checksum, which the writer adds); ``loop`` may be a look's prefix."""
    # Long because it is metrics.json's schema as one literal: every field, where it comes from, in one place to read.
    cfg, ds = prep.cfg, prep.dataset
    labels, k = ds.labels[: len(loop.topk)], loop.topk.shape[1]
    metrics = measurements.summarize(
        labels,
        loop.topk[:, 0],
        (loop.topk == labels[:, None]).any(axis=1) if k >= 5 else None,
        loop.confidence,
        np.asarray(loop.batch_seconds),
        np.asarray(loop.batch_sizes),
        prep.num_classes,
        loop.loop_seconds,
        loop.wait_seconds,
        prep.runner.timing,
    )
    metrics.update(
        {
            "model": cfg.model_label,
            "architecture": cfg.model,
            "weights": prep.model.weights,
            "precision": cfg.precision,
            "runtime": runtime_summary(prep),
            "dataset": {
                "name": ds.name,
                "split": cfg.split,
                "path": cfg.path,
                "limit": cfg.limit,
                "classes": ds.classes,
                "on_unreadable": cfg.on_unreadable,
                "skipped": list(prep.skipped),
            },  # fmt: skip
            "fingerprint": prep.fingerprint,
            "seed": cfg.seed,
            "batch_size": cfg.batch_size,
            "warmup_batches": cfg.warmup_batches,
            "data_config": {**prep.data_config.as_timm_kwargs()},
            "device": {
                "type": prep.device,
                "name": prep.runner.device_name(),
                "threads": prep.threads,
                "amp_dtype": prep.amp_dtype,
                "channels_last": prep.channels_last,
                "compile": prep.runner.compiled,
                "deterministic": not cfg.nondeterministic,
                "kernels": kernels.settings(),  # what decides the CPU numerics: the analysis warns when models differ
                "preprocess": cfg.preprocess,
                "workers": prep.workers,
                # the settings left unset, so chosen for this device (AMP and channels-last on for CUDA, off for CPU)
                "automatic": [name for name in ("amp", "channels_last", "workers") if getattr(cfg, name) is None],
            },
            "gpu_memory": prep.runner.gpu_memory(),
            "gpu_utilization": loop.gpu_utilization,
            "versions": library_versions(),
            "image": os.environ.get("ABTEST_IMAGE"),
            "started_at": prep.started,
            "ready_at": loop.ready_at,
            "start_barrier": loop.release.as_json() if loop.release else None,
            "loop_started_at": loop.started,
            "finished_at": loop.finished,
            "abtest": {"name": cfg.abtest, "namespace": cfg.namespace} if cfg.abtest else None,
        }
    )
    if prep.shard:
        metrics["shard"] = {"index": prep.shard.index, "count": prep.shard.count, "start": prep.shard.start, "n_total": prep.shard.total}
    if cfg.looks:  # which look these files are, of how many over how many samples (the analysis' information fraction)
        metrics["look"] = {"look": look, "looks": cfg.looks, "n_total": len(ds)}
    return metrics


def write(out: Path, metrics: dict, predictions: pa.Table, shard: Shard | None = None) -> None:
    """predictions.parquet and metrics.json (with the predictions' checksum), appearing together, metrics.json last:
    its presence means "complete" (a shard's files carry its part in their names)."""
    names = (
        (PREDICTIONS, METRICS)
        if not shard
        else (shard_file("predictions", shard.index, shard.count, ".parquet"), shard_file("metrics", shard.index, shard.count, ".json"))
    )
    with results.staged(out) as stage:
        staged_predictions = stage(names[0])
        results.write_parquet(staged_predictions, predictions)
        metrics["predictions_sha256"] = {names[0]: results.sha256_file(staged_predictions)}
        results.write_json(stage(names[1]), metrics)


def write_result(prep: Prepared, loop: Loop, look: int | None) -> dict:
    """The model's folder, or at an interim look its look folder (the same files, over the samples so far)."""
    out, n, ds = Path(prep.cfg.out), len(loop.topk), prep.dataset
    if look is not None and look < prep.cfg.looks:
        out = out / look_dir(look, prep.cfg.looks)
    metrics = build_metrics(prep, loop, look)
    start = prep.shard.start if prep.shard else 0
    write(out, metrics, predictions_table(ds.labels[:n], loop.topk, loop.confidence, ds.ids[:n], start), prep.shard)
    return metrics


def evaluate(cfg: EvalConfig) -> dict:
    """Run the evaluation and write its files atomically; returns metrics.json's content."""
    prep = prepare(cfg)
    telemetry = EvalTelemetry(cfg.abtest, cfg.namespace, cfg.model_label, len(prep.dataset))
    server = telemetry.serve(cfg.metrics_port, cfg.metrics_addr) if cfg.metrics_port is not None else None
    try:
        loop = run(prep, telemetry, on_look=lambda look, so_far: write_result(prep, so_far, look))
        metrics = write_result(prep, loop, cfg.looks)
        telemetry.completed.set(1)
        if cfg.pushgateway:
            telemetry.push(cfg.pushgateway)
        return metrics
    finally:
        if server is not None:
            server.shutdown()
