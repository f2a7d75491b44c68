"""kopf handlers: thin. Parse, build, observe, derive, apply; everything else lives in pure modules.

Clients, settings, metrics and the Event poster live in kopf's ``memo`` (set up by ``abtest operator`` or
at startup; the handler tests inject fakes there).
Every pass reads the ABTest's Jobs from the watches (``watched``), derives the status from them and creates
what is missing under deterministic names, so an operator killed at any moment resumes without duplicates.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import copy
import functools
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime

import kopf
from kubernetes.client.exceptions import ApiException

from abtest_api.constants import GROUP, LABEL_MODEL, LABEL_NAME, PLURAL, VERSION
from abtest_api.errors import NameConflict, UserError
from abtest_operator import manifests, policy, status, watched
from abtest_operator.clients import Clients
from abtest_operator.metrics import OperatorMetrics
from abtest_operator.settings import OperatorConfig, config_from_env
from abtest_operator.spec import ABTestSpec, parse_abtest
from abtest_operator.watched import JobNews, Observed, Written

# A Job without a pod this long after its creation is asked why (its FailedCreate Events); the Job
# controller creates pods within milliseconds, so earlier the question would be a wasted request.
POD_CREATE_GRACE_SECONDS = 10


class KopfEvents:
    """Kubernetes Events about an ABTest, posted by kopf (its poster runs inside the operator)."""

    info = staticmethod(kopf.info)
    warn = staticmethod(kopf.warn)


class NoDiffBase(kopf.DiffBaseStorage):
    """kopf builds an "essence" of every event's body (a deep copy of it, status and all) to tell what changed, for
    ``on.create``/``on.update``/``on.field`` handlers and idle timers. This operator has none of them (the handler
    tier checks), and the copies were a tenth of its CPU in a burst of ABTests: every essence is empty, so no diff."""

    def build(self, *, body: kopf.Body, extra_fields=None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        pass


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_) -> None:
    # Without these timeouts a silently dropped watch connection freezes the operator forever.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    # Progress (of handlers that have any) in annotations: nothing in status that the CRD schema would prune.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = NoDiffBase()
    settings.posting.level = logging.INFO
    # The Events that matter are posted explicitly (memo.events); kopf's per-handler log lines as Events would
    # be two more requests per ABTest for nothing a user reads.
    settings.posting.loggers = False
    # Server-side filters: the operator never receives other Jobs or pods (the index labels filter too, client-side).
    settings.watching.label_selectors["batch", "jobs"] = LABEL_NAME
    settings.watching.label_selectors["v1", "pods"] = LABEL_NAME
    if "clients" not in memo:
        memo.clients = Clients.connect()
    if "config" not in memo:
        memo.config = config_from_env()
    if "metrics" not in memo:
        memo.metrics = OperatorMetrics()
    if "events" not in memo:
        memo.events = KopfEvents()
    memo.claims = set()  # results claims known to exist
    memo.specs = {}  # parsed specs by ABTest, with the generation they were parsed at
    memo.written = Written()  # this operator's writes, until its watches deliver them
    memo.job_news = JobNews()  # what each Job's last event showed a pass
    memo.locks = collections.defaultdict(threading.Lock)  # one pass at a time per ABTest
    memo.clock = time.monotonic
    memo.last_pass = {}  # when each ABTest's latest pass started (memo.clock), by (namespace, UID)
    # Resyncs queue for two threads of their own: a wave of them never takes kopf's workers from the events.
    memo.resync_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="abtest-resync")
    settings.execution.max_workers = memo.config.max_workers
    settings.peering.lifetime = memo.config.peering_lifetime


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


def observe(clients: Clients, seen: Observed, spec: ABTestSpec, now: datetime) -> tuple[dict[str, status.JobState], status.JobState]:
    """The ABTest's Job states from what the watches saw; the only request is for a Job that has had no pod
    for a while (its FailedCreate Events say why: admission, quota)."""
    mine = seen.jobs_of(spec.namespace, spec.uid)

    def stall(job: dict) -> str:
        pods = seen.pods_of(spec.namespace, job["metadata"]["name"])
        cause = next((c for c in (status.pod_stall(pod, now) for pod in pods) if c), "")
        if cause or pods or (job.get("status") or {}).get("active") or _age(job, now) < POD_CREATE_GRACE_SECONDS:
            return cause  # a Job with an active pod has one (the pod watch lags): nothing to ask
        return refused_pod_creation(clients, spec.namespace, job["metadata"]["name"])

    def state(name: str) -> status.JobState:
        job = mine.get(name)
        observed = status.job_state(job)
        if observed.phase == "Failed":  # name the cause: the failed pod's termination message
            observed = status.job_state(job, failure_message(seen.pods_of(spec.namespace, name)))
        elif observed.phase in ("Pending", "Running") and not job["spec"].get("suspend") and not status.all_ready(job):
            observed = replace(observed, stall=stall(job))
        return observed

    models = {m.name: state(manifests.model_job_name(spec, m.name)) for m in spec.models}
    return models, state(manifests.analysis_job_name(spec))


def _age(obj: dict, now: datetime) -> float:
    created = obj["metadata"].get("creationTimestamp")
    return status.seconds_since(created, now) if created else 0.0


def refused_pod_creation(clients: Clients, namespace: str, job: str) -> str:
    """Why the Job controller cannot create the Job's pod (admission, quota), from its FailedCreate Events."""
    events = clients.core.list_namespaced_event(
        namespace, field_selector=f"involvedObject.kind=Job,involvedObject.name={job},reason=FailedCreate"
    ).items
    if not events:
        return ""
    latest = max(events, key=lambda e: e.last_timestamp or e.event_time or e.metadata.creation_timestamp)
    return f"pod creation refused: {(latest.message or '').strip()[:400]}"


