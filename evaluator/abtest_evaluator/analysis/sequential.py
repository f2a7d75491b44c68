"""Group-sequential design on the discordant pairs: Lan-DeMets alpha spending, two-sided symmetric boundaries.

The models see the same samples in the same order, so after the first n_k samples every pair has its McNemar
table; z_k = (n10 - n01) / sqrt(n10 + n01) is the score of the discordant pairs, approximately N(0, 1) under
"equally accurate", with the correlation of Brownian motion between looks (corr(z_j, z_k) = sqrt(t_j / t_k)).
The information fraction t_k is the sample fraction n_k / N (the discordant count is unknown before the end).

Boundaries come from the spending function alpha(t) (Lan & DeMets 1983): the boundary c_k at look k makes the
probability of crossing first at look k, under the null, equal alpha(t_k) - alpha(t_{k-1}). That probability is
computed by the Armitage-McPherson-Rowe recursion: the sub-density of the unstopped path, carried on a grid from
look to look (Jennison & Turnbull 2000, ch. 19). Torch-free, numpy and scipy only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import numpy as np
from scipy import optimize, stats

from abtest_api.constants import OBRIEN_FLEMING, POCOCK, SPENDING_FUNCTIONS, look_sizes

GRID = 1201  # odd, for Simpson's rule; boundaries agree with published tables to 4 decimals


def spent(t: float, alpha: float, spending: str) -> float:
    """Two-sided alpha spent by information fraction t: each side spends alpha/2 by its one-sided function."""
    if t <= 0:
        return 0.0
    if spending == OBRIEN_FLEMING:  # 2 - 2 Phi(z_{1 - alpha/4} / sqrt(t)) per side
        return 2 * 2 * stats.norm.sf(stats.norm.isf(alpha / 4) / math.sqrt(min(t, 1.0)))
    if spending == POCOCK:
        return alpha * math.log(1 + (math.e - 1) * min(t, 1.0))
    raise ValueError(f"unknown spending function {spending!r}; use one of {', '.join(SPENDING_FUNCTIONS)}")


def _simpson(m: int) -> np.ndarray:
    w = np.ones(m)
    w[1:-1:2], w[2:-1:2] = 4, 2
    return w / 3


@cache
def boundaries(fractions: tuple[float, ...], alpha: float, spending: str) -> tuple[float, ...]:
    """z boundaries c_1..c_K for the looks at these information fractions (increasing, the last 1.0)."""
    if list(fractions) != sorted(set(fractions)) or fractions[0] <= 0 or fractions[-1] > 1:
        raise ValueError(f"information fractions must increase within (0, 1], got {fractions}")
    out = []
    grid = weights = density = None  # the unstopped path's sub-density of B(t) = z sqrt(t)
    previous_t, previous_spent = 0.0, 0.0
    for t in fractions:
        target = spent(t, alpha, spending) - previous_spent
        sd = math.sqrt(t - previous_t)
        if grid is None:  # the first look: B(t_1) ~ N(0, t_1)
            b = sd * stats.norm.isf(target / 2)
            new_grid = np.linspace(-b, b, GRID)
            density = stats.norm.pdf(new_grid, scale=sd)
        else:
            b = _boundary(weights * density, grid, sd, target)
            new_grid = np.linspace(-b, b, GRID)
            density = (weights * density) @ stats.norm.pdf((new_grid[None, :] - grid[:, None]) / sd) / sd
        out.append(float(b / math.sqrt(t)))
        grid, weights = new_grid, _simpson(GRID) * (new_grid[1] - new_grid[0])
        previous_t, previous_spent = t, spent(t, alpha, spending)
    return tuple(out)


def _boundary(mass: np.ndarray, grid: np.ndarray, sd: float, target: float) -> float:
    """The b at which a path still inside at the previous look (sub-density ``mass`` on ``grid``) leaves (-b, b) by
    the next look, an increment of standard deviation ``sd`` later, with probability ``target``."""

    def excess(b: float) -> float:
        return float(mass @ (stats.norm.sf((b - grid) / sd) + stats.norm.cdf((-b - grid) / sd))) - target

    hi = grid[-1] + 40 * sd
    return hi if excess(hi) > 0 else optimize.brentq(excess, 1e-9, hi, xtol=1e-12)


def z_statistic(n10: int, n01: int) -> float:
    """The score of the discordant pairs: positive when A (n10: A right, B wrong) is ahead; 0 with none."""
    d = n10 + n01
    return (n10 - n01) / math.sqrt(d) if d else 0.0


@dataclass(frozen=True)
class Design:
    """One group-sequential test: K looks at equal parts of n_total samples, alpha split evenly over the pairs
    (Bonferroni: each pair's path gets its own boundaries at alpha / pairs)."""

    looks: int
    spending: str
    alpha: float
    n_total: int
    pairs: int = 1

    @property
    def sizes(self) -> list[int]:
        return look_sizes(self.n_total, self.looks)

    @property
    def fractions(self) -> tuple[float, ...]:
        return tuple(n / self.n_total for n in self.sizes)

    def boundaries(self) -> tuple[float, ...]:
        return boundaries(self.fractions, self.alpha / self.pairs, self.spending)

    def spent(self, look: int) -> float:
        """The family-wise alpha spent by this look (all of alpha at the last)."""
        return spent(self.fractions[look - 1], self.alpha, self.spending)
