"""kopf wiring: the operator's settings at startup, the watches' indexes and the handlers, each thin (read kopf's
arguments, call the reconcile pass or the resync, return).

The operator's state is one object in kopf's ``memo.state`` (state.py: built here at startup unless
``abtest operator`` or a test put one there); the pass is reconcile.py, the resync resync.py, and what works
around kopf's defaults kopf_workarounds.py.
"""

from __future__ import annotations

import logging

import kopf

from abtest_api.constants import GROUP, LABEL_NAME, PLURAL, VERSION
from abtest_operator import reconcile, resync, watched
from abtest_operator.kopf_workarounds import NoDiffBase, without_finalizer
from abtest_operator.state import OperatorState, operator_state
from abtest_operator.watched import Observed


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_) -> None:
    if "state" not in memo:
        memo.state = operator_state()
    # Without these timeouts a silently dropped watch connection freezes the operator forever.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    # Progress (of handlers that have any) in annotations: nothing in status that the CRD schema would prune.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = NoDiffBase()
    settings.posting.level = logging.INFO
    # The Events that matter are posted explicitly (state.events); kopf's per-handler log lines as Events would
    # be two more requests per ABTest for nothing a user reads.
    settings.posting.loggers = False
    # Server-side filters: the operator never receives other Jobs or pods (the index labels filter too, client-side).
    settings.watching.label_selectors["batch", "jobs"] = LABEL_NAME
    settings.watching.label_selectors["v1", "pods"] = LABEL_NAME
    settings.execution.max_workers = memo.state.config.max_workers
    settings.peering.lifetime = memo.state.config.peering_lifetime


# The watches: server-side label selectors (set at startup) keep other Jobs and pods off the wire; the
# indexes keep what a pass reads, so a pass makes no request unless it creates or writes something.
@kopf.index("batch", "v1", "jobs", labels={LABEL_NAME: kopf.PRESENT})
def abtest_jobs(body: kopf.Body, namespace: str, **_) -> dict | None:
    return watched.index_job(body, namespace)


@kopf.index("v1", "pods", labels={LABEL_NAME: kopf.PRESENT})
def abtest_pods(body: kopf.Body, namespace: str, **_) -> dict | None:
    return watched.index_pod(body, namespace)


@kopf.index(GROUP, VERSION, PLURAL)
def abtests_by_uid(body: kopf.Body, namespace: str, **_) -> dict:
    return watched.index_abtest(body, namespace)


def _seen(state: OperatorState, kwargs: dict) -> Observed:
    """kopf's indexes (handed to every handler by name) as a pass reads them, with this operator's writes over them."""
    return Observed(jobs=kwargs["abtest_jobs"], pods=kwargs["abtest_pods"], abtests=kwargs["abtests_by_uid"], written=state.written)


@kopf.on.event(GROUP, VERSION, PLURAL)
def abtest_changed(event: dict, body: kopf.Body, memo: kopf.Memo, **kwargs) -> None:
    """Every ABTest event, and each ABTest once at startup (kopf's initial listing): level-triggered, and kopf keeps
    no state for event handlers, so it writes no annotations on the ABTests."""
    reconcile.abtest_event(memo.state, event["type"], body, _seen(memo.state, kwargs))


@kopf.on.event("batch", "v1", "jobs", labels={LABEL_NAME: kopf.PRESENT})
def job_changed(event: dict, body: kopf.Body, namespace: str, memo: kopf.Memo, **kwargs) -> None:
    reconcile.job_event(memo.state, event["type"], body, namespace, _seen(memo.state, kwargs))


@without_finalizer
@kopf.daemon(GROUP, VERSION, PLURAL, cancellation_timeout=5.0)
async def abtest_resync(body: kopf.Body, memo: kopf.Memo, logger: logging.Logger, **kwargs) -> None:
    """A coroutine per ABTest, ending when it finishes: see resync.py."""
    await resync.resync(memo.state, body, lambda: _seen(memo.state, kwargs), logger)


@kopf.on.cleanup()
def stop_resyncs(memo: kopf.Memo, **_) -> None:
    memo.state.resync_pool.shutdown(wait=False, cancel_futures=True)
