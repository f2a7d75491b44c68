"""What the operator allows beyond the CRD's schema: checks that need its settings or know where files live in pods.

Pure: a typed spec and the operator's settings in, a UserError naming the field and the fix out. A failing check
marks the ABTest Failed with that reason before anything is created.
"""

from __future__ import annotations

from abtest_api.errors import UserError
from abtest_operator import names
from abtest_operator.settings import OperatorConfig
from abtest_operator.spec import ABTestSpec


def repository(image: str) -> str:
    """``registry/repo`` of ``registry/repo:tag`` or ``registry/repo@sha256:…``."""
    name = image.split("@", 1)[0]
    head, _, last = name.rpartition("/")
    return f"{head}/{last.split(':', 1)[0]}" if head else last.split(":", 1)[0]


def image_allowed(image: str, allowed: tuple[str, ...]) -> bool:
    """An allowed entry is a repository (any tag or digest of it) or a prefix ending in "/"."""
    return any(image.startswith(entry) if entry.endswith("/") else repository(image) == entry for entry in allowed)


def check(spec: ABTestSpec, cfg: OperatorConfig) -> None:
    for i, m in enumerate(spec.models):
        if m.checkpoint and not m.checkpoint.startswith("/") and not spec.models_volume:
            raise UserError(
                f"spec.models[{i}].checkpoint {m.checkpoint!r} is relative but spec.modelsVolume is not set; "
                "mount a volume with the checkpoints or use an absolute path"
            )
        if spec.queue_name and len(job := names.model_job_name(spec, m.name)) > names.JOBSET_NAME_LIMIT:
            raise UserError(
                f"spec.models[{i}].name {m.name!r}: with spec.queueName its Job is the JobSet's {job!r}, longer than "
                f"{names.JOBSET_NAME_LIMIT} characters; shorten the ABTest's or the model's name"
            )
    allowed_images = cfg.allowed_images or (repository(cfg.image),)
    if spec.image and not image_allowed(spec.image, allowed_images):
        raise UserError(
            f"spec.image {spec.image!r} is not allowed by this operator (allowed: {', '.join(allowed_images)}); "
            "leave spec.image unset for the configured evaluator, or ask the cluster admin to add it to the chart's evaluator.allowedImages"
        )
    volumes = (
        ("spec.dataset.volume", spec.dataset_volume),
        ("spec.modelsVolume", spec.models_volume),
        ("spec.weightsCache", spec.weights_cache),
    )
    for field, volume in volumes:
        refused = sorted(set(volume or {}) - {"name"} - set(cfg.allowed_volume_sources))
        if refused:
            raise UserError(
                f"{field} uses {', '.join(refused)}, which this operator does not allow (allowed: {', '.join(cfg.allowed_volume_sources)}); "
                "use a persistentVolumeClaim, or ask the cluster admin to add it to the chart's evaluator.allowedVolumeSources"
            )
