"""The handler tier: the kopf handlers' decisions with fake clients injected through ``memo``, as kopf tests its own.

Seconds to run. What a real API server, Job controller and kubelet do is proven in tests/e2e; here each
test plays them by editing the fake's objects and checks what one reconcile pass decides: what it
creates, what status it writes, which Events it posts, how it fails.
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
import dataclasses
import logging
import sys
import threading
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

import kopf
import pytest
from kubernetes.client.exceptions import ApiException

from abtest_api.constants import LABEL_NAME, LABEL_UID
from abtest_operator import handlers, kopf_workarounds
from abtest_operator import reconcile as reconciler
from abtest_operator.clients import Clients
from abtest_operator.settings import OperatorConfig
from abtest_operator.spec import load_manifest
from abtest_operator.state import operator_state
from abtest_operator.watched import Written
from fake_kube import FakeCluster
from helpers import ROOT

NS = "team-a"


# kopf's Event poster is found through context variables of the operator's event loop; a pass run in a thread
# without a copy of that context cannot post (LookupError), so the fake poster needs one too.
POSTER = contextvars.ContextVar("poster")


class RecordedEvents:
    def __init__(self):
        self.posted: list[tuple[str, str, str]] = []
        POSTER.set(self.posted)

    def info(self, body, *, reason, message):
        POSTER.get().append(("Normal", reason, message))

    def warn(self, body, *, reason, message):
        POSTER.get().append(("Warning", reason, message))

    def reasons(self) -> list[str]:
        return [reason for _, reason, _ in self.posted]


@pytest.fixture
def cluster() -> FakeCluster:
    return FakeCluster()


@pytest.fixture
def memo(cluster) -> kopf.Memo:
    clients = Clients(batch=cluster.batch, core=cluster.core, custom=cluster.custom, rbac=cluster.rbac)
    state = operator_state(
        clients=clients, config=OperatorConfig(image="registry.example/evaluator:test"), events=RecordedEvents(), resync_workers=1
    )
    return kopf.Memo(state=state)


def apply_abtest(cluster: FakeCluster, mutate=None) -> dict:
    manifest = load_manifest(ROOT / "examples" / "abtest-digits.yaml")
    manifest["metadata"].update(namespace=NS, generation=1)
    if mutate:
        mutate(manifest)
    return cluster.add("ABTest", manifest)


def reconcile(memo, cluster, abtest) -> dict:
    """One pass over the ABTest as stored now (kopf hands the handler the latest body)."""
    return reconciler.reconcile(memo.state, copy.deepcopy(cluster.get("ABTest", NS, abtest["metadata"]["name"])), cluster.seen())


def complete(cluster, name):
    cluster.set_job_status(
        name, NS, {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True", "lastTransitionTime": "2026-11-27T12:05:00Z"}]}
    )


def test_first_pass_creates_the_claim_and_one_job_per_model(memo, cluster):
    abtest = apply_abtest(cluster)
    new = reconcile(memo, cluster, abtest)
    jobs = sorted(j["metadata"]["name"] for j in cluster.of_kind("Job"))
    assert jobs == ["digits-resnet-vs-vit-resnet", "digits-resnet-vs-vit-vit"]
    assert [c["metadata"]["name"] for c in cluster.of_kind("PersistentVolumeClaim")] == ["abtest-results"]
    assert all(j["metadata"]["ownerReferences"][0]["uid"] == abtest["metadata"]["uid"] for j in cluster.of_kind("Job"))
    assert new["phase"] == "Pending" and cluster.get("ABTest", NS, abtest["metadata"]["name"])["status"]["phase"] == "Pending"
    message = "phase none -> Pending; created digits-resnet-vs-vit-resnet, digits-resnet-vs-vit-vit"
    assert memo.state.events.posted == [("Normal", "JobsCreated", message)]  # one Event per pass: each is a request


def test_a_pass_with_nothing_new_creates_nothing_and_writes_nothing(memo, cluster):
    abtest = apply_abtest(cluster)
    reconcile(memo, cluster, abtest)
    for job in ("digits-resnet-vs-vit-resnet", "digits-resnet-vs-vit-vit"):
        cluster.set_job_status(job, NS, {"active": 1, "ready": 1, "startTime": "2026-11-27T12:01:00Z"})
    assert reconcile(memo, cluster, abtest)["phase"] == "Running"
    before = dict(cluster.calls)
    reconcile(memo, cluster, abtest)
    new_calls = {k: v - before.get(k, 0) for k, v in cluster.calls.items() if v != before.get(k, 0)}
    assert new_calls == {}  # the watches hold everything a pass reads: no list, no create, no status patch
    assert len(cluster.of_kind("Job")) == 2 and memo.state.events.reasons() == ["JobsCreated", "Running"]


def test_already_exists_from_our_own_earlier_pass_is_success(memo, cluster):
    abtest = apply_abtest(cluster)
    seen_before = cluster.seen()
    reconcile(memo, cluster, abtest)
    # The watch has not delivered our Jobs yet: the creates answer 409, the read shows they are ours.
    reconciler.reconcile(memo.state, copy.deepcopy(cluster.get("ABTest", NS, abtest["metadata"]["name"])), seen_before)
    assert cluster.calls["create_namespaced_job"] == 4 and cluster.calls["read_namespaced_job"] == 2
    assert len(cluster.of_kind("Job")) == 2
    status = cluster.get("ABTest", NS, abtest["metadata"]["name"])["status"]
    assert status["phase"] == "Pending" and "NameConflict" not in memo.state.events.reasons()


def test_a_name_taken_by_another_abtest_fails_with_the_reason(memo, cluster):
    cluster.add(
        "Job",
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {
                "name": "digits-resnet-vs-vit-vit",
                "namespace": NS,
                "ownerReferences": [
                    {
                        "apiVersion": "abtest.dev/v1alpha1",
                        "kind": "ABTest",
                        "name": "digits-resnet-vs",
                        "uid": "someone-else",
                        "controller": True,
                    }
                ],
            },
            "spec": {"template": {"spec": {"containers": []}}},
        },
    )
    abtest = apply_abtest(cluster)
    with pytest.raises(kopf.PermanentError, match="belongs to something else"):
        reconcile(memo, cluster, abtest)
    status = cluster.get("ABTest", NS, abtest["metadata"]["name"])["status"]
    assert status["phase"] == "Failed" and "Job team-a/digits-resnet-vs-vit-vit already exists" in status["reason"]
    assert memo.state.events.posted[-1][:2] == ("Warning", "NameConflict")


def test_an_invalid_spec_is_failed_once_with_the_field_named(memo, cluster):
    abtest = apply_abtest(cluster, lambda m: m["spec"].pop("modelsVolume"))
    with pytest.raises(kopf.PermanentError):
        reconcile(memo, cluster, abtest)
    assert reconcile(memo, cluster, abtest)["phase"] == "Failed"  # latched: the next pass changes nothing
    status = cluster.get("ABTest", NS, abtest["metadata"]["name"])["status"]
    assert status["phase"] == "Failed" and "spec.models[0].checkpoint" in status["reason"] and "modelsVolume" in status["reason"]
    assert memo.state.events.reasons() == ["InvalidSpec"]
    assert cluster.calls["patch_namespaced_custom_object_status"] == 1 and not cluster.of_kind("Job")


def test_all_models_done_starts_the_analysis_with_its_own_scoped_account(memo, cluster):
    abtest = apply_abtest(cluster)
    reconcile(memo, cluster, abtest)
    for job in ("digits-resnet-vs-vit-resnet", "digits-resnet-vs-vit-vit"):
        complete(cluster, job)
    new = reconcile(memo, cluster, abtest)
    assert new["phase"] == "Analyzing"
    assert [o["metadata"]["name"] for kind in ("ServiceAccount", "Role", "RoleBinding") for o in cluster.of_kind(kind)] == [
        "digits-resnet-vs-vit-analysis"
    ] * 3
    analysis = cluster.get("Job", NS, "digits-resnet-vs-vit-analysis")
    assert analysis["spec"]["template"]["spec"]["serviceAccountName"] == "digits-resnet-vs-vit-analysis"
    complete(cluster, "digits-resnet-vs-vit-analysis")
    assert reconcile(memo, cluster, abtest)["phase"] == "Succeeded"
    assert memo.state.events.reasons()[-1] == "Succeeded"


def test_a_failed_model_names_the_pod_message_and_stops_the_others(memo, cluster):
    abtest = apply_abtest(cluster)
    reconcile(memo, cluster, abtest)
    cluster.set_job_status("digits-resnet-vs-vit-vit", NS, {"active": 1, "ready": 1})
    cluster.set_job_status(
        "digits-resnet-vs-vit-resnet",
        NS,
        {
            "failed": 1,
            "conditions": [
                {"type": "Failed", "status": "True", "reason": "PodFailurePolicy", "lastTransitionTime": "2026-11-27T12:03:00Z"}
            ],
        },
    )
    cluster.add(
        "Pod",
        {
            "metadata": {
                "name": "digits-resnet-vs-vit-resnet-x1",
                "namespace": NS,
                "labels": {"job-name": "digits-resnet-vs-vit-resnet", LABEL_NAME: "digits-resnet-vs-vit"},
            },
            "status": {
                "containerStatuses": [
                    {
                        "name": "evaluator",
                        "image": "i",
                        "imageID": "",
                        "ready": False,
                        "restartCount": 0,
                        "state": {"terminated": {"exitCode": 2, "message": "Traceback …\nerror: checkpoint does not fit timm/resnet10t"}},
                    }
                ]
            },
        },
    )
    new = reconcile(memo, cluster, abtest)
    assert new["phase"] == "Failed"
    assert new["reason"] == "model resnet failed: PodFailurePolicy: checkpoint does not fit timm/resnet10t"
    assert cluster.get("Job", NS, "digits-resnet-vs-vit-vit")["spec"]["suspend"] is True
    assert ("Warning", "Failed", new["reason"]) in memo.state.events.posted


def test_terminal_phases_are_never_rederived(memo, cluster):
    abtest = apply_abtest(cluster)
    abtest["status"] = {"phase": "Succeeded", "result": {"winner": "resnet"}}
    calls = dict(cluster.calls)
    assert reconciler.reconcile(memo.state, abtest, cluster.seen()) == abtest["status"]
    assert dict(cluster.calls) == calls and not cluster.of_kind("Job")  # nothing read, nothing created


def test_a_pass_from_a_stale_read_never_overwrites_and_decides_again_from_the_stored_object(memo, cluster):
    abtest = apply_abtest(cluster)
    stale = copy.deepcopy(abtest)  # what the ABTest watch still shows
    stored = cluster.get("ABTest", NS, abtest["metadata"]["name"])
    stored["status"] = {"phase": "Failed", "reason": "written meanwhile"}
    stored["metadata"]["resourceVersion"] = "newer"
    assert reconciler.reconcile(memo.state, stale, cluster.seen()) == {"phase": "Failed", "reason": "written meanwhile"}
    assert cluster.calls["patch_namespaced_custom_object_status"] == 1  # the conditional patch failed; nothing else written
    assert cluster.calls["get_namespaced_custom_object"] == 1 and stored["status"]["reason"] == "written meanwhile"


def test_api_errors_propagate_for_kopf_to_retry_and_are_counted(memo, cluster):
    abtest = apply_abtest(cluster)
    cluster.fail_next["create_namespaced_job"] = ApiException(status=503, reason="Service Unavailable")
    with pytest.raises(ApiException):
        reconciler.guarded(memo.state, copy.deepcopy(abtest), cluster.seen())
    assert memo.state.metrics.reconcile_errors.labels(NS)._value.get() == 1
    reconciler.guarded(memo.state, copy.deepcopy(abtest), cluster.seen())  # the retry succeeds
    assert len(cluster.of_kind("Job")) == 2


def test_a_stalled_pod_is_a_condition_and_a_warning_at_once(memo, cluster):
    abtest = apply_abtest(cluster)
    reconcile(memo, cluster, abtest)
    cluster.set_job_status("digits-resnet-vs-vit-vit", NS, {"active": 1})
    cluster.add(
        "Pod",
        {
            "metadata": {
                "name": "digits-resnet-vs-vit-vit-x1",
                "namespace": NS,
                "labels": {"job-name": "digits-resnet-vs-vit-vit", LABEL_NAME: "digits-resnet-vs-vit"},
            },
            "status": {
                "conditions": [
                    {
                        "type": "PodScheduled",
                        "status": "False",
                        "reason": "Unschedulable",
                        "message": "0/1 nodes are available: 1 Insufficient nvidia.com/gpu.",
                    }
                ]
            },
        },
    )
    new = reconcile(memo, cluster, abtest)
    stalled = next(c for c in new["conditions"] if c["type"] == "Stalled")
    assert stalled["status"] == "True" and "model vit: unschedulable: 0/1 nodes" in stalled["message"]
    assert ("Warning", "Stalled", stalled["message"]) in memo.state.events.posted and new["phase"] != "Failed"


def test_leftover_jobs_of_a_failed_abtest_are_suspended_on_their_events(memo, cluster):
    abtest = apply_abtest(cluster)
    reconcile(memo, cluster, abtest)
    cluster.get("ABTest", NS, abtest["metadata"]["name"])["status"] = {"phase": "Failed", "reason": "model resnet failed"}
    cluster.set_job_status("digits-resnet-vs-vit-vit", NS, {"active": 1})
    job = cluster.get("Job", NS, "digits-resnet-vs-vit-vit")
    handlers.job_changed(event={"type": "MODIFIED"}, body=kopf.Body(copy.deepcopy(job)), namespace=NS, memo=memo, **indexes(cluster))
    assert cluster.get("Job", NS, "digits-resnet-vs-vit-vit")["spec"]["suspend"] is True
    assert cluster.calls["create_namespaced_job"] == 2  # nothing re-created


def test_an_operator_upgraded_mid_test_keeps_the_image_the_first_jobs_run(memo, cluster):
    abtest = apply_abtest(cluster)
    reconcile(memo, cluster, abtest)
    first_image = cluster.get("Job", NS, "digits-resnet-vs-vit-resnet")["spec"]["template"]["spec"]["containers"][0]["image"]
    del cluster.objects[("Job", NS, "digits-resnet-vs-vit-vit")]  # deleted by hand, say
    memo.state.config = dataclasses.replace(memo.state.config, image="registry.example/evaluator:upgraded")
    new = reconcile(memo, cluster, abtest)
    recreated = cluster.get("Job", NS, "digits-resnet-vs-vit-vit")["spec"]["template"]["spec"]["containers"][0]
    assert new["image"] == first_image == recreated["image"] == "registry.example/evaluator:test"
    assert {"name": "ABTEST_IMAGE", "value": first_image} in recreated["env"]


def test_a_refused_image_fails_before_anything_is_created(memo, cluster):
    abtest = apply_abtest(cluster, lambda m: m["spec"].update(image="docker.io/someone/else:latest"))
    with pytest.raises(kopf.PermanentError):
        reconcile(memo, cluster, abtest)
    status = cluster.get("ABTest", NS, abtest["metadata"]["name"])["status"]
    assert status["phase"] == "Failed" and "spec.image 'docker.io/someone/else:latest' is not allowed" in status["reason"]
    assert not cluster.of_kind("Job") and memo.state.events.reasons() == ["InvalidSpec"]


def test_a_job_without_a_pod_is_asked_why_only_after_the_grace_period(memo, cluster):
    abtest = apply_abtest(cluster)
    reconcile(memo, cluster, abtest)
    job = cluster.get("Job", NS, "digits-resnet-vs-vit-vit")
    cluster.add(
        "Event",
        {
            "metadata": {"name": "vit.1", "namespace": NS},
            "involvedObject": {"kind": "Job", "name": "digits-resnet-vs-vit-vit"},
            "reason": "FailedCreate",
            "message": 'pods "digits-resnet-vs-vit-vit-x" is forbidden: exceeded quota: gpus',
            "lastTimestamp": "2026-11-27T12:00:05Z",
        },
    )
    created = datetime.fromisoformat(job["metadata"]["creationTimestamp"].replace("Z", "+00:00"))
    young = reconciler.reconcile(memo.state, cluster.get("ABTest", NS, "digits-resnet-vs-vit"), cluster.seen(), now=created)
    assert cluster.calls["list_namespaced_event"] == 0 and not any(
        c["type"] == "Stalled" and c["status"] == "True" for c in young["conditions"]
    )
    later = created + timedelta(seconds=reconciler.POD_CREATE_GRACE_SECONDS)
    old = reconciler.reconcile(memo.state, copy.deepcopy(cluster.get("ABTest", NS, "digits-resnet-vs-vit")), cluster.seen(), now=later)
    stalled = next(c for c in old["conditions"] if c["type"] == "Stalled")
    assert (
        stalled["status"] == "True" and "model vit: pod creation refused: " in stalled["message"] and "exceeded quota" in stalled["message"]
    )


def test_a_queued_abtest_is_one_suspended_jobset_whose_waiting_jobs_are_not_stalls(memo, cluster):
    """spec.queueName: the models become one JobSet for Kueue to admit as one workload (all or none); its controller's
    Jobs are the ABTest's model Jobs, a pass before they exist creates no second JobSet, and queued ones are no stall."""
    abtest = apply_abtest(cluster, lambda m: m["spec"].update(queueName="team-queue"))
    reconcile(memo, cluster, abtest)
    reconcile(memo, cluster, abtest)  # before the JobSet controller made its Jobs: "already exists", and ours
    (jobset,) = cluster.of_kind("JobSet")
    assert not cluster.of_kind("Job") and cluster.calls["create_namespaced_custom_object"] == 2
    assert jobset["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-queue" and jobset["spec"]["suspend"] is True
    assert jobset["metadata"]["ownerReferences"][0]["uid"] == abtest["metadata"]["uid"]
    assert [r["name"] for r in jobset["spec"]["replicatedJobs"]] == ["resnet", "vit"]
    assert all(
        r["replicas"] == 1 and r["template"]["metadata"]["labels"][LABEL_UID] == abtest["metadata"]["uid"]
        for r in jobset["spec"]["replicatedJobs"]
    )
    cluster.run_jobset_controller()
    assert all(j["spec"]["suspend"] is True for j in cluster.of_kind("Job"))
    reconcile(memo, cluster, abtest)  # the Jobs' ADDED events
    calls = dict(cluster.calls)
    later = datetime.now(UTC) + timedelta(hours=1)
    new = reconciler.reconcile(memo.state, copy.deepcopy(cluster.get("ABTest", NS, abtest["metadata"]["name"])), cluster.seen(), now=later)
    assert new["phase"] == "Pending" and dict(cluster.calls) == calls  # waiting in the queue: nothing asked, nothing written
    assert [m["job"] for m in new["models"]] == ["digits-resnet-vs-vit-resnet-0", "digits-resnet-vs-vit-vit-0"]
    assert not any(c["type"] == "Stalled" and c["status"] == "True" for c in new["conditions"])


def test_a_failed_model_of_a_queued_abtest_deletes_its_jobset_so_kueue_frees_the_quota(memo, cluster):
    """Kueue resumes a suspended JobSet it admitted, so a finished ABTest's unfinished models stop by the JobSet's deletion."""
    abtest = apply_abtest(cluster, lambda m: m["spec"].update(queueName="team-queue"))
    reconcile(memo, cluster, abtest)
    cluster.run_jobset_controller()
    for job in cluster.of_kind("Job"):
        job["spec"]["suspend"] = False
    cluster.set_job_status("digits-resnet-vs-vit-resnet-0", NS, {"active": 1, "startTime": "2026-11-27T12:01:00Z"})
    failed = [
        {
            "type": "Failed",
            "status": "True",
            "reason": "PodFailurePolicy",
            "message": "exit 2",
            "lastTransitionTime": "2026-11-27T12:02:00Z",
        }
    ]
    cluster.set_job_status("digits-resnet-vs-vit-vit-0", NS, {"failed": 1, "startTime": "2026-11-27T12:01:00Z", "conditions": failed})
    new = reconcile(memo, cluster, abtest)
    assert new["phase"] == "Failed" and new["reason"].startswith("model vit failed: PodFailurePolicy"), new["reason"]
    assert not cluster.of_kind("JobSet") and cluster.calls["delete_namespaced_custom_object"] == 1


def test_a_queued_abtest_in_a_cluster_without_jobset_fails_saying_what_to_install(memo, cluster):
    cluster.custom_plurals.discard("jobsets")
    abtest = apply_abtest(cluster, lambda m: m["spec"].update(queueName="team-queue"))
    with pytest.raises(kopf.PermanentError):
        reconcile(memo, cluster, abtest)
    stored = cluster.get("ABTest", NS, abtest["metadata"]["name"])["status"]
    assert stored["phase"] == "Failed" and stored["reason"].startswith("spec.queueName needs JobSet (jobset.x-k8s.io) and Kueue"), stored


def test_a_whole_lifecycle_costs_the_operator_few_requests(memo, cluster):
    """Every Job event of a two-model lifecycle, each handled as kopf would: the requests are the creates, one
    status write per change and one Event per transition. (benchmarks/operator_scale.py measures the real count.)"""
    abtest = apply_abtest(cluster)
    handlers.abtest_changed(event={"type": "ADDED"}, body=kopf.Body(copy.deepcopy(abtest)), memo=memo, **indexes(cluster))

    def job_event(name: str, job_status: dict) -> None:
        cluster.set_job_status(name, NS, job_status)
        handlers.job_changed(
            event={"type": "MODIFIED"},
            body=kopf.Body(copy.deepcopy(cluster.get("Job", NS, name))),
            namespace=NS,
            memo=memo,
            **indexes(cluster),
        )

    models = ("digits-resnet-vs-vit-resnet", "digits-resnet-vs-vit-vit")
    for name in models + ("digits-resnet-vs-vit-analysis",):
        if name.endswith("analysis"):
            handlers.job_changed(
                event={"type": "MODIFIED"},
                body=kopf.Body(copy.deepcopy(cluster.get("Job", NS, name))),
                namespace=NS,
                memo=memo,
                **indexes(cluster),
            )
        job_event(name, {"active": 1, "startTime": "2026-11-27T12:01:00Z"})
        job_event(name, {"active": 1, "ready": 1, "startTime": "2026-11-27T12:01:00Z"})
        job_event(
            name, {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True", "lastTransitionTime": "2026-11-27T12:05:00Z"}]}
        )
    stored = cluster.get("ABTest", NS, abtest["metadata"]["name"])["status"]
    assert stored["phase"] == "Succeeded" and cluster.calls["create_namespaced_job"] == 3
    requests = sum(cluster.calls.values()) + len(memo.state.events.posted)
    assert requests <= 18, (dict(cluster.calls), memo.state.events.posted)
    assert memo.state.events.reasons() == ["JobsCreated", "Running", "JobsCreated", "Succeeded"]


def indexes(cluster) -> dict:
    seen = cluster.seen()
    return {"abtest_jobs": seen.jobs, "abtest_pods": seen.pods, "abtests_by_uid": seen.abtests}


def test_a_pass_before_the_watches_deliver_our_writes_repeats_none_of_them(memo, cluster):
    """Job events arrive while the watches still show the ABTest and Jobs as they were before the last pass: the
    operator's own writes (memo.state.written, like client-go's expectations) keep it from creating or writing twice."""
    abtest = apply_abtest(cluster)
    stale = dataclasses.replace(cluster.seen(), written=memo.state.written)  # the watches, frozen before the first pass
    reconciler.guarded(memo.state, copy.deepcopy(abtest), stale)
    calls = dict(cluster.calls)
    assert calls["create_namespaced_job"] == 2 and calls["patch_namespaced_custom_object_status"] == 1
    reconciler.guarded(memo.state, copy.deepcopy(abtest), stale)
    assert dict(cluster.calls) == calls  # no 409s, no GET, no second status write
    stored = cluster.get("ABTest", NS, abtest["metadata"]["name"])
    assert stale.abtest(NS, stored["metadata"]["uid"])["metadata"]["resourceVersion"] == stored["metadata"]["resourceVersion"]


def test_no_handler_makes_kopf_put_a_finalizer_on_abtests():
    registry = kopf.get_default_registry()
    assert not any(h.requires_finalizer for h in registry._spawning.get_all_handlers())
    assert not any(getattr(h, "requires_finalizer", False) for h in registry._changing.get_all_handlers())


def test_no_handler_needs_the_diff_base_the_operator_does_not_build():
    """kopf_workarounds.NoDiffBase leaves kopf no diff to see: fine only while no handler reacts to changes."""
    registry = kopf.get_default_registry()
    assert not registry._changing.get_all_handlers()  # no on.create / on.update / on.resume / on.field / on.delete
    assert all(getattr(h, "idle", None) is None for h in registry._spawning.get_all_handlers())  # no idle timers
    assert kopf_workarounds.NoDiffBase().build(body=kopf.Body({"spec": {"a": 1}, "status": {"b": 2}})) == {}


def test_the_echo_of_our_own_write_starts_no_pass(memo, cluster):
    abtest = apply_abtest(cluster)
    handlers.abtest_changed(event={"type": "ADDED"}, body=kopf.Body(copy.deepcopy(abtest)), memo=memo, **indexes(cluster))
    passes = memo.state.metrics.reconciles.labels(NS)._value.get()
    job = cluster.get("Job", NS, "digits-resnet-vs-vit-vit")  # as the create answered: its ADDED event
    handlers.job_changed(event={"type": "ADDED"}, body=kopf.Body(copy.deepcopy(job)), namespace=NS, memo=memo, **indexes(cluster))
    stored = cluster.get("ABTest", NS, abtest["metadata"]["name"])  # our status write, coming back
    handlers.abtest_changed(event={"type": "MODIFIED"}, body=kopf.Body(copy.deepcopy(stored)), memo=memo, **indexes(cluster))
    assert memo.state.metrics.reconciles.labels(NS)._value.get() == passes
    cluster.set_job_status("digits-resnet-vs-vit-vit", NS, {"active": 1})  # the Job controller's write is news
    job = cluster.get("Job", NS, "digits-resnet-vs-vit-vit")
    handlers.job_changed(event={"type": "MODIFIED"}, body=kopf.Body(copy.deepcopy(job)), namespace=NS, memo=memo, **indexes(cluster))
    assert memo.state.metrics.reconciles.labels(NS)._value.get() == passes + 1


def test_a_deleted_abtest_is_forgotten_whole(memo, cluster):
    """The operator keeps one record per ABTest (its lock, parsed spec, last pass): a deletion drops it, with the
    ABTest's writes not yet seen and its metrics."""
    abtest = apply_abtest(cluster)
    handlers.abtest_changed(event={"type": "ADDED"}, body=kopf.Body(copy.deepcopy(abtest)), memo=memo, **indexes(cluster))
    key = (NS, abtest["metadata"]["uid"])
    assert key in memo.state.abtests and key in memo.state.written.abtests and key in memo.state.written.jobs
    stored = copy.deepcopy(cluster.get("ABTest", NS, abtest["metadata"]["name"]))
    handlers.abtest_changed(event={"type": "DELETED"}, body=kopf.Body(stored), memo=memo, **indexes(cluster))
    assert key not in memo.state.abtests and key not in memo.state.written.abtests and key not in memo.state.written.jobs
    phases = [s for m in memo.state.metrics.registry.collect() for s in m.samples if s.name == "abtest_phase"]
    assert not [s for s in phases if s.labels["abtest"] == abtest["metadata"]["name"]]


def test_a_job_deleted_after_its_creation_was_seen_is_created_again(memo, cluster):
    """The operator's own writes must not outlive what the watches show: a Job deleted by hand is re-created."""
    abtest = apply_abtest(cluster)
    handlers.abtest_changed(event={"type": "ADDED"}, body=kopf.Body(copy.deepcopy(abtest)), memo=memo, **indexes(cluster))
    job = copy.deepcopy(cluster.get("Job", NS, "digits-resnet-vs-vit-vit"))
    handlers.job_changed(event={"type": "ADDED"}, body=kopf.Body(job), namespace=NS, memo=memo, **indexes(cluster))
    del cluster.objects[("Job", NS, "digits-resnet-vs-vit-vit")]
    handlers.job_changed(event={"type": "DELETED"}, body=kopf.Body(job), namespace=NS, memo=memo, **indexes(cluster))
    assert ("Job", NS, "digits-resnet-vs-vit-vit") in cluster.objects and cluster.calls["create_namespaced_job"] == 3


def test_a_write_whose_watch_event_never_came_is_trusted_only_for_a_while(memo, cluster):
    clock = [0.0]
    memo.state.written = Written(ttl=60, clock=lambda: clock[0])
    abtest = apply_abtest(cluster)
    stale = dataclasses.replace(cluster.seen(), written=memo.state.written)  # the watches never deliver the Jobs
    reconciler.guarded(memo.state, copy.deepcopy(abtest), stale)
    for name in ("digits-resnet-vs-vit-resnet", "digits-resnet-vs-vit-vit"):
        del cluster.objects[("Job", NS, name)]  # deleted before their events came
    reconciler.guarded(memo.state, copy.deepcopy(abtest), stale)
    assert cluster.calls["create_namespaced_job"] == 2  # still trusted
    clock[0] = 61.0
    reconciler.guarded(memo.state, copy.deepcopy(abtest), stale)
    assert cluster.calls["create_namespaced_job"] == 4 and len(cluster.of_kind("Job")) == 2


def test_a_sequential_test_runs_its_analysis_alongside_and_an_early_stop_stops_the_models(memo, cluster):
    abtest = apply_abtest(cluster, lambda m: m["spec"]["analysis"].update(sequential={"looks": 4}))
    reconcile(memo, cluster, abtest)
    names = sorted(j["metadata"]["name"] for j in cluster.of_kind("Job"))
    assert names == ["digits-resnet-vs-vit-analysis", "digits-resnet-vs-vit-resnet", "digits-resnet-vs-vit-vit"]
    args = cluster.get("Job", NS, "digits-resnet-vs-vit-analysis")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--looks") :][:4] == ["--looks", "4", "--spending", "obrienFleming"]
    model_args = cluster.get("Job", NS, "digits-resnet-vs-vit-vit")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert model_args[model_args.index("--looks") + 1] == "4"
    for job in names:
        cluster.set_job_status(job, NS, {"active": 1, "ready": 1, "startTime": "2026-11-27T12:01:00Z"})
    assert reconcile(memo, cluster, abtest)["phase"] == "Running"
    complete(cluster, "digits-resnet-vs-vit-analysis")  # a boundary was crossed at a look: the verdict is in
    new = reconcile(memo, cluster, abtest)
    assert new["phase"] == "Succeeded" and [m["phase"] for m in new["models"]] == ["Stopped", "Stopped"]
    assert all(cluster.get("Job", NS, f"digits-resnet-vs-vit-{m}")["spec"]["suspend"] is True for m in ("resnet", "vit"))


def test_a_failed_model_of_a_sequential_test_stops_its_waiting_analysis(memo, cluster):
    abtest = apply_abtest(cluster, lambda m: m["spec"]["analysis"].update(sequential={"looks": 3, "spending": "pocock"}))
    reconcile(memo, cluster, abtest)
    cluster.set_job_status("digits-resnet-vs-vit-analysis", NS, {"active": 1, "ready": 1})
    cluster.set_job_status(
        "digits-resnet-vs-vit-vit",
        NS,
        {"failed": 1, "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]},
    )
    assert reconcile(memo, cluster, abtest)["phase"] == "Failed"
    assert cluster.get("Job", NS, "digits-resnet-vs-vit-analysis")["spec"]["suspend"] is True


def test_a_sharded_model_is_one_indexed_job_whose_pods_learn_their_part(memo, cluster):
    abtest = apply_abtest(cluster, lambda m: m["spec"].update(shardsPerModel=3))
    reconcile(memo, cluster, abtest)
    job = cluster.get("Job", NS, "digits-resnet-vs-vit-resnet")
    assert (job["spec"]["completionMode"], job["spec"]["completions"], job["spec"]["parallelism"]) == ("Indexed", 3, 3)
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][container["args"].index("--shard") + 1] == "$(ABTEST_SHARD)/3"
    shard_env = next(e for e in container["env"] if e["name"] == "ABTEST_SHARD")
    assert shard_env["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    assert len(cluster.of_kind("Job")) == 2  # one Job per model, whatever the shards


def test_a_spec_is_parsed_once_per_generation(cluster, memo, monkeypatch):
    """Passes for Job events reuse the spec parsed at this generation; a new generation is parsed (and validated) again."""
    parsed = []
    parse = reconciler.parse_abtest
    monkeypatch.setattr(reconciler, "parse_abtest", lambda manifest: parsed.append(manifest["metadata"]["generation"]) or parse(manifest))
    abtest = apply_abtest(cluster)
    record = memo.state.record(NS, abtest["metadata"]["uid"])
    first = reconciler.parsed_spec(record, abtest)
    assert reconciler.parsed_spec(record, copy.deepcopy(abtest)) is first and parsed == [1]
    changed = copy.deepcopy(abtest)
    changed["metadata"]["generation"] = 2
    changed["spec"]["analysis"] = {"alpha": 0.01}
    assert reconciler.parsed_spec(record, changed).alpha == 0.01 and parsed == [1, 2]
    changed["spec"]["analysis"] = {"alpha": 2}  # invalid at generation 3: refused, never served from the cache
    changed["metadata"]["generation"] = 3
    with pytest.raises(reconciler.UserError, match="alpha"):
        reconciler.parsed_spec(record, changed)


def test_own_writes_are_safe_to_read_while_other_threads_add_theirs():
    """kopf runs passes in several threads: a pass reading its ABTest's written Jobs while other passes record theirs
    must not fail ("dictionary changed size during iteration" failed passes in a burst of 500 ABTests)."""
    written, errors, stop = Written(), [], threading.Event()

    def job(uid: str, name: str) -> dict:
        meta = {"name": name, "namespace": NS, "resourceVersion": "1", "ownerReferences": [{"kind": "ABTest", "uid": uid}]}
        return {"metadata": meta, "spec": {}, "status": {}}

    def record(first: int) -> None:
        for i in range(first, first + 20_000):
            written.job(job(f"uid-{i}", f"job-{i}"))
        stop.set()

    def read() -> None:
        try:
            while not stop.is_set():
                assert written.jobs_over(NS, "uid-0", {}) == {}
        except Exception as err:  # noqa: BLE001 - any failure of the reader is the finding
            errors.append(err)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        threads = [threading.Thread(target=record, args=(1,)), threading.Thread(target=read), threading.Thread(target=read)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert not errors and len(written.jobs) == 20_000


def test_a_job_event_that_changes_nothing_a_pass_reads_starts_no_pass(memo, cluster):
    """A queued Job's events after its creation (the Job controller's Suspended condition) would each start a pass
    that finds nothing new; a change in what a pass reads (admitted, a pod ready, finished) or a deletion starts one."""
    abtest = apply_abtest(cluster, lambda m: m["spec"].update(queueName="team-queue"))
    handlers.abtest_changed(event={"type": "ADDED"}, body=kopf.Body(copy.deepcopy(abtest)), memo=memo, **indexes(cluster))
    cluster.run_jobset_controller()
    name = "digits-resnet-vs-vit-vit-0"

    def job_event(kind: str, job_status: dict | None = None, suspend: bool | None = None) -> float:
        job = cluster.get("Job", NS, name)
        if suspend is not None:
            job["spec"]["suspend"] = suspend
        cluster.set_job_status(name, NS, job["status"] if job_status is None else job_status)  # a write: a new version
        handlers.job_changed(event={"type": kind}, body=kopf.Body(copy.deepcopy(job)), namespace=NS, memo=memo, **indexes(cluster))
        return memo.state.metrics.reconciles.labels(NS)._value.get()

    created = copy.deepcopy(cluster.get("Job", NS, name))  # its ADDED event: the JobSet controller's create
    handlers.job_changed(event={"type": "ADDED"}, body=kopf.Body(created), namespace=NS, memo=memo, **indexes(cluster))
    passes = memo.state.metrics.reconciles.labels(NS)._value.get()
    suspended = {"conditions": [{"type": "Suspended", "status": "True", "lastTransitionTime": "2026-11-27T12:00:01Z"}]}
    assert job_event("MODIFIED", suspended) == passes  # the Suspended condition: no pass
    assert job_event("MODIFIED", suspend=False) == passes + 1  # admitted by the queue
    assert job_event("MODIFIED", {"active": 1, "startTime": "2026-11-27T12:01:00Z"}) == passes + 2  # running
    assert job_event("MODIFIED", {"active": 1, "startTime": "2026-11-27T12:01:00Z", "terminating": 0}) == passes + 2
    assert job_event("MODIFIED", {"active": 1, "ready": 1, "startTime": "2026-11-27T12:01:00Z"}) == passes + 3  # ready
    job = copy.deepcopy(cluster.get("Job", NS, name))
    del cluster.objects[("Job", NS, name)]
    handlers.job_changed(event={"type": "DELETED"}, body=kopf.Body(job), namespace=NS, memo=memo, **indexes(cluster))
    assert memo.state.metrics.reconciles.labels(NS)._value.get() == passes + 4  # a deletion is always news
    # the pass makes sure the JobSet exists (its controller re-creates the Job): one JobSet, still
    assert cluster.calls["create_namespaced_custom_object"] == 2 and len(cluster.of_kind("JobSet")) == 1


YIELD = asyncio.sleep  # the real one, for the virtual clock's sleep to hand the loop on


class VirtualTime:
    """memo.state.clock and asyncio.sleep for the resync coroutine: a sleep moves the clock on at once, running on the way
    the passes that ABTest or Job events start at their times."""

    def __init__(self, events: dict[float, object], until: float, on_end):
        self.now, self.until, self.on_end = 0.0, until, on_end
        self.events = sorted(events.items())

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        end = self.now + seconds
        while self.events and self.events[0][0] <= end:
            self.now, event = self.events.pop(0)
            event()
        self.now = end
        if end >= self.until:
            self.on_end()  # the ABTest finishes: the coroutine must end
        await YIELD(0)


class LiveIndex(Mapping):
    """A kopf index as a handler holds it: one object whose contents follow the cluster."""

    def __init__(self, cluster: FakeCluster, part: str):
        self.cluster, self.part = cluster, part

    def _now(self) -> Mapping:
        return getattr(self.cluster.seen(), self.part)

    def __getitem__(self, key):
        return self._now()[key]

    def __iter__(self):
        return iter(self._now())

    def __len__(self) -> int:
        return len(self._now())


def resync_passes(memo, cluster, monkeypatch, *, until: float, events=(), finished=False) -> list[float]:
    """Runs one ABTest's resync coroutine in virtual time until ``until`` seconds, with event passes at the times in
    ``events``; returns when each pass (event or resync) started."""
    abtest = apply_abtest(cluster)
    live = copy.deepcopy(abtest)  # the body kopf keeps up to date for a daemon
    if finished:
        live["status"] = {"phase": "Succeeded"}

    def event_pass() -> None:
        reconciler.guarded(memo.state, copy.deepcopy(cluster.get("ABTest", NS, abtest["metadata"]["name"])), cluster.seen())

    clock = VirtualTime(dict.fromkeys(events, event_pass), until, on_end=lambda: live.update(status={"phase": "Succeeded"}))
    monkeypatch.setattr(asyncio, "sleep", clock.sleep)
    memo.state.clock = clock.clock
    started, reconcile_once = [], reconciler.reconcile
    monkeypatch.setattr(reconciler, "reconcile", lambda *a, **kw: started.append(clock.now) or reconcile_once(*a, **kw))
    indexes = {
        name: LiveIndex(cluster, part) for name, part in (("abtest_jobs", "jobs"), ("abtest_pods", "pods"), ("abtests_by_uid", "abtests"))
    }
    coroutine = handlers.abtest_resync(body=kopf.Body(live), memo=memo, logger=logging.getLogger("abtest.test"), **indexes)
    asyncio.run(asyncio.wait_for(coroutine, timeout=30))  # ends by itself once the ABTest is finished
    return started


def test_the_resync_gives_a_quiet_abtest_a_pass_every_interval_and_ends_with_it(memo, cluster, monkeypatch):
    assert memo.state.config.resync_seconds == 15
    assert resync_passes(memo, cluster, monkeypatch, until=50) == [15, 30, 45]
    assert len(cluster.of_kind("Job")) == 2 and memo.state.events.reasons() == ["JobsCreated"]  # posted from a resync thread


def test_a_pass_from_an_event_postpones_the_resync(memo, cluster, monkeypatch):
    assert resync_passes(memo, cluster, monkeypatch, until=50, events=[20]) == [15, 20, 35]


def test_a_failed_pass_is_retried_by_the_next_resync_with_a_warning(memo, cluster, monkeypatch, caplog):
    cluster.fail_next["create_namespaced_job"] = ApiException(status=503, reason="Service Unavailable")
    with caplog.at_level(logging.WARNING, logger="abtest.test"):
        assert resync_passes(memo, cluster, monkeypatch, until=40) == [15, 30]
    assert memo.state.metrics.reconcile_errors.labels(NS)._value.get() == 1 and len(cluster.of_kind("Job")) == 2
    (warning,) = [r.getMessage() for r in caplog.records]  # one line, with the status and the reason
    assert warning.startswith("resync pass failed, retried in 15 s: ServiceException: (503) Reason: Service Unavailable HTTP")


def test_a_finished_abtest_has_no_resync(memo, cluster, monkeypatch):
    assert resync_passes(memo, cluster, monkeypatch, until=50, finished=True) == []
    assert not cluster.of_kind("Job")
