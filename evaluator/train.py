"""Tiny models trained in seconds on the digits train split: for the examples, the tests and benchmarks.

Uses the evaluator's own model builder, dataset and preprocessing resolver, so a checkpoint trained
here sees exactly the transform that ``abtest evaluate`` applies.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from torch import nn

from abtest_evaluator import datasets, models, resolve, results


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
) -> dict:
    """Train on digits/train and save the state dict (.pth or .safetensors, by suffix) atomically."""
    torch.manual_seed(seed)
    loaded = models.build_model(architecture, 10, in_chans)
    data_cfg = resolve.resolve_data_config(loaded.pretrained_cfg, in_chans, input_size, interpolation, mean, std, crop_pct)
    images, labels = digits_tensors("train", data_cfg)
    model = loaded.module.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
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
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    tmp = out.with_name(f".{out.name}.tmp")
    if out.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(tmp))
    else:
        torch.save(state, tmp)
    # safetensors writes 0600; a checkpoint is read by evaluator pods running as another user (65532)
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o666 & ~umask)
    tmp.replace(out)
    with torch.inference_mode():
        train_acc = float((model(images).argmax(-1) == labels).float().mean())
    return {
        "architecture": architecture,
        "checkpoint": str(out),
        "seconds": time.perf_counter() - started,
        "train_accuracy": train_acc,
        "sha256": results.sha256_file(out),
    }
