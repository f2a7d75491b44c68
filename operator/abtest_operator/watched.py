"""What the operator's watches have seen: its Jobs, their pods and the ABTests, kept in kopf indexes.

A reconcile pass reads these instead of listing: one watch per resource (server-side label selector),
no request per event. Each index keeps only the fields a pass reads, so 500 ABTests with their Jobs
and pods stay a few MiB. Pure functions: the handlers register them with ``@kopf.index``, the handler
tests feed them the fake cluster's objects.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from abtest_api.constants import KIND, LABEL_NAME


def owner_uid(obj: Mapping) -> str | None:
    """The UID of the ABTest that owns ``obj``, if one does."""
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return next((ref.get("uid") for ref in refs if ref.get("kind") == KIND), None)


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


def newer(a: dict | None, b: dict | None) -> dict | None:
    """The later of two copies of one object, by resourceVersion (etcd's revision: an integer in every API server
    this runs against; were it not, the watched copy, ``a``, wins)."""
    if a is None or b is None:
        return a or b
    try:
        return b if int(b["metadata"]["resourceVersion"]) > int(a["metadata"]["resourceVersion"]) else a
    except (KeyError, ValueError):
        return a


class Written:
    """What this operator wrote and the API server answered, until the watches catch up: the ABTest after a status
    write, the Jobs after their creation. client-go's controllers keep "expectations" for the same reason: without
    them a pass that starts before the watch delivers the previous pass's writes creates and writes again (a 409
    each, and a GET to recover)."""

    def __init__(self):
        self.abtests: dict[tuple[str, str], dict] = {}
        self.jobs: dict[tuple[str, str], dict[str, dict]] = {}

    def abtest(self, body: dict) -> None:
        meta = body["metadata"]
        self.abtests[(meta["namespace"], meta["uid"])] = index_abtest(body, meta["namespace"])[(meta["namespace"], meta["uid"])]

    def job(self, body: dict) -> None:
        uid = owner_uid(body)
        if uid:
            self.jobs.setdefault((body["metadata"]["namespace"], uid), {})[body["metadata"]["name"]] = job_entry(body)

    def echoes(self, body: Mapping) -> bool:
        """Whether a watch event carries exactly what this operator wrote (its own write coming back): a pass over
        it would find nothing new."""
        meta = body.get("metadata") or {}
        uid = meta.get("uid") if body.get("kind") == KIND else owner_uid(body)
        mine = (
            self.abtests.get((meta.get("namespace"), uid))
            if body.get("kind") == KIND
            else self.jobs.get((meta.get("namespace"), uid), {}).get(meta.get("name"))
        )
        return bool(mine) and mine["metadata"].get("resourceVersion") == meta.get("resourceVersion")

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
        seen = {j["metadata"]["name"]: j for j in self.jobs.get((namespace, uid), ())}
        for name, job in self.written.jobs.get((namespace, uid), {}).items():
            seen[name] = newer(seen.get(name), job)
        return seen

    def pods_of(self, namespace: str, job: str) -> list[dict]:
        return list(self.pods.get((namespace, job), ()))

    def abtest(self, namespace: str, uid: str) -> dict | None:
        return newer(next(iter(self.abtests.get((namespace, uid), ())), None), self.written.abtests.get((namespace, uid)))
