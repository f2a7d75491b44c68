"""Live Prometheus metrics of one evaluation (design.md §4 names), and GPU sampling.

A private registry per evaluation: nothing global, so tests and benchmarks can run several.
GPU series are only ever set on a GPU; on CPU they are absent, never a fake 0.
"""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, push_to_gateway, start_http_server

LABELS = ("abtest", "namespace", "model")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class EvalTelemetry:
    def __init__(self, abtest: str, namespace: str, model: str, total: int):
        self.registry = CollectorRegistry()
        self.labels = {"abtest": abtest, "namespace": namespace, "model": model}
        r, lab = self.registry, LABELS

        def metric(kind, name, doc, **kw):
            return kind(name, doc, lab, registry=r, **kw).labels(**self.labels)

        self.samples = metric(Counter, "abtest_samples_processed", "Samples evaluated so far.")
        self.samples_total = metric(Gauge, "abtest_samples_total", "Samples this evaluation will process.")
        self.batch_latency = metric(
            Histogram, "abtest_batch_latency_seconds", "Inference time per batch (device-synchronised).", buckets=LATENCY_BUCKETS
        )
        self.accuracy = metric(Gauge, "abtest_running_accuracy", "Top-1 accuracy over the samples seen so far.")
        self.confidence = metric(Gauge, "abtest_confidence_mean", "Mean max-softmax confidence over the samples seen so far.")
        self.throughput = metric(
            Gauge,
            "abtest_throughput_images_per_second",
            "Images per second of the timed loop's wall clock so far, data waits included (warm-up excluded).",
        )
        self.loader_wait = metric(
            Gauge, "abtest_loader_wait_ratio", "Share of the timed loop spent waiting for the data loader so far (0-1)."
        )
        self.completed = metric(Gauge, "abtest_evaluation_completed", "1 once the evaluation has written its results.")
        # Label-only families: a series exists only once a GPU sets it.
        self._gpu_memory = Gauge("abtest_gpu_memory_bytes", "GPU memory allocated by the evaluator (max so far).", lab, registry=r)
        self._gpu_util = Gauge("abtest_gpu_utilization_ratio", "GPU utilization (0-1), sampled by NVML.", lab, registry=r)
        self.samples_total.set(total)
        self._seen = self._correct = 0
        self._conf_sum = self._seconds = 0.0

    def observe_batch(self, size: int, correct: int, confidence_sum: float, seconds: float) -> None:
        self._seen += size
        self._correct += correct
        self._conf_sum += confidence_sum
        self._seconds += seconds
        self.samples.inc(size)
        self.batch_latency.observe(seconds)
        self.accuracy.set(self.running_accuracy)
        self.confidence.set(self._conf_sum / self._seen)

    def observe_loop(self, loop_seconds: float, wait_seconds: float) -> None:
        if loop_seconds > 0:
            self.throughput.set(self._seen / loop_seconds)
            self.loader_wait.set(wait_seconds / loop_seconds)

    @property
    def running_accuracy(self) -> float:
        return self._correct / self._seen if self._seen else 0.0

    def set_gpu(self, memory_bytes: float | None, utilization: float | None) -> None:
        if memory_bytes is not None:
            self._gpu_memory.labels(**self.labels).set(memory_bytes)
        if utilization is not None:
            self._gpu_util.labels(**self.labels).set(utilization)

    def serve(self, port: int, addr: str = "0.0.0.0"):
        server, thread = start_http_server(port, addr=addr, registry=self.registry)
        return server

    def push(self, gateway: str) -> None:
        """Final values for short Jobs that may end between scrapes."""
        push_to_gateway(gateway, job="abtest-evaluator", registry=self.registry, grouping_key=self.labels)


class GpuSampler:
    """Samples GPU utilization through NVML (via torch.cuda.utilization) in a background thread."""

    def __init__(self, device_index: int, interval_s: float = 0.2, on_sample=None):
        self.device_index = device_index
        self.interval_s = interval_s
        self.on_sample = on_sample
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="gpu-sampler", daemon=True)

    def _loop(self) -> None:
        import torch

        while not self._stop.wait(self.interval_s):
            try:
                ratio = torch.cuda.utilization(self.device_index) / 100.0
            except Exception:  # NVML missing or unsupported: utilization stays null
                return
            self.samples.append(ratio)
            if self.on_sample:
                self.on_sample(ratio)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=2)

    def summary(self) -> dict | None:
        if not self.samples:
            return None
        ordered = sorted(self.samples)
        return {"mean": sum(ordered) / len(ordered), "p50": ordered[len(ordered) // 2], "max": ordered[-1], "samples": len(ordered)}
