"""Train the example checkpoints on the digits train split (well under a minute on 2 CPU cores).

    python examples/train_digits.py [--force] [MANIFEST ...]

Reads each manifest's models and trains every checkpoint it names (relative to the manifest),
with the preprocessing the evaluator will use. Existing checkpoints are kept unless --force.
"""

import argparse
from pathlib import Path

from abtest_evaluator import kernels

kernels.pin()  # before torch loads: the same checkpoints on any x86-64 CPU (docs/evaluator.md, Determinism)

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
        for model in parse_abtest(load_manifest(manifest)).models:
            target = (manifest.parent / model.checkpoint).resolve()
            if target in done or (target.exists() and not args.force):
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


if __name__ == "__main__":
    main()
