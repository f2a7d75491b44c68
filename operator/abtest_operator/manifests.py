"""Pure builders: an ABTest spec and the operator's settings -> the Kubernetes objects to create.

Nothing here talks to a cluster; the operator applies these dicts and `abtest render` prints them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from abtest_operator import plan
from abtest_operator.spec import API_VERSION, KIND, ABTestSpec

GROUP = "abtest.dev"
LABEL_NAME, LABEL_MODEL, LABEL_ROLE = f"{GROUP}/name", f"{GROUP}/model", f"{GROUP}/role"
CONTAINER = "evaluator"
RESULTS_MOUNT, MODELS_MOUNT, DATA_MOUNT = "/results", "/models", "/data"
UID = 65532  # the images' non-root user
USER_ERROR_EXIT = 2  # `abtest` exits 2 on bad input: retrying cannot help


@dataclass(frozen=True)
class OperatorConfig:
    """Operator-wide settings (Helm values -> environment -> here)."""

    image: str = "ghcr.io/abtest/evaluator:0.1.0"
    image_pull_policy: str = "IfNotPresent"
    metrics_port: int = 9090
    results_claim: str = "abtest-results"  # default shared claim per namespace; results outlive ABTests
    analysis_resources: dict = field(default_factory=lambda: {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "2Gi"}})
    pushgateway: str | None = None


def object_name(*parts: str, limit: int = 63) -> str:
    """Deterministic DNS-label name; long ones keep a readable prefix and a hash suffix."""
    name = "-".join(parts)
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[:limit - 9].rstrip('-')}-{digest}"


def model_job_name(spec: ABTestSpec, model: str) -> str:
    return object_name(spec.name, model)


def analysis_job_name(spec: ABTestSpec) -> str:
    return object_name(spec.name, "analysis")


def results_dir(spec: ABTestSpec) -> str:
    return str(PurePosixPath(RESULTS_MOUNT) / spec.namespace / spec.name)


def owner_reference(spec: ABTestSpec, uid: str) -> dict:
    return {"apiVersion": API_VERSION, "kind": KIND, "name": spec.name, "uid": uid, "controller": True, "blockOwnerDeletion": True}


def labels(spec: ABTestSpec, role: str, model: str | None = None) -> dict:
    out = {"app.kubernetes.io/name": "abtest-evaluator", "app.kubernetes.io/managed-by": "abtest-operator",
           LABEL_NAME: spec.name, LABEL_ROLE: role}
    if model:
        out[LABEL_MODEL] = model
    return out


def container_security_context() -> dict:
    """Pod Security Standard "restricted", plus a read-only root filesystem."""
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "readOnlyRootFilesystem": True,
            "runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID, "seccompProfile": {"type": "RuntimeDefault"}}


def pod_security_context() -> dict:
    return {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID, "fsGroup": UID, "seccompProfile": {"type": "RuntimeDefault"}}


def _volumes(spec: ABTestSpec, cfg: OperatorConfig, model_volumes: bool) -> tuple[list[dict], list[dict]]:
    raw = spec.raw
    claim = raw.get("results", {}).get("claimName") or cfg.results_claim
    volumes = [{"name": "results", "persistentVolumeClaim": {"claimName": claim}},
               {"name": "scratch", "emptyDir": {}},
               {"name": "dshm", "emptyDir": {"medium": "Memory"}}]
    mounts = [{"name": "results", "mountPath": RESULTS_MOUNT}, {"name": "scratch", "mountPath": "/tmp"},
              {"name": "dshm", "mountPath": "/dev/shm"}]
    if model_volumes:
        for name, source, mount in (("data", raw["dataset"].get("volume"), DATA_MOUNT), ("models", raw.get("modelsVolume"), MODELS_MOUNT)):
            if source:
                volumes.append({"name": name, **source})
                mounts.append({"name": name, "mountPath": mount, "readOnly": True})
    return volumes, mounts


def _env(cfg: OperatorConfig) -> list[dict]:
    # Writable caches live on the scratch volume: the root filesystem is read-only.
    return [{"name": "ABTEST_IMAGE", "value": cfg.image}, {"name": "HOME", "value": "/tmp"},
            {"name": "XDG_CACHE_HOME", "value": "/tmp/.cache"}, {"name": "MPLCONFIGDIR", "value": "/tmp/.matplotlib"},
            {"name": "TORCHINDUCTOR_CACHE_DIR", "value": "/tmp/.inductor"}]


def _job(spec: ABTestSpec, uid: str, name: str, role: str, pod_spec: dict, model: str | None = None,
         pod_annotations: dict | None = None) -> dict:
    raw = spec.raw
    job_labels = labels(spec, role, model)
    if raw.get("queueName"):
        job_labels["kueue.x-k8s.io/queue-name"] = raw["queueName"]
    job_spec = {
        "backoffLimit": raw.get("backoffLimit", 0),
        # Evictions and preemptions are not the model's fault; a bad-input exit is final.
        "podFailurePolicy": {"rules": [
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            {"action": "FailJob", "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": [USER_ERROR_EXIT]}},
        ]},
        "template": {"metadata": {"labels": labels(spec, role, model), **({"annotations": pod_annotations} if pod_annotations else {})},
                     "spec": {"restartPolicy": "Never", **pod_spec}},
    }
    if raw.get("activeDeadlineSeconds"):
        job_spec["activeDeadlineSeconds"] = raw["activeDeadlineSeconds"]
    if raw.get("ttlSecondsAfterFinished") is not None:
        job_spec["ttlSecondsAfterFinished"] = raw["ttlSecondsAfterFinished"]
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "namespace": spec.namespace, "labels": job_labels, "ownerReferences": [owner_reference(spec, uid)]},
            "spec": job_spec}


def model_resources(spec: ABTestSpec) -> dict:
    raw = spec.raw
    # Quantities as strings, the form the API returns them in (the CRD accepts int or string).
    resources = {k: {name: str(q) for name, q in v.items()} for k, v in (raw.get("resources") or {}).items()}
    gpus = raw.get("gpusPerModel", 1) if spec.device != "cpu" else 0
    if gpus:
        resources.setdefault("limits", {})["nvidia.com/gpu"] = str(gpus)
    return resources


def build_model_job(spec: ABTestSpec, run: plan.ModelRun, cfg: OperatorConfig, uid: str) -> dict:
    """One model's Job: same image, seed and data flags as every other model; only the model differs."""
    raw = spec.raw
    volumes, mounts = _volumes(spec, cfg, model_volumes=True)
    container = {
        "name": CONTAINER, "image": raw.get("image") or cfg.image, "imagePullPolicy": cfg.image_pull_policy,
        "command": ["abtest"], "args": list(run.argv),
        "env": [*_env(cfg), {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
        "ports": [{"name": "metrics", "containerPort": cfg.metrics_port}],
        "resources": model_resources(spec), "securityContext": container_security_context(),
        "terminationMessagePolicy": "FallbackToLogsOnError", "volumeMounts": mounts,
    }
    pod_spec = {"automountServiceAccountToken": False, "securityContext": pod_security_context(), "containers": [container],
                "volumes": volumes, "enableServiceLinks": False}
    for key in ("nodeSelector", "tolerations", "affinity"):  # the same for every model: hardware parity
        if raw.get(key):
            pod_spec[key] = raw[key]
    annotations = {"prometheus.io/scrape": "true", "prometheus.io/port": str(cfg.metrics_port), "prometheus.io/path": "/metrics"}
    return _job(spec, uid, model_job_name(spec, run.name), "model", pod_spec, run.name, annotations)


def analysis_service_account(spec: ABTestSpec) -> str:
    return object_name(spec.name, "analysis")


def build_analysis_job(spec: ABTestSpec, cfg: OperatorConfig, uid: str) -> dict:
    volumes, mounts = _volumes(spec, cfg, model_volumes=False)
    container = {
        "name": CONTAINER, "image": spec.raw.get("image") or cfg.image, "imagePullPolicy": cfg.image_pull_policy,
        "command": ["abtest"], "args": list(plan.plan_analysis(spec, results_dir(spec), publish=True)),
        "env": _env(cfg), "resources": cfg.analysis_resources, "securityContext": container_security_context(),
        "terminationMessagePolicy": "FallbackToLogsOnError", "volumeMounts": mounts,
    }
    pod_spec = {"serviceAccountName": analysis_service_account(spec), "automountServiceAccountToken": True,
                "securityContext": pod_security_context(), "containers": [container], "volumes": volumes, "enableServiceLinks": False}
    return _job(spec, uid, analysis_job_name(spec), "analysis", pod_spec)


def build_analysis_rbac(spec: ABTestSpec, uid: str) -> list[dict]:
    """A ServiceAccount that may get and patch the status of this one ABTest, nothing else."""
    name = analysis_service_account(spec)
    meta = {"name": name, "namespace": spec.namespace, "labels": labels(spec, "analysis"), "ownerReferences": [owner_reference(spec, uid)]}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta,
         "rules": [{"apiGroups": [GROUP], "resources": ["abtests/status"], "resourceNames": [spec.name], "verbs": ["get", "patch"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": meta,
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
         "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": spec.namespace}]},
    ]


def build_results_claim(spec: ABTestSpec, cfg: OperatorConfig) -> dict | None:
    """The shared per-namespace results claim, unless the user named one. Not owned: results outlive ABTests."""
    results = spec.raw.get("results") or {}
    if results.get("claimName"):
        return None
    claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
             "metadata": {"name": cfg.results_claim, "namespace": spec.namespace,
                          "labels": {"app.kubernetes.io/managed-by": "abtest-operator", "app.kubernetes.io/name": "abtest-results"}},
             "spec": {"accessModes": [results.get("accessMode", "ReadWriteMany")],
                      "resources": {"requests": {"storage": results.get("size", "1Gi")}}}}
    if results.get("storageClassName"):
        claim["spec"]["storageClassName"] = results["storageClassName"]
    return claim


def model_runs(spec: ABTestSpec, cfg: OperatorConfig) -> list[plan.ModelRun]:
    extra = ("--metrics-port", str(cfg.metrics_port), "--metrics-addr", "$(POD_IP)", "--progress", "none", *(("--pushgateway", cfg.pushgateway) if cfg.pushgateway else ()))
    return plan.plan_models(spec, results_dir(spec), models_dir=MODELS_MOUNT, extra=extra)


def model_jobs(spec: ABTestSpec, cfg: OperatorConfig, uid: str) -> list[dict]:
    runs = model_runs(spec, cfg)
    return [build_model_job(spec, run, cfg, uid) for run in runs]


def render_all(spec: ABTestSpec, cfg: OperatorConfig, uid: str = "<abtest-uid>") -> list[dict]:
    """Every object the operator creates for this ABTest, in creation order."""
    claim = build_results_claim(spec, cfg)
    return [*([claim] if claim else []), *model_jobs(spec, cfg, uid), *build_analysis_rbac(spec, uid), build_analysis_job(spec, cfg, uid)]
