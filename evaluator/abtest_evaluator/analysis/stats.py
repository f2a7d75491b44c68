"""The statistics of a paired comparison of classifiers, on 2x2 counts. Pure functions, torch-free.

McNemar and Cochran's Q come from statsmodels, Holm from ``multipletests``; what statsmodels lacks
(a paired-difference interval, the detectable effect) is written out with its reference.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import optimize, special, stats
from statsmodels.stats.contingency_tables import cochrans_q, mcnemar
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportion_confint

from abtest_api.constants import MCNEMAR_TESTS
from abtest_api.result import P_FLOOR, format_p

EXACT_BELOW = 25  # auto: exact binomial test below this many discordant pairs (the usual rule of thumb)


@dataclass(frozen=True)
class Table:
    """Paired outcomes of models A and B: n11 both right, n10 A right/B wrong, n01 A wrong/B right, n00 both wrong."""

    n11: int
    n10: int
    n01: int
    n00: int

    @classmethod
    def from_correct(cls, a: np.ndarray, b: np.ndarray) -> Table:
        both = np.count_nonzero(a & b)
        only_a = np.count_nonzero(a) - both
        only_b = np.count_nonzero(b) - both
        return cls(int(both), int(only_a), int(only_b), int(len(a) - both - only_a - only_b))

    @property
    def n(self) -> int:
        return self.n11 + self.n10 + self.n01 + self.n00

    @property
    def discordant(self) -> int:
        return self.n10 + self.n01

    @property
    def diff(self) -> float:
        """Accuracy of A minus accuracy of B."""
        return (self.n10 - self.n01) / self.n

    def matrix(self) -> np.ndarray:
        return np.array([[self.n11, self.n10], [self.n01, self.n00]])

    def swapped(self) -> Table:
        return Table(self.n11, self.n01, self.n10, self.n00)


@dataclass(frozen=True)
class PValue:
    value: float  # >= P_FLOOR
    log10: float  # exact even when value is the floor
    bounded: bool  # True when the true p-value is below P_FLOOR

    @property
    def text(self) -> str:
        return format_p(self.value, self.bounded)


def _p_value(p: float, log_p: float) -> PValue:
    """Clamp to the floor while keeping the exact log10 for those who want it."""
    log10 = log_p / math.log(10)
    if p >= P_FLOOR:
        return PValue(float(p), float(math.log10(p)) if p > 0 else log10, False)
    return PValue(P_FLOOR, float(log10), True)


def chi2_logsf(x: float, df: int) -> float:
    """log P(chi2_df > x) that stays finite where scipy's underflows (asymptotic tail of the incomplete gamma)."""
    if df == 1:
        return math.log(2) + float(special.log_ndtr(-math.sqrt(x)))  # chi2_1 tail = 2 * Phi(-sqrt(x))
    log_p = float(stats.chi2.logsf(x, df))
    if math.isfinite(log_p):
        return log_p
    k = df / 2
    return (k - 1) * math.log(x / 2) - x / 2 - math.lgamma(k)


def mcnemar_test(table: Table, test: str = "auto") -> dict:
    """McNemar's test. ``auto``: exact binomial below EXACT_BELOW discordant pairs, else chi-square with continuity
    correction (statsmodels); ``midp``: the exact test's mid-p, which Fagerland, Lydersen & Laake (2013, BMC Medical
    Research Methodology 13:91) recommend for its size close to alpha without the exact test's conservatism."""
    if test not in MCNEMAR_TESTS:
        raise ValueError(f"test must be one of {', '.join(MCNEMAR_TESTS)}, not {test!r}")
    method = "exact" if test == "auto" and table.discordant < EXACT_BELOW else ("chi2" if test == "auto" else test)
    if table.discordant == 0 or (method == "chi2" and table.n10 == table.n01):
        # No evidence either way. (chi2 with b = c: R's mcnemar.test corrects only when b != c, so 0 and p = 1;
        # statsmodels would report (0 - 1)^2 / (b + c) > 0.)
        return {"method": method, "statistic": 0.0, "p": PValue(1.0, 0.0, False)}
    if method == "chi2":
        res = mcnemar(table.matrix(), exact=False, correction=True)
        return {"method": method, "statistic": float(res.statistic), "p": _p_value(float(res.pvalue), chi2_logsf(res.statistic, 1))}
    k, m = min(table.n10, table.n01), table.discordant
    log_pmf = stats.binom.logpmf(np.arange(k + 1), m, 0.5)
    # log P(X <= k) summed in log space: binom.logcdf is log(cdf) and underflows to -inf
    log_tail = float(special.logsumexp(log_pmf))
    if method == "exact":
        log_p = min(0.0, math.log(2) + log_tail)
    else:  # mid-p: 2 * (P(X <= k) - P(X = k) / 2) = P(X <= k - 1) * 2 + P(X = k)
        log_p = min(0.0, float(special.logsumexp([math.log(2) + log_tail, float(log_pmf[-1])], b=[1, -1])))
    return {"method": method, "statistic": float(k), "p": _p_value(math.exp(log_p), log_p)}


