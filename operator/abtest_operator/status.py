"""An ABTest's status derived from its Jobs' states (jobs.py) on every pass: phase, conditions, per-model entries.

Pure: Job states in, status out. Nothing is remembered between passes except what the status itself carries
(condition transition times, the analysis's result). ABTest phases are abtest_api's constants; a Job's phase
is a ``JobPhase``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from abtest_api.constants import ANALYZING, FAILED, PENDING, RUNNING, SUCCEEDED, TERMINAL_PHASES
from abtest_operator import names
from abtest_operator.jobs import UNFINISHED, UNSCHEDULABLE, JobPhase, JobState, seconds_since
from abtest_operator.spec import ABTestSpec

# Model Jobs whose stall counts: not those that ended.
STALLABLE = UNFINISHED | {JobPhase.MISSING}

PLACEMENT_DEADLINE = "; the ABTest fails after spec.startTimeoutSeconds"


@dataclass(frozen=True)
class Verdict:
    """The ABTest's phase as derived so far, the reason when Failed, and whether a model is to blame."""

    phase: str  # an ABTest phase (abtest_api.constants)
    reason: str = ""
    model_failed: bool = False

    @property
    def final(self) -> bool:
        return self.phase in TERMINAL_PHASES


@dataclass(frozen=True)
class Conditions:
    """What every condition of one derivation shares: the previous conditions by type, the time, the generation."""

    old: dict[str, dict]
    stamp: str
    generation: int

    def make(self, type_: str, ok: bool | None, reason: str, message: str) -> dict:
        """One condition; its transition time moves only when its status changes."""
        status = "Unknown" if ok is None else str(ok)
        old = self.old.get(type_)
        changed = old is None or old.get("status") != status
        return {
            "type": type_,
            "status": status,
            "reason": reason,
            "message": message,
            "observedGeneration": self.generation,
            "lastTransitionTime": self.stamp if changed else old.get("lastTransitionTime", self.stamp),
        }


def derive_status(
    spec: ABTestSpec,
    generation: int,
    model_jobs: dict[str, JobState],
    analysis: JobState,
    previous: dict | None = None,
    now: datetime | None = None,
    default_image: str = "",
) -> dict:
    """The whole status (but ``result``, which the analysis Job writes) from observed Job states: the phase the Jobs
    say, then the deadlines that can fail the ABTest (a lasting stall, a model that cannot join its waiting peers),
    then the conditions and per-model entries that show it."""
    previous = previous or {}
    now = now or datetime.now(UTC)
    conditions = Conditions({c["type"]: c for c in previous.get("conditions") or []}, now.strftime("%Y-%m-%dT%H:%M:%SZ"), generation)
    verdict = phase_from_jobs(model_jobs, analysis, conditions.old)
    stalled = stalled_condition(model_jobs, verdict, conditions)
    verdict = stall_deadline(spec, model_jobs, verdict, stalled, now)
    placed = placed_condition(spec, model_jobs, verdict.phase, conditions)
    verdict = placement_deadline(spec, model_jobs, verdict, placed, now)
    status = {
        "phase": verdict.phase,
        "reason": verdict.reason,
        "observedGeneration": generation,
        "modelCount": len(spec.models),
        "resultsPath": names.results_dir(spec),
        "image": frozen_image(spec, model_jobs, previous, default_image),
        "conditions": [*outcome_conditions(model_jobs, analysis, verdict, conditions), stalled, placed],
        "models": model_entries(spec, model_jobs, verdict.phase, previous),
    }
    starts = [s.start for s in model_jobs.values() if s.start]
    if starts:
        status["startTime"] = previous.get("startTime") or min(starts)
    if verdict.final:
        status["completionTime"] = previous.get("completionTime") or conditions.stamp
    return status


def _failure(s: JobState) -> str:
    return ": ".join(x for x in (s.reason, s.message) if x)


def phase_from_jobs(model_jobs: dict[str, JobState], analysis: JobState, old: dict[str, dict]) -> Verdict:
    """The phase the Jobs' own phases say: a failed model or analysis fails the ABTest, the analysis's success is its
    verdict, all models done is Analyzing, any model started is Running."""
    failed = [(name, s) for name, s in model_jobs.items() if s.phase == JobPhase.FAILED]
    if failed:
        name, s = failed[0]
        return Verdict(FAILED, f"model {name} failed: " + _failure(s) + why_apart(model_jobs, old), model_failed=True)
    if analysis.phase == JobPhase.FAILED:
        return Verdict(FAILED, "analysis failed: " + _failure(analysis))
    if analysis.phase == JobPhase.SUCCEEDED:
        return Verdict(SUCCEEDED)
    if all(s.phase == JobPhase.SUCCEEDED for s in model_jobs.values()):
        return Verdict(ANALYZING)
    if any(s.phase in (JobPhase.RUNNING, JobPhase.SUCCEEDED) for s in model_jobs.values()):
        return Verdict(RUNNING)
    return Verdict(PENDING)


