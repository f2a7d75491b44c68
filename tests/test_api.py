"""The API layer and the boundary between the planes: the import graph, the evaluate contract, status.result."""

from __future__ import annotations

import ast
import dataclasses
import re
import subprocess
import sys

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from abtest_api import constants, crd, evaluate
from abtest_api.errors import UserError
from abtest_api.result import check_status_result, status_result
from abtest_operator import manifests, plan
from abtest_operator.metrics import OperatorMetrics
from abtest_operator.settings import OperatorConfig
from abtest_operator.spec import load_manifest, parse_abtest
from helpers import ROOT, abtest_cli, result_json

PACKAGES = {
    "abtest_api": ROOT / "crds" / "abtest_api",
    "abtest_operator": ROOT / "operator" / "abtest_operator",
    "abtest_evaluator": ROOT / "evaluator" / "abtest_evaluator",
}


def imports(package: str) -> dict[str, set[str]]:
    """Module file -> the top-level packages it imports (anywhere in the file, lazy imports included)."""
    out = {}
    for path in sorted(PACKAGES[package].rglob("*.py")):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.add(node.module.split(".")[0])
        out[path.relative_to(PACKAGES[package]).as_posix()] = found
    return out


def test_the_evaluator_never_imports_the_operator():
    offenders = {name: mods for name, mods in imports("abtest_evaluator").items() if "abtest_operator" in mods}
    assert not offenders, (
        f"data-plane modules import the control plane: {offenders}; move what they share into abtest_api (crds/abtest_api/)"
    )


