"""The reconcile pass, observe -> derive -> act: read an ABTest's Jobs from the watches (``watched``, ``jobs``), derive
its status (``status``), create what is missing, write the status, post Events, stop what a finished ABTest leaves.

Level-triggered: every pass decides from what exists now, and creates under deterministic names, so an operator
killed at any moment resumes without duplicates. handlers.py calls this from kopf's handlers; the handler tests
call it directly with fake clients.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime

import kopf
from kubernetes.client.exceptions import ApiException

from abtest_api.constants import FAILED, GROUP, LABEL_MODEL, PLURAL, SUCCEEDED, VERSION
from abtest_api.errors import NameConflict, UserError
from abtest_operator import jobs, manifests, names, policy, status, watched
from abtest_operator.clients import Clients
from abtest_operator.jobs import UNFINISHED, JobPhase, JobState
from abtest_operator.settings import OperatorConfig
from abtest_operator.spec import ABTestSpec, parse_abtest
from abtest_operator.state import ABTestRecord, EventPoster, OperatorState
from abtest_operator.watched import Observed, Written

# A Job without a pod this long after its creation is asked why (its FailedCreate Events); the Job
# controller creates pods within milliseconds, so earlier the question would be a wasted request.
POD_CREATE_GRACE_SECONDS = 10

JOBSET_API = (names.JOBSET_GROUP, names.JOBSET_VERSION)


# --- which events start a pass ---------------------------------------------------------------------------------


def abtest_event(state: OperatorState, event_type: str | None, body: Mapping, seen: Observed) -> None:
    """An ABTest's event: a deletion forgets it; any other event starts a pass unless the ABTest is finished or the
    event is this operator's own write coming back. At startup (``event_type`` None: kopf's initial listing) finished
    ones get a pass too, for their metrics."""
    meta = body["metadata"]
    if event_type == "DELETED":
        state.forget(meta["namespace"], meta["name"], meta["uid"])
    elif event_type is None or not (status.is_terminal(body.get("status")) or state.written.echoes(body)):
        guarded(state, dict(body), seen)


def job_event(state: OperatorState, event_type: str | None, job: Mapping, namespace: str, seen: Observed) -> None:
    """A Job's event starts a pass of its ABTest when it changes what a pass reads (``JobNews``) and is not this
    operator's own write coming back; a Job of a finished ABTest that still runs is stopped instead."""
    news = state.job_news.news(event_type, job)  # recorded for every event, echoes included
    uid = watched.owner_uid(job)
    abtest = seen.abtest(namespace, uid) if uid else None
    if abtest is None:  # not ours, or the ABTest is gone (garbage collection takes its Jobs)
        return
    if status.is_terminal(abtest.get("status")):
        stop_leftover(state.clients, namespace, dict(job))
        return
    if not state.written.echoes(job) and news:  # (the echo check first: it retires our own write's entry)
        guarded(state, abtest, seen)


def guarded(state: OperatorState, abtest: dict, seen: Observed) -> None:
    """One pass at a time per ABTest (concurrent Job events would otherwise race to the same creates and writes),
    over the newest copy of it: the watched one, or what this operator last wrote. A pass that raised is counted
    and re-raised (kopf logs it; the resync retries)."""
    meta = abtest["metadata"]
    namespace, uid = meta["namespace"], meta["uid"]
    record = state.record(namespace, uid)
    with record.lock:
        record.last_pass = state.clock()
        try:
            reconcile(state, copy.deepcopy(watched.newer(abtest, seen.abtest(namespace, uid))), seen)
        except kopf.PermanentError:
            pass  # already marked Failed with its reason
        except Exception:
            state.metrics.reconcile_errors.labels(namespace).inc()
            raise


# --- the pass ----------------------------------------------------------------------------------------------------