def stalls(model_jobs: dict[str, JobState]) -> list[tuple[str, str]]:
    """The unfinished models whose pod cannot start, with why."""
    return [(name, s.stall) for name, s in model_jobs.items() if s.stall and s.phase in STALLABLE]


def stalled_condition(model_jobs: dict[str, JobState], verdict: Verdict, conditions: Conditions) -> dict:
    """``Stalled``: True while a model's pod cannot start and the ABTest is not finished."""
    stalled = stalls(model_jobs)
    return conditions.make(
        "Stalled",
        bool(stalled) and not verdict.final,
        "PodCannotStart" if stalled else "Progressing",
        "; ".join(f"model {name}: {cause}" for name, cause in stalled) if stalled else "every model pod could start",
    )


def stall_deadline(spec: ABTestSpec, model_jobs: dict[str, JobState], verdict: Verdict, stalled: dict, now: datetime) -> Verdict:
    """Failed once the ``Stalled`` condition has been True for spec.stallTimeoutSeconds."""
    if stalled["status"] != "True":
        return verdict
    waited = seconds_since(stalled["lastTransitionTime"], now)
    if waited < spec.stall_timeout_seconds:
        return verdict
    name, cause = stalls(model_jobs)[0]
    reason = f"model {name} stalled for {int(waited)}s (spec.stallTimeoutSeconds {spec.stall_timeout_seconds}): {cause}"
    return Verdict(FAILED, reason, model_failed=True)


def placement_deadline(spec: ABTestSpec, model_jobs: dict[str, JobState], verdict: Verdict, placed: dict, now: datetime) -> Verdict:
    """Failed once ``AllModelsPlaced`` has been False for spec.startTimeoutSeconds (peers hold their GPUs meanwhile)."""
    if placed["status"] != "False" or verdict.final:
        return verdict
    waited = seconds_since(placed["lastTransitionTime"], now)
    if waited < spec.start_timeout_seconds:
        return verdict
    blocked = unplaced(model_jobs)
    if not blocked:  # carried over False (placed_condition) after the model was placed: nothing waits to be placed now
        return verdict
    name, cause = blocked[0]
    reason = (
        f"model {name} could not be placed beside its waiting peers for {int(waited)}s (spec.startTimeoutSeconds "
        f"{spec.start_timeout_seconds}): {cause}"
    )
    return Verdict(FAILED, reason, model_failed=True)


def outcome_conditions(model_jobs: dict[str, JobState], analysis: JobState, verdict: Verdict, conditions: Conditions) -> list[dict]:
    """``ModelsComplete``, ``Analyzed``, ``Ready`` and ``Failed``: what the verdict says, as conditions."""
    phase, done = verdict.phase, all(s.phase == JobPhase.SUCCEEDED for s in model_jobs.values())
    n_done = sum(s.phase == JobPhase.SUCCEEDED for s in model_jobs.values())
    ended = analysis.phase in (JobPhase.SUCCEEDED, JobPhase.FAILED)
    stopped_early = phase == SUCCEEDED and not done
    return [
        conditions.make(
            "ModelsComplete",
            True if done else (False if verdict.model_failed or phase == SUCCEEDED else None),
            "AllModelsSucceeded"
            if done
            else ("ModelFailed" if verdict.model_failed else ("StoppedEarly" if stopped_early else "Evaluating")),
            f"{n_done}/{len(model_jobs)} model Jobs succeeded" + ("; the sequential analysis stopped the rest" if stopped_early else ""),
        ),
        conditions.make(
            "Analyzed",
            analysis.phase == JobPhase.SUCCEEDED if ended else None,
            {JobPhase.SUCCEEDED: "AnalysisSucceeded", JobPhase.FAILED: "AnalysisFailed"}.get(analysis.phase, "Waiting"),
            {JobPhase.SUCCEEDED: "verdict written to status.result", JobPhase.FAILED: analysis.message}.get(
                analysis.phase, "waiting for the model Jobs"
            ),
        ),
        conditions.make("Ready", phase == SUCCEEDED, phase, "the A/B test has a verdict" if phase == SUCCEEDED else f"phase {phase}"),
        conditions.make("Failed", phase == FAILED, "Failed" if phase == FAILED else "NoFailure", verdict.reason),
    ]


