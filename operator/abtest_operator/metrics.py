"""The operator's own Prometheus metrics: the durable source of results after the Jobs are gone.

Gauges are recomputed from each ABTest's status on every reconcile, so a restarted operator
re-exports every finished test as soon as it has listed them.
"""

from __future__ import annotations

import gc
import logging
import threading
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Summary, start_http_server

from abtest_api.constants import PENDING, PHASES
from abtest_api.errors import UserError
from abtest_api.result import check_status_result, check_status_sequential

log = logging.getLogger(__name__)


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.by_phase = Gauge("abtest_abtests", "ABTests by phase.", ["phase"], registry=r)
        self.reconcile_errors = Counter("abtest_reconcile_errors", "Reconcile passes that raised.", ["namespace"], registry=r)
        self.reconciles = Counter("abtest_reconciles", "Reconcile passes.", ["namespace"], registry=r)
        self._declare_result_gauges(r)
        self._declare_sequential_gauges(r)
        self.phase_info = Gauge("abtest_phase", "1 for the current phase of each ABTest.", ["abtest", "namespace", "phase"], registry=r)
        self.gc_pauses = Summary(
            "abtest_operator_gc_pause_seconds",
            "Python's cyclic garbage collections in the operator, by generation: every thread stands still meanwhile.",
            ["generation"],
            registry=r,
        )
        self._phases: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()
        for phase in PHASES:
            self.by_phase.labels(phase).set(0)

    def _declare_result_gauges(self, r: CollectorRegistry) -> None:
        """A finished ABTest's result: accuracy, p-values, the winner, how concurrently its models ran."""
        self.accuracy = Gauge(
            "abtest_result_accuracy", "Top-1 accuracy of each model of a finished ABTest.", ["abtest", "namespace", "model"], registry=r
        )
        self.p_value = Gauge(
            "abtest_result_p_value",
            "McNemar p-value (Holm-adjusted for 3+ models) of each pair.",
            ["abtest", "namespace", "a", "b"],
            registry=r,
        )
        self.significant = Gauge(
            "abtest_result_significant", "1 when the pair differs significantly.", ["abtest", "namespace", "a", "b"], registry=r
        )
        self.winner = Gauge(
            "abtest_result_winner",
            "1 for the winning model of a finished ABTest (none: no winner).",
            ["abtest", "namespace", "model"],
            registry=r,
        )
        self.start_skew = Gauge(
            "abtest_result_start_skew_seconds",
            "Seconds between the first and the last timed loop's start among the models (and shards) of a finished ABTest.",
            ["abtest", "namespace"],
            registry=r,
        )
        self.loop_overlap = Gauge(
            "abtest_result_loop_overlap_ratio",
            "The time all timed loops of a finished ABTest shared, as a fraction of the longest one.",
            ["abtest", "namespace"],
            registry=r,
        )
        self.concurrent = Gauge(
            "abtest_result_concurrent",
            "1 when the timed loops of a finished ABTest ran together (efficiency figures comparable), else 0.",
            ["abtest", "namespace"],
            registry=r,
        )

    def _declare_sequential_gauges(self, r: CollectorRegistry) -> None:
        """A sequential ABTest's latest look."""
        self.sequential_z = Gauge(
            "abtest_sequential_z",
            "z of the discordant pairs of each pair at the latest look of a sequential ABTest (positive: A ahead).",
            ["abtest", "namespace", "a", "b"],
            registry=r,
        )
        self.sequential_boundary = Gauge(
            "abtest_sequential_boundary",
            "The |z| a pair must reach at the latest look of a sequential ABTest.",
            ["abtest", "namespace"],
            registry=r,
        )
        self.sequential_look = Gauge(
            "abtest_sequential_look", "The latest look analysed of a sequential ABTest.", ["abtest", "namespace"], registry=r
        )

    def time_gc(self, clock=time.perf_counter):
        """Times each garbage collection of this process (gc.callbacks run in the collecting thread, holding the GIL);
        returns the function that stops timing them."""
        started = 0.0

        def on_gc(phase: str, info: dict) -> None:
            nonlocal started
            if phase == "start":
                started = clock()
            else:
                self.gc_pauses.labels(str(info["generation"])).observe(clock() - started)

        gc.callbacks.append(on_gc)
        return lambda: gc.callbacks.remove(on_gc)

    def observe(self, namespace: str, name: str, status: dict) -> None:
        key = (namespace, name)
        with self._lock:
            self._phases[key] = status.get("phase", PENDING)
            self._refresh_phases()
            for phase in PHASES:
                self.phase_info.labels(name, namespace, phase).set(1 if self._phases[key] == phase else 0)
        result, sequential = status.get("result") or {}, status.get("sequential") or {}
        try:  # labels come from here: only what the CRD's schema bounds
            if result:
                check_status_result(result)
            if sequential:
                check_status_sequential(sequential)
        except UserError as err:
            log.warning("ABTest %s/%s: not exporting its result: %s", namespace, name, err)
            return
        for model, values in (result.get("models") or {}).items():
            self.accuracy.labels(name, namespace, model).set(values["accuracy"])
        for c in result.get("comparisons") or []:
            self.p_value.labels(name, namespace, c["a"], c["b"]).set(c["pValueAdjusted"])
            self.significant.labels(name, namespace, c["a"], c["b"]).set(1 if c["significant"] else 0)
        if result.get("winner"):
            self.winner.labels(name, namespace, result["winner"]).set(1)
        if together := result.get("concurrency"):
            self.start_skew.labels(name, namespace).set(together["startSkewSeconds"])
            self.loop_overlap.labels(name, namespace).set(together["overlap"])
            self.concurrent.labels(name, namespace).set(1 if together["concurrent"] else 0)
        if sequential:
            self.sequential_look.labels(name, namespace).set(sequential["look"])
            self.sequential_boundary.labels(name, namespace).set(sequential["boundary"])
            for c in sequential["statistics"]:
                self.sequential_z.labels(name, namespace, c["a"], c["b"]).set(c["z"])

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._phases.pop((namespace, name), None)
            self._refresh_phases()
        gauges = (
            self.accuracy,
            self.p_value,
            self.significant,
            self.winner,
            self.start_skew,
            self.loop_overlap,
            self.concurrent,
            self.phase_info,
            self.sequential_z,
            self.sequential_boundary,
            self.sequential_look,
        )
        for gauge in gauges:
            for labels in [k for k in gauge._metrics if k[0] == name and k[1] == namespace]:  # noqa: SLF001 (prometheus-client has no public prefix removal)
                gauge.remove(*labels)

    def _refresh_phases(self) -> None:
        for phase in PHASES:
            self.by_phase.labels(phase).set(sum(1 for p in self._phases.values() if p == phase))

    def serve(self, port: int) -> None:
        start_http_server(port, registry=self.registry)
