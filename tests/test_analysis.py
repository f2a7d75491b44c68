"""`abtest analyze` and `abtest run`: verdicts checked against an independent computation, and every refusal."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from statsmodels.stats.contingency_tables import cochrans_q, mcnemar
from statsmodels.stats.multitest import multipletests

from abtest_api.errors import UserError
from abtest_api.result import check_status_result, status_result
from abtest_evaluator import barrier, results
from abtest_evaluator.analysis import analyze, report, run_analysis
from helpers import ROOT, abtest_cli, local_manifest, read_json, result_json


def independent(root: Path, names: list[str], alpha=0.05):
    """Straight from the parquet files with statsmodels: what the analysis must reproduce."""
    correct = {
        n: (lambda t: t.column("pred").to_numpy() == t.column("label").to_numpy())(pq.read_table(root / n / "predictions.parquet"))
        for n in names
    }
    pairs, pvals = [], []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            n10 = int((correct[a] & ~correct[b]).sum())
            n01 = int((~correct[a] & correct[b]).sum())
            exact = n10 + n01 < 25
            table = [[int((correct[a] & correct[b]).sum()), n10], [n01, int((~correct[a] & ~correct[b]).sum())]]
            pvals.append(mcnemar(table, exact=exact, correction=True).pvalue)
            pairs.append((a, b, n01, n10, (n10 - n01) / len(correct[a])))
    adjusted = multipletests(pvals, alpha=alpha, method="holm")[1] if len(pvals) > 1 else pvals
    return correct, pairs, pvals, list(adjusted)


def copy_results(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("result.json", "report.html"))
    return dst


def test_analyze_cli_matches_statsmodels(evaluated, tmp_path):
    root = copy_results(evaluated, tmp_path / "r")
    proc = abtest_cli("analyze", root, "--alpha", "0.05")
    assert proc.returncode == 0, proc.stderr
    result = read_json(root / "result.json")
    _, pairs, pvals, _ = independent(root, ["resnet", "vit"])
    ((a, b, n01, n10, diff),) = pairs
    (comp,) = result["comparisons"]
    assert (comp["a"], comp["b"], comp["n01"], comp["n10"]) == (a, b, n01, n10)
    assert comp["p_value"] == pytest.approx(pvals[0], rel=1e-9) and comp["p_value_adjusted"] == comp["p_value"]
    assert comp["accuracy_diff"] == pytest.approx(diff) and comp["ci"][0] <= diff <= comp["ci"][1] and comp["ci_level"] == 0.95
    assert result["winner"] == ("resnet" if pvals[0] < 0.05 and diff > 0 else "vit" if pvals[0] < 0.05 else None)
    assert result["omnibus"] is None and result["fingerprint"] == read_json(root / "resnet" / "metrics.json")["fingerprint"]
    assert result["models"]["resnet"]["n"] == 360
    assert result["verdict"] in proc.stdout and "resnet" in proc.stdout.splitlines()[1]
    html = (root / "report.html").read_text()
    assert (
        html.count("<svg ") >= 4 and "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "") and result["verdict"] in html
    )


def test_the_report_of_the_cli_is_the_page_of_its_result(evaluated, tmp_path):
    root = copy_results(evaluated, tmp_path / "r")
    proc = abtest_cli("analyze", root)  # the predictions load in a thread while the libraries import
    assert proc.returncode == 0, proc.stderr
    metrics = {name: read_json(root / name / "metrics.json") for name in ("resnet", "vit")}
    assert (root / "report.html").read_text() == report.render(read_json(root / "result.json"), metrics)


def test_swapped_folders_give_the_same_p(evaluated, tmp_path):
    root = copy_results(evaluated, tmp_path / "r")
    for name, new in (("resnet", "zz-resnet"),):
        (root / name).rename(root / new)  # folder order changes A and B; model names stay
    result = analyze(root)
    ref = analyze(copy_results(evaluated, tmp_path / "ref"))
    (c,), (r,) = result["comparisons"], ref["comparisons"]
    assert (c["a"], c["b"]) == (r["b"], r["a"])
    assert c["p_value"] == pytest.approx(r["p_value"]) and c["accuracy_diff"] == pytest.approx(-r["accuracy_diff"])


def _tamper_parquet(path: Path, change) -> None:
    table = pq.read_table(path)
    pq.write_table(change(table), path)


def _set_column(name, values_fn):
    def change(table):
        i = table.schema.get_field_index(name)
        return table.set_column(i, table.schema.field(name), values_fn(table.column(name)))

    return change


def _rehash(model_dir: Path) -> None:
    metrics = read_json(model_dir / "metrics.json")
    metrics["predictions_sha256"]["predictions.parquet"] = results.sha256_file(model_dir / "predictions.parquet")
    (model_dir / "metrics.json").write_text(json.dumps(metrics))


REFUSALS = {
    "sha256 mismatch": (lambda root: _tamper_parquet(root / "vit" / "predictions.parquet", lambda t: t), "does not match the sha256"),
    "different fingerprint": (
        lambda root: (root / "vit" / "metrics.json").write_text(
            json.dumps({**read_json(root / "vit" / "metrics.json"), "fingerprint": "0" * 64})
        ),
        "different samples or orders",
    ),
    "different count": (
        lambda root: (
            _tamper_parquet(root / "vit" / "predictions.parquet", lambda t: t.slice(0, 300)),
            (root / "vit" / "metrics.json").write_text(json.dumps({**read_json(root / "vit" / "metrics.json"), "n": 300})),
            _rehash(root / "vit"),
        ),
        "different numbers of samples",
    ),
    "different labels": (
        lambda root: (
            _tamper_parquet(root / "vit" / "predictions.parquet", _set_column("label", lambda c: pa.array((c.to_numpy() + 1) % 10))),
            _rehash(root / "vit"),
        ),
        "labels differ between resnet and vit",
    ),
    "different order": (
        lambda root: (
            _tamper_parquet(root / "vit" / "predictions.parquet", _set_column("index", lambda c: pa.array(c.to_numpy()[::-1].copy()))),
            _rehash(root / "vit"),
        ),
        "index is not 0..359 in order",
    ),
    "NaN confidence": (
        lambda root: (
            _tamper_parquet(
                root / "vit" / "predictions.parquet", _set_column("confidence", lambda c: pa.array(np.full(len(c), np.nan, np.float32)))
            ),
            _rehash(root / "vit"),
        ),
        "NaN confidences",
    ),
    "missing values": (
        lambda root: (
            _tamper_parquet(
                root / "vit" / "predictions.parquet", _set_column("pred", lambda c: pa.array([None] + c.to_pylist()[1:], pa.int64()))
            ),
            _rehash(root / "vit"),
        ),
        "has 1 missing values",
    ),
    "missing metrics": (lambda root: (root / "vit" / "metrics.json").unlink(), "metrics.json is missing"),
    "one model": (lambda root: shutil.rmtree(root / "vit"), "needs at least 2 evaluated models"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refusals_write_nothing(evaluated, tmp_path, case):
    root = copy_results(evaluated, tmp_path / "r")
    tamper, message = REFUSALS[case]
    tamper(root)
    proc = abtest_cli("analyze", root)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (root / "result.json").exists() and not (root / "report.html").exists()


def test_models_flag_sets_a_and_b(evaluated, tmp_path):
    root = copy_results(evaluated, tmp_path / "r")
    proc = abtest_cli("analyze", root, "--models", "vit,resnet")
    assert proc.returncode == 0, proc.stderr
    (c,) = read_json(root / "result.json")["comparisons"]
    assert (c["a"], c["b"]) == ("vit", "resnet")
    proc = abtest_cli("analyze", root, "--models", "vit,convnext")
    assert proc.returncode == 2 and "no folder for model(s) convnext" in proc.stderr


def test_sharded_predictions_are_merged_in_index_order(evaluated, tmp_path):
    root = copy_results(evaluated, tmp_path / "r")
    table = pq.read_table(root / "vit" / "predictions.parquet")
    (root / "vit" / "predictions.parquet").unlink()
    shas = {}
    for i, (lo, hi) in enumerate(((240, 360), (0, 120), (120, 240))):  # written out of order
        name = f"predictions-{i:05d}-of-00003.parquet"
        pq.write_table(table.slice(lo, hi - lo), root / "vit" / name)
        shas[name] = results.sha256_file(root / "vit" / name)
    metrics = read_json(root / "vit" / "metrics.json")
    metrics["predictions_sha256"] = shas
    (root / "vit" / "metrics.json").write_text(json.dumps(metrics))
    merged = results.read_predictions(root / "vit")
    assert merged.column("index").to_pylist() == list(range(360))
    assert analyze(root)["comparisons"][0]["p_value"] == analyze(copy_results(evaluated, tmp_path / "ref"))["comparisons"][0]["p_value"]
    (root / "vit" / "predictions-00001-of-00003.parquet").unlink()
    with pytest.raises(UserError, match=r"shards \[0, 2\] of 3"):
        analyze(root)


def test_warnings_for_devices_and_random_weights(evaluated, tmp_path):
    root = copy_results(evaluated, tmp_path / "r")
    metrics = read_json(root / "vit" / "metrics.json")
    metrics["device"]["type"], metrics["weights"] = "cuda", "random"
    (root / "vit" / "metrics.json").write_text(json.dumps(metrics))
    warnings = analyze(root)["warnings"]
    assert any("different device types" in w for w in warnings)
    assert any("vit has random weights" in w for w in warnings)


def test_power_warning_when_too_few_samples(evaluated, tmp_path):
    """The first 40 samples alone cannot settle a small difference: the analysis says so."""
    root = tmp_path / "r"
    for name in ("resnet", "vit"):
        (root / name).mkdir(parents=True)
        table = pq.read_table(evaluated / name / "predictions.parquet").slice(0, 40)
        pq.write_table(table, root / name / "predictions.parquet")
        metrics = read_json(evaluated / name / "metrics.json")
        metrics.update(
            n=40, fingerprint="same", predictions_sha256={"predictions.parquet": results.sha256_file(root / name / "predictions.parquet")}
        )
        (root / name / "metrics.json").write_text(json.dumps(metrics))
    result = run_analysis(root)
    (c,) = result["comparisons"]
    assert c["n10"] + c["n01"] < 10 and not c["significant"]  # a handful of discordant pairs settles nothing
    assert any("detectable at 80% power" in w or "cannot reach 80% power" in w for w in result["warnings"])
    assert result["winner"] is None and result["verdict"].startswith("Not distinguishable")


# --- abtest run: the whole local experiment ----------------------------------------------------


def _manifest(tmp_path: Path, trained_models, models: list[tuple[str, str]], name="local") -> Path:
    entries = [{"name": n, "architecture": a, "checkpoint": str(trained_models[a])} for n, a in models]
    return local_manifest(tmp_path / f"{name}.yaml", name, entries)


def test_run_two_models_end_to_end(tmp_path, trained_models):
    manifest = _manifest(tmp_path, trained_models, [("resnet", "timm/resnet10t"), ("vit", "timm/test_vit")])
    proc = abtest_cli("run", manifest, "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out"
    result = read_json(out / "result.json")
    _, pairs, pvals, _ = independent(out, ["resnet", "vit"])
    assert result["comparisons"][0]["p_value"] == pytest.approx(pvals[0], rel=1e-9)
    expected_winner = None if pvals[0] >= 0.05 else ("resnet" if pairs[0][4] > 0 else "vit")
    assert result["winner"] == expected_winner
    assert result["verdict"] in proc.stdout and "accuracy" in proc.stdout
    m = {n: read_json(out / n / "metrics.json") for n in ("resnet", "vit")}
    assert m["resnet"]["seed"] == m["vit"]["seed"] == 42 and m["resnet"]["fingerprint"] == m["vit"]["fingerprint"]
    # in parallel: the two evaluations overlapped in time
    assert max(x["started_at"] for x in m.values()) < min(x["finished_at"] for x in m.values())
    together = result["concurrency"]  # the start barrier: the timed loops started together
    assert together["concurrent"] and together["barrier"] and [w["model"] for w in together["windows"]] == ["resnet", "vit"]
    assert not list(tmp_path.glob(".out.staging-*"))


def test_run_with_fewer_gpus_than_models_queues_them_one_per_gpu(tmp_path, trained_models, capsys):
    """Two models, one GPU (the count injected; the children run on the CPU here): never two at once on a device."""
    from abtest_operator.local import run_local

    manifest = _manifest(tmp_path, trained_models, [("resnet", "timm/resnet10t"), ("vit", "timm/test_vit")], name="queued")
    result, out = run_local(str(manifest), str(tmp_path / "out"), show_progress=False, gpus=1)
    first, second = sorted((read_json(out / n / "metrics.json") for n in ("resnet", "vit")), key=lambda m: m["started_at"])
    assert first["finished_at"] <= second["started_at"]  # one after the other
    assert "2 models on 1 GPU(s): 1 at a time, one per GPU, the others queued" in capsys.readouterr().err
    assert result["n"] == 360
    assert result["concurrency"]["concurrent"] is False and result["concurrency"]["overlap"] == 0
    assert any(w.startswith("the models' timed loops did not run together") for w in result["warnings"])


def test_run_three_models_uses_cochran_and_holm(tmp_path, trained_models):
    names = [("resnet", "timm/resnet10t"), ("vit", "timm/test_vit"), ("shufflenet", "torchvision/shufflenet_v2_x0_5")]
    manifest = _manifest(tmp_path, trained_models, names, name="three")
    proc = abtest_cli("run", manifest, "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out"
    result = read_json(out / "result.json")
    order = [n for n, _ in names]  # A, B, C as the manifest lists them
    correct, pairs, pvals, adjusted = independent(out, order)
    by_pair = {(c["a"], c["b"]): c for c in result["comparisons"]}
    for (a, b, n01, n10, _diff), p, p_adj in zip(pairs, pvals, adjusted):
        c = by_pair[(a, b)]
        assert (c["n01"], c["n10"]) == (n01, n10)
        assert c["p_value"] == pytest.approx(p, rel=1e-9) and c["p_value_adjusted"] == pytest.approx(p_adj, rel=1e-9)
    q = cochrans_q(np.column_stack([correct[n] for n in order]).astype(int))
    assert result["omnibus"]["statistic"] == pytest.approx(q.statistic) and result["omnibus"]["p_value"] == pytest.approx(
        max(q.pvalue, 1e-300)
    )

    def pair(x, y):
        return by_pair.get((x, y)) or by_pair[(y, x)]

    winners = [
        n
        for n in order
        if all(
            pair(n, o)["significant"]
            and (read_json(out / n / "metrics.json")["accuracy"] > read_json(out / o / "metrics.json")["accuracy"])
            for o in order
            if o != n
        )
    ]
    assert result["winner"] == (winners[0] if winners else None)
    assert "Cochran's Q" in proc.stdout and "Holm" in proc.stdout


def test_run_rejects_an_invalid_manifest(tmp_path, trained_models):
    manifest = _manifest(tmp_path, trained_models, [("same", "timm/resnet10t"), ("same", "timm/test_vit")])
    proc = abtest_cli("run", manifest, "--out", tmp_path / "out")
    assert proc.returncode == 2 and "spec.models: model names must be unique" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_run_failure_names_the_model_and_leaves_nothing(tmp_path, trained_models):
    manifest = _manifest(tmp_path, trained_models, [("resnet", "timm/resnet10t"), ("vit", "timm/test_vit")])
    doc = yaml.safe_load(manifest.read_text())
    doc["spec"]["models"][1]["checkpoint"] = str(trained_models["timm/resnet10t"])  # wrong architecture
    manifest.write_text(yaml.safe_dump(doc))
    proc = abtest_cli("run", manifest, "--out", tmp_path / "out")
    assert proc.returncode == 2 and "model vit failed" in proc.stderr and "does not fit timm/test_vit" in proc.stderr
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.staging-*"))


def test_ctrl_c_stops_every_child_and_leaves_no_results(tmp_path, trained_models):
    """Ctrl-C while the run is under way, at a point that does not depend on this machine's speed: vit's evaluator is
    stopped (SIGSTOP) as soon as it starts, so resnet, prepared, waits for it at the start barrier; vit then ignores
    the run's SIGTERM too, and must be killed."""
    manifest = _manifest(tmp_path, trained_models, [("resnet", "timm/resnet10t"), ("vit", "timm/test_vit")])
    log = tmp_path / "run.log"  # a file, not a pipe: nobody reads a pipe while the run waits, and a full one blocks it
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "abtest_operator.cli", "run", str(manifest), "--out", str(tmp_path / "out")],
            stdout=out,
            stderr=subprocess.STDOUT,
            # Ctrl-C's default action even when the suite was started in the background, where a shell without job
            # control leaves SIGINT ignored (and a Python started so raises no KeyboardInterrupt)
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )

    def evaluator(model: str) -> int | None:
        found = subprocess.run(["pgrep", "-f", "--", f"--out {tmp_path}/.out.staging-[0-9]+/{model}( |$)"], capture_output=True, text=True)
        return int(found.stdout.split()[0]) if found.stdout.strip() else None

    deadline = time.time() + 120
    while time.time() < deadline and evaluator("vit") is None and proc.poll() is None:
        time.sleep(0.02)
    vit = evaluator("vit")
    assert vit, f"vit's evaluator never started: {proc.poll()=}"
    os.kill(vit, signal.SIGSTOP)
    try:
        waiting = f".out.staging-*/{barrier.FOLDER}/{barrier.marker_name('resnet')}"
        while time.time() < deadline and not list(tmp_path.glob(waiting)) and proc.poll() is None:
            time.sleep(0.1)
        assert list(tmp_path.glob(waiting)), f"resnet never reached the start barrier: {proc.poll()=}"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130, log.read_text()[-2000:]
        time.sleep(0.5)
        assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.staging-*"))
        leftover = subprocess.run(["pgrep", "-f", "--", f"--out {tmp_path}/.out.staging"], capture_output=True, text=True)
        assert leftover.returncode == 1 and leftover.stdout.strip() == "", leftover  # 1: no process matched
    finally:  # a failed check leaves nothing stopped behind
        subprocess.run(["pkill", "-KILL", "-f", "--", f"--out {tmp_path}/"], check=False)


