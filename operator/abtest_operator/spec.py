"""ABTest manifests: defaults and validation against the CRD schema in ``crds/``, then typed specs.

The API server does this for ``kubectl apply``; ``abtest run`` and ``abtest render`` do it here with
the same schema, and the few CEL rules are mirrored in ``check_rules`` so local runs reject what the
cluster would, with messages that name the field.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from abtest_api import analyze, crd, evaluate
from abtest_api.constants import ANALYSIS, API_VERSION, ARTEFACT_FORMATS, ARTEFACT_SETTINGS, FP32, INT8_DYNAMIC, KIND, SUPERIORITY
from abtest_api.errors import UserError


@dataclass(frozen=True)
class ModelSpec:
    name: str
    architecture: str
    checkpoint: str | None = None
    settings: dict = field(default_factory=dict, compare=False)  # this model's fields of the evaluate contract


@dataclass(frozen=True)
class ResultsSpec:
    claim_name: str | None = None  # None: the operator's shared per-namespace claim
    access_mode: str = "ReadWriteMany"
    size: str = "1Gi"
    storage_class_name: str | None = None


@dataclass(frozen=True)
class ABTestSpec:
    name: str
    namespace: str
    models: tuple[ModelSpec, ...]
    uid: str = ""  # metadata.uid; empty outside a cluster
    device: str = "auto"
    alpha: float = 0.05
    test: str = "auto"
    hypothesis: str = SUPERIORITY
    margin: float | None = None
    shards: int = 1  # spec.shardsPerModel: pods per model, each evaluating a contiguous part of the order
    looks: int | None = None  # spec.analysis.sequential: a group-sequential test with this many looks
    spending: str | None = None
    # Where the Jobs run and what they may use: the operator's fields.
    image: str | None = None
    gpus_per_model: int = 1
    resources: dict = field(default_factory=dict, compare=False)
    node_selector: dict = field(default_factory=dict, compare=False)
    tolerations: tuple[dict, ...] = ()
    affinity: dict = field(default_factory=dict, compare=False)
    dataset_volume: dict | None = field(default=None, compare=False)  # a volume source, mounted at /data
    models_volume: dict | None = field(default=None, compare=False)  # a volume source, mounted at /models
    weights_cache: dict | None = field(default=None, compare=False)  # a volume source of hub weights, mounted at /weights
    results: ResultsSpec = ResultsSpec()
    queue_name: str | None = None
    stall_timeout_seconds: int = 300
    start_timeout_seconds: int = 600  # how long the evaluators wait for each other at the start barrier
    active_deadline_seconds: int | None = None
    backoff_limit: int = 0
    ttl_seconds_after_finished: int | None = None


def validate_manifest(manifest: dict) -> dict:
    """Defaulted copy of an ABTest manifest; UserError naming the field when it is invalid."""
    if not isinstance(manifest, dict):
        raise UserError("the manifest must be a YAML mapping with apiVersion, kind, metadata and spec")
    if manifest.get("apiVersion") != API_VERSION or manifest.get("kind") != KIND:
        raise UserError(f"apiVersion/kind must be {API_VERSION}/{KIND}, got {manifest.get('apiVersion')}/{manifest.get('kind')}")
    defaulted = crd.apply_defaults(copy.deepcopy(manifest), crd.openapi_schema())
    errors = sorted(crd.validator().iter_errors(defaulted), key=lambda e: (len(e.absolute_path), crd.error_path(e)))
    if errors:
        first = errors[0]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise UserError(f"ABTest is invalid: {crd.error_path(first)}: {first.message}{more}")
    check_rules(defaulted["spec"])
    name = (defaulted.get("metadata") or {}).get("name") or ""
    if len(name) > 63:
        raise UserError("ABTest is invalid: metadata.name must be at most 63 characters (it labels every Job and pod of the ABTest)")
    return defaulted


def check_rules(spec: dict) -> None:
    """The CRD's x-kubernetes-validations (CEL) rules, mirrored for local validation."""
    names = [m["name"] for m in spec["models"]]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UserError(f"ABTest is invalid: spec.models: model names must be unique, {', '.join(duplicates)} repeats")
    dataset = spec["dataset"]
    if dataset["name"] != "digits" and "path" not in dataset:
        raise UserError("ABTest is invalid: spec.dataset.path is required for every dataset but digits (the folder on the dataset volume)")
    if (dataset["name"] == "torchvision") != ("className" in dataset):
        raise UserError(
            "ABTest is invalid: spec.dataset.className is required with name torchvision (e.g. MNIST) and not allowed otherwise"
        )
    for i, model in enumerate(spec["models"]):
        if model["name"] == ANALYSIS:
            raise UserError(f"ABTest is invalid: spec.models[{i}].name '{ANALYSIS}' is reserved for the analysis Job; rename the model")
        if model.get("pretrained") and "checkpoint" in model:
            raise UserError(f"ABTest is invalid: spec.models[{i}]: set either pretrained or checkpoint on a model, not both")
        if "mean" in model and "std" in model and len(model["mean"]) != len(model["std"]):
            raise UserError(f"ABTest is invalid: spec.models[{i}]: mean and std need the same number of values")
        _check_artefact(i, model)
    analysis = spec["analysis"]
    _check_analysis(analyze.values_from_spec(spec))
    if spec.get("shardsPerModel", 1) > 1 and "sequential" in analysis:
        raise UserError(
            "ABTest is invalid: spec.shardsPerModel above 1 cannot be combined with spec.analysis.sequential (each model's looks need its whole order in one pod)"
        )
    if spec.get("queueName") and len(spec["models"]) > 8:
        raise UserError(
            "ABTest is invalid: spec.queueName admits the models as one Kueue workload, which holds at most 8 pod sets (one per model); "
            "queue at most 8 models, or leave spec.queueName unset"
        )
    if spec.get("gpusPerModel") and spec["device"] == "cpu":
        raise UserError("ABTest is invalid: spec.gpusPerModel must be 0 (or unset) when spec.device is cpu")
    if spec["device"] != "cpu" and any(m.get("precision") == INT8_DYNAMIC for m in spec["models"]):
        raise UserError("ABTest is invalid: spec.models[].precision int8-dynamic runs on the CPU only; set spec.device to cpu")


