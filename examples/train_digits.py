"""Train the example checkpoints on the digits train split (well under a minute on 2 CPU cores).

    python examples/train_digits.py [--force] [MANIFEST ...]

Reads each manifest's models and trains every checkpoint it names (relative to the manifest),
with the preprocessing the evaluator will use. An artefact model (architecture torchscript, export
or onnx) is exported from the manifest's PyTorch model whose checkpoint has the same stem
(checkpoints/resnet10t-digits.onnx from checkpoints/resnet10t-digits.pth). Existing files are kept
unless --force.
"""

import argparse
import time
from pathlib import Path

from abtest_evaluator import kernels

kernels.pin()  # before torch loads: the same checkpoints on any x86-64 CPU (docs/evaluator.md, Determinism)

from abtest_api.constants import ARTEFACT_FORMATS  # noqa: E402
from abtest_evaluator.export import export_model  # noqa: E402
from abtest_evaluator.models import build_model  # noqa: E402
from abtest_evaluator.train import train_digits  # noqa: E402
from abtest_operator.spec import load_manifest, parse_abtest  # noqa: E402

HERE = Path(__file__).parent
EPOCHS = {"timm/resnet10t": 2, "timm/test_vit": 6, "torchvision/shufflenet_v2_x0_5": 3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifests", nargs="*", default=[HERE / "abtest-digits.yaml", HERE / "abtest-digits-3way.yaml"])
    parser.add_argument("--force", action="store_true", help="retrain existing checkpoints")
    args = parser.parse_args()
    done = set()
    for manifest in map(Path, args.manifests):
        models = sorted(parse_abtest(load_manifest(manifest)).models, key=lambda m: m.architecture in ARTEFACT_FORMATS)
        for model in models:  # the PyTorch models first: the artefacts are exported from their checkpoints
            target = (manifest.parent / model.checkpoint).resolve()
            if target in done or (target.exists() and not args.force):
                continue
            if model.architecture in ARTEFACT_FORMATS:
                export_artefact(model, target, models)
                done.add(target)
                continue
            settings = model.settings  # the model's fields of the evaluate contract
            info = train_digits(
                model.architecture,
                target,
                in_chans=settings.get("in_chans", 3),
                input_size=settings.get("input_size", 32),
                crop_pct=settings.get("crop_pct", 1.0),
                mean=settings.get("mean"),
                std=settings.get("std"),
                epochs=EPOCHS.get(model.architecture, 4),
            )
            done.add(target)
            print(f"trained {model.architecture} in {info['seconds']:.1f}s (train accuracy {info['train_accuracy']:.3f}) -> {target}")


def export_artefact(model, target: Path, models: list) -> None:
    """Export ``model``'s file from the (trained) PyTorch model whose checkpoint has the same stem."""
    sources = [m for m in models if Path(m.checkpoint).stem == target.stem and m.architecture not in ARTEFACT_FORMATS]
    if not sources:
        raise SystemExit(
            f"{model.name}: no PyTorch model in the manifest has a checkpoint named {target.stem}.* to export {target.name} from"
        )
    source, settings = sources[0], model.settings
    checkpoint = target.parent / Path(source.checkpoint).name
    loaded = build_model(source.architecture, settings.get("num_classes") or 10, settings.get("in_chans", 3), checkpoint=str(checkpoint))
    size = (settings.get("in_chans", 3), settings["input_size"], settings["input_size"])
    started = time.perf_counter()
    export_model(loaded.module, model.architecture, target, size)
    print(f"exported {source.architecture} as {model.architecture} in {time.perf_counter() - started:.1f}s -> {target}")


if __name__ == "__main__":
    main()
