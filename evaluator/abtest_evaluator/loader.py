"""The data path: timm's eval transform in the workers, batches to the model's device one ahead of the forward.

With ``preprocess="device"`` (the default) workers stop at the centre crop and send uint8 HxWxC arrays: a quarter of
float32's bytes through the worker queues, pinned memory and PCIe. The device converts and normalises them with the
same float32 operations, in the same order, as torchvision's ``ToTensor`` and ``Normalize``, so the model's input is
bit-for-bit the host path's; the NHWC batch permuted to NCHW is already channels-last.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from abtest_evaluator import datasets
from abtest_evaluator.resolve import DataConfig

PREPROCESS = ("device", "host")


class ToHWC:
    """PIL image -> uint8 HxWxC array (grey images get their one channel axis)."""

    def __call__(self, image) -> np.ndarray:
        array = np.array(image, dtype=np.uint8)  # a copy: collate wraps it without a read-only warning
        return array[..., None] if array.ndim == 2 else array


def build_transform(data_cfg: DataConfig, preprocess: str):
    """timm's eval transform (resize, centre crop, then float and normalise on the host), or its prefetcher variant with
    the last step, uint8 CHW, swapped for uint8 HWC."""
    from timm.data import create_transform
    from torchvision import transforms

    if preprocess == "host":
        return create_transform(**data_cfg.as_timm_kwargs(), is_training=False)
    steps = create_transform(**data_cfg.as_timm_kwargs(), is_training=False, use_prefetcher=True).transforms
    if type(steps[-1]).__name__ != "MaybePILToTensor":  # a timm upgrade changed the prefetcher's transform
        raise RuntimeError(f"timm's prefetcher transform ends with {steps[-1]!r}, expected MaybePILToTensor")
    return transforms.Compose([*steps[:-1], ToHWC()])


class TransformedDataset(Dataset):
    def __init__(self, ds: datasets.EvalDataset, transform, mode: str):
        self.ds, self.transform, self.mode = ds, transform, mode

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        return self.transform(self.ds.decode(i, self.mode)), int(self.ds.labels[i])


class ToModelInput:
    """A collated batch, already on the device, as the model's float input in its memory format."""

    def __init__(self, data_cfg: DataConfig, preprocess: str, device: torch.device, memory_format: torch.memory_format):
        self.preprocess, self.memory_format = preprocess, memory_format
        self.mean = torch.tensor(data_cfg.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(data_cfg.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if self.preprocess == "host":
            return batch.contiguous(memory_format=self.memory_format)
        # uint8 NHWC -> NCHW in the model's memory format while a pixel is one byte (a no-op for channels-last), then
        # ToTensor's float().div(255) and Normalize's sub_ and div_, which keep that format
        batch = batch.permute(0, 3, 1, 2).contiguous(memory_format=self.memory_format)
        return batch.float().div_(255).sub_(self.mean).div_(self.std)


class DeviceBatches:
    """Iterates ``(input on the device, labels on the host)``. On CUDA each batch is copied (from pinned memory,
    non-blocking) and converted on a side stream while the model runs the previous one."""

    def __init__(self, loader, device: torch.device, to_input: ToModelInput):
        self.loader, self.device, self.to_input = loader, device, to_input

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        if self.device.type != "cuda":
            for images, labels in self.loader:
                yield self.to_input(images.to(self.device)), labels
            return
        side, compute = torch.cuda.Stream(self.device), torch.cuda.current_stream(self.device)
        ahead = None
        for images, labels in self.loader:
            with torch.cuda.stream(side):
                batch = self.to_input(images.to(self.device, non_blocking=True))
            if ahead is not None:
                yield ahead  # the caller queues its forward; this batch's copy is already under way
            compute.wait_stream(side)
            batch.record_stream(compute)  # allocated on the side stream, freed after the compute stream used it
            ahead = batch, labels
        if ahead is not None:
            yield ahead
