"""The image install steps: the operator target installs without torch and still renders Jobs; the dev setup's
per-checkout layer."""

import shutil
import subprocess

from helpers import ROOT


def test_operator_image_install_has_no_torch(tmp_path):
    venv = tmp_path / "operator-venv"
    proc = subprocess.run(
        ["bash", str(ROOT / "hack" / "image-install.sh"), "operator", str(venv)], capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert subprocess.run([venv / "bin" / "python", "-c", "import torch"], capture_output=True).returncode != 0
    render = subprocess.run(
        [venv / "bin" / "abtest", "render", str(ROOT / "examples" / "abtest-digits.yaml")], capture_output=True, text=True
    )
    assert render.returncode == 0 and render.stdout.count("kind: Job") == 3, render.stderr
    evaluate = subprocess.run(
        [venv / "bin" / "abtest", "evaluate", "--model", "timm/resnet18", "--dataset", "digits", "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
    )
    assert evaluate.returncode == 2 and "needs the data plane" in evaluate.stderr and "Traceback" not in evaluate.stderr


def test_repository_root_does_not_shadow_the_standard_library(tmp_path):
    """`python -m …` from the root puts the root on sys.path; `operator/` must not be importable as `operator`."""
    import sys

    probe = subprocess.run(
        [sys.executable, "-c", "import operator; operator.eq; print(operator.__file__)"], cwd=ROOT, capture_output=True, text=True
    )
    assert probe.returncode == 0 and str(ROOT) not in probe.stdout, probe.stderr
    venv = subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "v")], cwd=ROOT, capture_output=True, text=True)
    assert venv.returncode == 0, venv.stderr


def test_two_clones_set_up_at_once_each_run_their_own_sources(tmp_path):
    """hack/setup.sh shares the dependencies but gives each checkout its own editable layer: a clone set up after
    another must not redirect the first one's `abtest` (or `python -m pytest`) to its sources."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True)
    clones = [tmp_path / "a", tmp_path / "b"]
    for clone in clones:
        for name in files.stdout.split():
            if (ROOT / name).is_file():
                (clone / name).parent.mkdir(parents=True, exist_ok=True)
                (clone / name).write_bytes((ROOT / name).read_bytes())
    setups = [subprocess.Popen(["bash", "-c", "source hack/setup.sh && echo $ABTEST_VENV"], cwd=c, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True) for c in clones]  # fmt: skip
    venvs = []
    for setup in setups:
        out, err = setup.communicate(timeout=600)
        assert setup.returncode == 0, err
        venvs.append(out.split()[-1])
    assert venvs[0] != venvs[1]
    try:
        check_each_runs_its_own(clones, venvs)
    finally:  # the layers are keyed by checkout path: these temporary clones' would only accumulate
        for venv in venvs:
            shutil.rmtree(venv, ignore_errors=True)


def check_each_runs_its_own(clones, venvs):
    for clone, venv in zip(clones, venvs):
        source = subprocess.run([f"{venv}/bin/python", "-c", "import abtest_evaluator, torch; print(abtest_evaluator.__file__)"],
                                capture_output=True, text=True, timeout=120)  # fmt: skip
        assert source.returncode == 0 and source.stdout.startswith(str(clone.resolve())), source.stdout + source.stderr
        assert subprocess.run([f"{venv}/bin/abtest", "--help"], capture_output=True, timeout=120).returncode == 0
