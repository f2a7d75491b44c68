"""ABTest manifests: defaults and validation against the CRD schema in ``crds/``, then typed specs.

The API server does this for ``kubectl apply``; ``abtest run`` and ``abtest render`` do it here with
the same schema, and the few CEL rules are mirrored in ``check_rules`` so local runs reject what the
cluster would, with messages that name the field.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import jsonschema
import yaml

from abtest_crds import openapi_schema
from abtest_operator.errors import UserError

API_VERSION = "abtest.dev/v1alpha1"
KIND = "ABTest"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    architecture: str
    pretrained: bool = False
    checkpoint: str | None = None
    num_classes: int | None = None
    in_chans: int | None = None
    input_size: int | None = None
    interpolation: str | None = None
    crop_pct: float | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    split: str = "test"
    path: str | None = None
    class_name: str | None = None
    limit: int | None = None


@dataclass(frozen=True)
class ABTestSpec:
    name: str
    namespace: str
    models: tuple[ModelSpec, ...]
    dataset: DatasetSpec
    seed: int = 42
    device: str = "auto"
    batch_size: int = 64
    workers: int = 2
    warmup_batches: int = 3
    amp: bool = False
    channels_last: bool = False
    compile: bool = False
    alpha: float = 0.05
    test: str = "auto"
    stall_timeout_seconds: int = 300
    raw: dict = field(default_factory=dict, compare=False)  # the defaulted spec, for the operator-only fields


def _openapi_to_jsonschema(node):
    """OpenAPI v3.0 (boolean exclusive bounds, x-kubernetes-*) to the JSON Schema jsonschema speaks."""
    if isinstance(node, list):
        return [_openapi_to_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _openapi_to_jsonschema(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
    for bound, limit in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if out.get(bound) is True:
            out[bound] = out.pop(limit)
        elif out.get(bound) is False:
            del out[bound]
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
    if node.get("x-kubernetes-preserve-unknown-fields"):
        out.pop("additionalProperties", None)
    elif out.get("type") == "object" and "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False  # the API server prunes unknown fields; locally we say so
    return out


def apply_defaults(value, schema: dict):
    """Structural defaulting, as the API server does: fill ``default`` for absent properties, recursively."""
    if isinstance(value, dict) and "properties" in schema:
        for key, sub in schema["properties"].items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                value[key] = apply_defaults(value[key], sub)
    elif isinstance(value, list) and "items" in schema:
        return [apply_defaults(v, schema["items"]) for v in value]
    return value


def _path(error: jsonschema.ValidationError) -> str:
    text = ""
    for part in error.absolute_path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text.lstrip(".") or "<root>"


def validate_manifest(manifest: dict) -> dict:
    """Defaulted copy of an ABTest manifest; UserError naming the field when it is invalid."""
    if not isinstance(manifest, dict):
        raise UserError("the manifest must be a YAML mapping with apiVersion, kind, metadata and spec")
    if manifest.get("apiVersion") != API_VERSION or manifest.get("kind") != KIND:
        raise UserError(f"apiVersion/kind must be {API_VERSION}/{KIND}, got {manifest.get('apiVersion')}/{manifest.get('kind')}")
    schema = openapi_schema()
    defaulted = apply_defaults(copy.deepcopy(manifest), schema)
    validator = jsonschema.Draft202012Validator(_openapi_to_jsonschema(schema))
    errors = sorted(validator.iter_errors(defaulted), key=lambda e: (len(e.absolute_path), _path(e)))
    if errors:
        first = errors[0]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise UserError(f"ABTest is invalid: {_path(first)}: {first.message}{more}")
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
        raise UserError("ABTest is invalid: spec.dataset.className is required with name torchvision (e.g. MNIST) and not allowed otherwise")
    for i, model in enumerate(spec["models"]):
        if model["name"] == "analysis":
            raise UserError(f"ABTest is invalid: spec.models[{i}].name 'analysis' is reserved for the analysis Job; rename the model")
        if model.get("pretrained") and "checkpoint" in model:
            raise UserError(f"ABTest is invalid: spec.models[{i}]: set either pretrained or checkpoint on a model, not both")
        if "mean" in model and "std" in model and len(model["mean"]) != len(model["std"]):
            raise UserError(f"ABTest is invalid: spec.models[{i}]: mean and std need the same number of values")
    if spec.get("gpusPerModel") and spec["device"] == "cpu":
        raise UserError("ABTest is invalid: spec.gpusPerModel must be 0 (or unset) when spec.device is cpu")


def parse_abtest(manifest: dict) -> ABTestSpec:
    defaulted = validate_manifest(manifest)
    spec, meta = defaulted["spec"], defaulted.get("metadata") or {}
    if not meta.get("name"):
        raise UserError("ABTest is invalid: metadata.name is required")
    ds = spec["dataset"]
    return ABTestSpec(
        name=meta["name"],
        namespace=meta.get("namespace") or "default",
        models=tuple(
            ModelSpec(
                name=m["name"], architecture=m["architecture"], pretrained=m.get("pretrained", False),
                checkpoint=m.get("checkpoint"), num_classes=m.get("numClasses"), in_chans=m.get("inChans"),
                input_size=m.get("inputSize"), interpolation=m.get("interpolation"), crop_pct=m.get("cropPct"),
                mean=tuple(m["mean"]) if "mean" in m else None, std=tuple(m["std"]) if "std" in m else None,
            )
            for m in spec["models"]
        ),
        dataset=DatasetSpec(ds["name"], ds["split"], ds.get("path"), ds.get("className"), ds.get("limit")),
        seed=spec["seed"], device=spec["device"], batch_size=spec["batchSize"], workers=spec["workers"],
        warmup_batches=spec["warmupBatches"], amp=spec["amp"], channels_last=spec["channelsLast"], compile=spec["compile"],
        alpha=spec["analysis"]["alpha"], test=spec["analysis"]["test"], stall_timeout_seconds=spec["stallTimeoutSeconds"], raw=spec,
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


__all__ = ["ABTestSpec", "DatasetSpec", "ModelSpec", "load_manifest", "parse_abtest", "validate_manifest"]
