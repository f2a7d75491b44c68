"""Shared fixtures: tiny real models trained on the digits train split, cached outside the checkout."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("ABTEST_CACHE", Path.home() / ".cache" / "abtest"))

# architecture -> (checkpoint file name, epochs): seconds each on 2 CPU cores
TINY_MODELS = {
    "timm/resnet10t": ("resnet10t.pth", 2),
    "timm/test_vit": ("test_vit.safetensors", 6),
    "torchvision/shufflenet_v2_x0_5": ("shufflenet.pth", 3),
}
INPUT_FLAGS = ["--input-size", "32", "--crop-pct", "1.0"]


def _cache_key() -> str:
    import timm
    import torch

    source = (ROOT / "evaluator" / "train.py").read_bytes() + (ROOT / "evaluator" / "resolve.py").read_bytes()
    return hashlib.sha256(source + f"{torch.__version__}{timm.__version__}{sorted(TINY_MODELS.items())}".encode()).hexdigest()[:12]


@pytest.fixture(scope="session")
def trained_models() -> dict[str, Path]:
    """architecture -> checkpoint path; trained once per code/library version, then reused."""
    from abtest_evaluator.train import train_digits

    folder = CACHE / f"test-models-{_cache_key()}"
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for arch, (file, epochs) in TINY_MODELS.items():
        path = folder / file
        if not path.exists():
            train_digits(arch, path, input_size=32, crop_pct=1.0, epochs=epochs)
        paths[arch] = path
    return paths


def abtest_cli(*args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Runs the real `abtest` entry point in a fresh process, as users and Jobs do."""
    return subprocess.run([sys.executable, "-m", "abtest_operator.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


@pytest.fixture(scope="session")
def evaluated(tmp_path_factory, trained_models) -> Path:
    """Two models evaluated on digits/test through the CLI: DIR/resnet, DIR/vit."""
    root = tmp_path_factory.mktemp("evaluated")
    for name, arch in (("resnet", "timm/resnet10t"), ("vit", "timm/test_vit")):
        proc = abtest_cli("evaluate", "--model", arch, "--checkpoint", trained_models[arch], "--dataset", "digits",
                          *INPUT_FLAGS, "--device", "cpu", "--name", name, "--out", root / name, "--workers", "0")
        assert proc.returncode == 0, proc.stderr
    return root


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())
