"""The operator's state, one object: its clients, settings, metrics and Event poster, what its own writes and its
Jobs' last events showed, and one record per ABTest.

``operator_state`` builds it for kopf's startup handler, ``abtest operator`` and the handler tests alike; kopf's
``memo.state`` holds it. Passes run in several threads at once: each ABTest's record carries the lock that keeps its
passes one at a time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import kopf

from abtest_operator.clients import Clients
from abtest_operator.metrics import OperatorMetrics
from abtest_operator.settings import OperatorConfig, config_from_env
from abtest_operator.spec import ABTestSpec
from abtest_operator.watched import JobNews, Written


class EventPoster(Protocol):
    """Posts Kubernetes Events about an ABTest (kopf's poster in the operator, a recorder in the handler tests)."""

    def info(self, body, *, reason: str, message: str) -> None: ...

    def warn(self, body, *, reason: str, message: str) -> None: ...


class KopfEvents:
    """Kubernetes Events about an ABTest, posted by kopf (its poster runs inside the operator)."""

    info = staticmethod(kopf.info)
    warn = staticmethod(kopf.warn)


@dataclass
class ABTestRecord:
    """What the operator keeps about one ABTest between its passes; deleting the ABTest drops the whole record."""

    lock: threading.Lock = field(default_factory=threading.Lock)  # one pass at a time per ABTest
    parsed: tuple[int | None, ABTestSpec] | None = None  # its spec, and the generation it was parsed at
    last_pass: float | None = None  # when its latest pass started (OperatorState.clock)


@dataclass
class OperatorState:
    clients: Clients
    config: OperatorConfig
    metrics: OperatorMetrics
    events: EventPoster
    resync_pool: ThreadPoolExecutor  # the resync passes' own threads: a wave of them never takes kopf's workers
    clock: Callable[[], float] = time.monotonic
    written: Written = field(default_factory=Written)  # this operator's writes, until its watches deliver them
    job_news: JobNews = field(default_factory=JobNews)  # what each Job's last event showed a pass
    claims: set[tuple[str, str]] = field(default_factory=set)  # results claims known to exist, by (namespace, name)
    abtests: dict[tuple[str, str], ABTestRecord] = field(default_factory=dict)  # by (namespace, UID)

    def record(self, namespace: str, uid: str) -> ABTestRecord:
        """The ABTest's record, made on first use. setdefault is one step under the GIL: two threads asking at once get
        the same record, hence the same lock."""
        key = (namespace, uid)
        return self.abtests.get(key) or self.abtests.setdefault(key, ABTestRecord())

    def last_pass(self, namespace: str, uid: str) -> float | None:
        """When the ABTest's latest pass started, if it had one (makes no record)."""
        record = self.abtests.get((namespace, uid))
        return record.last_pass if record else None

    def forget(self, namespace: str, name: str, uid: str) -> None:
        """A deleted ABTest: its record, its writes not yet seen and its metrics go."""
        self.abtests.pop((namespace, uid), None)
        self.written.forget(namespace, uid)
        self.metrics.forget(namespace, name)


def operator_state(
    *,
    clients: Clients | None = None,
    config: OperatorConfig | None = None,
    metrics: OperatorMetrics | None = None,
    events: EventPoster | None = None,
    clock: Callable[[], float] = time.monotonic,
    resync_workers: int = 2,
) -> OperatorState:
    """The operator's state; what is not given is the operator's own: clients from the kubeconfig or the pod's
    ServiceAccount, settings from the environment, fresh metrics, kopf's Event poster."""
    return OperatorState(
        clients=clients or Clients.connect(),
        config=config or config_from_env(),
        metrics=metrics or OperatorMetrics(),
        events=events or KopfEvents(),
        resync_pool=ThreadPoolExecutor(max_workers=resync_workers, thread_name_prefix="abtest-resync"),
        clock=clock,
    )
