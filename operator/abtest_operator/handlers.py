"""kopf handlers: thin. Parse, build, observe, derive, apply; everything else lives in pure modules.

Clients, settings, metrics and the Event poster live in kopf's ``memo`` (set up by ``abtest operator`` or
at startup; the handler tests inject fakes there).
Every pass lists the ABTest's Jobs, derives the status from them and creates what is missing under
deterministic names, so an operator killed at any moment resumes without duplicates.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, replace

import kopf
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from abtest_api.constants import GROUP, KIND, LABEL_MODEL, LABEL_NAME, LABEL_ROLE, PLURAL, VERSION
from abtest_api.errors import NameConflict, UserError
from abtest_operator import manifests, policy, status
from abtest_operator.metrics import OperatorMetrics
from abtest_operator.settings import OperatorConfig, config_from_env
from abtest_operator.spec import ABTestSpec, parse_abtest


@dataclass
class Clients:
    batch: client.BatchV1Api
    core: client.CoreV1Api
    custom: client.CustomObjectsApi
    rbac: client.RbacAuthorizationV1Api

    @classmethod
    def connect(cls) -> Clients:
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        return cls(client.BatchV1Api(), client.CoreV1Api(), client.CustomObjectsApi(), client.RbacAuthorizationV1Api())


class KopfEvents:
    """Kubernetes Events about an ABTest, posted by kopf (its poster runs inside the operator)."""

    info = staticmethod(kopf.info)
    warn = staticmethod(kopf.warn)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_) -> None:
    # Without these timeouts a silently dropped watch connection freezes the operator forever.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    # Progress and diff-base in annotations: nothing in status that the CRD schema would prune.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP, key="last-handled-configuration")
    settings.posting.level = logging.INFO
    if "clients" not in memo:
        memo.clients = Clients.connect()
    if "config" not in memo:
        memo.config = config_from_env()
    if "metrics" not in memo:
        memo.metrics = OperatorMetrics()
    if "events" not in memo:
        memo.events = KopfEvents()
    settings.execution.max_workers = memo.config.max_workers
    settings.peering.lifetime = memo.config.peering_lifetime


def create_if_missing(create, namespace: str, body: dict, read=None) -> bool:
    """True when created. "Already exists" is success (deterministic names make creates idempotent), but only
    when ``read`` (the matching read call) shows the existing object is owned by the same ABTest: a Job of
    another ABTest under the same name is a collision, and fails this ABTest with the reason."""
    try:
        create(namespace, body)
        return True
    except ApiException as err:
        if err.status != 409:
            raise
    if read is not None:
        owners = {ref.uid for ref in read(body["metadata"]["name"], namespace).metadata.owner_references or []}
        mine = {ref["uid"] for ref in body["metadata"].get("ownerReferences", [])}
        if not owners & mine:
            raise NameConflict(
                f"{body['kind']} {namespace}/{body['metadata']['name']} already exists and belongs to something else "
                "(another ABTest whose name and model names join to the same name); rename this ABTest or its models"
            )
    return False


def observe(clients: Clients, spec: ABTestSpec) -> tuple[dict[str, status.JobState], status.JobState]:
    jobs = clients.batch.list_namespaced_job(spec.namespace, label_selector=f"{LABEL_NAME}={spec.name}").items
    mine = {
        j.metadata.name: clients.batch.api_client.sanitize_for_serialization(j)
        for j in jobs
        if any(ref.uid == spec.uid for ref in j.metadata.owner_references or [])
    }
    pods: list[dict] | None = None  # listed at most once per pass, and only when a Job has pods that are not ready

    def stall(name: str) -> str:
        nonlocal pods
        if pods is None:
            pods = [
                clients.core.api_client.sanitize_for_serialization(p)
                for p in clients.core.list_namespaced_pod(spec.namespace, label_selector=f"{LABEL_NAME}={spec.name}").items
            ]
        own = [p for p in pods if (p["metadata"].get("labels") or {}).get("job-name") == name]
        cause = next((c for c in map(status.pod_stall, own) if c), "")
        return cause or ("" if own else refused_pod_creation(clients, spec.namespace, name))

    def state(name: str) -> status.JobState:
        job = mine.get(name)
        observed = status.job_state(job)
        if observed.phase == "Failed":  # name the cause: the failed pod's termination message
            observed = status.job_state(job, failure_message(clients, spec.namespace, name))
        elif observed.phase in ("Pending", "Running") and ((job.get("status") or {}).get("ready") or 0) < (
            (job.get("status") or {}).get("active") or 1
        ):
            observed = replace(observed, stall=stall(name))
        return observed

    models = {m.name: state(manifests.model_job_name(spec, m.name)) for m in spec.models}
    return models, state(manifests.analysis_job_name(spec))


def refused_pod_creation(clients: Clients, namespace: str, job: str) -> str:
    """Why the Job controller cannot create the Job's pod (admission, quota), from its FailedCreate Events."""
    events = clients.core.list_namespaced_event(
        namespace, field_selector=f"involvedObject.kind=Job,involvedObject.name={job},reason=FailedCreate"
    ).items
    if not events:
        return ""
    latest = max(events, key=lambda e: e.last_timestamp or e.event_time or e.metadata.creation_timestamp)
    return f"pod creation refused: {(latest.message or '').strip()[:400]}"