def model_entries(spec: ABTestSpec, model_jobs: dict[str, JobState], phase: str, previous: dict) -> list[dict]:
    """``status.models``: each model's Job, phase and times, with what the analysis recorded of it."""
    results = ((previous.get("result") or {}).get("models")) or {}
    models = []
    for m in spec.models:
        s = model_jobs[m.name]
        # a sequential test that stopped early stops the models still evaluating
        shown = "Stopped" if phase == SUCCEEDED and s.phase in STALLABLE else s.phase.value
        entry = {"name": m.name, "architecture": m.architecture, "job": names.model_job_name(spec, m.name), "phase": shown}
        if s.start:
            entry["startTime"] = s.start
        if s.completion:
            entry["completionTime"] = s.completion
        entry.update(results.get(m.name) or {})
        models.append(entry)
    return models


def frozen_image(spec: ABTestSpec, model_jobs: dict[str, JobState], previous: dict, default_image: str) -> str:
    """The one evaluator image of this ABTest: what its first Job runs, once one exists (parity survives an operator
    upgrade mid-test), else what status recorded, else spec.image or the operator's image."""
    observed = [s.image for s in model_jobs.values() if s.image]
    return observed[0] if observed else previous.get("image") or spec.image or default_image


def unplaced(model_jobs: dict[str, JobState]) -> list[tuple[str, str]]:
    """The models whose pod the scheduler cannot place (for lack of GPUs, say), with the scheduler's reason."""
    return [(name, s.stall) for name, s in model_jobs.items() if s.stall.startswith(UNSCHEDULABLE) and s.phase in UNFINISHED]


def why_apart(model_jobs: dict[str, JobState], old: dict) -> str:
    """For a model that failed: why its peers were apart, if they were (a model that gave up waiting at the start
    barrier for a peer the scheduler could not place). A peer placed since (the failed pod freed its GPUs) is still
    named, from the AllModelsPlaced condition the status carries."""
    blocked = unplaced(model_jobs)
    if blocked:
        return "".join(f"; model {name} could not be placed: {cause}" for name, cause in blocked)
    was = old.get("AllModelsPlaced") or {}
    return "; " + was["message"].split(PLACEMENT_DEADLINE)[0] if was.get("status") == "False" else ""


def placed_condition(spec: ABTestSpec, model_jobs: dict[str, JobState], phase: str, conditions: Conditions) -> dict:
    """``AllModelsPlaced``: False while a model cannot be placed and others already run (they wait at the start barrier,
    holding their GPUs: the ABTest fails after spec.startTimeoutSeconds rather than hold them forever), True once every
    model has run."""
    blocked = unplaced(model_jobs)
    waiting = [name for name, s in model_jobs.items() if s.ready and name not in dict(blocked)]
    if blocked and waiting and phase not in TERMINAL_PHASES:
        message = "; ".join(
            f"model {name} cannot be placed while {', '.join(waiting)} wait(s) at the start barrier: {cause}" for name, cause in blocked
        )
        message += f"{PLACEMENT_DEADLINE} ({spec.start_timeout_seconds}s) unless it is placed"
        return conditions.make("AllModelsPlaced", False, "ModelUnschedulable", message)
    if all(s.ready or s.phase == JobPhase.SUCCEEDED for s in model_jobs.values()) or phase == SUCCEEDED:
        return conditions.make("AllModelsPlaced", True, "Placed", "every model's pod was placed")
    was = conditions.old.get("AllModelsPlaced") or {}
    if was.get("status") == "False":
        # False until every model is placed: a peer that gave up waiting frees its GPUs, the blocked model is placed a
        # moment before that peer's Job is seen Failed, and the failure's reason still has to name why they were apart
        return {**was, "observedGeneration": conditions.generation}
    return conditions.make("AllModelsPlaced", None, "Waiting", "waiting for the model pods to be placed")


def is_terminal(status: dict | None) -> bool:
    """Succeeded and Failed latch: once written, a verdict is never re-derived, even when the Jobs it was
    derived from are gone (ttlSecondsAfterFinished, a person, a restore without Jobs)."""
    return (status or {}).get("phase") in TERMINAL_PHASES


def wanted_objects(spec: ABTestSpec, phase: str) -> tuple[bool, bool]:
    """(create model Jobs?, create the analysis?) for a derived phase. A sequential analysis runs alongside the
    models from the start: it decides at each look they publish."""
    running = phase in (PENDING, RUNNING)
    return running, phase == ANALYZING or (running and spec.looks is not None)
