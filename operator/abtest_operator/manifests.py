"""Pure builders: an ABTest spec and the operator's settings -> the Kubernetes objects to create (their names,
labels and mount paths come from names.py).

Nothing here talks to a cluster; the operator applies these dicts and `abtest render` prints them.
"""

from __future__ import annotations

import dataclasses

from abtest_api.constants import (
    ANALYSIS,
    API_VERSION,
    GROUP,
    KIND,
    LABEL_MODEL,
    LABEL_UID,
    USER_ERROR_EXIT,
    WRITE_FAILURE_EXIT,
    weights_cache_env,
)
from abtest_operator import plan
from abtest_operator.names import (
    DATA_MOUNT,
    JOBSET_GROUP,
    JOBSET_VERSION,
    MODELS_MOUNT,
    QUEUE_LABEL,
    RESULTS_MOUNT,
    WEIGHTS_MOUNT,
    analysis_job_name,
    analysis_service_account,
    jobset_name,
    labels,
    model_job_name,
    results_dir,
)
from abtest_operator.settings import OperatorConfig
from abtest_operator.spec import ABTestSpec

CONTAINER = "evaluator"
UID = 65532  # the images' non-root user
SHARD_ENV, COMPLETION_INDEX = "ABTEST_SHARD", "batch.kubernetes.io/job-completion-index"


def owner_reference(spec: ABTestSpec) -> dict:
    return {"apiVersion": API_VERSION, "kind": KIND, "name": spec.name, "uid": spec.uid, "controller": True, "blockOwnerDeletion": True}


def container_security_context() -> dict:
    """Pod Security Standard "restricted", plus a read-only root filesystem."""
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": UID,
        "runAsGroup": UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def pod_security_context() -> dict:
    return {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID, "fsGroup": UID, "seccompProfile": {"type": "RuntimeDefault"}}


def _volumes(spec: ABTestSpec, cfg: OperatorConfig, model_volumes: bool) -> tuple[list[dict], list[dict]]:
    claim = spec.results.claim_name or cfg.results_claim
    volumes = [
        {"name": "results", "persistentVolumeClaim": {"claimName": claim}},
        {"name": "scratch", "emptyDir": {}},
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
    ]
    mounts = [
        {"name": "results", "mountPath": RESULTS_MOUNT},
        {"name": "scratch", "mountPath": "/tmp"},
        {"name": "dshm", "mountPath": "/dev/shm"},
    ]
    if model_volumes:
        sources = (
            ("data", spec.dataset_volume, DATA_MOUNT),
            ("models", spec.models_volume, MODELS_MOUNT),
            ("weights", spec.weights_cache, WEIGHTS_MOUNT),
        )
        for name, source, mount in sources:
            if source:
                volumes.append({"name": name, **source})
                mounts.append({"name": name, "mountPath": mount, "readOnly": True})
    return volumes, mounts


def evaluator_image(spec: ABTestSpec, cfg: OperatorConfig) -> str:
    return spec.image or cfg.image


def _env(spec: ABTestSpec, cfg: OperatorConfig) -> list[dict]:
    # Writable caches live on the scratch volume: the root filesystem is read-only.
    return [
        {"name": "ABTEST_IMAGE", "value": evaluator_image(spec, cfg)},
        {"name": "HOME", "value": "/tmp"},
        {"name": "XDG_CACHE_HOME", "value": "/tmp/.cache"},
        {"name": "TORCHINDUCTOR_CACHE_DIR", "value": "/tmp/.inductor"},
    ]


def _job(spec: ABTestSpec, name: str, role: str, pod_spec: dict, model: str | None = None, pod_annotations: dict | None = None) -> dict:
    job_spec = {
        "backoffLimit": spec.backoff_limit,
        # Evictions and preemptions are not the model's fault; a bad-input or write-failure exit is final.
        "podFailurePolicy": {
            "rules": [
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
                {
                    "action": "FailJob",
                    "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": [USER_ERROR_EXIT, WRITE_FAILURE_EXIT]},
                },
            ]
        },
        "template": {
            "metadata": {"labels": labels(spec, role, model), **({"annotations": pod_annotations} if pod_annotations else {})},
            "spec": {"restartPolicy": "Never", **pod_spec},
        },
    }
    if spec.active_deadline_seconds:
        job_spec["activeDeadlineSeconds"] = spec.active_deadline_seconds
    if spec.ttl_seconds_after_finished is not None:
        job_spec["ttlSecondsAfterFinished"] = spec.ttl_seconds_after_finished
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": spec.namespace,
            "labels": labels(spec, role, model),
            "ownerReferences": [owner_reference(spec)],
        },
        "spec": job_spec,
    }


GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}  # GPU nodes' usual taint


def gpus(spec: ABTestSpec) -> int:
    return spec.gpus_per_model if spec.device != "cpu" else 0


def model_resources(spec: ABTestSpec, cfg: OperatorConfig) -> dict:
    """spec.resources over the operator's defaults, per resource. A default request is left out where the spec sets
    only a limit (Kubernetes then requests the limit), and a default limit where the spec sets a request (it could be
    below it), so a default never contradicts what the user sized."""
    # Quantities as strings, the form the API returns them in (the CRD accepts int or string).
    resources = {k: {name: str(q) for name, q in v.items()} for k, v in spec.resources.items()}
    user_sized = {"requests": spec.resources.get("limits", {}), "limits": spec.resources.get("requests", {})}
    for kind, defaults in cfg.model_default_resources.items():
        for name, quantity in defaults.items():
            if name not in resources.get(kind, {}) and name not in user_sized.get(kind, {}):
                resources.setdefault(kind, {})[name] = str(quantity)
    if gpus(spec):
        resources.setdefault("limits", {})["nvidia.com/gpu"] = str(gpus(spec))
    return resources


def model_tolerations(spec: ABTestSpec) -> list[dict]:
    """spec.tolerations, plus the GPU taint's toleration when the pods request GPUs and the spec has none for it."""
    tolerations = list(spec.tolerations)
    if gpus(spec) and not any(
        t.get("key") == GPU_TOLERATION["key"] or (t.get("operator") == "Exists" and not t.get("key")) for t in tolerations
    ):
        tolerations.append(dict(GPU_TOLERATION))
    return tolerations


def _pod_spec(
    spec: ABTestSpec, cfg: OperatorConfig, args: list[str], env: list[dict], resources: dict, model_volumes: bool, **pod_fields
) -> dict:
    """One restricted, non-root evaluator container from the evaluator image, in a pod with the results volume."""
    volumes, mounts = _volumes(spec, cfg, model_volumes)
    container = {
        "name": CONTAINER,
        "image": evaluator_image(spec, cfg),
        "imagePullPolicy": cfg.image_pull_policy,
        "command": ["abtest"],
        "args": args,
        "env": env,
        "resources": resources,
        "securityContext": container_security_context(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": mounts,
    }
    return {
        **pod_fields,
        "securityContext": pod_security_context(),
        "containers": [container],
        "volumes": volumes,
        "enableServiceLinks": False,
    }


def build_model_job(spec: ABTestSpec, run: plan.ModelRun, cfg: OperatorConfig) -> dict:
    """One model's Job: same image, seed and data flags as every other model; only the model differs."""
    env = [*_env(spec, cfg), {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]
    if spec.weights_cache:  # the hubs read pretrained weights from the cache volume, never from the network
        env += [{"name": k, "value": v} for k, v in weights_cache_env(WEIGHTS_MOUNT).items()]
    if spec.shards > 1:
        env.append({"name": SHARD_ENV, "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{COMPLETION_INDEX}']"}}})
    pod_spec = _pod_spec(spec, cfg, list(run.argv), env, model_resources(spec, cfg), True, automountServiceAccountToken=False)
    pod_spec["containers"][0]["ports"] = [{"name": "metrics", "containerPort": cfg.metrics_port}]
    for key, value in (("nodeSelector", spec.node_selector), ("tolerations", model_tolerations(spec)), ("affinity", spec.affinity)):
        if value:  # the same for every model: hardware parity
            pod_spec[key] = value
    annotations = {"prometheus.io/scrape": "true", "prometheus.io/port": str(cfg.metrics_port), "prometheus.io/path": "/metrics"}
    job = _job(spec, model_job_name(spec, run.name), "model", pod_spec, run.name, annotations)
    if spec.shards > 1:  # one pod per part, all at once: the Job completes when every index has
        job["spec"].update(completionMode="Indexed", completions=spec.shards, parallelism=spec.shards)
    return job


