"""Status derived from the observed Jobs on every pass: phase, conditions, per-model entries, reason.

Pure: observed objects in, status out. Nothing is remembered between passes except what the status
itself carries (condition transition times, the analysis's result).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime

from abtest_api.constants import ANALYZING, FAILED, PENDING, RUNNING, SUCCEEDED, TERMINAL_PHASES
from abtest_operator import manifests
from abtest_operator.spec import ABTestSpec


@dataclass(frozen=True)
class JobState:
    phase: str  # Missing | Pending | Running | Succeeded | Failed
    reason: str = ""
    message: str = ""
    start: str | None = None
    completion: str | None = None
    stall: str = ""  # why its pod cannot start (unschedulable, image, admission, quota); "" when it can
    image: str | None = None  # the evaluator image the Job runs
    ready: bool = False  # a pod of it runs (ready): a model waiting at the start barrier holds its resources


# Container waiting reasons that do not resolve by themselves.
STALL_WAITING_REASONS = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName", "CreateContainerConfigError", "CreateContainerError"}
)


# The scheduler retries an unschedulable pod whenever the cluster changes (a claim binds, a node joins), so a
# pod is unschedulable for a moment while its PersistentVolumeClaim is being bound; only a lasting one is a stall.
UNSCHEDULABLE_GRACE_SECONDS = 10
UNSCHEDULABLE = "unschedulable: "  # how a stall cause for a pod no node fits begins


def pod_stall(pod: dict, now: datetime) -> str:
    """Why a pod cannot start, or "" when it is starting, running or done (or unschedulable only since a moment
    before ``now``)."""
    status = pod.get("status") or {}
    for c in status.get("conditions") or []:
        if c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("reason") == "Unschedulable":
            since = c.get("lastTransitionTime")
            if since and seconds_since(since, now) < UNSCHEDULABLE_GRACE_SECONDS:
                return ""
            return f"{UNSCHEDULABLE}{c.get('message') or 'no node fits'}"
    for cs in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in STALL_WAITING_REASONS:
            return f"{waiting['reason']}: {waiting.get('message') or 'the container cannot start'}"
    return ""


def seconds_since(stamp: str, now: datetime) -> float:
    """Seconds from a Kubernetes timestamp ("2026-12-01T21:52:53Z") to ``now``."""
    return (now - datetime.fromisoformat(stamp.replace("Z", "+00:00"))).total_seconds()


def job_state(job: dict | None, pod_message: str = "") -> JobState:
    """What one observed Job says: its terminal conditions first, then active pods."""
    if job is None:
        return JobState("Missing")
    return replace(_phase_of(job, pod_message), image=next(iter(job_images(job)), None))


def job_images(job: dict) -> list[str]:
    return [c.get("image") for c in (((job.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers") or []]


def _phase_of(job: dict, pod_message: str) -> JobState:
    status = job.get("status") or {}
    conditions = {c["type"]: c for c in status.get("conditions") or [] if c.get("status") == "True"}
    start, completion = status.get("startTime"), status.get("completionTime")
    for kind in ("Failed", "FailureTarget"):
        if kind in conditions:
            c = conditions[kind]
            return JobState("Failed", c.get("reason", ""), pod_message or c.get("message", ""), start, c.get("lastTransitionTime"))
    for kind in ("Complete", "SuccessCriteriaMet"):
        if kind in conditions:
            return JobState("Succeeded", start=start, completion=completion or conditions[kind].get("lastTransitionTime"))
    if status.get("active") or status.get("ready"):  # (a pod the scheduler cannot place counts as active)
        return JobState("Running", start=start, ready=bool(status.get("ready")))
    return JobState("Pending", start=start)


def all_ready(job: dict) -> bool:
    """Whether every pod the Job wants is ready (a Job with no pod yet counts as one not ready)."""
    st = job.get("status") or {}
    return (st.get("ready") or 0) >= (st.get("active") or 1)


def job_facts(job: dict) -> tuple[JobState, bool, bool]:
    """All a pass reads of one Job: its state, whether it is suspended and whether its pods are all ready."""
    return job_state(job), bool(job["spec"].get("suspend")), all_ready(job)


def frozen_image(spec: ABTestSpec, model_jobs: dict[str, JobState], previous: dict, default_image: str) -> str:
    """The one evaluator image of this ABTest: what its first Job runs, once one exists (parity survives an operator
    upgrade mid-test), else what status recorded, else spec.image or the operator's image."""
    observed = [s.image for s in model_jobs.values() if s.image]
    return observed[0] if observed else previous.get("image") or spec.image or default_image


