"""The ABTest CustomResourceDefinition, read from the packaged ``abtest.yaml``, and validation against it."""

from __future__ import annotations

import copy
from functools import cache
from importlib import resources

import jsonschema
import yaml

CRD_FILE = "abtest.yaml"


@cache
def load_crd() -> dict:
    """The CRD as a dict, read from the packaged ``abtest.yaml``."""
    return yaml.safe_load(resources.files(__package__).joinpath(CRD_FILE).read_text())


def openapi_schema(version: str = "v1alpha1") -> dict:
    """The structural OpenAPI v3 schema of one served version."""
    for served in load_crd()["spec"]["versions"]:
        if served["name"] == version:
            return served["schema"]["openAPIV3Schema"]
    raise KeyError(f"CRD has no version {version}")


def to_jsonschema(node):
    """OpenAPI v3.0 (boolean exclusive bounds, nullable, x-kubernetes-*) to the JSON Schema jsonschema speaks."""
    if isinstance(node, list):
        return [to_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: to_jsonschema(v) for k, v in node.items() if not k.startswith("x-kubernetes-") and k != "nullable"}
    for bound, limit in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if out.get(bound) is True:
            out[bound] = out.pop(limit)
        elif out.get(bound) is False:
            del out[bound]
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if node.get("x-kubernetes-preserve-unknown-fields"):
        out.pop("additionalProperties", None)
    elif out.get("type") == "object" and "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False  # the API server prunes unknown fields; locally we say so
    return out


@cache
def validator(*path: str, version: str = "v1alpha1") -> jsonschema.Draft202012Validator:
    """A validator for the schema at ``path`` (property names from the root), e.g. ``("status", "result")``; built once
    (every reconcile pass validates a spec, every metrics export a result)."""
    schema = openapi_schema(version)
    for key in path:
        schema = schema["properties"][key]
    return jsonschema.Draft202012Validator(to_jsonschema(schema))


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


def error_path(error: jsonschema.ValidationError) -> str:
    """``spec.models[0].name`` for a validation error, as the API server names fields."""
    text = ""
    for part in error.absolute_path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text.lstrip(".") or "<root>"