def _check_artefact(i: int, model: dict) -> None:
    """The CEL rules on an artefact's model entry: its file, its preprocessing, no precision of its own."""
    if model["architecture"] not in ARTEFACT_FORMATS:
        return
    if "checkpoint" not in model or model.get("pretrained"):
        raise UserError(
            f"ABTest is invalid: spec.models[{i}].checkpoint is required for an artefact (torchscript, export, onnx) and pretrained is not allowed; set checkpoint to the file"
        )
    if any(key not in model for key in ARTEFACT_SETTINGS):
        raise UserError(
            f"ABTest is invalid: spec.models[{i}]: an artefact (torchscript, export, onnx) has no pretrained config; set spec.models[].inputSize, interpolation, mean, std and cropPct to its training preprocessing"
        )
    if model.get("precision", FP32) != FP32:
        raise UserError(
            f"ABTest is invalid: spec.models[{i}].precision applies to timm/torchvision models; an artefact runs at the precision it was exported with (drop precision)"
        )


def _check_analysis(values: dict) -> None:
    """The analysis contract's rules (the CRD's CEL rules on spec.analysis), named as the spec spells them."""
    try:
        analyze.AnalysisConfig(dir="", **values).check(analyze.spec_field)
    except UserError as err:
        raise UserError(f"ABTest is invalid: {err}") from None


def parse_abtest(manifest: dict) -> ABTestSpec:
    defaulted = validate_manifest(manifest)
    spec, meta = defaulted["spec"], defaulted.get("metadata") or {}
    if not meta.get("name"):
        raise UserError("ABTest is invalid: metadata.name is required")
    results = spec["results"]
    return ABTestSpec(
        name=meta["name"],
        namespace=meta.get("namespace") or "default",
        uid=meta.get("uid", ""),
        models=tuple(
            ModelSpec(m["name"], m["architecture"], m.get("checkpoint"), evaluate.values_from_spec(spec, m)) for m in spec["models"]
        ),
        device=spec["device"],
        alpha=spec["analysis"]["alpha"],
        test=spec["analysis"]["test"],
        hypothesis=spec["analysis"]["hypothesis"],
        margin=spec["analysis"].get("margin"),
        shards=spec.get("shardsPerModel", 1),
        looks=(spec["analysis"].get("sequential") or {}).get("looks"),
        spending=(spec["analysis"].get("sequential") or {}).get("spending"),
        image=spec.get("image"),
        gpus_per_model=spec.get("gpusPerModel", 1),
        resources=spec.get("resources") or {},
        node_selector=spec.get("nodeSelector") or {},
        tolerations=tuple(spec.get("tolerations") or ()),
        affinity=spec.get("affinity") or {},
        dataset_volume=spec["dataset"].get("volume"),
        models_volume=spec.get("modelsVolume"),
        weights_cache=spec.get("weightsCache"),
        results=ResultsSpec(
            results.get("claimName"),
            results.get("accessMode", "ReadWriteMany"),
            results.get("size", "1Gi"),
            results.get("storageClassName"),
        ),
        queue_name=spec.get("queueName"),
        stall_timeout_seconds=spec["stallTimeoutSeconds"],
        start_timeout_seconds=spec["startTimeoutSeconds"],
        active_deadline_seconds=spec.get("activeDeadlineSeconds"),
        backoff_limit=spec.get("backoffLimit", 0),
        ttl_seconds_after_finished=spec.get("ttlSecondsAfterFinished"),
    )


def load_manifest(path: str | Path) -> dict:
    try:
        docs = [d for d in yaml.safe_load_all(Path(path).read_text()) if d]
    except FileNotFoundError:
        raise UserError(f"manifest {path} does not exist") from None
    except yaml.YAMLError as err:
        raise UserError(f"manifest {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    abtests = [d for d in docs if isinstance(d, dict) and d.get("kind") == KIND]
    if len(abtests) != 1:
        raise UserError(f"manifest {path} must hold exactly one {KIND} document, found {len(abtests)}")
    return abtests[0]


__all__ = ["ABTestSpec", "ModelSpec", "ResultsSpec", "load_manifest", "parse_abtest", "validate_manifest"]
