"""Tiny models trained in seconds on the digits train split: for the examples, the tests and benchmarks.

Uses the evaluator's own model builder, dataset and preprocessing resolver, so a checkpoint trained
here sees exactly the transform that ``abtest evaluate`` applies.
"""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import torch
from torch import nn

from abtest_evaluator import datasets, kernels, models, resolve, results


def digits_tensors(split: str, data_cfg: resolve.DataConfig) -> tuple[torch.Tensor, torch.Tensor]:
    from timm.data import create_transform

    ds = datasets.load_digits(split)
    transform = create_transform(**data_cfg.as_timm_kwargs(), is_training=False)
    mode = "L" if data_cfg.input_size[0] == 1 else "RGB"
    images = torch.stack([transform(ds.load(i).convert(mode)) for i in range(len(ds))])
    return images, torch.from_numpy(ds.labels)


def train_digits(
    architecture: str,
    out: str | Path,
    *,
    in_chans: int = 3,
    input_size: int = 32,
    crop_pct: float = 1.0,
    mean=None,
    std=None,
    interpolation=None,
    epochs: int = 6,
    batch_size: int = 64,
    lr: float = 3e-3,
    seed: int = 0,
    threads: int = 1,
) -> dict:
    """Train on digits/train and save the state dict (.pth or .safetensors, by suffix) atomically.

    The same bits on any x86-64 CPU when the process pinned its kernels (``kernels.pin`` before torch loads);
    ATen splits some training reductions by thread count, so training runs on a fixed number of threads."""
    # Long because it is a training script, read top to bottom: data, model, loop, checkpoint.
    with kernels.fixed_threads(threads):
        torch.manual_seed(seed)
        loaded = models.build_model(architecture, 10, in_chans)
        data_cfg = resolve.resolve_data_config(loaded.pretrained_cfg, in_chans, input_size, interpolation, mean, std, crop_pct)
        images, labels = digits_tensors("train", data_cfg)
        model = loaded.module.train()
        # fused: ATen's own vectorised sqrt, where the unfused step's tensor sqrt goes to MKL's vector math (which
        # rounds differently on AMD and Intel)
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4, fused=True)
        steps = epochs * ((len(images) + batch_size - 1) // batch_size)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
        loss_fn = nn.CrossEntropyLoss()
        generator = torch.Generator().manual_seed(seed)
        started = time.perf_counter()
        for _ in range(epochs):
            order = torch.randperm(len(images), generator=generator)
            for start in range(0, len(images), batch_size):
                idx = order[start : start + batch_size]
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(model(images[idx]), labels[idx])
                loss.backward()
                optimizer.step()
                schedule.step()
    model.eval()
    out = Path(out)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if out.suffix == ".safetensors":
        from safetensors.torch import save as to_bytes
    else:

        def to_bytes(tensors):  # in memory, so a full disk is an OSError of the write, not torch's RuntimeError
            buffer = io.BytesIO()
            torch.save(tensors, buffer)
            return buffer.getvalue()

    with results.staged(out.parent) as stage:  # the whole checkpoint or none
        tmp = stage(out.name)
        results.write_bytes(tmp, to_bytes(state))
        # safetensors writes 0600; a checkpoint is read by evaluator pods running as another user (65532)
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o666 & ~umask)
    with torch.inference_mode():
        train_acc = float((model(images).argmax(-1) == labels).float().mean())
    return {
        "architecture": architecture,
        "checkpoint": str(out),
        "seconds": time.perf_counter() - started,
        "train_accuracy": train_acc,
        "sha256": results.sha256_file(out),
    }
