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
    """McNemar's test via statsmodels. ``auto``: exact binomial below EXACT_BELOW discordant pairs, else chi2 with continuity correction."""
    if test not in ("auto", "exact", "chi2"):
        raise ValueError(f"test must be auto, exact or chi2, not {test!r}")
    exact = test == "exact" or (test == "auto" and table.discordant < EXACT_BELOW)
    if table.discordant == 0:  # no evidence either way; chi2 would divide by zero
        return {"method": "exact" if exact else "chi2", "statistic": 0.0, "p": PValue(1.0, 0.0, False)}
    res = mcnemar(table.matrix(), exact=exact, correction=True)
    if exact:
        k, m = min(table.n10, table.n01), table.discordant
        # log P(X <= k) summed in log space: binom.logcdf is log(cdf) and underflows to -inf
        log_p = min(0.0, math.log(2) + float(special.logsumexp(stats.binom.logpmf(np.arange(k + 1), m, 0.5))))
    else:
        log_p = chi2_logsf(res.statistic, 1)
    return {"method": "exact" if exact else "chi2", "statistic": float(res.statistic), "p": _p_value(float(res.pvalue), float(log_p))}


def paired_diff_ci(table: Table, level: float = 0.95) -> tuple[float, float]:
    """Interval for acc(A) - acc(B) on paired data: Newcombe (1998) method 10, from Wilson score intervals.

    Newcombe, "Improved confidence intervals for the difference between binomial proportions based on
    paired data", Statistics in Medicine 17:2635-2650. Fast (closed form) and well-behaved near 0 and 1.
    """
    a, b, c, d, n = table.n11, table.n10, table.n01, table.n00, table.n
    alpha = 1 - level
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


def holm(p_values: list[float], alpha: float) -> tuple[list[float], list[bool]]:
    """Holm-adjusted p-values and rejections (statsmodels' multipletests, method='holm')."""
    if len(p_values) == 1:
        return list(p_values), [p_values[0] < alpha]
    reject, adjusted, _, _ = multipletests(p_values, alpha=alpha, method="holm")
    return [float(p) for p in adjusted], [bool(r) for r in reject]


def cochran_q(correct: np.ndarray, alpha: float) -> dict:
    """Cochran's Q omnibus over an (n samples x k models) boolean matrix."""
    res = cochrans_q(correct.astype(np.int8))
    log_p = chi2_logsf(res.statistic, res.df)
    p = _p_value(float(res.pvalue), float(log_p))
    return {
        "test": "cochrans_q",
        "statistic": float(res.statistic),
        "df": int(res.df),
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


def ratio_of_medians(a: np.ndarray, b: np.ndarray, seed: int = 0, resamples: int = 2000, max_points: int = 20000) -> dict:
    """median(a) / median(b) with a percentile-bootstrap 95% interval (large inputs are subsampled first)."""
    rng = np.random.default_rng(seed)
    if len(a) > max_points:
        a = rng.choice(a, max_points, replace=False)
    if len(b) > max_points:
        b = rng.choice(b, max_points, replace=False)
    ratios = np.empty(resamples)
    step = max(1, 2_000_000 // max(len(a), len(b), 1))
    for start in range(0, resamples, step):
        m = min(step, resamples - start)
        ma = np.median(rng.choice(a, (m, len(a))), axis=1)
        mb = np.median(rng.choice(b, (m, len(b))), axis=1)
        ratios[start : start + m] = ma / mb
    lo, hi = np.percentile(ratios, [2.5, 97.5])
    return {"estimate": float(np.median(a) / np.median(b)), "ci95": [float(lo), float(hi)]}


def table_dict(table: Table) -> dict:
    return asdict(table)