def build_analysis_job(spec: ABTestSpec, cfg: OperatorConfig) -> dict:
    args = list(plan.plan_analysis(spec, results_dir(spec), publish=True))
    pod_spec = _pod_spec(
        spec,
        cfg,
        args,
        _env(spec, cfg),
        cfg.analysis_resources,
        False,
        serviceAccountName=analysis_service_account(spec),
        automountServiceAccountToken=True,
    )
    return _job(spec, analysis_job_name(spec), ANALYSIS, pod_spec)


def build_analysis_rbac(spec: ABTestSpec) -> list[dict]:
    """A ServiceAccount that may get and patch the status of this one ABTest, nothing else."""
    name = analysis_service_account(spec)
    meta = {"name": name, "namespace": spec.namespace, "labels": labels(spec, "analysis"), "ownerReferences": [owner_reference(spec)]}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": meta,
            "rules": [{"apiGroups": [GROUP], "resources": ["abtests/status"], "resourceNames": [spec.name], "verbs": ["get", "patch"]}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": meta,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": spec.namespace}],
        },
    ]


def build_results_claim(spec: ABTestSpec, cfg: OperatorConfig) -> dict | None:
    """The shared per-namespace results claim, unless the user named one. Not owned: results outlive ABTests."""
    results = spec.results
    if results.claim_name:
        return None
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": cfg.results_claim,
            "namespace": spec.namespace,
            "labels": {"app.kubernetes.io/managed-by": "abtest-operator", "app.kubernetes.io/name": "abtest-results"},
        },
        "spec": {"accessModes": [results.access_mode], "resources": {"requests": {"storage": results.size}}},
    }
    if results.storage_class_name:
        claim["spec"]["storageClassName"] = results.storage_class_name
    return claim


def model_runs(spec: ABTestSpec, cfg: OperatorConfig) -> list[plan.ModelRun]:
    return plan.plan_models(
        spec,
        results_dir(spec),
        models_dir=MODELS_MOUNT,
        metrics_port=cfg.metrics_port,
        metrics_addr="$(POD_IP)",
        progress="none",
        pushgateway=cfg.pushgateway,
        # an Indexed Job's pods learn their part from the completion index (the downward API, see build_model_job)
        shard=f"$({SHARD_ENV})/{spec.shards}" if spec.shards > 1 else None,
    )


def model_jobs(spec: ABTestSpec, cfg: OperatorConfig) -> list[dict]:
    runs = model_runs(spec, cfg)
    return [build_model_job(spec, run, cfg) for run in runs]


def build_jobset(spec: ABTestSpec, cfg: OperatorConfig) -> dict:
    """With spec.queueName: the model Jobs as one JobSet labelled for the LocalQueue, created suspended, so that Kueue
    admits every model or none (one workload; a Job each would be admitted one by one, and a model could run alone).
    One replicatedJob per model, replicas 1: each keeps its own Job template (its arguments, its parts), exactly the
    Job it would be without a queue; the cost is Kueue's cap of 8 pod sets per workload, a CEL rule on the CRD."""
    replicated = []
    for job in model_jobs(spec, cfg):
        meta = job["metadata"]
        # the ABTest's UID as a label: the Jobs are the JobSet's, and the operator's Job index finds their ABTest by it
        template = {"metadata": {"labels": {**meta["labels"], LABEL_UID: spec.uid}}, "spec": job["spec"]}
        replicated.append({"name": meta["labels"][LABEL_MODEL], "replicas": 1, "template": template})
    return {
        "apiVersion": f"{JOBSET_GROUP}/{JOBSET_VERSION}",
        "kind": "JobSet",
        "metadata": {
            "name": jobset_name(spec),
            "namespace": spec.namespace,
            "labels": {**labels(spec, "models"), QUEUE_LABEL: spec.queue_name},
            "ownerReferences": [owner_reference(spec)],
        },
        "spec": {
            "suspend": True,  # Kueue admits (unsuspends) it when the ClusterQueue has quota for every model
            "replicatedJobs": replicated,
            "network": {"enableDNSHostnames": False},  # the evaluators never call each other: no headless Service
        },
    }


def render_all(spec: ABTestSpec, cfg: OperatorConfig) -> list[dict]:
    """Every object the operator creates for this ABTest, in creation order (a dry run names the UID it lacks)."""
    spec = spec if spec.uid else dataclasses.replace(spec, uid="<abtest-uid>")
    claim = build_results_claim(spec, cfg)
    models = [build_jobset(spec, cfg)] if spec.queue_name else model_jobs(spec, cfg)
    return [*([claim] if claim else []), *models, *build_analysis_rbac(spec), build_analysis_job(spec, cfg)]