def test_examples_validate():
    from abtest_operator.spec import load_manifest, parse_abtest

    two = parse_abtest(load_manifest(ROOT / "examples" / "abtest-digits.yaml"))
    three = parse_abtest(load_manifest(ROOT / "examples" / "abtest-digits-3way.yaml"))
    assert len(two.models) == 2 and len(three.models) == 3 and two.alpha == 0.05
    noninferior = parse_abtest(load_manifest(ROOT / "examples" / "abtest-digits-noninferior.yaml"))
    assert (noninferior.hypothesis, noninferior.margin) == ("noninferiority", 0.1)
    sequential = parse_abtest(load_manifest(ROOT / "examples" / "abtest-digits-sequential.yaml"))
    assert (sequential.looks, sequential.spending) == (5, "obrienFleming")
    exported = parse_abtest(load_manifest(ROOT / "examples" / "abtest-digits-export.yaml"))
    assert [(m.architecture, m.settings.get("precision")) for m in exported.models] == [
        ("timm/resnet10t", None), ("onnx", None), ("timm/resnet10t", "int8-dynamic")
    ]  # fmt: skip
    assert (exported.hypothesis, exported.margin, exported.device) == ("noninferiority", 0.02, "cpu")


def test_run_the_export_example_locally(tmp_path, trained_models, exported_models):
    """examples/abtest-digits-export.yaml with `abtest run`: the ONNX export and the int8 variant against the .pth;
    the table, result.json, status and report say what each model ran as, and why a field is not measured."""
    manifest = yaml.safe_load((ROOT / "examples" / "abtest-digits-export.yaml").read_text())
    files = {"pytorch": trained_models["timm/resnet10t"], "onnx": exported_models["onnx"], "int8": trained_models["timm/resnet10t"]}
    for model in manifest["spec"]["models"]:
        model["checkpoint"] = str(files[model["name"]])
    (tmp_path / "export.yaml").write_text(yaml.safe_dump(manifest))
    proc = abtest_cli("run", tmp_path / "export.yaml", "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    result = read_json(tmp_path / "out" / "result.json")
    header, *rows = proc.stdout.splitlines()[:4]
    assert header.split()[-2:] == ["runs", "as"] and [r.split()[-1] for r in rows] == ["fp32", "onnx", "int8-dynamic"]
    assert result["models"]["onnx"]["runtime"].startswith("onnx: onnxruntime ") and result["models"]["int8"]["precision"] == "int8-dynamic"
    assert [m["runsAs"] for m in status_result(result)["models"].values()] == ["fp32", "onnx", "int8-dynamic"]
    correct = [(lambda t: t.column("pred").to_numpy() == t.column("label").to_numpy())(pq.read_table(tmp_path / "out" / m / "predictions.parquet"))
               for m in ("pytorch", "onnx", "int8")]  # fmt: skip
    disagreeing = int((np.column_stack(correct).min(axis=1) != np.column_stack(correct).max(axis=1)).sum())
    assert result["omnibus"]["disagreeing_samples"] == disagreeing
    assert [c["decision"] for c in result["comparisons"]] == [
        "noninferior" if c["ci"][1] < 0.02 else "inconclusive" for c in result["comparisons"]
    ]
    page = (tmp_path / "out" / "report.html").read_text()
    assert "<th>runtime</th>" in page and "onnxruntime" in page and "int8-dynamic" in page


def test_readme_quickstart_output_is_what_a_fresh_run_prints(tmp_path):
    """hack/quickstart.sh's two steps in a fresh folder: train the example checkpoints, run the example. The README's
    sample must match in everything deterministic (accuracies, counts, interval, p-value, verdict); speed varies."""
    manifest = tmp_path / "abtest-digits.yaml"
    shutil.copy(ROOT / "examples" / "abtest-digits.yaml", manifest)
    trained = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "train_digits.py"), str(manifest)], capture_output=True, text=True, timeout=600
    )
    assert trained.returncode == 0, trained.stderr
    assert trained.stdout.count("trained ") == 2 and (tmp_path / "checkpoints" / "resnet10t-digits.pth").is_file()
    run = abtest_cli("run", manifest, "--out", tmp_path / "out", timeout=600)
    assert run.returncode == 0, run.stderr
    readme = (ROOT / "README.md").read_text()
    sample = readme.split("It prints:\n\n```\n", 1)[1].split("```", 1)[0].splitlines()
    printed = run.stdout.splitlines()

    def deterministic(lines):
        table = [line.split()[:2] for line in lines if line.split()[:1] in (["resnet"], ["vit"]) and "%" in line]
        rest = [line.split(" but ")[0] for line in lines if " vs " in line or "better" in line or line.startswith("note:")]
        return table, rest

    assert deterministic(printed) == deterministic(sample), f"README sample differs from a fresh run:\n{run.stdout}"