def _condition(type_: str, ok: bool | None, reason: str, message: str, previous: dict, now: str, generation: int) -> dict:
    status = "Unknown" if ok is None else str(ok)
    old = previous.get(type_)
    changed = old is None or old.get("status") != status
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": now if changed else old.get("lastTransitionTime", now),
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
    """The whole status (but ``result``, which the analysis Job writes) from observed Job states."""
    previous = previous or {}
    stamp = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    failed = [(name, s) for name, s in model_jobs.items() if s.phase == "Failed"]
    done = all(s.phase == "Succeeded" for s in model_jobs.values())
    reason = ""
    old = {c["type"]: c for c in previous.get("conditions") or []}
    if failed:
        name, s = failed[0]
        phase, reason = FAILED, f"model {name} failed: " + ": ".join(x for x in (s.reason, s.message) if x)
        reason += why_apart(model_jobs, old)
    elif analysis.phase == "Failed":
        phase, reason = FAILED, "analysis failed: " + ": ".join(x for x in (analysis.reason, analysis.message) if x)
    elif analysis.phase == "Succeeded":
        phase = SUCCEEDED
    elif done:
        phase = ANALYZING
    elif any(s.phase in ("Running", "Succeeded") for s in model_jobs.values()):
        phase = RUNNING
    else:
        phase = PENDING

    stalled = [(name, s.stall) for name, s in model_jobs.items() if s.stall and s.phase in ("Pending", "Running", "Missing")]
    stall_message = "; ".join(f"model {name}: {cause}" for name, cause in stalled)
    stalled_condition = _condition(
        "Stalled",
        bool(stalled) and phase not in (SUCCEEDED, FAILED),
        "PodCannotStart" if stalled else "Progressing",
        stall_message if stalled else "every model pod could start",
        old,
        stamp,
        generation,
    )
    if stalled and phase not in (SUCCEEDED, FAILED):
        waited = seconds_since(stalled_condition["lastTransitionTime"], now or datetime.now(UTC))
        if waited >= spec.stall_timeout_seconds:
            name, cause = stalled[0]
            phase, reason = (
                FAILED,
                f"model {name} stalled for {int(waited)}s (spec.stallTimeoutSeconds {spec.stall_timeout_seconds}): {cause}",
            )
            failed = [(name, model_jobs[name])]
    together_condition = _together(spec, model_jobs, phase, old, stamp, generation)
    if together_condition["status"] == "False" and phase not in (SUCCEEDED, FAILED):
        waited = seconds_since(together_condition["lastTransitionTime"], now or datetime.now(UTC))
        if waited >= spec.start_timeout_seconds:
            name, cause = unplaced(model_jobs)[0]
            phase, reason = (
                FAILED,
                f"model {name} could not be placed beside its waiting peers for {int(waited)}s (spec.startTimeoutSeconds "
                f"{spec.start_timeout_seconds}): {cause}",
            )
            failed = [(name, model_jobs[name])]
    n_done = sum(s.phase == "Succeeded" for s in model_jobs.values())
    conditions = [
        _condition(
            "ModelsComplete",
            True if done else (False if failed or phase == SUCCEEDED else None),
            "AllModelsSucceeded" if done else ("ModelFailed" if failed else ("StoppedEarly" if phase == SUCCEEDED else "Evaluating")),
            f"{n_done}/{len(model_jobs)} model Jobs succeeded"
            + ("; the sequential analysis stopped the rest" if phase == SUCCEEDED and not done else ""),
            old,
            stamp,
            generation,
        ),
        _condition(
            "Analyzed",
            analysis.phase == "Succeeded" if analysis.phase in ("Succeeded", "Failed") else None,
            {"Succeeded": "AnalysisSucceeded", "Failed": "AnalysisFailed"}.get(analysis.phase, "Waiting"),
            {"Succeeded": "verdict written to status.result", "Failed": analysis.message}.get(analysis.phase, "waiting for the model Jobs"),
            old,
            stamp,
            generation,
        ),
        _condition(
            "Ready",
            phase == SUCCEEDED,
            phase,
            "the A/B test has a verdict" if phase == SUCCEEDED else f"phase {phase}",
            old,
            stamp,
            generation,
        ),
        _condition("Failed", phase == FAILED, "Failed" if phase == FAILED else "NoFailure", reason, old, stamp, generation),
        stalled_condition,
        together_condition,
    ]
    results = ((previous.get("result") or {}).get("models")) or {}
    models = []
    for m in spec.models:
        s = model_jobs[m.name]
        # a sequential test that stopped early stops the models still evaluating
        shown = "Stopped" if phase == SUCCEEDED and s.phase in ("Pending", "Running", "Missing") else s.phase
        entry = {"name": m.name, "architecture": m.architecture, "job": manifests.model_job_name(spec, m.name), "phase": shown}
        if s.start:
            entry["startTime"] = s.start
        if s.completion:
            entry["completionTime"] = s.completion
        entry.update(results.get(m.name) or {})
        models.append(entry)
    starts = [s.start for s in model_jobs.values() if s.start]
    status = {
        "phase": phase,
        "reason": reason,
        "observedGeneration": generation,
        "modelCount": len(spec.models),
        "resultsPath": manifests.results_dir(spec),
        "image": frozen_image(spec, model_jobs, previous, default_image),
        "conditions": conditions,
        "models": models,
    }
    if starts:
        status["startTime"] = previous.get("startTime") or min(starts)
    if phase in (SUCCEEDED, FAILED):
        status["completionTime"] = previous.get("completionTime") or stamp
    return status


