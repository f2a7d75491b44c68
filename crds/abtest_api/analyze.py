"""The analysis contract: what one analysis is asked to decide, declared once (like ``evaluate.EvalConfig``).

:class:`AnalysisConfig` is ``abtest analyze``'s arguments, the argv of the analysis Job the operator
renders, and what ``abtest run`` hands the analysis. Its fields name the spec paths they come from, and
:func:`check` holds the rules between them (a margin exactly for the margin hypotheses, a sequential
design for superiority only), spelled as the caller's user wrote them: ``--margin`` on the command line,
``spec.analysis.margin`` in an ABTest.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from abtest_api import contract
from abtest_api.constants import HYPOTHESES, MAX_LOOKS, MCNEMAR_TESTS, OBRIEN_FLEMING, SPENDING_FUNCTIONS, SUPERIORITY
from abtest_api.contract import flag, option
from abtest_api.errors import UserError


@dataclass(frozen=True, kw_only=True)
class AnalysisConfig:
    dir: str = option(help="folder holding one sub-folder per evaluated model", positional=True)
    alpha: float = option(0.05, help="significance level (default 0.05)", spec="spec:analysis.alpha")
    test: str = option(
        "auto", help="McNemar variant (default auto; midp: the exact test's mid-p)", spec="spec:analysis.test", choices=MCNEMAR_TESTS
    )
    models: tuple[str, ...] | None = option(None, help="comma-separated model folders in A, B, … order (default: every folder, by name)")
    hypothesis: str = option(
        SUPERIORITY,
        help="superiority (default): is one model more accurate; noninferiority / equivalence: is each later model within "
        "--margin of the first (decided from the paired interval at 1 - 2 alpha)",
        spec="spec:analysis.hypothesis",
        choices=HYPOTHESES,
    )
    margin: float | None = option(
        None, help="for noninferiority and equivalence: accuracy as a fraction (0.01 = 1 point)", spec="spec:analysis.margin"
    )
    looks: int | None = option(
        None,
        help="group-sequential: decide at K looks as the evaluators publish them (evaluate with the same --looks), "
        "stopping at the first crossed boundary",
        spec="spec:analysis.sequential.looks",
    )
    spending: str | None = option(
        None,
        help=f"with --looks: the alpha-spending function (default {OBRIEN_FLEMING})",
        spec="spec:analysis.sequential.spending",
        choices=SPENDING_FUNCTIONS,
    )
    abtest: str | None = option(None, help="NAMESPACE/NAME: also write the verdict into that ABTest's status")
    abtest_uid: str | None = option(None, help="with --abtest: write only if the ABTest still has this UID (not a re-created namesake)")

    @property
    def spending_function(self) -> str:
        return self.spending or OBRIEN_FLEMING

    def check(self, spelled: Callable[[str], str] = flag) -> AnalysisConfig:
        """``self``, or a UserError naming the field (as ``spelled(field)``) and the fix."""
        check(self.alpha, self.hypothesis, self.margin, self.looks, self.spending, spelled)
        return self


def check(alpha: float, hypothesis: str, margin: float | None, looks: int | None = None, spending: str | None = None, spelled=flag) -> None:
    """The rules between the analysis settings, in one place: the CLI, the ABTest's parser (which mirrors the CRD's
    CEL rules, so a manifest checked offline gets the API server's answer) and the analysis itself apply them."""
    if not 0 < alpha < 1:
        raise UserError(f"{spelled('alpha')} must be in (0, 1), got {alpha}")
    if hypothesis not in HYPOTHESES:
        raise UserError(f"{spelled('hypothesis')} must be one of {', '.join(HYPOTHESES)}, got {hypothesis!r}")
    if hypothesis != SUPERIORITY and not (margin is not None and 0 < margin < 0.5):
        raise UserError(
            f"{spelled('margin')} (accuracy as a fraction, e.g. 0.01 = 1 point) is required for {hypothesis}, in (0, 0.5); got {margin}"
        )
    if hypothesis == SUPERIORITY and margin is not None:
        raise UserError(
            f"{spelled('margin')} is for noninferiority and equivalence, and not allowed with superiority; "
            f"remove it or set {spelled('hypothesis')}"
        )
    if looks is not None and hypothesis != SUPERIORITY:
        raise UserError(
            f"{spelled('looks')} decides superiority only; remove it or set {spelled('hypothesis')} to superiority (got {hypothesis})"
        )
    if looks is not None and not 2 <= looks <= MAX_LOOKS:
        raise UserError(f"{spelled('looks')} must be in [2, {MAX_LOOKS}], got {looks}")
    if spending is not None and spending not in SPENDING_FUNCTIONS:
        raise UserError(f"{spelled('spending')} must be one of {', '.join(SPENDING_FUNCTIONS)}, got {spending!r}")


def spec_field(name: str) -> str:
    """A field as an ABTest spells it: its spec path, the sequential design as a whole for ``looks``."""
    return "spec.analysis.sequential" if name == "looks" else contract.spec_path(AnalysisConfig, name)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``abtest analyze``'s arguments, one per field."""
    contract.add_arguments(parser, AnalysisConfig)


def from_args(args: argparse.Namespace) -> AnalysisConfig:
    return contract.from_args(AnalysisConfig, args)


def to_argv(cfg: AnalysisConfig) -> list[str]:
    """The arguments after ``analyze`` that reproduce ``cfg``."""
    return contract.to_argv(cfg)


def parse_argv(argv: list[str]) -> AnalysisConfig:
    """``to_argv``'s inverse (what ``abtest analyze`` does with its arguments)."""
    return contract.parse_argv(AnalysisConfig, argv, "abtest analyze")


def values_from_spec(spec: dict) -> dict:
    """The analysis settings an ABTest sets, from its (defaulted) spec."""
    return contract.values_from_spec(AnalysisConfig, spec)