def failure_message(clients: Clients, namespace: str, job: str) -> str:
    pods = clients.core.list_namespaced_pod(namespace, label_selector=f"job-name={job}").items
    for pod in sorted(pods, key=lambda p: p.metadata.creation_timestamp, reverse=True):
        for cs in pod.status.container_statuses or []:
            terminated = cs.state.terminated if cs.state else None
            if terminated and terminated.exit_code:
                text = (terminated.message or terminated.reason or f"exit code {terminated.exit_code}").strip()
                return text.splitlines()[-1].removeprefix("error: ")[:500]
    return ""


def apply_wanted(
    clients: Clients,
    cfg: OperatorConfig,
    spec: ABTestSpec,
    phase: str,
    models: dict[str, status.JobState],
    analysis: status.JobState,
) -> list[str]:
    """Create what the phase calls for and the observation lacks (a create racing another pass is still fine)."""
    make_models, make_analysis = status.wanted_objects(spec, phase)
    created = []
    missing = {name for name, state in models.items() if state.phase == "Missing"}
    if make_models and missing:
        claim = manifests.build_results_claim(spec, cfg)
        if claim:
            create_if_missing(clients.core.create_namespaced_persistent_volume_claim, spec.namespace, claim)
        for job in manifests.model_jobs(spec, cfg):
            if job["metadata"]["labels"][LABEL_MODEL] in missing and create_if_missing(
                clients.batch.create_namespaced_job, spec.namespace, job, clients.batch.read_namespaced_job
            ):
                created.append(job["metadata"]["name"])
    if make_analysis and analysis.phase == "Missing":
        sa, role, binding = manifests.build_analysis_rbac(spec)
        create_if_missing(clients.core.create_namespaced_service_account, spec.namespace, sa)
        create_if_missing(clients.rbac.create_namespaced_role, spec.namespace, role)
        create_if_missing(clients.rbac.create_namespaced_role_binding, spec.namespace, binding)
        job = manifests.build_analysis_job(spec, cfg)
        if create_if_missing(clients.batch.create_namespaced_job, spec.namespace, job, clients.batch.read_namespaced_job):
            created.append(job["metadata"]["name"])
    return created


def suspend_job(clients: Clients, namespace: str, name: str) -> None:
    """Suspends a Job (the Job controller then removes its pods); gone already is fine."""
    try:
        clients.batch.patch_namespaced_job(name, namespace, {"spec": {"suspend": True}})
    except ApiException as err:
        if err.status != 404:
            raise


def patch_status(clients: Clients, meta: dict, new: dict) -> bool:
    """Merge-patches the status on the condition that nobody wrote the ABTest since this pass read it
    (its resourceVersion): passes run concurrently (Job events, the resync timer), and an older pass must
    never overwrite a newer verdict. False when the precondition failed; a newer pass follows."""
    body = {"metadata": {"resourceVersion": meta["resourceVersion"]}, "status": new}
    try:
        clients.custom.patch_namespaced_custom_object_status(GROUP, VERSION, meta["namespace"], PLURAL, meta["name"], body)
        return True
    except ApiException as err:
        if err.status == 409:
            return False
        raise


def announce(events, body: dict, old: dict, new: dict, created: list[str]) -> None:
    """Kubernetes Events at each transition."""
    if created:
        events.info(body, reason="JobsCreated", message=f"created {', '.join(created)}")
    stalled = next((c for c in new.get("conditions", []) if c["type"] == "Stalled" and c["status"] == "True"), None)
    was_stalled = any(c["type"] == "Stalled" and c["status"] == "True" for c in old.get("conditions") or [])
    if stalled and not was_stalled:
        events.warn(body, reason="Stalled", message=stalled["message"])
    if old.get("phase") != new["phase"]:
        if new["phase"] == status.FAILED:
            events.warn(body, reason="Failed", message=new["reason"])
        elif new["phase"] == status.SUCCEEDED:
            events.info(body, reason="Succeeded", message=((old.get("result") or {}).get("verdict") or "analysis complete"))
        else:
            events.info(body, reason=new["phase"], message=f"phase {old.get('phase') or 'none'} -> {new['phase']}")


