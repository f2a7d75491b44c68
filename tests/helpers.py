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

    source = b"".join((ROOT / "evaluator" / "abtest_evaluator" / name).read_bytes() for name in ("train.py", "resolve.py", "kernels.py"))
    return hashlib.sha256(source + f"{torch.__version__}{timm.__version__}{sorted(TINY_MODELS.items())}".encode()).hexdigest()[:12]


def artefact_cache_key() -> str:
    """The exported artefacts depend on the exporter and the libraries (the trained model has its own key)."""
    import onnx
    import onnxscript

    source = (ROOT / "evaluator" / "abtest_evaluator" / "export.py").read_bytes()
    return hashlib.sha256(source + f"{onnx.__version__}{onnxscript.__version__}".encode()).hexdigest()[:12]


def abtest_cli(*args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Runs the real `abtest` entry point in a fresh process, as users and Jobs do."""
    return subprocess.run(
        [sys.executable, "-m", "abtest_operator.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


# Invalid ABTest specs, each a mutation of the two-model example's spec (which sets device: cpu in
# the e2e tier). The local validator (test_operator_units) and the API server (e2e/test_validation)
# must both reject every one; each tier checks its own wording of the message.
# What an artefact's model entry states in place of a pretrained config (with the example's inputSize and cropPct).
ARTEFACT_PREPROCESSING = {"interpolation": "bicubic", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def as_onnx_model(model: dict, drop: tuple[str, ...] = (), **changes) -> None:
    """Turn an example's model entry into a complete ONNX artefact entry, then change or drop some of its keys."""
    model.update(ARTEFACT_PREPROCESSING, architecture="onnx", **changes)
    for key in drop:
        model.pop(key)


INVALID_SPECS = {
    "no models": lambda s: s.pop("models"),
    "one model": lambda s: s.update(models=s["models"][:1]),
    "17 models": lambda s: s.update(models=[dict(s["models"][0], name=f"m{i}") for i in range(17)]),
    "duplicate names": lambda s: s["models"][1].update(name=s["models"][0]["name"]),
    "model name": lambda s: s["models"][0].update(name="Res_Net"),
    "alpha 1.5": lambda s: s.update(analysis={"alpha": 1.5}),
    "alpha 0": lambda s: s.update(analysis={"alpha": 0}),
    "negative batch": lambda s: s.update(batchSize=-8),
    "pretrained and checkpoint": lambda s: s["models"][0].update(pretrained=True),
    "unknown device": lambda s: s.update(device="tpu"),
    "unknown dataset": lambda s: s["dataset"].update(name="imagenet22k"),
    "dataset without path": lambda s: s["dataset"].update(name="cifar10"),
    "architecture": lambda s: s["models"][0].update(architecture="resnet18"),
    "gpus on cpu": lambda s: s.update(device="cpu", gpusPerModel=2),
    "unknown field": lambda s: s.update(batchsize=32),
    "negative deadline": lambda s: s.update(activeDeadlineSeconds=-1),
    "mean/std": lambda s: s["models"][0].update(mean=[0.5], std=[0.5, 0.5]),
    "reserved model name": lambda s: s["models"][1].update(name="analysis"),
    "noninferiority without margin": lambda s: s.update(analysis={"hypothesis": "noninferiority"}),
    "margin with superiority": lambda s: s.update(analysis={"margin": 0.01}),
    "margin 0.5": lambda s: s.update(analysis={"hypothesis": "equivalence", "margin": 0.5}),
    "unknown hypothesis": lambda s: s.update(analysis={"hypothesis": "better"}),
    "one look": lambda s: s.update(analysis={"sequential": {"looks": 1}}),
    "unknown spending": lambda s: s.update(analysis={"sequential": {"looks": 3, "spending": "haybittle"}}),
    "sharded sequential": lambda s: s.update(shardsPerModel=2, analysis={"sequential": {"looks": 3}}),
    "65 shards": lambda s: s.update(shardsPerModel=65),
    "9 queued models": lambda s: s.update(queueName="team-gpus", models=[dict(s["models"][0], name=f"m{i}") for i in range(9)]),
    "sequential non-inferiority": lambda s: s.update(analysis={"hypothesis": "noninferiority", "margin": 0.01, "sequential": {"looks": 3}}),
    "artefact without file": lambda s: as_onnx_model(s["models"][0], drop=("checkpoint",)),
    "artefact without preprocessing": lambda s: s["models"][0].update(architecture="onnx"),
    "artefact precision": lambda s: as_onnx_model(s["models"][0], precision="fp16"),
    "int8 off the cpu": lambda s: (s.update(device="auto"), s["models"][1].update(precision="int8-dynamic")),
    "unknown precision": lambda s: s["models"][0].update(precision="fp8"),
}


def result_json(winner="a", name_b="b", p=0.01) -> dict:
    """A minimal result.json of two models a and b, as the analysis writes it."""
    model = {"accuracy": 0.9, "throughput": 100.0, "latency_ms_p50": 1.0}
    return {
        "winner": winner,
        "verdict": "a is better than b",
        "alpha": 0.05,
        "hypothesis": {"name": "superiority", "margin": None},
        "method": "McNemar (exact binomial)",
        "n": 100,
        "models": {"a": model, name_b: model},
        "omnibus": None,
        "warnings": [],
        "comparisons": [
            {
                "a": "a",
                "b": name_b,
                "n01": 1,
                "n10": 9,
                "p_value": p,
                "p_value_text": f"{p:.3g}",
                "p_value_adjusted": p,
                "p_value_adjusted_text": f"{p:.3g}",
                "significant": True,
                "accuracy_diff": 0.08,
                "ci": [0.02, 0.14],
                "ci_level": 0.95,
                "method": "exact",
                "decision": "a_better",
            }
        ],
    }


def local_manifest(path: Path, name: str, models: list[dict], **spec) -> Path:
    """An ABTest for `abtest run` on the CPU over digits, written to ``path``: ``models`` entries get the tests' input
    size; ``spec`` adds or overrides fields."""
    import yaml

    manifest = {
        "apiVersion": "abtest.dev/v1alpha1",
        "kind": "ABTest",
        "metadata": {"name": name},
        "spec": {
            "device": "cpu",
            "workers": 0,
            "dataset": {"name": "digits"},
            "models": [{"inputSize": 32, "cropPct": 1.0, **m} for m in models],
            **spec,
        },
    }
    path.write_text(yaml.safe_dump(manifest))
    return path


def timm_hub_cache(root: Path, name: str = "test_vit") -> Path:
    """``root`` laid out as the weights cache a model pod reads (constants.weights_cache_env): the Hugging Face cache
    timm reads (huggingface/hub/models--ORG--NAME/{refs/main, snapshots/REV/}), holding ``name``'s seeded random
    weights saved here, never downloaded; returns the weights' file."""
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(7)
    model = timm.create_model(name, pretrained=False)
    repo = root / "huggingface" / "hub" / f"models--{model.pretrained_cfg['hf_hub_id'].replace('/', '--')}"
    revision = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    (repo / "snapshots" / revision).mkdir(parents=True)
    weights = repo / "snapshots" / revision / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    weights.chmod(0o644)  # safetensors writes 0600; the evaluator's non-root user reads the cache volume
    return weights
