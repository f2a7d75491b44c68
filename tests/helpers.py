"""Helpers shared by the test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("ABTEST_CACHE", Path.home() / ".cache" / "abtest"))

# architecture -> (checkpoint file name, epochs): seconds each on 2 CPU cores
TINY_MODELS = {
    "timm/resnet10t": ("resnet10t.pth", 2),
    "timm/test_vit": ("test_vit.safetensors", 6),
    "torchvision/shufflenet_v2_x0_5": ("shufflenet.pth", 3),
}
INPUT_FLAGS = ["--input-size", "32", "--crop-pct", "1.0"]


def model_cache_key() -> str:
    import timm
    import torch

    source = (ROOT / "evaluator" / "train.py").read_bytes() + (ROOT / "evaluator" / "resolve.py").read_bytes()
    return hashlib.sha256(source + f"{torch.__version__}{timm.__version__}{sorted(TINY_MODELS.items())}".encode()).hexdigest()[:12]


def abtest_cli(*args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Runs the real `abtest` entry point in a fresh process, as users and Jobs do."""
    return subprocess.run([sys.executable, "-m", "abtest_operator.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())
