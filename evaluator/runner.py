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


def seed_everything(seed: int, device_type: str) -> None:
    """Same seed, same random weights, same loader order. cuBLAS needs its workspace set before CUDA starts."""
    if device_type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    # warn_only: some kernels (e.g. adaptive pooling backward) have no deterministic version;
    # inference rarely hits them, and a warning beats refusing to evaluate.
    torch.use_deterministic_algorithms(True, warn_only=True)


def seed_worker(worker_id: int) -> None:
    """DataLoader worker seeding, as in the PyTorch reproducibility notes."""
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


@dataclass
class BatchOutput:
    topk: torch.Tensor  # [B, k] class indices, best first (CPU)
    confidence: torch.Tensor  # [B] max softmax probability, float32 (CPU)
    seconds: float  # host->device copy, forward, softmax and the copy back, synchronised


class Runner:
    def __init__(
        self,
        module: nn.Module,
        device: str,
        amp_dtype: str | None = None,
        channels_last: bool = False,
        compile: bool = False,
        topk: int = 5,
    ):
        self.device = torch.device(device)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        module = module.to(self.device, memory_format=self.memory_format).eval()
        self.model = torch.compile(module) if compile else module
        self.amp_dtype = getattr(torch, amp_dtype) if amp_dtype else None
        self.topk = topk

    def _forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = images.to(self.device, non_blocking=True, memory_format=self.memory_format)
        with (
            torch.inference_mode(),
            torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None),
        ):
            logits = self.model(images)
            probs = logits.float().softmax(dim=-1)
            confidence, topk = probs.topk(min(self.topk, probs.shape[-1]), dim=-1)
        # .cpu() waits for the device, so the clock below stops after the work is done
        return topk.cpu(), confidence[:, 0].cpu()

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
        if self.device.type == "cuda":
            return "CUDA events around the host-to-device copy, forward, softmax and top-k of each batch"
        return "wall clock (perf_counter) around the forward, softmax and top-k of each batch"

    def __call__(self, images: torch.Tensor) -> BatchOutput:
        try:
            if self.device.type == "cuda":  # device time, not the host's view of it
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                topk, confidence = self._forward(images)  # its .cpu() waits for the device
                end.record()
                end.synchronize()
                return BatchOutput(topk, confidence, start.elapsed_time(end) / 1e3)
            start = time.perf_counter()
            topk, confidence = self._forward(images)
            return BatchOutput(topk, confidence, time.perf_counter() - start)
        except torch.OutOfMemoryError:
            raise UserError(
                f"out of memory on {self.device} at batch size {images.shape[0]}; retry with --batch-size {max(1, images.shape[0] // 2)} (spec.batchSize)"
            ) from None

    def gpu_memory(self) -> dict | None:
        """Peak allocated and reserved bytes on the GPU; None on CPU."""
        if self.device.type != "cuda":
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