def test_the_analysis_is_torch_free_and_reads_only_the_results_files():
    """The analysis needs no torch (docs/architecture.md): the analysis subpackage imports nothing of the evaluating
    side but the results files, and loading it loads no torch."""
    evaluating = {"barrier", "datasets", "evaluate", "kernels", "loader", "models", "resolve", "runner", "telemetry", "train"}
    for name, path in ((n, p) for n, p in _evaluator_modules() if n.startswith("analysis/")):
        tree = ast.parse(path.read_text())
        names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        names |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        names |= {
            f"{node.module}.{alias.name}"
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module == "abtest_evaluator"
            for alias in node.names
        }
        bad = {n for n in names if n.split(".")[0] == "torch" or n.removeprefix("abtest_evaluator.").split(".")[0] in evaluating}
        assert not bad, f"{name} imports {sorted(bad)}; the analysis reads abtest_evaluator.results only"
    code = (
        "import sys, abtest_evaluator.analysis, abtest_evaluator.analysis.publish; "
        "print(*[m for m in ('torch', 'abtest_operator') if m in sys.modules]); sys.exit('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, f"importing the analysis loaded {out.stdout.strip()} {out.stderr}"


def _evaluator_modules():
    root = PACKAGES["abtest_evaluator"]
    return [(p.relative_to(root).as_posix(), p) for p in sorted(root.rglob("*.py"))]


def test_only_the_cli_and_the_local_runner_import_both_planes():
    importers = {name for name, mods in imports("abtest_operator").items() if "abtest_evaluator" in mods}
    assert importers == {"cli.py", "local.py"}


def test_the_api_layer_imports_neither_plane_nor_heavy_frameworks():
    for name, mods in imports("abtest_api").items():
        assert not mods & {"abtest_operator", "abtest_evaluator", "torch", "kopf", "kubernetes", "numpy"}, name
    code = (
        "import sys, abtest_api.constants, abtest_api.crd, abtest_api.errors, abtest_api.evaluate, abtest_api.result; "
        "loaded = [m for m in ('torch', 'kopf', 'kubernetes', 'abtest_operator', 'abtest_evaluator') if m in sys.modules]; "
        "print(*loaded); sys.exit(bool(loaded))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, f"importing abtest_api loaded {out.stdout.strip()} {out.stderr}"


def test_constants_match_the_crd():
    doc = crd.load_crd()
    names = doc["spec"]["names"]
    assert (doc["spec"]["group"], names["kind"], names["plural"]) == (constants.GROUP, constants.KIND, constants.PLURAL)
    assert constants.VERSION in [v["name"] for v in doc["spec"]["versions"]]
    assert tuple(crd.openapi_schema()["properties"]["status"]["properties"]["phase"]["enum"]) == constants.PHASES


configs = st.builds(
    evaluate.EvalConfig,
    model=st.sampled_from(["timm/resnet18", "torchvision/resnet18"]),
    dataset=st.sampled_from(["digits", "cifar10"]),
    out=st.text(st.characters(codec="ascii", exclude_characters="\x00"), min_size=1, max_size=20).filter(lambda s: not s.startswith("-")),
    limit=st.none() | st.integers(1, 10**9),
    pretrained=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
    batch_size=st.integers(1, 4096),
    amp=st.none() | st.booleans(),  # tri-states: --amp, --no-amp, or automatic
    channels_last=st.none() | st.booleans(),
    nondeterministic=st.booleans(),
    workers=st.none() | st.integers(0, 64),
    preprocess=st.sampled_from(["device", "host"]),
    device=st.sampled_from(["auto", "cpu", "cuda"]),
    crop_pct=st.none() | st.floats(0.01, 1.0),
    mean=st.none() | st.lists(st.floats(0, 1), min_size=1, max_size=3).map(tuple),
    interpolation=st.none() | st.sampled_from(["bilinear", "bicubic"]),
    metrics_port=st.none() | st.integers(1, 65535),
    name=st.sampled_from(["", "resnet", "vit-b"]),
    progress=st.sampled_from(["auto", "json", "none"]),
)


@settings(max_examples=200, deadline=None)
@given(configs)
def test_config_to_argv_and_back_is_the_same_config(cfg):
    assert evaluate.parse_argv(evaluate.to_argv(cfg)) == cfg


def test_the_cli_parser_is_the_contract():
    help_text = abtest_cli("evaluate", "--help").stdout
    for f in dataclasses.fields(evaluate.EvalConfig):
        assert evaluate.flag(f.name) in help_text, f.name
    out = abtest_cli("evaluate", "--model", "timm/x", "--dataset", "digits", "--out", "o", "--pretrained", "--checkpoint", "c.pth")
    assert out.returncode == 2 and "not allowed with argument" in out.stderr  # weights: one or the other


def test_every_spec_source_of_the_contract_is_a_crd_field():
    schema = crd.openapi_schema()["properties"]["spec"]
    model_schema = schema["properties"]["models"]["items"]
    for f in dataclasses.fields(evaluate.EvalConfig):
        source = f.metadata["spec"]
        if source:
            where, _, path = source.partition(":")
            node = schema if where == "spec" else model_schema
            for key in path.split("."):
                assert key in node.get("properties", {}), f"{f.name}: {source} is not in the CRD"
                node = node["properties"][key]


@pytest.mark.parametrize("name", ["abtest-digits.yaml", "abtest-digits-3way.yaml"])
def test_planned_argv_parses_back_to_the_planned_config(name):
    spec = parse_abtest(load_manifest(ROOT / "examples" / name))
    for run in manifests.model_runs(spec, OperatorConfig()):
        assert run.argv[0] == "evaluate" and evaluate.parse_argv(list(run.argv[1:])) == run.config
    runs = plan.plan_models(spec, "/r", device="cpu", threads=1)
    assert all(r.config.device == "cpu" and r.config.threads == 1 and r.config.seed == 42 for r in runs)


def test_status_result_fits_the_crd_schema():
    projected = status_result(result_json())
    assert check_status_result(projected) is projected
    assert projected["pValue"] == "0.01" and projected["winner"] == "a"


@pytest.mark.parametrize(
    "broken, field",
    [
        (lambda r: r["comparisons"][0].update(pValue=1.5), "comparisons[0].pValue"),
        (lambda r: r["comparisons"][0].update(b="x" * 41), "comparisons[0].b"),
        (lambda r: r.update(winner="w" * 41), "winner"),
        (lambda r: r["models"].update({f"m{i}": {"accuracy": 0.5} for i in range(16)}), "models"),
        (lambda r: r.pop("verdict"), "<root>"),
    ],
)
def test_a_result_outside_the_schema_is_refused_naming_the_field(broken, field):
    projected = status_result(result_json())
    broken(projected)
    with pytest.raises(UserError, match=rf"status.result is invalid: {field.replace('[', '.').replace(']', '.')}"):
        check_status_result(projected)


def test_the_operator_exports_only_valid_results():
    metrics = OperatorMetrics()
    bad = status_result(result_json())
    bad["comparisons"][0]["a"] = "label-bomb-" * 10
    metrics.observe("ns", "t", {"phase": "Succeeded", "result": bad})
    exported = {s.labels.get("a") for m in metrics.registry.collect() for s in m.samples if s.name == "abtest_result_p_value"}
    assert not exported and metrics.phase_info.labels("t", "ns", "Succeeded")._value.get() == 1
    metrics.observe("ns", "t", {"phase": "Succeeded", "result": status_result(result_json())})
    assert metrics.p_value.labels("t", "ns", "a", "b")._value.get() == 0.01


def test_render_is_a_dry_run_that_loads_no_handlers():
    code = (
        "import sys, contextlib, io; from abtest_operator import cli; "
        f"out = io.StringIO(); ctx = contextlib.redirect_stdout(out); ctx.__enter__(); cli.main(['render', {str(ROOT / 'examples' / 'abtest-digits.yaml')!r}]); ctx.__exit__(None, None, None); "
        "assert 'kind: Job' in out.getvalue(); print(*[m for m in ('kopf', 'abtest_operator.handlers', 'torch') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"abtest render imported {out.stdout.strip()}"


def test_unset_tri_states_stay_automatic_and_off_is_spelled_out():
    cfg = evaluate.EvalConfig(model="timm/x", dataset="digits", out="o", amp=False, channels_last=True)
    argv = evaluate.to_argv(cfg)
    assert "--no-amp" in argv and "--channels-last" in argv  # off must reach the pod: unset means on for GPU
    assert not {"--amp", "--no-amp"} & set(evaluate.to_argv(dataclasses.replace(cfg, amp=None)))
    assert evaluate.parse_argv(["--model", "m", "--dataset", "digits", "--out", "o"]).amp is None


def test_the_analysis_jobs_argv_parses_back_to_the_planned_analysis_config():
    from abtest_api import analyze

    manifest = yaml.safe_load((ROOT / "examples" / "abtest-digits-sequential.yaml").read_text())
    spec = parse_abtest(manifest | {"metadata": {**manifest["metadata"], "uid": "u-1"}})
    argv = plan.plan_analysis(spec, "/results/x", publish=True)
    config = analyze.parse_argv(list(argv[1:]))
    assert argv[0] == "analyze" and config == plan.analysis_config(spec, "/results/x", publish=True)
    assert config.looks == spec.looks and config.abtest_uid == "u-1" and config.models == tuple(m.name for m in spec.models)


@pytest.mark.parametrize(
    ("values", "spelled_cli", "spelled_spec"),
    [
        ({"hypothesis": "equivalence"}, "--margin", "spec.analysis.margin"),
        ({"margin": 0.01}, "--margin", "spec.analysis.margin"),
        ({"hypothesis": "noninferiority", "margin": 0.01, "looks": 3}, "--looks", "spec.analysis.sequential"),
    ],
)
def test_the_analysis_rules_are_one_check_spelled_as_each_caller_spells_its_fields(values, spelled_cli, spelled_spec):
    from abtest_api import analyze

    config = analyze.AnalysisConfig(dir="r", **values)
    with pytest.raises(UserError, match=f"^{re.escape(spelled_cli)} "):
        config.check()
    with pytest.raises(UserError, match=f"^{re.escape(spelled_spec)} "):
        config.check(analyze.spec_field)