def test_publish_writes_only_to_the_abtest_it_analysed():
    from kubernetes.client.exceptions import ApiException

    from abtest_api.result import status_result
    from abtest_evaluator.analysis.publish import publish_result

    class Api:
        """One ABTest whose UID and resourceVersion a test sets; a patch on a stale resourceVersion is a conflict."""

        def __init__(self, uid):
            self.meta, self.patches = {"uid": uid, "resourceVersion": "1"}, []

        def get_namespaced_custom_object_status(self, group, version, namespace, plural, name):
            return {"metadata": dict(self.meta)}

        def patch_namespaced_custom_object_status(self, group, version, namespace, plural, name, body):
            self.patches.append(body)
            if body["metadata"]["resourceVersion"] != self.meta["resourceVersion"]:
                raise ApiException(status=409, reason="Conflict")

    recreated = Api("new")
    with pytest.raises(UserError, match="no longer the one analysed .*deleted and re-created"):
        publish_result("ns/t", status_result(result_json()), api=recreated, uid="old", sleep=lambda s: None)
    assert recreated.patches == []  # nothing written to the namesake

    same = Api("old")
    publish_result("ns/t", status_result(result_json()), api=same, uid="old")
    assert same.patches[0]["metadata"] == {"resourceVersion": "1"} and same.patches[0]["status"]["result"]["winner"] == "a"

    racing = Api("old")  # re-created between the read and the patch: the patch conflicts, the next read refuses
    original_patch = racing.patch_namespaced_custom_object_status

    def patch_after_recreation(*args):
        racing.meta = {"uid": "new", "resourceVersion": "2"}
        return original_patch(*args)

    racing.patch_namespaced_custom_object_status = patch_after_recreation
    with pytest.raises(UserError, match="no longer the one analysed"):
        publish_result("ns/t", status_result(result_json()), api=racing, uid="old", sleep=lambda s: None)


