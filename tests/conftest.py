"""Shared fixtures: tiny real models trained on the digits train split, cached outside the checkout."""

from __future__ import annotations

from pathlib import Path

import pytest

from abtest_evaluator import kernels

kernels.pin()  # before torch loads, as `abtest evaluate` does: the suite trains and evaluates with the portable kernels

from helpers import CACHE, INPUT_FLAGS, TINY_MODELS, abtest_cli, model_cache_key  # noqa: E402


@pytest.fixture(scope="session")
def trained_models() -> dict[str, Path]:
    """architecture -> checkpoint path; trained once per code/library version, then reused."""
    from abtest_evaluator.train import train_digits

    folder = CACHE / f"test-models-{model_cache_key()}"
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for arch, (file, epochs) in TINY_MODELS.items():
        path = folder / file
        if not path.exists():
            train_digits(arch, path, input_size=32, crop_pct=1.0, epochs=epochs)
        paths[arch] = path
    return paths


@pytest.fixture(scope="session")
def evaluated(tmp_path_factory, trained_models) -> Path:
    """Two models evaluated on digits/test through the CLI: DIR/resnet, DIR/vit."""
    root = tmp_path_factory.mktemp("evaluated")
    for name, arch in (("resnet", "timm/resnet10t"), ("vit", "timm/test_vit")):
        proc = abtest_cli(
            "evaluate",
            "--model",
            arch,
            "--checkpoint",
            trained_models[arch],
            "--dataset",
            "digits",
            *INPUT_FLAGS,
            "--device",
            "cpu",
            "--name",
            name,
            "--out",
            root / name,
            "--workers",
            "0",
        )
        assert proc.returncode == 0, proc.stderr
    return root
