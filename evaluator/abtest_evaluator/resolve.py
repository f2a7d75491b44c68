"""Torch-free resolvers: device, precision, preprocessing and CPU threads.

Each is a pure function of its inputs so the decisions the runner acts on can be unit-tested
without a GPU, a model or torch.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from abtest_api.constants import FP32, INT8_DYNAMIC, PRECISIONS
from abtest_api.errors import UserError

# timm's defaults (timm/data/constants.py), used when a model has no pretrained config.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_INPUT_SIZE = 224
DEFAULT_CROP_PCT = 0.875
DEFAULT_INTERPOLATION = "bicubic"
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")


@dataclass(frozen=True)
class DataConfig:
    """What the eval transform needs; same field names as timm's data config."""

    input_size: tuple[int, int, int]  # (channels, height, width)
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_pct: float
    crop_mode: str = "center"

    def as_timm_kwargs(self) -> dict:
        return {
            "input_size": self.input_size,
            "interpolation": self.interpolation,
            "mean": self.mean,
            "std": self.std,
            "crop_pct": self.crop_pct,
            "crop_mode": self.crop_mode,
        }


def _fit_channels(values: tuple[float, ...], in_chans: int) -> tuple[float, ...]:
    """Per-channel statistics for a different channel count: one grey channel takes the mean."""
    if len(values) == in_chans:
        return tuple(values)
    return (sum(values) / len(values),) * in_chans


def resolve_data_config(
    pretrained_cfg: dict | None,
    in_chans: int = 3,
    input_size: int | None = None,
    interpolation: str | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    crop_pct: float | None = None,
) -> DataConfig:
    """Explicit overrides win, then the model's pretrained config, then timm's defaults.

    Mirrors the priority of ``timm.data.resolve_data_config`` without importing torch.
    """
    cfg = pretrained_cfg or {}
    if input_size is not None:
        if input_size < 1:
            raise UserError(f"--input-size must be a positive number of pixels, got {input_size}")
        size = (in_chans, input_size, input_size)
    else:
        _, height, width = cfg.get("test_input_size") or cfg.get("input_size") or (3, DEFAULT_INPUT_SIZE, DEFAULT_INPUT_SIZE)
        size = (in_chans, height, width)
    interpolation = interpolation or cfg.get("interpolation") or DEFAULT_INTERPOLATION
    if interpolation not in INTERPOLATIONS:
        raise UserError(f"--interpolation {interpolation!r} is unknown; use one of {', '.join(INTERPOLATIONS)}")
    crop = crop_pct if crop_pct is not None else cfg.get("test_crop_pct") or cfg.get("crop_pct") or DEFAULT_CROP_PCT
    if not 0 < crop <= 1:
        raise UserError(f"--crop-pct must be in (0, 1], got {crop}")
    return DataConfig(
        input_size=size,
        interpolation=interpolation,
        mean=_fit_channels(tuple(mean or cfg.get("mean") or IMAGENET_MEAN), in_chans),
        std=_fit_channels(tuple(std or cfg.get("std") or IMAGENET_STD), in_chans),
        crop_pct=float(crop),
        crop_mode=cfg.get("crop_mode") or "center",
    )


def resolve_device(requested: str, cuda_available: bool) -> str:
    """``auto`` falls back to CPU; an explicit ``cuda`` without a GPU is an error, never a silent fallback."""
    if requested not in ("auto", "cpu", "cuda"):
        raise UserError(f"--device {requested!r} is unknown; use auto, cpu or cuda")
    if requested == "auto":
        return "cuda" if cuda_available else "cpu"
    if requested == "cuda" and not cuda_available:
        raise UserError("--device cuda was requested but no CUDA GPU is visible; use --device cpu or auto")
    return requested


def resolve_amp_dtype(device_type: str, amp: bool | None, amp_dtype: str = "float16") -> str | None:
    """The autocast dtype, or None for full precision; unset (None) means on for CUDA, where tensor cores want half
    precision, and off for CPU, whose predictions stay those of float32. CPU autocast only supports bfloat16."""
    if amp is None:
        amp = device_type == "cuda"
    if not amp:
        return None
    if amp_dtype not in ("float16", "bfloat16"):
        raise UserError(f"--amp-dtype {amp_dtype!r} is unknown; use float16 or bfloat16")
    return "bfloat16" if device_type == "cpu" else amp_dtype