def mcnemar_chi2(n10: np.ndarray, n01: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Statistic, p and log p of the continuity-corrected chi-square McNemar for many tables at once: statsmodels'
    formula and scipy's chi2.sf, as ``mcnemar_test`` gets them one table at a time (for b != c; 1,000 per-class
    tests in one call instead of 1,000 calls, ~0.1 s)."""
    n10, n01 = np.asarray(n10, dtype=np.float64), np.asarray(n01, dtype=np.float64)
    statistic = (np.abs(n10 - n01) - 1) ** 2 / (n10 + n01)
    return statistic, stats.chi2.sf(statistic, 1), math.log(2) + special.log_ndtr(-np.sqrt(statistic))


def paired_diff_ci(table: Table, level: float = 0.95) -> tuple[float, float]:
    """Interval for acc(A) - acc(B) on paired data: Newcombe (1998) method 10, from Wilson score intervals.

    Newcombe, "Improved confidence intervals for the difference between binomial proportions based on
    paired data", Statistics in Medicine 17:2635-2650. Fast (closed form) and well-behaved near 0 and 1.
    """
    return _newcombe(table, 1 - level)


def _newcombe(table: Table, alpha: float) -> tuple[float, float]:
    """paired_diff_ci at level 1 - alpha (alpha as given: 1 - (1 - 1e-300) would be 0)."""
    a, b, c, d, n = table.n11, table.n10, table.n01, table.n00, table.n
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = proportion_confint(a + b, n, alpha=alpha, method="wilson")
    l2, u2 = proportion_confint(a + c, n, alpha=alpha, method="wilson")
    denom = math.sqrt(float(a + b) * (c + d) * (a + c) * (b + d))
    if denom == 0:
        phi = 0.0
    else:
        cross = a * d - b * c
        phi = (max(cross - n / 2, 0) if cross > 0 else cross) / denom  # continuity-corrected phi
    theta = p1 - p2
    delta = math.sqrt(max((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2, 0.0))
    epsilon = math.sqrt(max((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2, 0.0))
    return max(-1.0, theta - delta), min(1.0, theta + epsilon)


def _bound_crosses(table: Table, margin: float, upper: bool) -> float:
    """The one-sided p-value at which the paired interval's upper (or lower) bound of acc(A) - acc(B) reaches
    ``margin``: the interval at level 1 - 2p is inverted (Newcombe's method 10 above), so "p < alpha" is exactly
    "the 1 - 2 alpha interval excludes the margin". H0 is acc(A) - acc(B) >= margin (upper) or <= margin (lower)."""
    theta = table.diff

    def bound(p: float) -> float:
        lo, hi = _newcombe(table, 2 * p)
        return hi if upper else lo

    beyond = theta < margin if upper else theta > margin  # the estimate is on the alternative's side
    if not beyond:  # p >= 1/2: mirror through the other bound
        if theta == margin:
            return 0.5
        return 1 - _bound_crosses(table, margin, not upper)
    gap = (lambda p: bound(p) - margin) if upper else (lambda p: margin - bound(p))
    if gap(P_FLOOR) < 0:  # even the 1 - 2e-300 interval excludes the margin: reported as the bound
        return 0.0
    return float(optimize.brentq(gap, P_FLOOR, 0.5 - 1e-12, xtol=1e-15, rtol=1e-12))  # level 0 is a point: stop short


def margin_test(table: Table, hypothesis: str, margin: float, alpha: float) -> dict:
    """Non-inferiority or equivalence of candidate B to reference A within ``margin`` (accuracy as a fraction),
    decided from the paired interval at level 1 - 2 alpha (two one-sided tests, Schuirmann 1987).

    noninferiority: H0 acc(B) <= acc(A) - margin. equivalence: H0 |acc(B) - acc(A)| >= margin, p the larger
    of the two one-sided p-values."""
    if not 0 < margin < 0.5:
        raise ValueError(f"margin must be in (0, 0.5), got {margin}")
    lo, hi = paired_diff_ci(table, level=1 - 2 * alpha)
    p_worse = _bound_crosses(table, margin, upper=True)  # H0: A better by >= margin
    if hypothesis == "noninferiority":
        p, holds = p_worse, hi < margin
    elif hypothesis == "equivalence":
        p = max(p_worse, _bound_crosses(table, -margin, upper=False))  # and H0: B better by >= margin
        holds = hi < margin and lo > -margin
    else:
        raise ValueError(f"hypothesis must be noninferiority or equivalence, not {hypothesis!r}")
    value = _p_value(p, math.log(p)) if p > 0 else PValue(P_FLOOR, math.log10(P_FLOOR), True)
    return {"p": value, "ci": [lo, hi], "ci_level": 1 - 2 * alpha, "holds": holds}


def discordant_odds_ratio(table: Table, level: float = 0.95) -> dict:
    """n10 / n01, the paired odds ratio (A right and B wrong over A wrong and B right), with the exact conditional
    interval: Clopper-Pearson on n10 / (n10 + n01), mapped through p / (1 - p) (Breslow & Day 1980, 7.6).
    Infinite values are None (JSON has no infinity)."""
    m = table.discordant
    if m == 0:
        return {"estimate": None, "ci": [None, None], "ci_level": level}
    lo, hi = proportion_confint(table.n10, m, alpha=1 - level, method="beta")

    def odds(p: float) -> float | None:
        return None if p >= 1 else float(p / (1 - p))

    return {"estimate": odds(table.n10 / m), "ci": [odds(lo), odds(hi)], "ci_level": level}


def per_class(labels: np.ndarray, a: np.ndarray, b: np.ndarray, alpha: float, test: str = "auto") -> list[dict]:
    """McNemar per true class (the samples of that class only), Holm across the classes that have discordant pairs."""
    n_classes = int(labels.max()) + 1 if len(labels) else 0
    # one pass: the four (a, b) outcomes of each class as cells of a (class, outcome) count
    cells = np.bincount(labels * 4 + (a.view(np.uint8) * 2 + b.view(np.uint8)), minlength=4 * n_classes).reshape(-1, 4)
    n01, n10, both_right = cells[:, 1], cells[:, 2], cells[:, 3]
    count = cells.sum(axis=1)
    right_a, right_b = n10 + both_right, n01 + both_right
    tested = np.flatnonzero(n10 + n01)
    # the chi-square tests in one vectorised call; the exact and mid-p ones (few discordant pairs) one by one
    chi2 = (n10[tested] != n01[tested]) & (n10[tested] + n01[tested] >= EXACT_BELOW if test == "auto" else test == "chi2")
    _, p_chi2, log_p_chi2 = mcnemar_chi2(n10[tested[chi2]], n01[tested[chi2]])
    p_chi2 = iter(map(_p_value, p_chi2.tolist(), log_p_chi2.tolist()))
    rows = []
    for k, vectorised in zip(tested, chi2):
        both = int(right_a[k] - n10[k])
        t = Table(both, int(n10[k]), int(n01[k]), int(count[k] - both - n10[k] - n01[k]))
        p = next(p_chi2) if vectorised else mcnemar_test(t, test)["p"]
        rows.append(
            {
                "class": int(k),
                "n": int(count[k]),
                "accuracy_a": float(right_a[k] / count[k]),
                "accuracy_b": float(right_b[k] / count[k]),
                "n10": t.n10,
                "n01": t.n01,
                "p_value": p.value,
                "p_value_text": p.text,
            }
        )
    if rows:
        adjusted, reject = holm([r["p_value"] for r in rows], alpha)
        for r, p_adj, sig in zip(rows, adjusted, reject):
            r["p_value_adjusted"], r["significant"] = max(p_adj, P_FLOOR), sig
    return rows


def holm(p_values: list[float], alpha: float) -> tuple[list[float], list[bool]]:
    """Holm-adjusted p-values and rejections (statsmodels' multipletests, method='holm')."""
    if len(p_values) == 1:  # multipletests' boundary: reject when p <= alpha
        return list(p_values), [p_values[0] <= alpha]
    reject, adjusted, _, _ = multipletests(p_values, alpha=alpha, method="holm")
    return [float(p) for p in adjusted], [bool(r) for r in reject]


def cochran_q(correct: np.ndarray, alpha: float) -> dict:
    """Cochran's Q omnibus over an (n samples x k models) boolean matrix. With no sample on which the models
    disagree (an export that kept every prediction) Q is 0/0: there is no difference to find, so Q = 0 and p = 1."""
    disagreeing = int((correct.min(axis=1) != correct.max(axis=1)).sum())
    if disagreeing:
        res = cochrans_q(correct.astype(np.int8))
        statistic, df, log_p = float(res.statistic), int(res.df), float(chi2_logsf(res.statistic, res.df))
        p = _p_value(float(res.pvalue), log_p)
    else:
        statistic, df, p = 0.0, correct.shape[1] - 1, _p_value(1.0, 0.0)
    return {
        "test": "cochrans_q",
        "statistic": statistic,
        "df": df,
        "disagreeing_samples": disagreeing,
        "p_value": p.value,
        "p_value_text": p.text,
        "log10_p_value": p.log10,
        "significant": p.value < alpha,
    }


def min_detectable_diff(n: int, discordant_rate: float, alpha: float, power: float = 0.8) -> float | None:
    """Smallest |acc(A) - acc(B)| McNemar detects with this power at this n and discordant rate.

    Connor (1987), Biometrics 43:207-211: n = (z_a sqrt(psi) + z_b sqrt(psi - d^2))^2 / d^2, solved for d.
    None when even d = psi (all discordant pairs one way) is out of reach.
    """
    if n <= 0 or discordant_rate <= 0:
        return None
    z_a, z_b = stats.norm.ppf(1 - alpha / 2), stats.norm.ppf(power)
    psi = discordant_rate

    def gap(d):
        return math.sqrt(n) * d - z_a * math.sqrt(psi) - z_b * math.sqrt(max(psi - d * d, 0.0))

    if gap(psi) < 0:
        return None
    return float(optimize.brentq(gap, 1e-12, psi))


def ratio_of_medians(a: np.ndarray, b: np.ndarray, seed: int = 0, resamples: int = 2000) -> dict:
    """median(a) / median(b) over every batch, with a percentile-bootstrap 95% interval. The bootstrap medians are
    drawn from their exact bootstrap distribution (Efron 1979): no resample is built, so every batch counts at any
    size (resampling 2000 x n points took seconds for a few tens of thousands of batches)."""
    rng = np.random.default_rng(seed)
    estimate = float(np.median(a) / np.median(b))
    ratios = bootstrap_medians(a, resamples, rng) / bootstrap_medians(b, resamples, rng)
    lo, hi = np.percentile(ratios, [2.5, 97.5])
    return {"estimate": estimate, "ci95": [float(lo), float(hi)]}


def bootstrap_medians(x: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """``size`` draws of the median of a bootstrap resample of ``x`` (its lower median for even n). The resample's
    m-th smallest value is at most the j-th order statistic when at least m of its n draws fall at or below it:
    P = P(Binomial(n, j/n) >= m), so the draws come from that CDF by inversion."""
    ordered = np.sort(np.asarray(x, dtype=float))
    n = len(ordered)
    cdf = stats.binom.sf((n + 1) // 2 - 1, n, np.arange(1, n + 1) / n)
    return ordered[np.minimum(np.searchsorted(cdf, rng.random(size), side="right"), n - 1)]


def table_dict(table: Table) -> dict:
    return asdict(table)
