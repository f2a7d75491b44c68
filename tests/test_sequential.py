"""Group-sequential testing: the boundaries against published tables, the design by simulation, the evaluator's
looks, the analysis that stops at the first crossed boundary, and `abtest run` stopping early."""

import math

import numpy as np
import pyarrow.parquet as pq
import pytest

from abtest_api.constants import look_dir, look_sizes
from abtest_evaluator.analysis import sequential
from helpers import INPUT_FLAGS, abtest_cli, local_manifest, read_json

FIVE = tuple(k / 5 for k in range(1, 6))


@pytest.mark.parametrize(
    "spending, expected",
    [
        # R package ldbounds, bounds(t = 1:5/5, iuse = 1 or 2, alpha = c(0.025, 0.025)): two-sided 0.05, Lan-DeMets
        # O'Brien-Fleming and Pocock type (the same values as gsDesign's sfLDOF / sfLDPocock, and Jennison & Turnbull 2000)
        ("obrienFleming", [4.8769, 3.3569, 2.6803, 2.2898, 2.0310]),
        ("pocock", [2.4380, 2.4268, 2.4101, 2.3966, 2.3859]),
    ],
)
def test_boundaries_match_the_published_lan_demets_tables(spending, expected):
    assert sequential.boundaries(FIVE, 0.05, spending) == pytest.approx(expected, abs=2e-4)


def test_one_look_is_the_fixed_sample_test_and_all_alpha_is_spent_at_the_end():
    assert sequential.boundaries((1.0,), 0.05, "obrienFleming") == pytest.approx([1.959964], abs=1e-5)
    for spending in ("obrienFleming", "pocock"):
        assert sequential.spent(1.0, 0.05, spending) == pytest.approx(0.05, rel=1e-12)
        assert sequential.spent(0.3, 0.05, spending) < sequential.spent(0.6, 0.05, spending) < 0.05


def test_boundaries_spend_alpha_as_planned_on_brownian_paths():
    """Monte Carlo of the model the recursion integrates: z_k of Brownian motion at unequal fractions; the chance of
    having crossed by look k must be the alpha spent by t_k (within 4 Monte-Carlo standard errors)."""
    fractions = (0.15, 0.4, 0.55, 0.8, 1.0)
    rng = np.random.default_rng(7)
    reps = 400_000
    steps = rng.standard_normal((reps, len(fractions))) * np.sqrt(np.diff((0.0, *fractions)))
    z = np.cumsum(steps, axis=1) / np.sqrt(fractions)
    for spending in ("obrienFleming", "pocock"):
        crossed = np.abs(z) >= np.asarray(sequential.boundaries(fractions, 0.05, spending))
        by_look = np.logical_or.accumulate(crossed, axis=1).mean(axis=0)
        planned = [sequential.spent(t, 0.05, spending) for t in fractions]
        se = np.sqrt(np.asarray(planned) * (1 - np.asarray(planned)) / reps)
        assert np.all(np.abs(by_look - planned) <= 4 * se + 1e-6), (spending, by_look, planned)


def simulate(p10: float, p01: float, n: int, looks: int, spending: str, reps: int, seed: int):
    """Paired samples: A right and B wrong with probability p10, the reverse p01. Returns (rejected, samples used)."""
    rng = np.random.default_rng(seed)
    u = rng.random((reps, n), dtype=np.float32)
    ahead = np.cumsum(u < p10, axis=1)
    behind = np.cumsum((u >= p10) & (u < p10 + p01), axis=1)
    sizes = look_sizes(n, looks)
    b = ahead[:, np.asarray(sizes) - 1]
    c = behind[:, np.asarray(sizes) - 1]
    z = np.divide(b - c, np.sqrt(b + c), out=np.zeros(b.shape), where=(b + c) > 0)
    crossed = np.abs(z) >= np.asarray(sequential.boundaries(tuple(s / n for s in sizes), 0.05, spending))
    rejected = crossed.any(axis=1)
    first = np.where(rejected, crossed.argmax(axis=1), looks - 1)
    return rejected, np.asarray(sizes)[first]


@pytest.mark.parametrize("spending", ["obrienFleming", "pocock"])
def test_type_one_error_of_the_paired_test_stays_within_alpha(spending):
    """Equally accurate models (10% discordant pairs, n = 2000, 5 looks): rejections ≤ alpha + 3 Monte-Carlo SE."""
    reps = 20_000
    rejected, _ = simulate(0.05, 0.05, 2000, 5, spending, reps, seed=11)
    assert rejected.mean() <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / reps), rejected.mean()


def test_a_real_difference_stops_early_and_keeps_its_power():
    """A 2.5-point difference (10% discordant, n = 2000): the fixed test's power is about 0.94; O'Brien-Fleming over 5
    looks keeps nearly all of it and uses about two thirds of the samples (figures in docs/analysis.md)."""
    reps = 10_000
    p10, p01 = 0.0625, 0.0375
    rejected, used = simulate(p10, p01, 2000, 5, "obrienFleming", reps, seed=12)
    fixed, _ = simulate(p10, p01, 2000, 1, "obrienFleming", reps, seed=12)
    assert rejected.mean() >= fixed.mean() - 0.02, (rejected.mean(), fixed.mean())
    assert used.mean() / 2000 <= 0.75, used.mean()
    pocock, used_pocock = simulate(p10, p01, 2000, 5, "pocock", reps, seed=12)
    assert used_pocock.mean() < used.mean()  # Pocock stops sooner, at some cost in power
    assert pocock.mean() < rejected.mean()


