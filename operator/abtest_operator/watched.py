"""What the operator's watches have seen: its Jobs, their pods and the ABTests, kept in kopf indexes.

A reconcile pass reads these instead of listing: one watch per resource (server-side label selector),
no request per event. Each index keeps only the fields a pass reads (the operator's memory at 500 ABTests:
docs/benchmarks.md). Pure functions: the handlers register them with ``@kopf.index``, the handler
tests feed them the fake cluster's objects.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from abtest_api.constants import KIND, LABEL_NAME, LABEL_UID
from abtest_operator.jobs import job_facts


def owner_uid(obj: Mapping) -> str | None:
    """The UID of the ABTest that owns ``obj``, if one does; for a Job of an ABTest's JobSet (spec.queueName), the
    ABTest UID its template carries as a label."""
    meta = obj.get("metadata") or {}
    refs = meta.get("ownerReferences") or []
    uid = next((ref.get("uid") for ref in refs if ref.get("kind") == KIND), None)
    if uid is None and any(ref.get("kind") == "JobSet" for ref in refs):
        uid = (meta.get("labels") or {}).get(LABEL_UID)
    return uid


def _meta(obj: Mapping) -> dict:
    meta = obj.get("metadata") or {}
    keep = ("name", "namespace", "uid", "labels", "ownerReferences", "creationTimestamp", "resourceVersion")
    return {k: meta[k] for k in keep if k in meta}


def job_entry(job: Mapping) -> dict:
    """The part of a Job a pass reads: identity, suspension, container images, status."""
    spec = job.get("spec") or {}
    containers = (((spec.get("template") or {}).get("spec") or {}).get("containers")) or []
    return {
        "metadata": _meta(job),
        "spec": {"suspend": spec.get("suspend"), "template": {"spec": {"containers": [{"image": c.get("image")} for c in containers]}}},
        "status": dict(job.get("status") or {}),
    }


def pod_entry(pod: Mapping) -> dict:
    """The part of a pod a pass reads: why it cannot start, or how it ended."""
    status = pod.get("status") or {}
    keep = ("conditions", "containerStatuses", "initContainerStatuses", "phase")
    return {"metadata": _meta(pod), "status": {k: status[k] for k in keep if k in status}}


def index_job(body: Mapping, namespace: str) -> dict | None:
    """kopf index: an ABTest's Jobs under (namespace, ABTest UID)."""
    uid = owner_uid(body)
    return {(namespace, uid): job_entry(body)} if uid else None


def index_pod(body: Mapping, namespace: str) -> dict | None:
    """kopf index: an ABTest's pods under (namespace, Job name)."""
    job = ((body.get("metadata") or {}).get("labels") or {}).get("job-name")
    return {(namespace, job): pod_entry(body)} if job and LABEL_NAME in body["metadata"]["labels"] else None


def index_abtest(body: Mapping, namespace: str) -> dict:
    """kopf index: ABTests under (namespace, UID), for the Job events to find their owner without a GET."""
    return {(namespace, body["metadata"]["uid"]): {k: body[k] for k in ("apiVersion", "kind", "metadata", "spec", "status") if k in body}}


def _version(obj: Mapping) -> int | None:
    try:
        return int(obj["metadata"]["resourceVersion"])
    except (KeyError, TypeError, ValueError):
        return None


def newer(a: dict | None, b: dict | None) -> dict | None:
    """The later of two copies of one object, by resourceVersion (etcd's revision: an integer in every API server
    this runs against; were it not, the watched copy, ``a``, wins)."""
    if a is None or b is None:
        return a or b
    va, vb = _version(a), _version(b)
    return b if va is not None and vb is not None and vb > va else a


