"""What the operator's objects are called and where pods mount things: the one place the builders (manifests.py),
the status derivation (status.py), the reconcile pass and the policy checks agree on.

Pure: an ABTest spec in, names, labels and paths out.
"""

from __future__ import annotations

import hashlib
from pathlib import PurePosixPath

from abtest_api.constants import ANALYSIS, LABEL_MODEL, LABEL_NAME, LABEL_ROLE
from abtest_operator.spec import ABTestSpec

RESULTS_MOUNT, MODELS_MOUNT, DATA_MOUNT, WEIGHTS_MOUNT = "/results", "/models", "/data", "/weights"

# With spec.queueName the model Jobs are one JobSet, which Kueue admits as one workload: all models or none.
JOBSET_GROUP, JOBSET_VERSION, JOBSET_PLURAL = "jobset.x-k8s.io", "v1alpha2", "jobsets"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
JOBSET_NAME_LIMIT = 63  # a JobSet's Job name, <jobset>-<model>-0, is a DNS label


def object_name(*parts: str, limit: int = 63) -> str:
    """Deterministic DNS-label name; long ones keep a readable prefix and a hash suffix."""
    name = "-".join(parts)
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: limit - 9].rstrip('-')}-{digest}"


def jobset_name(spec: ABTestSpec) -> str:
    return spec.name


def model_job_name(spec: ABTestSpec, model: str) -> str:
    if spec.queue_name:  # the JobSet controller names the Job of replicatedJob <model>, replica 0
        return f"{jobset_name(spec)}-{model}-0"
    return object_name(spec.name, model)


def analysis_job_name(spec: ABTestSpec) -> str:
    return object_name(spec.name, ANALYSIS)


def analysis_service_account(spec: ABTestSpec) -> str:
    return object_name(spec.name, ANALYSIS)


def results_dir(spec: ABTestSpec) -> str:
    """RESULTS/<namespace>/<name>/<uid>: an ABTest re-created under the same name never meets the old one's files."""
    return str(PurePosixPath(RESULTS_MOUNT) / spec.namespace / spec.name / spec.uid)


def labels(spec: ABTestSpec, role: str, model: str | None = None) -> dict:
    out = {
        "app.kubernetes.io/name": "abtest-evaluator",
        "app.kubernetes.io/managed-by": "abtest-operator",
        LABEL_NAME: spec.name,
        LABEL_ROLE: role,
    }
    if model:
        out[LABEL_MODEL] = model
    return out
