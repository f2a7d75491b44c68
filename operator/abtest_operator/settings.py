"""The operator's own settings: Helm values -> the Deployment's environment -> ``OperatorConfig``."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field


@dataclass(frozen=True)
class OperatorConfig:
    """Operator-wide settings, the same for every ABTest."""

    image: str = "ghcr.io/abtest/evaluator:0.1.0"
    image_pull_policy: str = "IfNotPresent"
    metrics_port: int = 9090
    results_claim: str = "abtest-results"  # default shared claim per namespace; results outlive ABTests
    analysis_resources: dict = field(default_factory=lambda: {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "2Gi"}})
    model_default_resources: dict = field(default_factory=lambda: {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "8Gi"}})
    allowed_images: tuple[str, ...] = ()  # repositories or "/"-ended prefixes for spec.image; () allows only `image`'s repository
    allowed_volume_sources: tuple[str, ...] = ("persistentVolumeClaim", "configMap", "emptyDir")
    pushgateway: str | None = None
    max_workers: int = 8  # concurrent kopf handler threads
    peering_lifetime: int = 60  # seconds a silent replica stays the active one before another takes over
    resync_seconds: float = 15.0  # an unfinished ABTest without a pass this long gets one (stalls have no events)


def config_from_env(environ=os.environ) -> OperatorConfig:
    defaults = OperatorConfig()
    return OperatorConfig(
        image=environ.get("ABTEST_EVALUATOR_IMAGE", defaults.image),
        image_pull_policy=environ.get("ABTEST_IMAGE_PULL_POLICY", defaults.image_pull_policy),
        metrics_port=int(environ.get("ABTEST_EVALUATOR_METRICS_PORT", defaults.metrics_port)),
        results_claim=environ.get("ABTEST_RESULTS_CLAIM", defaults.results_claim),
        pushgateway=environ.get("ABTEST_PUSHGATEWAY") or None,
        max_workers=int(environ.get("ABTEST_MAX_WORKERS", defaults.max_workers)),
        peering_lifetime=int(environ.get("ABTEST_PEERING_LIFETIME", defaults.peering_lifetime)),
        analysis_resources=_json(environ, "ABTEST_ANALYSIS_RESOURCES", defaults.analysis_resources),
        model_default_resources=_json(environ, "ABTEST_MODEL_DEFAULT_RESOURCES", defaults.model_default_resources),
        allowed_images=_list(environ, "ABTEST_ALLOWED_IMAGES", defaults.allowed_images),
        allowed_volume_sources=_list(environ, "ABTEST_ALLOWED_VOLUME_SOURCES", defaults.allowed_volume_sources),
    )


def _json(environ, name: str, default: dict) -> dict:
    return json.loads(environ[name]) if environ.get(name) else default


def _list(environ, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(v.strip() for v in environ[name].split(",") if v.strip()) if name in environ else default