def resolve_precision(device_type: str, precision: str, artefact: str | None) -> str:
    """--precision for this model and device: artefacts run as exported, int8-dynamic (PyTorch's dynamic
    quantization, whose kernels are the CPU's) only on the CPU."""
    if precision not in PRECISIONS:
        raise UserError(f"--precision {precision!r} is unknown; use one of {', '.join(PRECISIONS)}")
    if artefact and precision != FP32:
        raise UserError(
            f"--precision {precision} applies to timm/torchvision models; the {artefact} artefact runs as exported (drop spec.models[].precision)"
        )
    if precision == INT8_DYNAMIC and device_type != "cpu":
        raise UserError("--precision int8-dynamic runs on the CPU only; set --device cpu (spec.device)")
    return precision


def check_artefact_settings(artefact: str, checkpoint: str | None, pretrained: bool, settings: dict[str, object]) -> None:
    """An artefact is a file with no pretrained config: its file and every preprocessing setting must be given."""
    if not checkpoint or pretrained:
        raise UserError(f"--model {artefact} needs the artefact file as --checkpoint FILE (spec.models[].checkpoint), and no --pretrained")
    missing = [name for name, value in settings.items() if value is None]
    if missing:
        raise UserError(
            f"--model {artefact} has no pretrained config to take preprocessing from; set {', '.join(missing)} "
            "(spec.models[].inputSize, interpolation, mean, std, cropPct) to what it was trained with"
        )


def resolve_channels_last(device_type: str, channels_last: bool | None) -> bool:
    """Unset means on for CUDA (cuDNN's fast convolutions are NHWC, and uint8 HWC batches arrive in it for free)."""
    return device_type == "cuda" if channels_last is None else channels_last


MAX_AUTO_WORKERS = 16  # beyond this, decoding rarely limits one GPU and each worker costs memory


def resolve_workers(requested: int | None, cpus: int) -> int:
    """DataLoader workers: explicit request, else one per CPU of the container but one (the loop's own), 1..16."""
    if requested is not None:
        if requested < 0:
            raise UserError(f"--workers must be 0 or more, got {requested}")
        return requested
    return max(1, min(cpus - 1, MAX_AUTO_WORKERS))


def cgroup_cpu_limit(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Whole CPUs allowed by the container's CPU quota (cgroup v2 ``cpu.max`` or v1 CFS), or None."""
    try:
        quota, period = (cgroup_root / "cpu.max").read_text().split()[:2]
        if quota != "max":
            return max(1, math.ceil(int(quota) / int(period)))
        return None
    except (OSError, ValueError):
        pass
    try:
        quota = int((cgroup_root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((cgroup_root / "cpu" / "cpu.cfs_period_us").read_text())
        return max(1, math.ceil(quota / period)) if quota > 0 else None
    except (OSError, ValueError):
        return None


def resolve_threads(requested: int | None = None, cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """Intra-op threads: explicit request, else the cgroup CPU quota, else the CPUs this process may use."""
    if requested is not None:
        if requested < 1:
            raise UserError(f"--threads must be at least 1, got {requested}")
        return requested
    available = len(os.sched_getaffinity(0))
    limit = cgroup_cpu_limit(cgroup_root)
    return min(available, limit) if limit else available


def parse_shard(text: str) -> tuple[int, int]:
    """``I/N`` -> (I, N), 0 <= I < N <= MAX_SHARDS; a UserError naming the flag otherwise."""
    from abtest_api.constants import MAX_SHARDS

    index, sep, count = text.partition("/")
    if sep and index.isdigit() and count.isdigit() and 0 <= int(index) < int(count) <= MAX_SHARDS:
        return int(index), int(count)
    raise UserError(f"--shard must be I/N with 0 <= I < N <= {MAX_SHARDS} (part I of N, 0-based), got {text!r}")
