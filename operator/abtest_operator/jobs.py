"""Reading one Job and its pods: its phase, why its pod cannot start, how it failed.

Pure: the watched objects (dicts) in, a ``JobState`` out. The ABTest's status is derived from these in
status.py; a Job's phase (``JobPhase``) is its own type, never an ABTest phase.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from datetime import datetime


class JobPhase(enum.StrEnum):
    """What one Job is doing, as a pass reads it (an ABTest's phase is another thing: abtest_api.constants)."""

    MISSING = "Missing"  # no such Job (yet, or any more)
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


UNFINISHED = frozenset({JobPhase.PENDING, JobPhase.RUNNING})  # a Job that still runs, or will: it costs until stopped


@dataclass(frozen=True)
class JobState:
    phase: JobPhase
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


def failure_message(pods: list[dict]) -> str:
    """The newest failed pod's termination message: the evaluator's one-line error."""
    for pod in sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp") or "", reverse=True):
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = (cs.get("state") or {}).get("terminated") or {}
            if terminated.get("exitCode"):
                text = (terminated.get("message") or terminated.get("reason") or f"exit code {terminated['exitCode']}").strip()
                return text.splitlines()[-1].removeprefix("error: ")[:500]
    return ""


def seconds_since(stamp: str, now: datetime) -> float:
    """Seconds from a Kubernetes timestamp ("2026-12-01T21:52:53Z") to ``now``."""
    return (now - datetime.fromisoformat(stamp.replace("Z", "+00:00"))).total_seconds()


def job_state(job: dict | None, pod_message: str = "") -> JobState:
    """What one observed Job says: its terminal conditions first, then active pods."""
    if job is None:
        return JobState(JobPhase.MISSING)
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
            return JobState(JobPhase.FAILED, c.get("reason", ""), pod_message or c.get("message", ""), start, c.get("lastTransitionTime"))
    for kind in ("Complete", "SuccessCriteriaMet"):
        if kind in conditions:
            return JobState(JobPhase.SUCCEEDED, start=start, completion=completion or conditions[kind].get("lastTransitionTime"))
    if status.get("active") or status.get("ready"):  # (a pod the scheduler cannot place counts as active)
        return JobState(JobPhase.RUNNING, start=start, ready=bool(status.get("ready")))
    return JobState(JobPhase.PENDING, start=start)


def all_ready(job: dict) -> bool:
    """Whether every pod the Job wants is ready (a Job with no pod yet counts as one not ready)."""
    st = job.get("status") or {}
    return (st.get("ready") or 0) >= (st.get("active") or 1)


def job_facts(job: dict) -> tuple[JobState, bool, bool]:
    """All a pass reads of one Job: its state, whether it is suspended and whether its pods are all ready."""
    return job_state(job), bool(job["spec"].get("suspend")), all_ready(job)