def reconcile(
    state: OperatorState, abtest: dict, seen: Observed, now: datetime | None = None, *, reread: bool = True, created_before: tuple = ()
) -> dict:
    """One pass: observe the Jobs, derive the status, create what is missing, write the status."""
    clients, cfg, metrics = state.clients, state.config, state.metrics
    now = now or datetime.now(UTC)
    meta = abtest["metadata"]
    generation, old = meta.get("generation", 1), abtest.get("status") or {}
    metrics.reconciles.labels(meta["namespace"]).inc()
    if status.is_terminal(old):  # nothing to observe, create or rewrite
        metrics.observe(meta["namespace"], meta["name"], old)
        return old
    try:
        spec = parsed_spec(state.record(meta["namespace"], meta["uid"]), abtest)
        policy.check(spec, cfg)
        models, analysis = observe(clients, seen, spec, now)
        new = status.derive_status(spec, generation, models, analysis, previous=old, now=now, default_image=cfg.image)
        wanted = apply_wanted(clients, replace(cfg, image=new["image"]), spec, new["phase"], models, analysis, seen.written, state.claims)
        created = [*created_before, *wanted]
        if created:  # write what now exists: the Jobs just created are Pending (saves the next pass a status write)
            models, analysis = as_created(spec, models, analysis, created, new["image"])
            new = status.derive_status(spec, generation, models, analysis, previous=old, now=now, default_image=cfg.image)
    except UserError as err:
        raise fail_invalid(state, abtest, seen, err) from None
    if any(new.get(k) != old.get(k) for k in new):
        if written := patch_status(clients, meta, new):
            seen.written.abtest(written)
        elif not reread:
            return old
        else:  # someone else wrote the ABTest since (the analysis, say): decide again from it, once; never overwrite it
            fresh = clients.custom.get_namespaced_custom_object(GROUP, VERSION, spec.namespace, PLURAL, spec.name)
            if fresh["metadata"]["uid"] != spec.uid:
                return old
            seen.written.abtest(fresh)
            return reconcile(state, fresh, seen, now, reread=False, created_before=tuple(created))  # the Events still say it
    if status.is_terminal(new):  # stop paying for what is left (after a crash here, job_event does it)
        stop_unfinished(clients, spec, models, analysis)
    announce(state.events, abtest, old, new, created)
    metrics.observe(spec.namespace, spec.name, {**old, **new})
    return new


def parsed_spec(record: ABTestRecord, abtest: dict) -> ABTestSpec:
    """parse_abtest (a validation against the CRD schema) once per generation of an ABTest, kept in its record: the
    spec changes only with the generation, and every Job event starts a pass."""
    generation = abtest["metadata"].get("generation")
    cached = record.parsed
    if generation is not None and cached and cached[0] == generation:
        return cached[1]
    spec = parse_abtest(abtest)
    record.parsed = (generation, spec)
    return spec


def fail_invalid(state: OperatorState, abtest: dict, seen: Observed, err: UserError) -> kopf.PermanentError:
    """An ABTest this operator cannot run (its spec, or a name another object holds): marked Failed with the reason,
    once, with a Warning; the error for kopf not to retry."""
    meta, old = abtest["metadata"], abtest.get("status") or {}
    failed = {"phase": FAILED, "reason": str(err), "observedGeneration": meta.get("generation", 1)}
    if old.get("reason") != failed["reason"] and (written := patch_status(state.clients, meta, failed)):
        seen.written.abtest(written)
        state.events.warn(abtest, reason="NameConflict" if isinstance(err, NameConflict) else "InvalidSpec", message=str(err))
    state.metrics.observe(meta["namespace"], meta["name"], failed)
    return kopf.PermanentError(str(err))


# --- observe -----------------------------------------------------------------------------------------------------


def observe(clients: Clients, seen: Observed, spec: ABTestSpec, now: datetime) -> tuple[dict[str, JobState], JobState]:
    """The ABTest's Job states from what the watches saw; the only request is for a Job that has had no pod
    for a while (its FailedCreate Events say why: admission, quota)."""
    mine = seen.jobs_of(spec.namespace, spec.uid)

    def stall(job: dict) -> str:
        pods = seen.pods_of(spec.namespace, job["metadata"]["name"])
        cause = next((c for c in (jobs.pod_stall(pod, now) for pod in pods) if c), "")
        if cause or pods or (job.get("status") or {}).get("active") or _age(job, now) < POD_CREATE_GRACE_SECONDS:
            return cause  # a Job with an active pod has one (the pod watch lags): nothing to ask
        return refused_pod_creation(clients, spec.namespace, job["metadata"]["name"])

    def state(name: str) -> JobState:
        job = mine.get(name)
        observed = jobs.job_state(job)
        if observed.phase == JobPhase.FAILED:  # name the cause: the failed pod's termination message
            observed = jobs.job_state(job, jobs.failure_message(seen.pods_of(spec.namespace, name)))
        elif observed.phase in UNFINISHED and not job["spec"].get("suspend") and not jobs.all_ready(job):
            observed = replace(observed, stall=stall(job))
        return observed

    models = {m.name: state(names.model_job_name(spec, m.name)) for m in spec.models}
    return models, state(names.analysis_job_name(spec))


def _age(obj: dict, now: datetime) -> float:
    created = obj["metadata"].get("creationTimestamp")
    return jobs.seconds_since(created, now) if created else 0.0