def test_different_images_or_versions_are_warned_about():
    from abtest_evaluator.analysis.verdict import collect_warnings
    from abtest_evaluator.results import ModelData

    def model(name, image, torch):
        return ModelData(name, {"image": image, "versions": {"torch": torch}, "device": {"type": "cpu", "name": "x"}}, None, None, None)

    same = collect_warnings([model("a", "e:1", "2.9"), model("b", "e:1", "2.9")])
    assert not same
    warned = collect_warnings([model("a", "e:1", "2.9"), model("b", "e:2", "2.10")])
    assert any("different evaluator images (a: e:1, b: e:2)" in w for w in warned)
    assert any("different library versions" in w for w in warned)


# --- hypotheses, verdict wording, notes (issue "Statistics that answer the questions users ask") -------------


def synthetic(name: str, correct: np.ndarray, labels: np.ndarray, batch_ms: float = 10.0, seed: int = 0):
    """A ModelData as load_models returns it, for verdict and note tests that need exact counts."""
    from abtest_evaluator.results import ModelData

    batches = np.random.default_rng(seed).normal(batch_ms, batch_ms / 50, 200).tolist()
    metrics = {
        "device": {"type": "cpu", "name": "x"},
        "image": "e:1",
        "versions": {},
        "weights": "checkpoint",
        "throughput": 100.0,
        "ece": 0.01,
        "latency": {"batch_ms": {"p50": batch_ms, "p95": batch_ms}, "batches_ms": batches},
        "dataset": {"classes": [f"c{k}" for k in range(10)]},
    }
    return ModelData(name, metrics, labels, correct, np.full(len(correct), 0.9))


