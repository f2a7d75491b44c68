"""benchmarks/gpu_check.sh on the CPU: every phase but the CUDA-only readings runs, from a scratch install of the
checkout, and a failing phase still leaves the table (and a non-zero exit)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_every_phase_on_cpu_and_reports_a_failed_one():
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_MODELS": "timm/test_resnet timm/no_such_model"}
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--cpu"], capture_output=True, text=True, env=env, timeout=600
    )
    table = proc.stdout.split("== results", 1)[1].splitlines()
    rows = {line.split("  ", 1)[0]: line for line in table[2:]}
    assert proc.returncode == 1, proc.stdout + proc.stderr  # the bad model's phase failed
    assert "FAILED" in rows["ceiling-no_such_model"] and "exit 1" in rows["ceiling-no_such_model"]
    # the other phases ran, from the scratch install (pip --no-index --no-deps), not from this checkout
    assert "/site/abtest_evaluator" in rows["env"]
    assert rows["imports"].rstrip().endswith("PASS")  # the evaluator runs without kopf, kubernetes and jsonschema
    assert "img/s @ 32 px" in rows["ceiling timm/test_resnet"]
    for tag in ("evaluate", "nondeterministic"):
        assert "img/s wall" in rows[f"{tag} timm/test_resnet"] and "fp32" in rows[f"{tag} timm/test_resnet"]
    assert "--nondeterministic:" in rows["determinism cost"]
    scrapes = int(rows["/metrics vs NVML"].split("answered ")[1].split()[0])
    assert scrapes >= 1  # /metrics was scraped while the evaluator ran
    assert not any(r.rstrip().endswith(("FAILED", "MISS")) for name, r in rows.items() if name != "ceiling-no_such_model")
