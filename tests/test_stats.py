"""The statistics against statsmodels and textbook values, plus properties on random tables."""

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from statsmodels.stats.contingency_tables import cochrans_q, mcnemar
from statsmodels.stats.multitest import multipletests

from abtest_evaluator.analysis import stats
from abtest_evaluator.analysis.stats import Table


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
    assert res["df"] == 2 and res["disagreeing_samples"] == int((correct.min(axis=1) != correct.max(axis=1)).sum())


def test_cochran_q_of_models_that_never_disagree_finds_no_difference():
    """An export that kept every prediction: statsmodels' Q is 0/0 (nan, which no JSON can hold); ours is 0, p = 1."""
    correct = np.repeat((np.arange(300) % 7 != 0)[:, None], 3, axis=1)
    assert np.isnan(cochrans_q(correct.astype(int)).statistic)
    res = stats.cochran_q(correct, 0.05)
    assert (res["statistic"], res["p_value"], res["df"], res["disagreeing_samples"], res["significant"]) == (0.0, 1.0, 2, 0, False)
    json.dumps(res, allow_nan=False)


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


# --- mid-p, the b = c case, Holm's boundary (issue "Statistics that answer the questions users ask", item 4)


def test_mid_p_matches_fagerland_lydersen_laake_2013():
    """Fagerland, Lydersen & Laake (2013), BMC Med Res Methodol 13:91, the airway hyper-responsiveness example
    (Bentur et al. 2009): 1 and 7 discordant pairs. Exact conditional p = 0.070, mid-p = 0.039, asymptotic with
    continuity correction 0.077."""
    table = Table(n11=1, n10=1, n01=7, n00=12)
    assert stats.mcnemar_test(table, "exact")["p"].value == pytest.approx(0.0703, abs=5e-4)
    assert stats.mcnemar_test(table, "midp")["p"].value == pytest.approx(0.0391, abs=5e-4)
    assert stats.mcnemar_test(table, "chi2")["p"].value == pytest.approx(0.0771, abs=5e-4)


@given(st.integers(0, 400), st.integers(0, 400))
@settings(max_examples=200, deadline=None)
def test_mid_p_is_the_exact_p_less_the_observed_point_and_never_larger(b, c):
    from scipy.stats import binom

    table = Table(10, b, c, 10)
    exact, midp = (stats.mcnemar_test(table, t)["p"].value for t in ("exact", "midp"))
    if b + c:
        k = min(b, c)
        assert midp == pytest.approx(max(min(1.0, 2 * binom.cdf(k, b + c, 0.5) - binom.pmf(k, b + c, 0.5)), 1e-300), rel=1e-9, abs=1e-300)
    assert midp <= exact


@pytest.mark.parametrize("b", [1, 5, 40])
def test_chi2_with_equal_discordant_counts_is_zero_and_p_one_as_r_gives(b):
    """R's mcnemar.test applies the continuity correction only when b != c (src/library/stats/R/mcnemar.test.R):
    with b = c the statistic is 0 and p = 1. statsmodels would give (0 - 1)^2 / (b + c)."""
    res = stats.mcnemar_test(Table(100, b, b, 20), "chi2")
    assert (res["statistic"], res["p"].value) == (0.0, 1.0)
    assert mcnemar(np.array([[100, b], [b, 20]]), exact=False, correction=True).statistic == pytest.approx(1 / (2 * b))


def test_holm_boundary_is_the_same_for_one_comparison_as_for_several():
    """multipletests rejects at p <= alpha / (m - i); one comparison must not use a stricter p < alpha."""
    assert stats.holm([0.05], 0.05)[1] == [True]
    assert stats.holm([0.05, 0.05], 0.1)[1] == list(multipletests([0.05, 0.05], alpha=0.1, method="holm")[0])


# --- non-inferiority and equivalence


@given(st.integers(0, 3000), st.integers(0, 300), st.integers(0, 300), st.integers(0, 3000), st.sampled_from([0.005, 0.01, 0.03, 0.1]))
@settings(max_examples=150, deadline=None)
def test_margin_p_value_inverts_the_interval(n11, n10, n01, n00, margin):
    """p < alpha exactly when the 1 - 2 alpha paired interval excludes the margin; at level 1 - 2p the bound is the margin."""
    table = Table(n11, n10, n01, n00)
    if table.n < 2:
        return
    res = stats.margin_test(table, "noninferiority", margin, 0.05)
    assert res["holds"] == (res["ci"][1] < margin)
    p = res["p"].value
    if res["p"].bounded or p in (0.5, 1.0) or p > 0.5:
        return
    assert (p < 0.05) == res["holds"] or abs(p - 0.05) < 1e-9
    if p > 1e-6:  # (below, 1 - 2p rounds)
        assert stats.paired_diff_ci(table, 1 - 2 * p)[1] == pytest.approx(margin, abs=1e-9)


def test_equivalence_is_two_one_sided_tests():
    table = Table(800, 30, 40, 130)  # B better by 1 point
    eq = stats.margin_test(table, "equivalence", 0.03, 0.05)
    lower = stats.margin_test(Table(800, 40, 30, 130), "noninferiority", 0.03, 0.05)  # the mirrored side
    upper = stats.margin_test(table, "noninferiority", 0.03, 0.05)
    assert eq["p"].value == pytest.approx(max(lower["p"].value, upper["p"].value), rel=1e-9)
    lo, hi = stats.paired_diff_ci(table, 0.90)
    assert eq["ci"] == [lo, hi] and eq["holds"] == (lo > -0.03 and hi < 0.03) and eq["holds"]