class Written:
    """What this operator wrote and the API server answered, until the watches deliver it: the ABTest after a status
    write, the Jobs after their creation. client-go's controllers keep "expectations" for the same reason: without
    them a pass that starts before the watch delivers the previous pass's writes creates and writes again (a 409
    each, and a GET to recover). An entry goes when its own watch event arrives (``echoes``) or the watch shows a
    later version, and after ``ttl`` seconds in any case (an object deleted before its watch event came, or whose
    event kopf folded into a later one, must not live on here).

    Passes run in kopf's worker threads, several ABTests at once: Jobs are kept per ABTest, so a pass reads only its
    own ABTest's entries, and never iterates a dict that another thread may be adding to (that raises "dictionary
    changed size during iteration" and fails the pass until the resync: docs/benchmarks.md)."""

    def __init__(self, ttl: float = 60.0, clock=time.monotonic):
        self.ttl, self.clock = ttl, clock
        self.abtests: dict[tuple[str, str], tuple[float, dict]] = {}
        self.jobs: dict[tuple[str, str], dict[str, tuple[float, dict]]] = {}  # by (namespace, ABTest UID), then Job name

    def abtest(self, body: dict) -> None:
        meta = body["metadata"]
        key = (meta["namespace"], meta["uid"])
        self.abtests[key] = (self.clock(), index_abtest(body, meta["namespace"])[key])

    def job(self, body: dict) -> None:
        uid = owner_uid(body)
        if uid:
            self.jobs.setdefault((body["metadata"]["namespace"], uid), {})[body["metadata"]["name"]] = (self.clock(), job_entry(body))

    def _current(self, table: dict, key, watched: Mapping | None) -> dict | None:
        """The written copy while the watch has not caught up with it; None (and the entry dropped) once it has."""
        stamp, mine = table.get(key, (0.0, None))
        if mine is None:
            return None
        seen, wrote = (_version(watched), _version(mine)) if watched is not None else (None, None)
        if (watched is not None and (seen is None or wrote is None or seen > wrote)) or self.clock() - stamp > self.ttl:
            table.pop(key, None)  # the watch is past it (or it is too old to trust)
            return None
        return None if seen == wrote and seen is not None else mine  # delivered: kept until its echo is recognised

    def abtest_over(self, namespace: str, uid: str, watched: dict | None) -> dict | None:
        return self._current(self.abtests, (namespace, uid), watched) or watched

    def jobs_over(self, namespace: str, uid: str, watched: dict[str, dict]) -> dict[str, dict]:
        out = dict(watched)
        table = self.jobs.get((namespace, uid), {})
        for name in list(table):  # a copy: a Job event's echo check may drop an entry meanwhile
            mine = self._current(table, name, watched.get(name))
            if mine is not None:
                out[name] = mine
        return out

    def echoes(self, body: Mapping) -> bool:
        """Whether a watch event carries exactly what this operator wrote (its own write coming back): a pass over
        it would find nothing new. The entry is done with either way once the watch has shown it."""
        meta = body.get("metadata") or {}
        namespace = meta.get("namespace")
        if body.get("kind") == KIND:
            table, key = self.abtests, (namespace, meta.get("uid"))
        else:
            table, key = self.jobs.get((namespace, owner_uid(body)), {}), meta.get("name")
        mine = table.get(key, (0.0, None))[1]
        echo = mine is not None and _version(mine) is not None and _version(mine) == _version(body)
        if echo:
            table.pop(key, None)
        else:
            self._current(table, key, body)
        return echo

    def forget(self, namespace: str, uid: str) -> None:
        self.abtests.pop((namespace, uid), None)
        self.jobs.pop((namespace, uid), None)


@dataclass(frozen=True)
class Observed:
    """The indexes as a pass reads them (kopf's ``Index`` is a mapping of key to a store of values), with this
    operator's own writes laid over them where the watch has not delivered them yet."""

    jobs: Mapping[tuple[str, str], Iterable[dict]]
    pods: Mapping[tuple[str, str], Iterable[dict]]
    abtests: Mapping[tuple[str, str], Iterable[dict]]
    written: Written = field(default_factory=Written)

    def jobs_of(self, namespace: str, uid: str) -> dict[str, dict]:
        # list(): one step in C, while the event loop's thread may be updating this index entry
        return self.written.jobs_over(namespace, uid, {j["metadata"]["name"]: j for j in list(self.jobs.get((namespace, uid), ()))})

    def pods_of(self, namespace: str, job: str) -> list[dict]:
        return list(self.pods.get((namespace, job), ()))

    def abtest(self, namespace: str, uid: str) -> dict | None:
        return self.written.abtest_over(namespace, uid, next(iter(self.abtests.get((namespace, uid), ())), None))


class JobNews:
    """Which Job events a pass would learn from: a deletion, or a change in what a pass reads of the Job
    (``jobs.job_facts``). The rest — the Job controller adding a Suspended condition to a queued Job, counting
    terminating pods, kopf's own annotations — would start passes that find nothing new: two per ABTest while its
    Jobs wait in a queue. Kept per Job UID (a Job re-created under its name is a new one) until it is deleted."""

    def __init__(self):
        self.facts: dict[tuple[str, str], tuple] = {}

    def news(self, event_type: str | None, job: Mapping) -> bool:
        """Whether this event changes what a pass would read; records what it shows either way."""
        meta = job["metadata"]
        key = (meta["namespace"], meta["uid"])
        if event_type == "DELETED":
            self.facts.pop(key, None)
            return True
        facts, before = job_facts(job), self.facts.get(key)
        self.facts[key] = facts
        return facts != before