def outcomes(n: int, acc: float, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random(n) < acc


def test_several_models_beating_the_rest_but_not_each_other_are_named():
    """C and D both beat A (p ~ 1e-50) but not each other: not "not distinguishable"."""
    from abtest_evaluator.analysis import compare_models

    n, labels = 4000, np.arange(4000) % 10
    a, c = outcomes(n, 0.60, 1), outcomes(n, 0.90, 2)
    d = c.copy()
    d[:3] = ~d[:3]  # D differs from C on three samples only
    result = compare_models([synthetic("A", a, labels), synthetic("C", c, labels), synthetic("D", d, labels)], 0.05, "auto")
    assert result["winner"] is None
    assert result["verdict"].startswith("No single best model at 0.05: C beats A; D beats A")


def test_noninferiority_verdict_in_words_with_the_interval_at_one_minus_two_alpha():
    from abtest_evaluator.analysis import compare_models

    n, labels = 20000, np.arange(20000) % 10
    ref = outcomes(n, 0.90, 1)
    cand = ref.copy()
    cand[np.flatnonzero(ref)[:400]] = False  # 400 samples lost, 400 gained: the same accuracy
    cand[np.flatnonzero(~ref)[:400]] = True
    result = compare_models([synthetic("big", ref, labels), synthetic("small", cand, labels)], 0.05, "auto", "noninferiority", 0.01)
    (c,) = result["comparisons"]
    assert (
        c["ci_level"] == pytest.approx(0.90)
        and c["decision"] == "noninferior"
        and result["hypothesis"]
        == {
            "name": "noninferiority",
            "margin": 0.01,
        }
    )
    assert result["verdict"].startswith(f"small is non-inferior to big within 1 points (p = {c['margin_test']['p_value_adjusted_text']};")
    strict = compare_models([synthetic("big", ref, labels), synthetic("small", cand, labels)], 0.05, "auto", "equivalence", 0.001)
    assert strict["comparisons"][0]["decision"] == "inconclusive" and "is not shown equivalent to big" in strict["verdict"]
    status = status_result(result)
    assert status["hypothesis"] == "noninferiority" and status["comparisons"][0]["decision"] == "noninferior"
    assert check_status_result(status) is status


def test_a_margin_is_required_for_the_margin_hypotheses():
    from abtest_evaluator.analysis import compare_models

    models = [synthetic("a", outcomes(100, 0.9, 1), np.zeros(100, int)), synthetic("b", outcomes(100, 0.9, 2), np.zeros(100, int))]
    with pytest.raises(UserError, match=r"--margin .* is required for equivalence"):
        compare_models(models, 0.05, "auto", "equivalence", None)


def test_identical_predictions_get_no_advice_to_evaluate_more():
    from abtest_evaluator.analysis import compare_models

    same = outcomes(500, 0.8, 1)
    result = compare_models([synthetic("a", same, np.zeros(500, int)), synthetic("b", same.copy(), np.zeros(500, int))], 0.05, "auto")
    assert not any("evaluate more" in w for w in result["warnings"])
    assert any("right and wrong on exactly the same samples" in w for w in result["warnings"])


def test_trade_off_note_only_when_the_latency_interval_excludes_one():
    from abtest_evaluator.analysis import compare_models

    n, labels = 3000, np.zeros(3000, int)
    good, bad = outcomes(n, 0.95, 1), outcomes(n, 0.70, 2)
    same_speed = compare_models([synthetic("a", good, labels, 10.0, 1), synthetic("b", bad, labels, 10.0, 2)], 0.05, "auto")
    assert not any("slower" in note for note in same_speed["notes"])
    slower = compare_models([synthetic("a", good, labels, 20.0, 1), synthetic("b", bad, labels, 10.0, 2)], 0.05, "auto")
    assert any(note.startswith("a is more accurate but 2.00x slower per batch than b") for note in slower["notes"])


def test_a_class_that_got_worse_is_named():
    from abtest_evaluator.analysis import compare_models

    n = 5000
    labels = np.arange(n) % 10
    a = outcomes(n, 0.9, 1)
    b = a.copy()
    worse = (labels == 3) & (np.random.default_rng(2).random(n) < 0.5)
    b[worse] = False
    result = compare_models([synthetic("a", a, labels), synthetic("b", b, labels)], 0.05, "auto")
    (note,) = [x for x in result["notes"] if x.startswith("class ")]
    assert note.startswith("class c3: b is worse than a (") and "Holm-adjusted over classes" in note
    assert [r["class"] for r in result["comparisons"][0]["per_class"]] == [3]


def test_power_warning_uses_holms_first_step_alpha_for_several_pairs():
    from abtest_evaluator.analysis import stats
    from abtest_evaluator.analysis.verdict import power_warnings

    pair = {"a": "x", "b": "y", "significant": False, "n": 1000, "n10": 30, "n01": 20, "accuracy_diff": 0.001}
    (one,) = power_warnings([pair], 0.05)
    three = power_warnings([pair, dict(pair, a="z"), dict(pair, b="w")], 0.05)
    assert f"{stats.min_detectable_diff(1000, 0.05, 0.05) * 100:.2f} points" in one
    assert f"{stats.min_detectable_diff(1000, 0.05, 0.05 / 3) * 100:.2f} points" in three[0]


def test_analyze_cli_decides_non_inferiority_and_refuses_a_missing_margin(evaluated, tmp_path):
    root = copy_results(evaluated, tmp_path / "r")
    proc = abtest_cli("analyze", root, "--hypothesis", "noninferiority", "--models", "resnet,vit")
    assert proc.returncode == 2 and "--margin" in proc.stderr and not (root / "result.json").exists()
    proc = abtest_cli("analyze", root, "--hypothesis", "noninferiority", "--margin", "0.5", "--models", "resnet,vit")
    assert proc.returncode == 2 and "--margin" in proc.stderr
    proc = abtest_cli("analyze", root, "--hypothesis", "noninferiority", "--margin", "0.49", "--test", "midp", "--models", "resnet,vit")
    assert proc.returncode == 0, proc.stderr
    result = read_json(root / "result.json")
    (c,) = result["comparisons"]
    assert result["hypothesis"] == {"name": "noninferiority", "margin": 0.49} and c["method"] == "midp"
    assert c["decision"] == "noninferior" and result["verdict"].startswith("vit is non-inferior to resnet within 49 points")
    assert check_status_result(status_result(result))["comparisons"][0]["decision"] == "noninferior"


def test_the_report_says_why_a_runtime_field_is_not_measured_or_a_setting_not_applied():
    model = {"accuracy": 0.9, "top5": None, "latency_ms_p50": 1.0, "throughput": 100.0, "gpu_memory_bytes": None, "ece": 0.01,
             "device": "NVIDIA H200", "precision": "fp32", "runtime": "onnx: onnxruntime 1.31.1 (CUDAExecutionProvider)",
             "not_measured": {"gpu_memory": "ONNX Runtime allocates its own device memory"},
             "not_applied": {"compile": "torch.compile is for PyTorch eager models"}}  # fmt: skip
    page = report._summary({"models": {"onnx": model, "torch": {**model, "not_measured": {}, "not_applied": {}}}, "winner": None})
    assert page.count("<td>n/a*</td>") == 1 and page.count("<td>-</td>") >= 1  # only the runtime that cannot measure it
    assert "<li>onnx: gpu_memory not measured*: ONNX Runtime allocates its own device memory</li>" in page
    assert "<li>onnx: compile not applied: torch.compile is for PyTorch eager models</li>" in page and "<li>torch:" not in page
