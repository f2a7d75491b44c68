"""The statistics against statsmodels and textbook values, plus properties on random tables."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from statsmodels.stats.contingency_tables import cochrans_q, mcnemar
from statsmodels.stats.multitest import multipletests

from abtest_evaluator import stats
from abtest_evaluator.stats import Table


def test_textbook_mcnemar():
    """Agresti (2007), An Introduction to Categorical Data Analysis, §8.1: presidential approval, n = 1600.
    Uncorrected z^2 = (86 - 150)^2 / 236 = 17.36; with continuity correction (|86 - 150| - 1)^2 / 236 = 16.82."""
    table = Table(n11=794, n10=150, n01=86, n00=570)
    res = stats.mcnemar_test(table, "chi2")
    assert res["statistic"] == pytest.approx(63**2 / 236)
    assert res["statistic"] == pytest.approx(16.818, abs=1e-3)
    assert res["p"].value == pytest.approx(4.11e-5, rel=0.01)
    assert table.diff == pytest.approx((150 - 86) / 1600)


@pytest.mark.parametrize(
    "cells, test, exact",
    [
        ((50, 3, 9, 20), "auto", True),
        ((500, 30, 60, 10), "auto", False),
        ((500, 30, 60, 10), "exact", True),
        ((50, 3, 9, 20), "chi2", False),
    ],
)
def test_p_values_equal_statsmodels(cells, test, exact):
    table = Table(*cells)
    res = stats.mcnemar_test(table, test)
    direct = mcnemar(np.array([[cells[0], cells[1]], [cells[2], cells[3]]]), exact=exact, correction=True)
    assert res["method"] == ("exact" if exact else "chi2")
    assert res["p"].value == pytest.approx(direct.pvalue, rel=1e-9)
    assert res["statistic"] == pytest.approx(direct.statistic)


def test_exact_binomial_example():
    """n10 = 1, n01 = 9: two-sided exact p = 2 * P(X <= 1 | Bin(10, 1/2)) = 22/1024."""
    assert stats.mcnemar_test(Table(100, 1, 9, 5))["p"].value == pytest.approx(22 / 1024)


def test_no_discordant_pairs_is_p_one():
    for test in ("auto", "exact", "chi2"):
        assert stats.mcnemar_test(Table(100, 0, 0, 5), test)["p"].value == 1.0


def test_underflow_is_reported_as_a_bound_never_zero():
    for test in ("chi2", "exact"):
        res = stats.mcnemar_test(Table(10, 100_000, 0, 10), test)
        assert res["p"].value == stats.P_FLOOR and res["p"].bounded
        assert res["p"].text == "< 1e-300"
        assert math.isfinite(res["p"].log10) and res["p"].log10 < -1000


@st.composite
def tables(draw):
    return Table(*(draw(st.integers(0, 400)) for _ in range(4)))


@settings(max_examples=200, deadline=None)
@given(tables(), st.sampled_from(["auto", "exact", "chi2"]))
def test_swapping_a_and_b(table, test):
    if table.n == 0:
        return
    res, swapped = stats.mcnemar_test(table, test), stats.mcnemar_test(table.swapped(), test)
    assert res["p"].value == pytest.approx(swapped["p"].value, rel=1e-12)
    assert table.swapped().diff == pytest.approx(-table.diff)
    lo, hi = stats.paired_diff_ci(table)
    slo, shi = stats.paired_diff_ci(table.swapped())
    assert (slo, shi) == pytest.approx((-hi, -lo), abs=1e-12)


@settings(max_examples=300, deadline=None)
@given(tables())
def test_interval_properties(table):
    if table.n == 0:
        return
    p = stats.mcnemar_test(table)["p"].value
    assert 0 < p <= 1
    lo, hi = stats.paired_diff_ci(table)
    assert -1 <= lo <= table.diff <= hi <= 1


def test_interval_narrows_with_more_data():
    small = stats.paired_diff_ci(Table(80, 12, 8, 0))
    large = stats.paired_diff_ci(Table(8000, 1200, 800, 0))
    assert large[1] - large[0] < (small[1] - small[0]) / 5


def test_interval_coverage_is_close_to_95_percent():
    """Simulated paired classifiers with a true difference of 0.04: the interval covers it about 95% of the time."""
    rng = np.random.default_rng(1)
    probs = [0.80, 0.07, 0.03, 0.10]  # n11, n10, n01, n00
    true_diff = probs[1] - probs[2]
    counts = rng.multinomial(300, probs, size=2000)
    covered = sum(lo <= true_diff <= hi for lo, hi in (stats.paired_diff_ci(Table(*c)) for c in counts))
    assert 0.93 <= covered / len(counts) <= 0.975


def test_holm_equals_statsmodels():
    p = [0.01, 0.04, 0.03, 0.2, 0.005]
    adjusted, reject = stats.holm(p, 0.05)
    direct_reject, direct_adjusted, _, _ = multipletests(p, alpha=0.05, method="holm")
    assert adjusted == pytest.approx(direct_adjusted.tolist())
    assert reject == direct_reject.tolist()
    assert adjusted != pytest.approx(multipletests(p, method="hs")[1].tolist())  # not the default (Holm-Sidak)


def test_cochran_q_equals_statsmodels():
    rng = np.random.default_rng(3)
    correct = rng.random((500, 3)) < [0.9, 0.85, 0.8]
    res = stats.cochran_q(correct, 0.05)
    direct = cochrans_q(correct.astype(int))
    assert res["statistic"] == pytest.approx(direct.statistic) and res["p_value"] == pytest.approx(direct.pvalue)
    assert res["df"] == 2


def test_min_detectable_difference():
    """Connor's formula, inverted: plugging the detectable difference back in gives the sample size."""
    n, psi, alpha = 1000, 0.1, 0.05
    d = stats.min_detectable_diff(n, psi, alpha)
    z_a, z_b = 1.959963984540054, 0.8416212335729143
    assert ((z_a * math.sqrt(psi) + z_b * math.sqrt(psi - d * d)) ** 2 / d**2) == pytest.approx(n, rel=1e-6)
    assert stats.min_detectable_diff(4000, psi, alpha) < d  # more data, smaller detectable effects
    assert stats.min_detectable_diff(5, 0.2, alpha) is None


def test_ratio_of_medians():
    rng = np.random.default_rng(0)
    a, b = rng.normal(20, 1, 300), rng.normal(10, 0.5, 300)
    res = stats.ratio_of_medians(a, b)
    assert res["estimate"] == pytest.approx(2.0, rel=0.05)
    assert res["ci95"][0] < res["estimate"] < res["ci95"][1] and res["ci95"][1] - res["ci95"][0] < 0.2
