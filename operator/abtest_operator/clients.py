"""The operator's Kubernetes clients, and the one request it sends around the generated client's models."""

from __future__ import annotations

import json
from dataclasses import dataclass

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

JOBS_PATH = "/apis/batch/v1/namespaces/{namespace}/jobs"


@dataclass
class Clients:
    batch: client.BatchV1Api
    core: client.CoreV1Api
    custom: client.CustomObjectsApi
    rbac: client.RbacAuthorizationV1Api

    @classmethod
    def connect(cls) -> Clients:
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        return cls(client.BatchV1Api(), client.CoreV1Api(), client.CustomObjectsApi(), client.RbacAuthorizationV1Api())

    def create_job(self, namespace: str, body: dict) -> dict:
        """Creates a Job from the dict the builders make; the answer as a dict. The generated client's
        ``create_namespaced_job`` validates a dict body into a ``V1Job`` (pydantic) and serialises it back, a round trip
        that costs much of the operator's CPU in a burst of ABTests (docs/benchmarks.md) for a body the tests already
        check."""
        return post_json(self.batch.api_client, JOBS_PATH, body, namespace=namespace)


def post_json(api: client.ApiClient, path: str, body: dict, **path_params: str) -> dict:
    """POST ``body`` to ``path`` as JSON with the client's configuration (host, credentials, TLS) and return the
    answer as a dict; a non-2xx answer raises the ``ApiException`` the generated methods raise."""
    headers = {"Accept": "application/json", "Content-Type": "application/json"}
    request = api.param_serialize("POST", path, path_params=path_params, header_params=headers, body=body, auth_settings=["BearerToken"])
    response = api.call_api(*request)
    data = response.read()
    if not 200 <= response.status <= 299:
        raise ApiException.from_response(http_resp=response, body=data.decode("utf-8", "replace"), data=None)
    return json.loads(data)