def failure_message(pods: list[dict]) -> str:
    """The newest failed pod's termination message: the evaluator's one-line error."""
    for pod in sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp") or "", reverse=True):
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = (cs.get("state") or {}).get("terminated") or {}
            if terminated.get("exitCode"):
                text = (terminated.get("message") or terminated.get("reason") or f"exit code {terminated['exitCode']}").strip()
                return text.splitlines()[-1].removeprefix("error: ")[:500]
    return ""


def apply_wanted(
    clients: Clients,
    cfg: OperatorConfig,
    spec: ABTestSpec,
    phase: str,
    models: dict[str, status.JobState],
    analysis: status.JobState,
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

    missing = {name for name, state in models.items() if state.phase == "Missing"}
    if make_models and missing:
        claim = manifests.build_results_claim(spec, cfg)
        if claim and (spec.namespace, claim["metadata"]["name"]) not in claims:
            create_if_missing(clients.core.create_namespaced_persistent_volume_claim, spec.namespace, claim)
            claims.add((spec.namespace, claim["metadata"]["name"]))
        if spec.queue_name:  # one JobSet: its controller creates the model Jobs (again, should one be deleted)
            if create_jobset(clients, manifests.build_jobset(spec, cfg)):
                created.append(manifests.jobset_name(spec))
        else:
            for job in manifests.model_jobs(spec, cfg):
                if job["metadata"]["labels"][LABEL_MODEL] in missing:
                    create_job(job)
    if make_analysis and analysis.phase == "Missing":
        sa, role, binding = manifests.build_analysis_rbac(spec)
        create_if_missing(clients.core.create_namespaced_service_account, spec.namespace, sa)
        create_if_missing(clients.rbac.create_namespaced_role, spec.namespace, role)
        create_if_missing(clients.rbac.create_namespaced_role_binding, spec.namespace, binding)
        create_job(manifests.build_analysis_job(spec, cfg))
    return created


JOBSET_API = (manifests.JOBSET_GROUP, manifests.JOBSET_VERSION)


def create_jobset(clients: Clients, jobset: dict) -> dict | None:
    """Creates the ABTest's JobSet (None when it existed); a cluster without JobSet's CRD is the user's to fix."""
    namespace = jobset["metadata"]["namespace"]

    def create(ns: str, body: dict) -> dict:
        return clients.custom.create_namespaced_custom_object(*JOBSET_API, ns, manifests.JOBSET_PLURAL, body)

    def read(name: str, ns: str) -> dict:
        return clients.custom.get_namespaced_custom_object(*JOBSET_API, ns, manifests.JOBSET_PLURAL, name)

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
        clients.custom.delete_namespaced_custom_object(
            *JOBSET_API, namespace, manifests.JOBSET_PLURAL, name, propagation_policy="Background"
        )
    except ApiException as err:
        if err.status != 404:
            raise


def stop_unfinished(clients: Clients, spec: ABTestSpec, models: dict[str, status.JobState], analysis: status.JobState) -> None:
    """What a finished ABTest leaves running stops costing: the other models of a failed test, the models of a
    sequential test that stopped early, its analysis when a model failed."""
    running = {manifests.model_job_name(spec, name) for name, state in models.items() if state.phase in ("Pending", "Running")}
    if running and spec.queue_name:
        delete_jobset(clients, spec.namespace, manifests.jobset_name(spec))
    elif running:
        for name in sorted(running):
            suspend_job(clients, spec.namespace, name)
    if analysis.phase in ("Pending", "Running"):
        suspend_job(clients, spec.namespace, manifests.analysis_job_name(spec))


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


def announce(events, body: dict, old: dict, new: dict, created: list[str]) -> None:
    """Kubernetes Events at each transition: one Normal Event per pass at most (each is a request)."""
    stalled = next((c for c in new.get("conditions", []) if c["type"] == "Stalled" and c["status"] == "True"), None)
    was_stalled = any(c["type"] == "Stalled" and c["status"] == "True" for c in old.get("conditions") or [])
    if stalled and not was_stalled:
        events.warn(body, reason="Stalled", message=stalled["message"])
    apart = next((c for c in new.get("conditions", []) if c["type"] == "AllModelsPlaced" and c["status"] == "False"), None)
    if apart and not any(c["type"] == "AllModelsPlaced" and c["status"] == "False" for c in old.get("conditions") or []):
        events.warn(body, reason="ModelUnschedulable", message=apart["message"])
    changed = old.get("phase") != new["phase"]
    if changed and new["phase"] == status.FAILED:
        events.warn(body, reason="Failed", message=new["reason"])
    elif changed and new["phase"] == status.SUCCEEDED:
        events.info(body, reason="Succeeded", message=((old.get("result") or {}).get("verdict") or "analysis complete"))
    elif changed or created:
        said = [f"phase {old.get('phase') or 'none'} -> {new['phase']}"] if changed else []
        said += [f"created {', '.join(created)}"] if created else []
        events.info(body, reason="JobsCreated" if created else new["phase"], message="; ".join(said))


def reconcile(
    memo: kopf.Memo, abtest: dict, seen: Observed, now: datetime | None = None, *, reread: bool = True, created_before: tuple = ()
) -> dict:
    """One pass: observe the Jobs, derive the status, create what is missing, write the status."""
    clients, cfg, metrics = memo.clients, memo.config, memo.metrics
    now = now or datetime.now(UTC)
    meta = abtest["metadata"]
    old = abtest.get("status") or {}
    metrics.reconciles.labels(meta["namespace"]).inc()
    if status.is_terminal(old):  # nothing to observe, create or rewrite
        metrics.observe(meta["namespace"], meta["name"], old)
        return old
    try:
        spec = parsed_spec(memo.specs, abtest)
        policy.check(spec, cfg)
        models, analysis = observe(clients, seen, spec, now)
        new = status.derive_status(spec, meta.get("generation", 1), models, analysis, previous=old, now=now, default_image=cfg.image)
        wanted = apply_wanted(clients, replace(cfg, image=new["image"]), spec, new["phase"], models, analysis, seen.written, memo.claims)
        created = [*created_before, *wanted]
        if created:  # write what now exists: the Jobs just created are Pending (saves the next pass a status write)
            pending = status.JobState("Pending", image=new["image"])
            jobset = bool(spec.queue_name) and manifests.jobset_name(spec) in created
            models = {n: pending if jobset or manifests.model_job_name(spec, n) in created else s for n, s in models.items()}
            analysis = pending if manifests.analysis_job_name(spec) in created else analysis
            new = status.derive_status(spec, meta.get("generation", 1), models, analysis, previous=old, now=now, default_image=cfg.image)
    except UserError as err:
        failed = {"phase": status.FAILED, "reason": str(err), "observedGeneration": meta.get("generation", 1)}
        if old.get("reason") != failed["reason"] and (written := patch_status(clients, meta, failed)):
            seen.written.abtest(written)
            memo.events.warn(abtest, reason="NameConflict" if isinstance(err, NameConflict) else "InvalidSpec", message=str(err))
        metrics.observe(meta["namespace"], meta["name"], failed)
        raise kopf.PermanentError(str(err)) from None
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
            return reconcile(memo, fresh, seen, now, reread=False, created_before=tuple(created))  # the Events still say it
    if status.is_terminal(new):  # stop paying for what is left (after a crash here, job_changed does it)
        stop_unfinished(clients, spec, models, analysis)
    announce(memo.events, abtest, old, new, created)
    metrics.observe(spec.namespace, spec.name, {**old, **new})
    return new


def parsed_spec(specs: dict, abtest: dict) -> ABTestSpec:
    """parse_abtest once per generation of an ABTest (its spec changes only with one): a pass for each Job event
    validated the same spec against the CRD schema again. ``specs``: the cache (memo.specs)."""
    meta = abtest["metadata"]
    key, generation = (meta["namespace"], meta["uid"]), meta.get("generation")
    cached = specs.get(key)
    if generation is not None and cached and cached[0] == generation:
        return cached[1]
    spec = parse_abtest(abtest)
    specs[key] = (generation, spec)
    return spec


def _guarded(memo: kopf.Memo, abtest: dict, seen: Observed) -> None:
    """One pass at a time per ABTest (concurrent Job events would otherwise race to the same creates and writes),
    over the newest copy of it: the watched one, or what this operator last wrote."""
    meta = abtest["metadata"]
    key = (meta["namespace"], meta["uid"])
    with memo.locks[key]:
        memo.last_pass[key] = memo.clock()
        try:
            reconcile(memo, copy.deepcopy(watched.newer(abtest, seen.abtest(*key))), seen)
        except kopf.PermanentError:
            pass  # already marked Failed with its reason
        except Exception:
            memo.metrics.reconcile_errors.labels(meta["namespace"]).inc()
            raise


# The watches: server-side label selectors (set at startup) keep other Jobs and pods off the wire; the
# indexes keep what a pass reads, so a pass makes no request unless it creates or writes something.
@kopf.index("batch", "v1", "jobs", labels={LABEL_NAME: kopf.PRESENT})
def abtest_jobs(body: kopf.Body, namespace: str, **_) -> dict | None:
    return watched.index_job(body, namespace)


@kopf.index("v1", "pods", labels={LABEL_NAME: kopf.PRESENT})
def abtest_pods(body: kopf.Body, namespace: str, **_) -> dict | None:
    return watched.index_pod(body, namespace)


@kopf.index(GROUP, VERSION, PLURAL)
def abtests_by_uid(body: kopf.Body, namespace: str, **_) -> dict:
    return watched.index_abtest(body, namespace)


def _seen(memo: kopf.Memo, kwargs: dict) -> Observed:
    return Observed(jobs=kwargs["abtest_jobs"], pods=kwargs["abtest_pods"], abtests=kwargs["abtests_by_uid"], written=memo.written)


@kopf.on.event(GROUP, VERSION, PLURAL)
def abtest_changed(event: dict, body: kopf.Body, memo: kopf.Memo, **kwargs) -> None:
    """Every ABTest event, and each ABTest once at startup (kopf's initial listing): level-triggered, and kopf keeps
    no state for event handlers, so it writes no annotations on the ABTests."""
    meta = body["metadata"]
    if event["type"] == "DELETED":
        key = (meta["namespace"], meta["uid"])
        memo.metrics.forget(meta["namespace"], meta["name"])
        memo.written.forget(*key)
        for per_abtest in (memo.locks, memo.specs, memo.last_pass):
            per_abtest.pop(key, None)
    elif event["type"] is None or not (status.is_terminal(body.get("status")) or memo.written.echoes(body)):
        _guarded(memo, dict(body), _seen(memo, kwargs))  # (at startup, terminal ones too: their metrics)


def without_finalizer(fn):
    """kopf puts a finalizer on every object a daemon or timer runs for, so that the object waits for it to stop.
    The resync keeps no state that could be lost: without the finalizer an ABTest costs two writes less, and it can be
    deleted while the operator is down. kopf has no option for this, so the registered handler is replaced with a
    copy that does not require one (kopf then also removes the finalizer from ABTests that still carry it); the
    e2e tier checks that ABTests carry no finalizer."""
    spawning = kopf.get_default_registry()._spawning
    spawning._handlers = [replace(h, requires_finalizer=False) if h.fn is fn else h for h in spawning._handlers]
    return fn


@without_finalizer
@kopf.daemon(GROUP, VERSION, PLURAL, cancellation_timeout=5.0)
async def abtest_resync(body: kopf.Body, memo: kopf.Memo, logger: logging.Logger, **kwargs) -> None:
    """An ABTest whose pods cannot start produces no events, and kopf does not retry a failed event handler: an
    unfinished ABTest that has gone ``resync_seconds`` without a pass gets one, in the resync threads; the coroutine
    ends when the ABTest finishes. Unlike a kopf timer, which ticks on its own schedule, it lets a pass from any event
    postpone the next resync, and asleep it costs nothing."""
    meta = body["metadata"]
    key, interval = (meta["namespace"], meta["uid"]), memo.config.resync_seconds
    loop = asyncio.get_running_loop()
    tried = memo.clock()  # the first pass is the ABTest event's
    while not status.is_terminal(body.get("status")):
        wait = max(tried, memo.last_pass.get(key, tried)) + interval - memo.clock()
        if wait > 0:
            await asyncio.sleep(wait)
            continue
        tried = memo.clock()
        # In kopf's context (as its own handler threads run): kopf.info/warn post through its context variables.
        in_context = functools.partial(contextvars.copy_context().run, _guarded, memo, dict(body), _seen(memo, kwargs))
        try:
            await loop.run_in_executor(memo.resync_pool, in_context)
        except Exception as err:  # counted by _guarded; the next resync tries again
            logger.warning(f"resync pass failed, retried in {interval:g} s: {type(err).__name__}: {' '.join(str(err).split())[:500]}")


@kopf.on.cleanup()
def stop_resyncs(memo: kopf.Memo, **_) -> None:
    memo.resync_pool.shutdown(wait=False, cancel_futures=True)


@kopf.on.event("batch", "v1", "jobs", labels={LABEL_NAME: kopf.PRESENT})
def job_changed(event: dict, body: kopf.Body, namespace: str, memo: kopf.Memo, **kwargs) -> None:
    news = memo.job_news.news(event["type"], body)  # recorded for every event, echoes included
    seen = _seen(memo, kwargs)
    uid = watched.owner_uid(body)
    abtest = seen.abtest(namespace, uid) if uid else None
    if abtest is None:  # not ours, or the ABTest is gone (garbage collection takes its Jobs)
        return
    if status.is_terminal(abtest.get("status")):  # leftovers of a finished ABTest stop
        job = dict(body)
        if not job["spec"].get("suspend") and status.job_state(job).phase in ("Pending", "Running"):
            jobset = next((ref["name"] for ref in job["metadata"].get("ownerReferences") or [] if ref.get("kind") == "JobSet"), None)
            if jobset:
                delete_jobset(memo.clients, namespace, jobset)
            else:
                suspend_job(memo.clients, namespace, job["metadata"]["name"])
        return
    if not memo.written.echoes(body) and news:  # (the echo check first: it retires our own write's entry)
        _guarded(memo, abtest, seen)
