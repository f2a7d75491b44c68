"""Portable CPU kernels: the same checkpoint gives the same predictions on any x86-64 CPU with AVX2, Intel or AMD.

PyTorch chooses its CPU kernels by instruction set when a process starts: ATen's vectorised kernels (AVX2 or
AVX-512), MKL's GEMM and vector-math code paths (by vendor too), oneDNN's JIT convolutions (whose blocking also
follows the CPU's caches). Each choice changes the order or the rounding of floating-point operations, so training or
evaluating on one CPU gives other numbers than on the next. The portable choice: ATen pinned to AVX2; MKL on its
COMPATIBLE conditional-numerical-reproducibility branch (the only one MKL honours on AMD as on Intel; it also avoids
the reciprocal approximations, which differ by vendor); oneDNN capped at AVX2; NNPACK (its own dispatch) off.
Training also keeps convolutions off oneDNN (its backward passes were not compared) and runs on a fixed number of
threads. What it costs, and what was compared, is in docs/evaluator.md (Determinism) and docs/benchmarks.md.

The environment part must happen before torch is imported (ATen and MKL read it once): ``pin`` is called by
``abtest evaluate`` and the training entry points first thing; ``apply`` and ``settings`` after the import.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from pathlib import Path

# What every supported CPU has; the values are ATen's and MKL's own spellings.
PORTABLE_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "COMPATIBLE", "ONEDNN_MAX_CPU_ISA": "AVX2"}
# MKL's branch numbers (mkl_cbwr.h), for what metrics.json records
MKL_BRANCHES = {1: "OFF", 2: "AUTO", 3: "COMPATIBLE", 4: "SSE2", 6: "SSSE3", 7: "SSE4_1", 8: "SSE4_2", 9: "AVX", 10: "AVX2", 12: "AVX512"}


def cpu_has_avx2(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    try:
        line = next((line for line in cpuinfo.read_text().splitlines() if line.startswith("flags")), "flags:")
    except OSError:
        return False
    return {"avx2", "fma"} <= set(line.split(":", 1)[1].split())


def pin(environ: MutableMapping[str, str] = os.environ, *, machine: str | None = None, avx2: bool | None = None) -> bool:
    """Set the portable kernel choice in ``environ`` (values already there win) before torch is imported; False, and
    nothing set, where it cannot apply (not x86-64, no AVX2) or torch is already loaded (``settings`` then shows what
    the process really uses)."""
    if (machine or platform.machine()) not in ("x86_64", "AMD64") or not (cpu_has_avx2() if avx2 is None else avx2):
        return False
    if "torch" in sys.modules and environ is os.environ:
        return False
    for name, value in PORTABLE_ENV.items():
        environ.setdefault(name, value)
    return True


def apply(deterministic: bool) -> None:
    """After the import: deterministic runs keep convolutions off NNPACK, which picks its kernels by CPU itself."""
    import torch

    torch.backends.nnpack.set_flags(not deterministic)


@contextmanager
def fixed_threads(threads: int) -> Iterator[None]:
    """Deterministic kernels for training: on exactly ``threads`` threads (its reductions, e.g. batch norm's
    gradients, split by thread count, where evaluation's do not) and convolutions as ATen's im2col + MKL GEMM."""
    import torch

    apply(deterministic=True)
    previous = torch.get_num_threads(), torch.backends.mkldnn.enabled
    torch.set_num_threads(threads)
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.set_num_threads(previous[0])
        torch.backends.mkldnn.enabled = previous[1]


def mkl_branch() -> str | None:
    """The CNR branch MKL really uses (it ignores a branch the CPU's vendor does not support): asked of the MKL inside
    libtorch_cpu; None where torch has no MKL or does not export the call."""
    import ctypes

    import torch

    try:
        lib = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"))
        return MKL_BRANCHES.get(lib.mkl_serv_cbwr_get(ctypes.c_int(1)), "other")  # 1: MKL_CBWR_BRANCH
    except (OSError, AttributeError):
        return None


def settings() -> dict:
    """What decides this process's CPU numerics, for metrics.json (the analysis warns when models differ in it)."""
    import torch

    onednn = torch.backends.mkldnn.enabled
    found = {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkl_branch": mkl_branch(),
        "onednn_max_isa": os.environ.get("ONEDNN_MAX_CPU_ISA") if onednn else None,
        "nnpack": bool(torch._C._get_nnpack_enabled()),
    }
    portable = found["cpu_capability"] == "AVX2" and found["mkl_branch"] == "COMPATIBLE" and not found["nnpack"]
    return {**found, "portable": portable and (not onednn or found["onednn_max_isa"] == PORTABLE_ENV["ONEDNN_MAX_CPU_ISA"])}
