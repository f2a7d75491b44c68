"""Portable CPU kernels (abtest_evaluator.kernels): what is pinned, that evaluation does not depend on the thread
count, that --nondeterministic leaves the native kernels, and the analysis' warning when models differ in them.
That the pinned kernels give the same bits on another CPU is what the README test checks on every CI machine."""

import os
import sys

import pyarrow.parquet as pq
import pytest

from abtest_evaluator import kernels
from helpers import INPUT_FLAGS, read_json


def test_pin_sets_the_portable_choice_and_keeps_what_the_user_set(tmp_path):
    env = {}
    assert kernels.pin(env, machine="x86_64", avx2=True)
    assert env == {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "COMPATIBLE", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    mine = {"MKL_CBWR": "AUTO"}
    assert kernels.pin(mine, machine="x86_64", avx2=True) and mine["MKL_CBWR"] == "AUTO"
    for machine, avx2 in (("aarch64", True), ("x86_64", False)):  # nothing to pin, nothing set
        env = {}
        assert not kernels.pin(env, machine=machine, avx2=avx2) and env == {}
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx fma avx2 avx512f\n")
    assert kernels.cpu_has_avx2(cpuinfo)
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx\n")
    assert not kernels.cpu_has_avx2(cpuinfo) and not kernels.cpu_has_avx2(tmp_path / "missing")


def evaluate(trained_models, out, *flags, env=None):
    import subprocess

    return subprocess.run(
        [sys.executable, "-m", "abtest_operator.cli", "evaluate", "--model", "timm/resnet10t", "--checkpoint",
         trained_models["timm/resnet10t"], "--dataset", "digits", *INPUT_FLAGS, "--device", "cpu", "--workers", "0",
         "--out", out, *map(str, flags)],
        capture_output=True, text=True, timeout=300, env=env if env is not None else os.environ,
    )  # fmt: skip


@pytest.mark.slow
def test_evaluation_is_bit_identical_on_one_or_two_threads_with_the_portable_kernels(tmp_path, trained_models):
    tables = {}
    for threads in (1, 2):
        proc = evaluate(trained_models, tmp_path / str(threads), "--threads", threads)
        assert proc.returncode == 0, proc.stderr
        tables[threads] = pq.read_table(tmp_path / str(threads) / "predictions.parquet")
        device = read_json(tmp_path / str(threads) / "metrics.json")["device"]
        assert device["threads"] == threads
        assert device["kernels"]["portable"] is kernels.cpu_has_avx2(), device["kernels"]
        assert device["kernels"]["onednn_max_isa"] == "AVX2" and device["kernels"]["nnpack"] is False
    for column in ("pred", "top5", "confidence"):
        assert tables[1].column(column).equals(tables[2].column(column)), column


@pytest.mark.slow
def test_nondeterministic_keeps_the_native_kernels(tmp_path, trained_models):
    native_env = {k: v for k, v in os.environ.items() if k not in kernels.PORTABLE_ENV}  # the suite pinned its own
    proc = evaluate(trained_models, tmp_path / "native", "--nondeterministic", env=native_env)
    assert proc.returncode == 0, proc.stderr
    settings = read_json(tmp_path / "native" / "metrics.json")["device"]["kernels"]
    assert settings["portable"] is False and settings["onednn_max_isa"] is None and settings["mkl_branch"] == "OFF"


def test_models_on_different_cpu_kernels_are_warned_about():
    from abtest_evaluator.analysis.verdict import collect_warnings
    from abtest_evaluator.results import ModelData

    def model(name, capability, portable):
        settings = {"cpu_capability": capability, "mkl_branch": "COMPATIBLE" if portable else "AUTO", "portable": portable}
        return ModelData(name, {"device": {"type": "cpu", "name": "x", "kernels": settings}}, None, None, None)

    assert not collect_warnings([model("a", "AVX2", True), model("b", "AVX2", True)])
    warned = collect_warnings([model("a", "AVX2", True), model("b", "AVX512", False)])
    assert any("different CPU kernels (a: AVX2 portable, b: AVX512 native)" in w for w in warned), warned
