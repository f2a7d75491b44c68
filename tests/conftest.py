"""Shared fixtures: tiny real models trained on the digits train split, cached outside the checkout."""

from __future__ import annotations

from pathlib import Path

import pytest

from abtest_evaluator import kernels

kernels.pin()  # before torch loads, as `abtest evaluate` does: the suite trains and evaluates with the portable kernels

from helpers import CACHE, INPUT_FLAGS, TINY_MODELS, abtest_cli, artefact_cache_key, model_cache_key  # noqa: E402


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
def exported_models(trained_models) -> dict[str, Path]:
    """format -> the trained resnet10t written as that artefact (TorchScript, torch.export, ONNX), cached beside it."""
    from abtest_api.constants import ARTEFACT_FORMATS
    from abtest_evaluator.export import SUFFIXES, export_model
    from abtest_evaluator.models import build_model

    checkpoint = trained_models["timm/resnet10t"]
    folder = checkpoint.parent / f"artefacts-{artefact_cache_key()}"
    paths = {fmt: folder / f"resnet10t{SUFFIXES[fmt]}" for fmt in ARTEFACT_FORMATS}
    for fmt, path in paths.items():
        if not path.exists():
            export_model(build_model("timm/resnet10t", 10, checkpoint=str(checkpoint)).module, fmt, path, (3, 32, 32))
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