def test_z_statistic_is_the_score_of_the_discordant_pairs():
    assert sequential.z_statistic(30, 10) == pytest.approx(20 / math.sqrt(40))
    assert sequential.z_statistic(0, 0) == 0.0


def evaluate_with_looks(root, name, trained_models, looks, checkpoint=True, arch="timm/resnet10t"):
    weights = ["--checkpoint", trained_models[arch]] if checkpoint else []
    proc = abtest_cli(
        "evaluate", "--model", arch, *weights, "--dataset", "digits", *INPUT_FLAGS, "--device", "cpu", "--workers", "0",
        "--looks", looks, "--name", name, "--out", root / name,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr


def test_evaluate_publishes_each_look_as_a_prefix_of_its_predictions(tmp_path, trained_models):
    evaluate_with_looks(tmp_path, "resnet", trained_models, 3)
    final = pq.read_table(tmp_path / "resnet" / "predictions.parquet")
    assert read_json(tmp_path / "resnet" / "metrics.json")["look"] == {"look": 3, "looks": 3, "n_total": 360}
    for look, n in ((1, 120), (2, 240)):
        folder = tmp_path / "resnet" / look_dir(look, 3)
        table = pq.read_table(folder / "predictions.parquet")
        assert table.equals(final.slice(0, n))
        metrics = read_json(folder / "metrics.json")
        assert metrics["n"] == n and metrics["look"] == {"look": look, "looks": 3, "n_total": 360}
        assert metrics["fingerprint"] == read_json(tmp_path / "resnet" / "metrics.json")["fingerprint"]
    assert not (tmp_path / "resnet" / look_dir(3, 3)).exists()  # the last look is the model folder itself


def look_z(root, a, b, look, looks):
    correct = {}
    for name in (a, b):
        t = pq.read_table(root / name / look_dir(look, looks) / "predictions.parquet")
        correct[name] = t.column("pred").to_numpy() == t.column("label").to_numpy()
    n10 = int((correct[a] & ~correct[b]).sum())
    n01 = int((~correct[a] & correct[b]).sum())
    return (n10 - n01) / math.sqrt(n10 + n01)


def test_a_clear_difference_stops_at_the_first_look(tmp_path, trained_models):
    evaluate_with_looks(tmp_path, "trained", trained_models, 4)
    evaluate_with_looks(tmp_path, "untrained", trained_models, 4, checkpoint=False)
    proc = abtest_cli("analyze", tmp_path, "--looks", "4", "--models", "trained,untrained")
    assert proc.returncode == 0, proc.stderr
    result = read_json(tmp_path / "result.json")
    seq = result["sequential"]
    assert seq["stopped_early"] and seq["look"] == 1 and seq["samples_used"] == 90 and seq["samples_total"] == 360
    (c,) = result["comparisons"]
    assert c["n"] == 90 and c["z"] == pytest.approx(look_z(tmp_path, "trained", "untrained", 1, 4), rel=1e-12)
    assert c["z"] >= seq["boundary"] == pytest.approx(sequential.boundaries((0.25, 0.5, 0.75, 1.0), 0.05, "obrienFleming")[0])
    assert result["winner"] == "trained" and c["decision"] == "a_better"
    assert seq["alpha_spent"] == pytest.approx(sequential.spent(0.25, 0.05, "obrienFleming"))
    assert result["verdict"].startswith("Stopped early at look 1 of 4 (90 of 360 samples")
    assert "look 1/4: n = 90" in proc.stdout
    assert "Sequential design" in (tmp_path / "report.html").read_text()


def test_no_difference_runs_to_the_last_look(tmp_path, trained_models):
    evaluate_with_looks(tmp_path, "a", trained_models, 3)
    evaluate_with_looks(tmp_path, "b", trained_models, 3)  # the same model: identical predictions, z = 0 at every look
    proc = abtest_cli("analyze", tmp_path, "--looks", "3", "--spending", "pocock", "--models", "a,b")
    assert proc.returncode == 0, proc.stderr
    result = read_json(tmp_path / "result.json")
    seq = result["sequential"]
    assert not seq["stopped_early"] and seq["look"] == 3 and seq["samples_used"] == 360 and len(seq["history"]) == 3
    assert seq["alpha_spent"] == pytest.approx(0.05) and result["winner"] is None
    assert result["verdict"].startswith("Not distinguishable at 0.05 after all 3 looks")


def test_analysis_refuses_models_evaluated_without_the_same_looks(tmp_path, trained_models):
    evaluate_with_looks(tmp_path, "a", trained_models, 3)
    evaluate_with_looks(tmp_path, "b", trained_models, 2)
    proc = abtest_cli("analyze", tmp_path, "--looks", "3", "--models", "a,b")
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "error: model b finished without publishing look 1 of 3; evaluate it with --looks 3 (spec.analysis.sequential sets it)"
    )
    assert not (tmp_path / "result.json").exists()


def test_abtest_run_stops_a_sequential_test_early(tmp_path, trained_models):
    models = [
        {"name": "trained", "architecture": "timm/resnet10t", "checkpoint": str(trained_models["timm/resnet10t"])},
        {"name": "untrained", "architecture": "timm/resnet10t"},
    ]
    path = local_manifest(tmp_path / "early.yaml", "early", models, analysis={"sequential": {"looks": 5}})
    proc = abtest_cli("run", path, "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    result = read_json(tmp_path / "out" / "result.json")
    assert result["sequential"]["stopped_early"] and result["sequential"]["samples_used"] == 72
    assert result["winner"] == "trained" and "Stopped early at look 1 of 5" in proc.stdout