def reconcile(memo: kopf.Memo, abtest: dict) -> dict:
    """One pass: observe the Jobs, derive the status, create what is missing, write the status."""
    clients, cfg, metrics = memo.clients, memo.config, memo.metrics
    meta = abtest["metadata"]
    old = abtest.get("status") or {}
    metrics.reconciles.labels(meta["namespace"]).inc()
    if status.is_terminal(old):  # nothing to observe, create or rewrite
        metrics.observe(meta["namespace"], meta["name"], old)
        return old
    try:
        spec = parse_abtest(abtest)
        policy.check(spec, cfg)
        models, analysis = observe(clients, spec)
        new = status.derive_status(spec, meta.get("generation", 1), models, analysis, previous=old, default_image=cfg.image)
        created = apply_wanted(clients, replace(cfg, image=new["image"]), spec, new["phase"], models, analysis)
    except UserError as err:
        failed = {"phase": status.FAILED, "reason": str(err), "observedGeneration": meta.get("generation", 1)}
        if old.get("reason") != failed["reason"] and patch_status(clients, meta, failed):
            memo.events.warn(abtest, reason="NameConflict" if isinstance(err, NameConflict) else "InvalidSpec", message=str(err))
        metrics.observe(meta["namespace"], meta["name"], failed)
        raise kopf.PermanentError(str(err)) from None
    if any(new.get(k) != old.get(k) for k in new) and not patch_status(clients, meta, new):
        return old  # a newer pass wrote first; it announces and counts
    if new["phase"] == status.FAILED:  # stop paying for the other models (after a crash here, job_changed does it)
        for name, state in models.items():
            if state.phase in ("Pending", "Running"):
                suspend_job(clients, spec.namespace, manifests.model_job_name(spec, name))
    announce(memo.events, abtest, old, new, created)
    metrics.observe(spec.namespace, spec.name, {**old, **new})
    return new


def _guarded(memo: kopf.Memo, abtest: dict) -> None:
    try:
        reconcile(memo, abtest)
    except kopf.PermanentError:
        raise
    except Exception:
        memo.metrics.reconcile_errors.labels(abtest["metadata"]["namespace"]).inc()
        raise


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
def abtest_created(body: kopf.Body, memo: kopf.Memo, **_) -> None:
    _guarded(memo, dict(body))


@kopf.timer(GROUP, VERSION, PLURAL, interval=15, initial_delay=15)
def abtest_resync(body: kopf.Body, memo: kopf.Memo, **_) -> None:
    """Level-triggered: an ABTest whose pods cannot start produces no Job events, so look again periodically."""
    if status.is_terminal(body.get("status")):
        return
    with contextlib.suppress(kopf.PermanentError):  # already marked Failed with its reason
        _guarded(memo, dict(body))


@kopf.on.event("batch", "v1", "jobs", labels={LABEL_NAME: kopf.PRESENT})
def job_changed(body: kopf.Body, namespace: str, memo: kopf.Memo, **_) -> None:
    owner = next((ref for ref in body.metadata.get("ownerReferences", []) if ref.get("kind") == KIND), None)
    if owner is None:
        return
    try:
        abtest = memo.clients.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, owner["name"])
    except ApiException as err:
        if err.status == 404:  # the ABTest is gone; garbage collection takes its Jobs
            return
        raise
    if abtest["metadata"]["uid"] != owner["uid"]:
        return
    if (abtest.get("status") or {}).get("phase") == status.FAILED:  # leftovers of a failed ABTest stop
        job = dict(body)
        if (
            job["metadata"]["labels"].get(LABEL_ROLE) == "model"
            and not job["spec"].get("suspend")
            and status.job_state(job).phase in ("Pending", "Running")
        ):
            suspend_job(memo.clients, namespace, job["metadata"]["name"])
        return
    with contextlib.suppress(kopf.PermanentError):  # already marked Failed with its reason
        _guarded(memo, abtest)


@kopf.on.delete(GROUP, VERSION, PLURAL, optional=True)
def abtest_deleted(namespace: str, name: str, memo: kopf.Memo, **_) -> None:
    memo.metrics.forget(namespace, name)
