"""The operator's own settings: Helm values -> the Deployment's environment -> ``OperatorConfig``."""

from __future__ import annotations

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
    pushgateway: str | None = None
    max_workers: int = 8  # concurrent kopf handler threads


def config_from_env(environ=os.environ) -> OperatorConfig:
    defaults = OperatorConfig()
    return OperatorConfig(
        image=environ.get("ABTEST_EVALUATOR_IMAGE", defaults.image),
        image_pull_policy=environ.get("ABTEST_IMAGE_PULL_POLICY", defaults.image_pull_policy),
        metrics_port=int(environ.get("ABTEST_EVALUATOR_METRICS_PORT", defaults.metrics_port)),
        results_claim=environ.get("ABTEST_RESULTS_CLAIM", defaults.results_claim),
        pushgateway=environ.get("ABTEST_PUSHGATEWAY") or None,
        max_workers=int(environ.get("ABTEST_MAX_WORKERS", defaults.max_workers)),
    )