def unplaced(model_jobs: dict[str, JobState]) -> list[tuple[str, str]]:
    """The models whose pod the scheduler cannot place (for lack of GPUs, say), with the scheduler's reason."""
    return [(name, s.stall) for name, s in model_jobs.items() if s.stall.startswith(UNSCHEDULABLE) and s.phase in ("Pending", "Running")]


PLACEMENT_DEADLINE = "; the ABTest fails after spec.startTimeoutSeconds"


def why_apart(model_jobs: dict[str, JobState], old: dict) -> str:
    """For a model that failed: why its peers were apart, if they were (a model that gave up waiting at the start
    barrier for a peer the scheduler could not place). A peer placed since (the failed pod freed its GPUs) is still
    named, from the AllModelsPlaced condition the status carries."""
    blocked = unplaced(model_jobs)
    if blocked:
        return "".join(f"; model {name} could not be placed: {cause}" for name, cause in blocked)
    was = old.get("AllModelsPlaced") or {}
    return "; " + was["message"].split(PLACEMENT_DEADLINE)[0] if was.get("status") == "False" else ""


def _together(spec: ABTestSpec, model_jobs: dict[str, JobState], phase: str, old: dict, stamp: str, generation: int) -> dict:
    """``AllModelsPlaced``: False while a model cannot be placed and others already run (they wait at the start barrier,
    holding their GPUs: the ABTest fails after spec.startTimeoutSeconds rather than hold them forever), True once every
    model has run."""
    waiting = [name for name, s in model_jobs.items() if s.ready and name not in dict(unplaced(model_jobs))]
    blocked = unplaced(model_jobs)
    if blocked and waiting and phase not in (SUCCEEDED, FAILED):
        message = "; ".join(
            f"model {name} cannot be placed while {', '.join(waiting)} wait(s) at the start barrier: {cause}" for name, cause in blocked
        )
        message += f"{PLACEMENT_DEADLINE} ({spec.start_timeout_seconds}s) unless it is placed"
        return _condition("AllModelsPlaced", False, "ModelUnschedulable", message, old, stamp, generation)
    if all(s.ready or s.phase == "Succeeded" for s in model_jobs.values()) or phase == SUCCEEDED:
        return _condition("AllModelsPlaced", True, "Placed", "every model's pod was placed", old, stamp, generation)
    was = old.get("AllModelsPlaced") or {}
    if was.get("status") == "False":
        # False until every model is placed: a peer that gave up waiting frees its GPUs, the blocked model is placed a
        # moment before that peer's Job is seen Failed, and the failure's reason still has to name why they were apart
        return {**was, "observedGeneration": generation}
    return _condition("AllModelsPlaced", None, "Waiting", "waiting for the model pods to be placed", old, stamp, generation)


def is_terminal(status: dict | None) -> bool:
    """Succeeded and Failed latch: once written, a verdict is never re-derived, even when the Jobs it was
    derived from are gone (ttlSecondsAfterFinished, a person, a restore without Jobs)."""
    return (status or {}).get("phase") in TERMINAL_PHASES


def wanted_objects(spec: ABTestSpec, phase: str) -> tuple[bool, bool]:
    """(create model Jobs?, create the analysis?) for a derived phase. A sequential analysis runs alongside the
    models from the start: it decides at each look they publish."""
    running = phase in (PENDING, RUNNING)
    return running, phase == ANALYZING or (running and spec.looks is not None)
