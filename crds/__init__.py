"""The ABTest CustomResourceDefinition: ``crds/abtest.yaml`` is its single source."""

from functools import cache
from importlib import resources

import yaml

CRD_FILE = "abtest.yaml"


@cache
def load_crd() -> dict:
    """The CRD as a dict, read from the packaged ``abtest.yaml``."""
    return yaml.safe_load(resources.files(__name__).joinpath(CRD_FILE).read_text())


def openapi_schema(version: str = "v1alpha1") -> dict:
    """The structural OpenAPI v3 schema of one served version."""
    for served in load_crd()["spec"]["versions"]:
        if served["name"] == version:
            return served["schema"]["openAPIV3Schema"]
    raise KeyError(f"CRD has no version {version}")
