"""An in-memory stand-in for the four Kubernetes API clients the handlers use, for the handler tier.

It answers with the kubernetes client's own models (deserialized from dicts, as the real client does),
raises its ApiException with real status codes, counts requests, lets a test play the Job and pod
controllers by editing stored objects, and shows the operator its objects as its watches would (``seen``).
The e2e tier proves the handlers against a real cluster; this tier proves their decisions in milliseconds.
"""

from __future__ import annotations

import copy
import itertools
import json
import uuid
from collections import Counter
from datetime import UTC, datetime
from types import SimpleNamespace

from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

from abtest_operator import watched
from abtest_operator.watched import Observed

_api_client = ApiClient()
_versions = itertools.count(1)


def model(obj: dict, kind: str):
    """``obj`` as the client's model class ``kind`` (V1Job, V1Pod, …), through the client's public deserializer."""
    return _api_client.deserialize(json.dumps(obj), kind, "application/json")


class FakeCluster:
    """Objects by (kind, namespace, name); ``calls`` counts requests by method name."""

    def __init__(self):
        self.objects: dict[tuple[str, str, str], dict] = {}
        self.calls: Counter[str] = Counter()
        self.fail_next: dict[str, ApiException] = {}  # method name -> the error its next call raises
        self.batch = _Api(self, "batch")
        self.core = _Api(self, "core")
        self.rbac = _Api(self, "rbac")
        self.custom = _Api(self, "custom")
        self.custom_plurals = {"abtests", "jobsets"}  # the custom resources the API server serves

    def _call(self, method: str) -> None:
        self.calls[method] += 1
        if method in self.fail_next:
            raise self.fail_next.pop(method)

    def add(self, kind: str, obj: dict) -> dict:
        obj = copy.deepcopy(obj)
        meta = obj["metadata"]
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", "2026-11-27T12:00:00Z")
        meta["resourceVersion"] = str(next(_versions))
        self.objects[(kind, meta.get("namespace", "default"), meta["name"])] = obj
        return obj

    def get(self, kind: str, namespace: str, name: str) -> dict:
        return self.objects[(kind, namespace, name)]

    def of_kind(self, kind: str) -> list[dict]:
        return [o for (k, _, _), o in self.objects.items() if k == kind]

    def create(self, kind: str, namespace: str, body: dict) -> dict:
        if (kind, namespace, body["metadata"]["name"]) in self.objects:
            raise ApiException(status=409, reason="AlreadyExists")
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")  # created now, as the API server stamps it
        return self.add(kind, {**body, "metadata": {**body["metadata"], "namespace": namespace, "creationTimestamp": now}})

    def read(self, kind: str, namespace: str, name: str) -> dict:
        try:
            return self.objects[(kind, namespace, name)]
        except KeyError:
            raise ApiException(status=404, reason="NotFound") from None

    def seen(self) -> Observed:
        """What the operator's watches would hold now: every stored object through the operator's own index functions."""
        indexes = {"Job": watched.index_job, "Pod": watched.index_pod, "ABTest": watched.index_abtest}
        built: dict[str, dict] = {kind: {} for kind in indexes}
        for (kind, namespace, _), obj in self.objects.items():
            if kind in indexes and (entry := indexes[kind](copy.deepcopy(obj), namespace)):
                for key, value in entry.items():
                    built[kind].setdefault(key, []).append(value)
        return Observed(jobs=built["Job"], pods=built["Pod"], abtests=built["ABTest"])

    def run_jobset_controller(self) -> list[dict]:
        """Play the JobSet controller: each JobSet's Jobs (<jobset>-<replicatedJob>-0), suspended as their JobSet is."""
        made = []
        for jobset in self.of_kind("JobSet"):
            meta = jobset["metadata"]
            for rjob in jobset["spec"]["replicatedJobs"]:
                name = f"{meta['name']}-{rjob['name']}-0"
                if ("Job", meta["namespace"], name) not in self.objects:
                    template = copy.deepcopy(rjob["template"])
                    owner = {
                        "apiVersion": "jobset.x-k8s.io/v1alpha2",
                        "kind": "JobSet",
                        "name": meta["name"],
                        "uid": meta["uid"],
                        "controller": True,
                    }
                    job = {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "metadata": {**template["metadata"], "name": name, "namespace": meta["namespace"], "ownerReferences": [owner]},
                        "spec": {**template["spec"], "suspend": jobset["spec"].get("suspend", False)},
                        "status": {},
                    }
                    made.append(self.add("Job", job))
        return made

    def set_job_status(self, name: str, namespace: str, status: dict) -> None:
        """Play the Job controller (a write: a new resourceVersion, as the API server gives it)."""
        job = self.get("Job", namespace, name)
        job["status"] = status
        job["metadata"]["resourceVersion"] = str(next(_versions))


