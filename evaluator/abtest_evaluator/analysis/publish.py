"""Writes the analysis verdict into an ABTest's status subresource (what the analysis Job does)."""

from __future__ import annotations

import logging
import time

from abtest_api.constants import GROUP, PLURAL, VERSION
from abtest_api.errors import UserError
from abtest_api.result import check_status_result, check_status_sequential

RETRYABLE = {409, 429, 500, 502, 503, 504}
log = logging.getLogger(__name__)


def custom_objects_api():
    """In-cluster credentials (the analysis Job's ServiceAccount), else the local kubeconfig."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.CustomObjectsApi()


def parse_reference(ref: str) -> tuple[str, str]:
    namespace, sep, name = ref.partition("/")
    if not sep or not namespace or not name:
        raise UserError(f"--abtest {ref!r} must be NAMESPACE/NAME")
    return namespace, name


def publish_result(ref: str, summary: dict, api=None, attempts: int = 5, sleep=time.sleep, uid: str | None = None, sequential=None) -> None:
    """Merge-patch status.result (and status.sequential, the last look of a sequential test).

    With ``uid`` it is a compare-and-swap: read the ABTest, refuse when its UID is not the one analysed (deleted and
    re-created meanwhile), and patch on the condition of the resourceVersion read, so a re-creation between the read
    and the patch is a conflict that the next attempt reads again. (The status subresource ignores a UID in the patch
    body itself, so the read is what checks it.)"""
    fields = {"result": check_status_result(summary)} | ({"sequential": check_status_sequential(sequential)} if sequential else {})
    publish_status(ref, fields, api, attempts, sleep, uid)


def publish_look(ref: str, sequential: dict, api=None, uid: str | None = None) -> None:
    """Merge-patch status.sequential: where a sequential test stands after a look (the dashboard and kubectl show it)."""
    publish_status(ref, {"sequential": check_status_sequential(sequential)}, api, uid=uid)


def publish_status(ref: str, fields: dict, api=None, attempts: int = 5, sleep=time.sleep, uid: str | None = None) -> None:
    """Merge-patch these status fields; retries conflicts and transient errors, explains missing permissions."""
    from kubernetes.client.exceptions import ApiException

    namespace, name = parse_reference(ref)
    api = api or custom_objects_api()
    for attempt in range(attempts):
        try:
            body = {"status": fields}
            if uid:
                current = api.get_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, name)["metadata"]
                if current["uid"] != uid:
                    raise UserError(
                        f"ABTest {ref} is no longer the one analysed (UID {uid}, now {current['uid']}): it was deleted and re-created; "
                        "its verdict is not written"
                    )
                body["metadata"] = {"resourceVersion": current["resourceVersion"]}
            api.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, name, body)
            return
        except ApiException as err:
            if err.status == 403:
                raise UserError(
                    f"not allowed to read or patch abtests/status of {ref}; grant the analysis ServiceAccount 'get' and 'patch' on abtests/status in {namespace}"
                ) from None
            if err.status == 404:
                raise UserError(f"ABTest {ref} does not exist (deleted while the analysis ran?)") from None
            if err.status not in RETRYABLE or attempt == attempts - 1:
                raise UserError(f"patching the status of ABTest {ref} failed: HTTP {err.status} {err.reason}") from None
            log.warning("status patch of %s got HTTP %s, retrying", ref, err.status)
            sleep(min(0.5 * 2**attempt, 8))
