"""What the portable CPU kernels cost: `abtest evaluate` on the CPU with them (the default) against the native ones
(``--nondeterministic``: AVX-512 where the CPU has it, MKL without a reproducibility branch, oneDNN at the CPU's
best instruction set, NNPACK).

    python benchmarks/cpu_kernels.py [--repeats 3] [--threads 2]

Each model is evaluated on digits/test (random weights: speed does not depend on them), alternating portable and
native in one run; prints the compute throughput (images/s of the forward passes alone) of each and their ratio
portable/native, the share of samples whose top-1 class agrees between the two, and whether the confidences are the
same to the bit (they are not: the kernels round differently, which is the point). Figures seen are in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq

from abtest_evaluator import kernels

MODELS = [("timm/resnet10t", 32), ("timm/test_vit", 32), ("timm/resnet18", 64), ("torchvision/shufflenet_v2_x0_5", 64)]


def evaluate(model: str, size: int, out: Path, threads: int, portable: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if portable or k not in kernels.PORTABLE_ENV}
    flags = [] if portable else ["--nondeterministic"]
    cmd = [sys.executable, "-m", "abtest_operator.cli", "evaluate", "--model", model, "--dataset", "digits", "--input-size", str(size),
           "--crop-pct", "1.0", "--device", "cpu", "--threads", str(threads), "--workers", "0", "--batch-size", "64",
           "--out", str(out), *flags]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, env=env, timeout=900)
    metrics = json.loads((out / "metrics.json").read_text())
    return {"throughput": metrics["compute_throughput"], "kernels": metrics["device"]["kernels"],
            "predictions": pq.read_table(out / "predictions.parquet", columns=["pred", "confidence"])}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()
    print(f"{'model':34} {'portable img/s':>15} {'native img/s':>13} {'ratio':>6}  top-1 agree  same bits  kernels (native)")
    with tempfile.TemporaryDirectory() as tmp:
        for model, size in MODELS:
            runs = {True: [], False: []}
            for i in range(args.repeats):
                for portable in (True, False):
                    runs[portable].append(evaluate(model, size, Path(tmp) / f"{i}-{portable}", args.threads, portable))
            fast = {p: statistics.median(r["throughput"] for r in rs) for p, rs in runs.items()}
            portable, native_run = runs[True][0]["predictions"], runs[False][0]["predictions"]
            agree = (portable.column("pred").to_numpy() == native_run.column("pred").to_numpy()).mean()
            bits = portable.column("confidence").equals(native_run.column("confidence"))
            native = runs[False][0]["kernels"]
            print(f"{model + f' @{size}':34} {fast[True]:15.0f} {fast[False]:13.0f} {fast[True] / fast[False]:6.2f}  {agree:11.1%}  {str(bits):9}  "
                  f"{native['cpu_capability']}, MKL CNR {native['mkl_branch']}, NNPACK {native['nnpack']}")  # fmt: skip


if __name__ == "__main__":
    main()