def test_noninferiority_keeps_its_type_i_error_at_the_margin():
    """Simulation: B truly worse than A by exactly the margin (1 point); H0 holds, so the test may reject in at
    most alpha of the experiments (plus Monte-Carlo error: 3 standard errors over 4,000 runs)."""
    rng = np.random.default_rng(7)
    runs, n, alpha, margin = 4000, 2000, 0.05, 0.01
    p10, p01 = 0.05, 0.04  # discordant rates: acc(A) - acc(B) = 0.01
    cells = rng.multinomial(n, [0.80, p10, p01, 1 - 0.80 - p10 - p01], size=runs)
    rejected = sum(stats.margin_test(Table(*map(int, c)), "noninferiority", margin, alpha)["holds"] for c in cells)
    assert rejected / runs <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / runs)
    # and power when B is as good as A: about 0.76 at n = 5,000 with 9% discordant pairs (normal approximation)
    cells = rng.multinomial(5000, [0.80, 0.045, 0.045, 0.11], size=400)
    assert np.mean([stats.margin_test(Table(*map(int, c)), "noninferiority", margin, alpha)["holds"] for c in cells]) > 0.65


def test_margin_must_be_a_fraction_below_one_half():
    with pytest.raises(ValueError, match="margin must be in"):
        stats.margin_test(Table(10, 1, 1, 10), "noninferiority", 1.0, 0.05)


# --- the discordant odds ratio and per-class tests


@pytest.mark.parametrize("n10, n01", [(9, 3), (0, 5), (5, 0), (150, 86)])
def test_discordant_odds_ratio_interval_is_scipys_exact_binomial_interval(n10, n01):
    from scipy.stats import binomtest

    res = stats.discordant_odds_ratio(Table(100, n10, n01, 20), 0.95)
    ci = binomtest(n10, n10 + n01).proportion_ci(confidence_level=0.95, method="exact")
    odds = [None if p >= 1 else p / (1 - p) for p in (ci.low, ci.high)]
    assert res["ci"][0] == pytest.approx(odds[0]) and (res["ci"][1] is None) == (odds[1] is None)
    if odds[1] is not None:
        assert res["ci"][1] == pytest.approx(odds[1])
    assert res["estimate"] == (None if n01 == 0 else pytest.approx(n10 / n01))


def test_per_class_tests_are_mcnemar_on_each_class_and_holm_across_classes():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 5, 3000)
    a = rng.random(3000) < 0.85
    b = np.where(labels == 3, rng.random(3000) < 0.6, rng.random(3000) < 0.85)  # B is worse on class 3 only
    rows = stats.per_class(labels, a, b, 0.05, "auto")
    expected = []
    for k in range(5):
        m = labels == k
        n10, n01 = int(np.sum(a[m] & ~b[m])), int(np.sum(~a[m] & b[m]))
        both = int(np.sum(a[m] & b[m]))
        exact = n10 + n01 < stats.EXACT_BELOW
        expected.append(mcnemar(np.array([[both, n10], [n01, int(m.sum()) - both - n10 - n01]]), exact=exact, correction=True).pvalue)
        assert (rows[k]["class"], rows[k]["n10"], rows[k]["n01"], rows[k]["n"]) == (k, n10, n01, int(m.sum()))
    reject, adjusted, _, _ = multipletests(expected, alpha=0.05, method="holm")
    assert [r["p_value_adjusted"] for r in rows] == pytest.approx(list(adjusted), rel=1e-9)
    assert [r["significant"] for r in rows] == list(reject) and [r["class"] for r in rows if r["significant"]] == [3]


@pytest.mark.parametrize("test", ["auto", "chi2", "exact", "midp"])
def test_per_class_p_values_equal_one_mcnemar_test_per_class(test):
    """The vectorised chi-square against statsmodels' mcnemar through mcnemar_test, class by class: equal to the bit,
    over classes with few and many discordant pairs, b = c included."""
    rng = np.random.default_rng(5)
    labels = np.concatenate([rng.integers(0, 50, 19_900), rng.integers(50, 60, 100)])  # classes 50-59: few pairs
    a = rng.random(20_000) < 0.8
    b = np.where(labels == 7, a, rng.random(20_000) < 0.8)  # class 7: b = c = 0, not tested
    b[(labels == 10) & a] = False  # class 10: B wrong wherever A is right
    b[labels == 20] = rng.permutation(a[labels == 20])  # class 20: as many right as A, so n10 = n01
    rows = stats.per_class(labels, a, b, 0.05, test)
    assert 7 not in [r["class"] for r in rows] and len(rows) == 59
    for r in rows:
        m = labels == r["class"]
        both = int(np.sum(a[m] & b[m]))
        table = stats.Table(both, r["n10"], r["n01"], int(m.sum()) - both - r["n10"] - r["n01"])
        expected = stats.mcnemar_test(table, test)["p"]
        assert (r["p_value"], r["p_value_text"]) == (expected.value, expected.text), r
    assert any(r["n10"] + r["n01"] < stats.EXACT_BELOW for r in rows) and any(r["n10"] == r["n01"] > 0 for r in rows)


def test_latency_ratio_estimate_uses_every_batch():
    rng = np.random.default_rng(0)
    a, b = rng.gamma(5, 1, 50_001), rng.gamma(5, 2, 30_001)
    res = stats.ratio_of_medians(a, b)
    assert res["estimate"] == np.median(a) / np.median(b)


def test_exact_bootstrap_medians_match_resampling():
    """The median's exact bootstrap distribution (Efron 1979) against plain resampling: the same quantiles."""
    rng = np.random.default_rng(3)
    x = rng.gamma(3, 2, 301)
    resampled = np.median(rng.choice(x, (20_000, len(x))), axis=1)
    exact = stats.bootstrap_medians(x, 20_000, rng)
    for q in (2.5, 25, 50, 75, 97.5):
        assert np.percentile(exact, q) == pytest.approx(np.percentile(resampled, q), rel=0.02), q