def refused_pod_creation(clients: Clients, namespace: str, job: str) -> str:
    """Why the Job controller cannot create the Job's pod (admission, quota), from its FailedCreate Events."""
    events = clients.core.list_namespaced_event(
        namespace, field_selector=f"involvedObject.kind=Job,involvedObject.name={job},reason=FailedCreate"
    ).items
    if not events:
        return ""
    latest = max(events, key=lambda e: e.last_timestamp or e.event_time or e.metadata.creation_timestamp)
    return f"pod creation refused: {(latest.message or '').strip()[:400]}"


# --- act ---------------------------------------------------------------------------------------------------------


def create_if_missing(create, namespace: str, body: dict, read=None):
    """What ``create`` answered (the created object), or None when it existed. "Already exists" is success
    (deterministic names make creates idempotent), but only when ``read`` (the matching read call) shows the existing
    object is owned by the same ABTest: a Job of another ABTest under the same name is a collision, and fails this
    ABTest with the reason."""
    try:
        return create(namespace, body)
    except ApiException as err:
        if err.status != 409:
            raise
    if read is not None:
        existing = read(body["metadata"]["name"], namespace)
        refs = existing["metadata"].get("ownerReferences") if isinstance(existing, dict) else existing.metadata.owner_references
        owners = {ref["uid"] if isinstance(ref, dict) else ref.uid for ref in refs or []}
        mine = {ref["uid"] for ref in body["metadata"].get("ownerReferences", [])}
        if not owners & mine:
            raise NameConflict(
                f"{body['kind']} {namespace}/{body['metadata']['name']} already exists and belongs to something else "
                "(another ABTest whose name and model names join to the same name); rename this ABTest or its models"
            )
    return None


def apply_wanted(
    clients: Clients,
    cfg: OperatorConfig,
    spec: ABTestSpec,
    phase: str,
    models: dict[str, JobState],
    analysis: JobState,
    written: Written,
    claims: set[tuple[str, str]],
) -> list[str]:
    """Create what the phase calls for and the observation lacks (a create racing another pass is still fine); each
    created Job is recorded in ``written`` until the watch delivers it. ``claims``: results claims known to exist
    (shared by every ABTest of a namespace: asked for once)."""
    make_models, make_analysis = status.wanted_objects(spec, phase)
    created = []

    def create_job(job: dict) -> None:
        answer = create_if_missing(clients.create_job, spec.namespace, job, clients.batch.read_namespaced_job)
        if answer:
            written.job(answer)
            created.append(job["metadata"]["name"])

    missing = {name for name, state in models.items() if state.phase == JobPhase.MISSING}
    if make_models and missing:
        claim = manifests.build_results_claim(spec, cfg)
        if claim and (spec.namespace, claim["metadata"]["name"]) not in claims:
            create_if_missing(clients.core.create_namespaced_persistent_volume_claim, spec.namespace, claim)
            claims.add((spec.namespace, claim["metadata"]["name"]))
        if spec.queue_name:  # one JobSet: its controller creates the model Jobs (again, should one be deleted)
            if create_jobset(clients, manifests.build_jobset(spec, cfg)):
                created.append(names.jobset_name(spec))
        else:
            for job in manifests.model_jobs(spec, cfg):
                if job["metadata"]["labels"][LABEL_MODEL] in missing:
                    create_job(job)
    if make_analysis and analysis.phase == JobPhase.MISSING:
        sa, role, binding = manifests.build_analysis_rbac(spec)
        create_if_missing(clients.core.create_namespaced_service_account, spec.namespace, sa)
        create_if_missing(clients.rbac.create_namespaced_role, spec.namespace, role)
        create_if_missing(clients.rbac.create_namespaced_role_binding, spec.namespace, binding)
        create_job(manifests.build_analysis_job(spec, cfg))
    return created


def as_created(
    spec: ABTestSpec, models: dict[str, JobState], analysis: JobState, created: list[str], image: str
) -> tuple[dict[str, JobState], JobState]:
    """The observation with what this pass created (a JobSet, for its models) as Pending Jobs."""
    pending = JobState(JobPhase.PENDING, image=image)
    jobset = bool(spec.queue_name) and names.jobset_name(spec) in created
    models = {n: pending if jobset or names.model_job_name(spec, n) in created else s for n, s in models.items()}
    return models, pending if names.analysis_job_name(spec) in created else analysis


