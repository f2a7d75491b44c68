"""The part that owns the device: placement, warm-up, inference_mode, autocast and synchronised timing."""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from abtest_api.errors import UserError
from abtest_evaluator import kernels


def seed_everything(seed: int, device_type: str, deterministic: bool = True) -> None:
    """Same seed, same random weights, same loader order. Deterministic kernels (on CPU the portable ones,
    abtest_evaluator.kernels) unless the user traded them for speed (``--nondeterministic``: cuDNN's autotuning,
    NNPACK); cuBLAS needs its workspace set before CUDA starts."""
    if device_type == "cuda" and deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic
    # warn_only: some kernels (e.g. adaptive pooling backward) have no deterministic version;
    # inference rarely hits them, and a warning beats refusing to evaluate.
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    kernels.apply(deterministic)


def seed_worker(worker_id: int) -> None:
    """DataLoader worker seeding, as in the PyTorch reproducibility notes."""
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


@dataclass
class BatchOutput:
    """One batch's results, still on the device: reading them waits for it, so the loop collects several at once."""

    topk: torch.Tensor  # [B, k] class indices, best first
    confidence: torch.Tensor  # [B] max softmax probability, float32
    start: float | torch.cuda.Event  # perf_counter on CPU, CUDA events (device time) on GPU
    end: float | torch.cuda.Event

    @property
    def seconds(self) -> float:
        """The forward's time; on CUDA only once the device has passed ``end``."""
        if isinstance(self.start, float):
            return self.end - self.start
        return self.start.elapsed_time(self.end) / 1e3


class Runner:
    def __init__(
        self,
        module: nn.Module,
        device: str,
        amp_dtype: str | None = None,
        channels_last: bool = False,
        compile: bool = False,
        topk: int = 5,
        pad_to: int | None = None,
        compile_backend="inductor",
        input_dtype: torch.dtype | None = None,
        host_timed: bool = False,
    ):
        self.device = torch.device(device)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        module = module.to(self.device, memory_format=self.memory_format)
        self.model = torch.compile(module, backend=compile_backend) if compile else module
        self.compiled = compile
        self.input_dtype = input_dtype  # a half-precision model takes half-precision inputs
        # a runtime outside PyTorch's streams (ONNX Runtime) finishes inside its call: the wall clock times it
        self.host_timed = host_timed
        self.amp_dtype = getattr(torch, amp_dtype) if amp_dtype else None
        self.topk = topk
        # a compiled model sees one batch shape: a short last batch is padded, not recompiled inside the timed loop
        self.pad_to = pad_to if compile else None
        # on CUDA results stay on the device for this many batches: one host sync per group, not per batch
        self.collect_every = 8 if self.device.type == "cuda" and not host_timed else 1

    def _forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = images.shape[0]
        if self.pad_to and n < self.pad_to:
            padded = images.new_zeros((self.pad_to, *images.shape[1:])).contiguous(memory_format=self.memory_format)
            padded[:n] = images
            images = padded
        with (
            torch.inference_mode(),
            torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None),
        ):
            logits = self.model(images if self.input_dtype is None else images.to(self.input_dtype))[:n]
            probs = logits.float().softmax(dim=-1)
            confidence, topk = probs.topk(min(self.topk, probs.shape[-1]), dim=-1)
        return topk, confidence[:, 0]

    def warmup(self, images: torch.Tensor, iterations: int) -> None:
        """Untimed passes so lazy init, autotuning and compilation stay out of the measurements."""
        for _ in range(iterations):
            self._forward(images)
        self.synchronize()

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @property
    def timing(self) -> str:
        """What a batch's seconds measure (metrics.json says it beside the latency percentiles)."""
        if self.device.type == "cuda" and not self.host_timed:
            return "CUDA events around the forward, softmax and top-k of each batch (its copy to the device overlaps the previous batch)"
        if self.device.type == "cuda":
            return "wall clock (perf_counter) around each batch's forward, softmax and top-k, the device synchronised before and after (the runtime runs outside PyTorch's streams)"
        return "wall clock (perf_counter) around the forward, softmax and top-k of each batch"

    def __call__(self, images: torch.Tensor) -> BatchOutput:
        """Queue one batch (on the device already); nothing waits for the device here on CUDA."""
        try:
            if self.device.type == "cuda" and not self.host_timed:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                topk, confidence = self._forward(images)
                end.record()
                return BatchOutput(topk, confidence, start, end)
            self.synchronize()  # on CUDA (host-timed): the batch's copy is not the runtime's time
            start = time.perf_counter()
            topk, confidence = self._forward(images)
            self.synchronize()
            return BatchOutput(topk, confidence, start, time.perf_counter())
        except torch.OutOfMemoryError:
            raise UserError(
                f"out of memory on {self.device} at batch size {images.shape[0]}; retry with --batch-size {max(1, images.shape[0] // 2)} (spec.batchSize)"
            ) from None

    def collect(self, outputs: list[BatchOutput]) -> tuple[np.ndarray, np.ndarray, list[float]]:
        """Wait for the queued batches and copy their results to the host in one transfer: (topk, confidence, seconds)."""
        if isinstance(outputs[-1].end, torch.cuda.Event):
            outputs[-1].end.synchronize()
        topk = torch.cat([o.topk for o in outputs]).cpu().numpy()
        confidence = torch.cat([o.confidence for o in outputs]).cpu().numpy()
        return topk, confidence, [o.seconds for o in outputs]

    def gpu_memory(self) -> dict | None:
        """Peak allocated and reserved bytes on the GPU; None on CPU and for a runtime outside PyTorch's allocator."""
        if self.device.type != "cuda" or self.host_timed:
            return None
        return {
            "max_allocated_bytes": torch.cuda.max_memory_allocated(self.device),
            "max_reserved_bytes": torch.cuda.max_memory_reserved(self.device),
        }

    def device_name(self) -> str:
        if self.device.type == "cuda":
            return torch.cuda.get_device_name(self.device)
        import platform

        return platform.processor() or platform.machine() or "cpu"