class _Api:
    """The subset of BatchV1Api / CoreV1Api / RbacAuthorizationV1Api / CustomObjectsApi the operator calls."""

    def __init__(self, cluster: FakeCluster, group: str):
        self._c, self._group = cluster, group

    @property
    def api_client(self) -> _HttpApi:
        return _HttpApi(self)

    def __getattr__(self, method: str):
        handler = getattr(self, f"_{method}", None)
        if handler is None:
            raise AttributeError(f"the fake {self._group} API has no {method}")

        def call(*args, _preload_content: bool = True, **kwargs):
            self._c._call(method)
            answer = handler(*args, **kwargs)
            if _preload_content:
                return answer
            # the raw HTTP answer, as the client gives it with _preload_content=False: its JSON in .data
            return SimpleNamespace(data=json.dumps(_api_client.sanitize_for_serialization(answer)).encode())

        return call

    # batch/v1
    def _create_namespaced_job(self, namespace, body):
        return model(self._c.create("Job", namespace, body), "V1Job")

    def _read_namespaced_job(self, name, namespace):
        return model(self._c.read("Job", namespace, name), "V1Job")

    def _patch_namespaced_job(self, name, namespace, body):
        job = self._c.read("Job", namespace, name)
        job["spec"].update(body.get("spec") or {})
        return model(job, "V1Job")

    # core/v1
    def _create_namespaced_persistent_volume_claim(self, namespace, body):
        return self._c.create("PersistentVolumeClaim", namespace, body)

    def _create_namespaced_service_account(self, namespace, body):
        return self._c.create("ServiceAccount", namespace, body)

    def _list_namespaced_event(self, namespace, field_selector=None):
        wanted = dict(term.split("=", 1) for term in (field_selector or "").split(",") if term)

        def field(event: dict, path: str):
            for key in path.split("."):
                event = (event or {}).get(key)
            return event

        events = [
            o
            for o in self._c.of_kind("Event")
            if o["metadata"]["namespace"] == namespace and all(str(field(o, k)) == v for k, v in wanted.items())
        ]
        return SimpleNamespace(items=[model(o, "CoreV1Event") for o in events])

    # rbac.authorization.k8s.io/v1
    def _create_namespaced_role(self, namespace, body):
        return self._c.create("Role", namespace, body)

    def _create_namespaced_role_binding(self, namespace, body):
        return self._c.create("RoleBinding", namespace, body)

    # custom objects: the ABTests, and the JobSets of queued ones
    KINDS = {"abtests": "ABTest", "jobsets": "JobSet"}

    def _get_namespaced_custom_object(self, group, version, namespace, plural, name):
        return copy.deepcopy(self._c.read(self.KINDS[plural], namespace, name))

    def _create_namespaced_custom_object(self, group, version, namespace, plural, body):
        if plural not in self._c.custom_plurals:
            raise ApiException(status=404, reason="NotFound")  # the API server serves no such resource
        return copy.deepcopy(self._c.create(self.KINDS[plural], namespace, body))

    def _delete_namespaced_custom_object(self, group, version, namespace, plural, name, propagation_policy=None):
        self._c.read(self.KINDS[plural], namespace, name)
        del self._c.objects[(self.KINDS[plural], namespace, name)]
        for key, job in list(self._c.objects.items()):  # garbage collection of its Jobs
            if key[0] == "Job" and any(
                ref.get("name") == name and ref["kind"] == "JobSet" for ref in job["metadata"].get("ownerReferences", [])
            ):
                del self._c.objects[key]
        return {"kind": "Status", "status": "Success"}

    def _patch_namespaced_custom_object_status(self, group, version, namespace, plural, name, body):
        abtest = self._c.read("ABTest", namespace, name)
        expected = (body.get("metadata") or {}).get("resourceVersion")
        if expected and expected != abtest["metadata"]["resourceVersion"]:
            raise ApiException(status=409, reason="Conflict")
        abtest["status"] = {**(abtest.get("status") or {}), **body["status"]}
        abtest["metadata"]["resourceVersion"] = str(next(_versions))
        return copy.deepcopy(abtest)


class _HttpApi:
    """The generated ApiClient's two HTTP-level calls, as ``abtest_operator.clients.post_json`` makes them: a POST to a
    collection is answered by the fake's method for it (counted under that name, failing as ``fail_next`` says), and
    its errors come back as HTTP answers with their status, as the API server sends them."""

    METHODS = {"jobs": "create_namespaced_job"}

    def __init__(self, api: _Api):
        self._api = api

    def param_serialize(self, method, resource_path, path_params=None, header_params=None, body=None, auth_settings=None):
        return method, resource_path.format(**(path_params or {})), header_params, body, None

    def call_api(self, method, url, header_params=None, body=None, post_params=None):
        assert method == "POST" and header_params["Content-Type"] == "application/json", (method, header_params)
        namespace, collection = url.split("/")[-2:]
        try:
            data = getattr(self._api, self.METHODS[collection])(namespace, body, _preload_content=False).data
            return _HttpAnswer(201, "Created", data)
        except ApiException as err:
            return _HttpAnswer(err.status, err.reason, json.dumps({"kind": "Status", "code": err.status, "reason": err.reason}).encode())


class _HttpAnswer(SimpleNamespace):
    def __init__(self, status: int, reason: str, data: bytes):
        super().__init__(status=status, reason=reason, data=data, headers={})

    def read(self) -> bytes:
        return self.data