def create_jobset(clients: Clients, jobset: dict) -> dict | None:
    """Creates the ABTest's JobSet (None when it existed); a cluster without JobSet's CRD is the user's to fix."""
    namespace = jobset["metadata"]["namespace"]

    def create(ns: str, body: dict) -> dict:
        return clients.custom.create_namespaced_custom_object(*JOBSET_API, ns, names.JOBSET_PLURAL, body)

    def read(name: str, ns: str) -> dict:
        return clients.custom.get_namespaced_custom_object(*JOBSET_API, ns, names.JOBSET_PLURAL, name)

    try:
        return create_if_missing(create, namespace, jobset, read)
    except ApiException as err:
        if err.status == 404:
            raise UserError(
                "spec.queueName needs JobSet (jobset.x-k8s.io) and Kueue in the cluster, to admit every model or none; "
                "install both, or leave spec.queueName unset"
            ) from None
        raise


def delete_jobset(clients: Clients, namespace: str, name: str) -> None:
    """Stops a JobSet's models: Kueue would resume a suspended one it admitted, so it is deleted (its Jobs, their pods
    and its Kueue workload, whose quota frees, go with it); gone already is fine."""
    try:
        clients.custom.delete_namespaced_custom_object(*JOBSET_API, namespace, names.JOBSET_PLURAL, name, propagation_policy="Background")
    except ApiException as err:
        if err.status != 404:
            raise


def stop_unfinished(clients: Clients, spec: ABTestSpec, models: dict[str, JobState], analysis: JobState) -> None:
    """What a finished ABTest leaves running stops costing: the other models of a failed test, the models of a
    sequential test that stopped early, its analysis when a model failed."""
    running = {names.model_job_name(spec, name) for name, state in models.items() if state.phase in UNFINISHED}
    if running and spec.queue_name:
        delete_jobset(clients, spec.namespace, names.jobset_name(spec))
    elif running:
        for name in sorted(running):
            suspend_job(clients, spec.namespace, name)
    if analysis.phase in UNFINISHED:
        suspend_job(clients, spec.namespace, names.analysis_job_name(spec))


def stop_leftover(clients: Clients, namespace: str, job: dict) -> None:
    """A Job of a finished ABTest that still runs stops: its JobSet is deleted, or the Job suspended."""
    if job["spec"].get("suspend") or jobs.job_state(job).phase not in UNFINISHED:
        return
    jobset = next((ref["name"] for ref in job["metadata"].get("ownerReferences") or [] if ref.get("kind") == "JobSet"), None)
    if jobset:
        delete_jobset(clients, namespace, jobset)
    else:
        suspend_job(clients, namespace, job["metadata"]["name"])


def suspend_job(clients: Clients, namespace: str, name: str) -> None:
    """Suspends a Job (the Job controller then removes its pods); gone already is fine."""
    try:
        clients.batch.patch_namespaced_job(name, namespace, {"spec": {"suspend": True}})
    except ApiException as err:
        if err.status != 404:
            raise


def patch_status(clients: Clients, meta: dict, new: dict) -> dict | None:
    """Merge-patches the status on the condition that nobody wrote the ABTest since this pass read it
    (its resourceVersion): passes run concurrently (Job events, the resync), and an older pass must
    never overwrite a newer verdict. The ABTest as written, or None when the precondition failed."""
    body = {"metadata": {"resourceVersion": meta["resourceVersion"]}, "status": new}
    try:
        return clients.custom.patch_namespaced_custom_object_status(GROUP, VERSION, meta["namespace"], PLURAL, meta["name"], body)
    except ApiException as err:
        if err.status == 409:
            return None
        raise


def announce(events: EventPoster, body: dict, old: dict, new: dict, created: list[str]) -> None:
    """Kubernetes Events at each transition: one Normal Event per pass at most (each is a request)."""
    stalled = next((c for c in new.get("conditions", []) if c["type"] == "Stalled" and c["status"] == "True"), None)
    was_stalled = any(c["type"] == "Stalled" and c["status"] == "True" for c in old.get("conditions") or [])
    if stalled and not was_stalled:
        events.warn(body, reason="Stalled", message=stalled["message"])
    apart = next((c for c in new.get("conditions", []) if c["type"] == "AllModelsPlaced" and c["status"] == "False"), None)
    if apart and not any(c["type"] == "AllModelsPlaced" and c["status"] == "False" for c in old.get("conditions") or []):
        events.warn(body, reason="ModelUnschedulable", message=apart["message"])
    changed = old.get("phase") != new["phase"]
    if changed and new["phase"] == FAILED:
        events.warn(body, reason="Failed", message=new["reason"])
    elif changed and new["phase"] == SUCCEEDED:
        events.info(body, reason="Succeeded", message=((old.get("result") or {}).get("verdict") or "analysis complete"))
    elif changed or created:
        said = [f"phase {old.get('phase') or 'none'} -> {new['phase']}"] if changed else []
        said += [f"created {', '.join(created)}"] if created else []
        events.info(body, reason="JobsCreated" if created else new["phase"], message="; ".join(said))
