"""The paired comparisons of an analysis: each pair's tests, then the family's adjustment, as one typed record per pair.

A pair is (A, B) with A the reference (listed first). Superiority compares every pair; the margin hypotheses compare
each candidate with the reference. A record is built once, with the family's Holm adjustment (and, at a
group-sequential look, the boundary) already known; ``as_dict`` is its form in result.json (design.md §5).
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass

import numpy as np

from abtest_api.constants import EQUIVALENCE, NONINFERIORITY, SUPERIORITY
from abtest_api.result import P_FLOOR, format_p
from abtest_evaluator.analysis import sequential, stats
from abtest_evaluator.results import ModelData


@dataclass(frozen=True)
class Hypothesis:
    """What the analysis decides: superiority, or non-inferiority / equivalence within ``margin`` (a fraction)."""

    name: str = SUPERIORITY
    margin: float | None = None

    def interval_level(self, alpha: float) -> float:
        """The paired interval's level: 1 - alpha, or 1 - 2 alpha for the one-sided margin tests (two one-sided tests)."""
        return 1 - alpha if self.name == SUPERIORITY else 1 - 2 * alpha

    def pairs(self, models: list[ModelData]):
        if self.name == SUPERIORITY:
            return itertools.combinations(models, 2)
        return ((models[0], m) for m in models[1:])


@dataclass(frozen=True)
class Evidence:
    """One p-value as result.json gives it: the value, its text (``<1e-300`` below the floor) and its log10."""

    p_value: float
    p_value_text: str
    log10_p_value: float
    p_value_adjusted: float  # Holm over the family of comparisons
    p_value_adjusted_text: str

    @classmethod
    def of(cls, p: stats.PValue, adjusted: float) -> Evidence:
        adjusted = max(adjusted, P_FLOOR)
        return cls(p.value, p.text, p.log10, adjusted, format_p(adjusted, p.text.startswith("<")))


@dataclass(frozen=True)
class Comparison:
    a: str
    b: str
    n11: int
    n10: int
    n01: int
    n00: int
    n: int
    method: str  # the McNemar variant used: exact, midp or chi2
    statistic: float
    mcnemar: Evidence
    accuracy_diff: float  # acc(A) - acc(B)
    ci: tuple[float, float]  # the paired interval of accuracy_diff at ci_level
    ci_level: float
    odds_ratio: dict
    latency_ratio: dict  # median batch latency of A over B, with its bootstrap interval
    per_class: list[dict]
    significant: bool  # McNemar after Holm, or |z| against the look's boundary in a sequential analysis
    decision: str  # a_better | b_better | noninferior | equivalent | inconclusive
    margin_test: Evidence | None = None  # the margin hypotheses only
    z: float | None = None  # a group-sequential look only

    def as_dict(self) -> dict:
        """The comparison as result.json has it: the McNemar p-values flat, the absent optional parts left out."""
        out = {
            "a": self.a,
            "b": self.b,
            **{k: getattr(self, k) for k in ("n11", "n10", "n01", "n00", "n", "method", "statistic")},
            **dataclasses.asdict(self.mcnemar),
            "accuracy_diff": self.accuracy_diff,
            "ci": list(self.ci),
            **{k: getattr(self, k) for k in ("ci_level", "odds_ratio", "latency_ratio", "per_class", "significant", "decision")},
        }
        if self.margin_test is not None:
            out["margin_test"] = dataclasses.asdict(self.margin_test)
        if self.z is not None:
            out["z"] = self.z
        return out


@dataclass(frozen=True)
class Look:
    """A group-sequential look: the design, which look this is, and the record of the looks before."""

    design: sequential.Design
    number: int
    before: list[dict]

    @property
    def boundary(self) -> float:
        return self.design.boundaries()[self.number - 1]


def compare_all(models: list[ModelData], alpha: float, test: str, hypothesis: Hypothesis, look: Look | None = None) -> list[Comparison]:
    """Every pair the hypothesis compares, each decided: McNemar per pair, Holm across the family (of the McNemar
    p-values, which decide significance, and of the margin tests'), or the look's boundary when sequential."""
    pairs = list(hypothesis.pairs(models))
    tables = [stats.Table.from_correct(a.correct, b.correct) for a, b in pairs]
    tests = [stats.mcnemar_test(t, test) for t in tables]
    adjusted, reject = stats.holm([t["p"].value for t in tests], alpha)
    margins = (
        [stats.margin_test(t, hypothesis.name, hypothesis.margin, alpha)["p"] for t in tables] if hypothesis.name != SUPERIORITY else []
    )
    margins_adjusted = stats.holm([p.value for p in margins], alpha)[0] if margins else []
    out = []
    for i, ((a, b), table, mc) in enumerate(zip(pairs, tables, tests)):
        z = sequential.z_statistic(table.n10, table.n01) if look else None
        margin_test = Evidence.of(margins[i], margins_adjusted[i]) if margins else None
        significant = abs(z) >= look.boundary if look else bool(reject[i])
        level = hypothesis.interval_level(alpha)
        out.append(
            Comparison(
                a=a.name,
                b=b.name,
                **stats.table_dict(table),
                n=table.n,
                method=mc["method"],
                statistic=mc["statistic"],
                mcnemar=Evidence.of(mc["p"], adjusted[i]),
                accuracy_diff=table.diff,
                ci=stats.paired_diff_ci(table, level),
                ci_level=level,
                odds_ratio=stats.discordant_odds_ratio(table, 1 - alpha),
                latency_ratio=stats.ratio_of_medians(_batch_ms(a), _batch_ms(b)),
                per_class=stats.per_class(a.labels, a.correct, b.correct, alpha, test),
                significant=significant,
                decision=decide(table.diff, significant, margin_test, hypothesis.name, alpha),
                margin_test=margin_test,
                z=z,
            )
        )
    return out


def _batch_ms(model: ModelData) -> np.ndarray:
    return np.asarray(model.metrics["latency"]["batches_ms"])


def decide(accuracy_diff: float, significant: bool, margin_test: Evidence | None, hypothesis: str, alpha: float) -> str:
    """The comparison's decision in the contract's words (design.md §5)."""
    if hypothesis == SUPERIORITY:
        return ("a_better" if accuracy_diff > 0 else "b_better") if significant else "inconclusive"
    holds = margin_test.p_value_adjusted <= alpha
    return ({NONINFERIORITY: "noninferior", EQUIVALENCE: "equivalent"}[hypothesis]) if holds else "inconclusive"


def beaten(names: list[str], comparisons: list[dict]) -> dict[str, list[str]]:
    """For each model, the models it is significantly more accurate than (after correction)."""
    out = {name: [] for name in names}
    for c in comparisons:
        if c["significant"] and c["accuracy_diff"] != 0:
            better, worse = (c["a"], c["b"]) if c["accuracy_diff"] > 0 else (c["b"], c["a"])
            out[better].append(worse)
    return out


def pick_winner(names: list[str], comparisons: list[dict]) -> str | None:
    """The model significantly better than every other after correction, if one exists."""
    return next((name for name, worse in beaten(names, comparisons).items() if len(worse) == len(names) - 1), None)
