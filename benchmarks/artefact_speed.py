"""How fast is each way of running one model in abtest's Runner: PyTorch eager fp32 against its TorchScript,
torch.export and ONNX Runtime artefacts and its int8-dynamic variant, alternating A/B in one run.

    python benchmarks/artefact_speed.py [--model timm/resnet10t] [--input-size 32] [--batch-size 64] [--repeats 5]

Prints images/s of each (median of the repeats) and its ratio to eager fp32 on the same batches, same threads.
No target: the figures say which runtime suits the machine; an artefact's job is to predict as the model does
(tests/test_artefacts.py), not to be faster. Seen on the 2-core CI machine (resnet10t, 32 px, batch 64):
docs/evaluator.md, Artefacts.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from abtest_evaluator import artefacts, export, models
from abtest_evaluator.runner import Runner


def images_per_second(runner: Runner, batches: list[torch.Tensor]) -> float:
    started = time.perf_counter()
    for batch in batches:
        runner.collect([runner(batch)])
    return sum(len(b) for b in batches) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="timm/resnet10t")
    parser.add_argument("--input-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    size = (3, args.input_size, args.input_size)
    module = models.build_model(args.model, 10).module
    runners = {"eager fp32": Runner(module, "cpu"), "int8-dynamic": Runner(models.apply_precision(module, "int8-dynamic"), "cpu")}
    with tempfile.TemporaryDirectory() as folder:
        for fmt, suffix in export.SUFFIXES.items():
            path = export.export_model(module, fmt, Path(folder) / f"model{suffix}", size)
            loaded, runtime = artefacts.load_artefact(fmt, str(path), size, 10, threads=torch.get_num_threads())
            runners[fmt] = Runner(loaded, "cpu", host_timed=runtime.host_timed)
        batches = [torch.randn(args.batch_size, *size) for _ in range(args.batches)]
        for runner in runners.values():
            runner.warmup(batches[0], 3)
        seen = {name: [] for name in runners}
        for _ in range(args.repeats):  # alternating, so drifting CPU load hits them alike
            for name, runner in runners.items():
                seen[name].append(images_per_second(runner, batches))
    base = statistics.median(seen["eager fp32"])
    print(f"{args.model} at {args.input_size} px, batch {args.batch_size}, {torch.get_num_threads()} threads")
    for name, values in seen.items():
        print(f"{name:>14}: {statistics.median(values):8.0f} images/s  ratio to eager fp32 {statistics.median(values) / base:.2f}")


if __name__ == "__main__":
    main()
