"""``abtest run``: the planner's runs as parallel local processes, then the analysis.

Results are staged in a hidden folder and moved into place only when every model and the analysis
succeeded, so an interrupted or failed run leaves no partial results behind.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

from abtest_api.constants import WRITE_FAILURE_EXIT
from abtest_api.errors import UserError, WriteFailure
from abtest_operator import plan
from abtest_operator.spec import load_manifest, parse_abtest


def gpu_count() -> int:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return pynvml.nvmlDeviceGetCount()
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no driver, no library: CPU only
        return 0


def available_cpus() -> int:
    from abtest_evaluator.resolve import resolve_threads

    return resolve_threads()


class Child:
    """One `abtest evaluate` process whose JSON progress lines feed the progress display."""

    def __init__(self, run: plan.ModelRun, env: dict, on_progress):
        self.run = run
        self.tail: deque[str] = deque(maxlen=20)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "abtest_operator.cli", *run.argv],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, args=(on_progress,), daemon=True)
        self._reader.start()

    def _read(self, on_progress) -> None:
        for line in self.proc.stderr:
            try:
                on_progress(self.run.name, json.loads(line))
            except (ValueError, TypeError):
                self.tail.append(line.rstrip())

    def wait(self) -> int:
        code = self.proc.wait()
        self._reader.join(timeout=5)
        return code

    def error(self) -> str:
        errors = [line for line in self.tail if line.startswith("error:")]
        return (errors or list(self.tail) or [f"exit code {self.proc.returncode}"])[-1].removeprefix("error: ")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


class Queue:
    """The model runs, started as devices free up: every model at once on CPU (threads split between them); on GPUs
    one model per GPU at a time, the rest queued, since two models sharing a GPU blur each other's latency and
    utilization."""

    def __init__(self, runs: list[plan.ModelRun], gpus: int, on_progress):
        self.pending, self.running, self.on_progress = list(runs), {}, on_progress
        self.free = [str(i) for i in range(min(gpus, len(runs)))] if gpus else [None] * len(runs)
        self.children: list[Child] = []

    def advance(self) -> bool:
        """Collect finished models (a UserError for a failed one), start queued ones on freed devices; True when all ran."""
        for slot, child in list(self.running.items()):
            if child.proc.poll() is not None:
                child.wait()
                if child.proc.returncode != 0:
                    failure = WriteFailure if child.proc.returncode == WRITE_FAILURE_EXIT else UserError
                    raise failure(f"model {child.run.name} failed: {child.error()}")
                del self.running[slot]
                self.free.append(slot[0])
        while self.pending and self.free:
            gpu, run = self.free.pop(0), self.pending.pop(0)
            env = dict(os.environ) | ({"CUDA_VISIBLE_DEVICES": gpu} if gpu is not None else {})
            child = Child(run, env, self.on_progress)
            self.children.append(child)
            self.running[(gpu, run.name)] = child
        return not self.pending and not self.running

    def stop(self) -> None:
        for child in self.children:
            child.stop()


def usable_gpus(device: str, gpus: int | None) -> int:
    """The GPUs to use: ``gpus`` when given (a test fakes the count), else those NVML sees; none with device cpu."""
    return (gpu_count() if device != "cpu" else 0) if gpus is None else gpus


def queued(gpus: int, runs: int) -> bool:
    """Whether some runs wait for a GPU (one model per GPU at a time), so the runs cannot all start together."""
    return 0 < gpus < runs


def run_models(runs: list[plan.ModelRun], device: str, show_progress: bool, alongside=None, gpus: int | None = None):
    """Every model (queued per GPU when GPUs are fewer than models); ``alongside(idle)`` (a sequential analysis) runs
    meanwhile and its answer ends the run: the models still evaluating are stopped. ``idle()`` advances the queue and
    raises when a model failed. ``gpus``: the GPUs to use (default: those NVML sees, none with device cpu)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    gpus = usable_gpus(device, gpus)
    if queued(gpus, len(runs)):
        print(
            f"{len(runs)} models on {gpus} GPU(s): {gpus} at a time, one per GPU, the others queued "
            "(two models sharing a GPU would blur each other's latency and utilization); their timed loops cannot start "
            "together, and the verdict will say so",
            file=sys.stderr,
        )
    progress = Progress(
        TextColumn("{task.description:<28}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        disable=not show_progress,
        transient=False,
    )
    tasks = {r.name: progress.add_task(r.name, total=None) for r in runs}

    def on_progress(name: str, event: dict) -> None:
        progress.update(tasks[name], completed=event["progress"], total=event["total"], description=f"{name} acc {event['accuracy']:.3f}")

    queue = Queue(runs, gpus, on_progress)
    try:
        with progress:
            queue.advance()
            if alongside:
                return alongside(queue.advance)
            while not queue.advance():
                time.sleep(0.1)
    finally:
        queue.stop()


def publish_dir(staging: Path, out: Path) -> None:
    """Move model folders, then result.json and report.html, from staging into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    entries = sorted(staging.iterdir(), key=lambda p: p.is_file())  # folders first, the verdict last
    for entry in entries:
        target = out / entry.name
        if target.is_dir() and entry.is_dir():
            shutil.rmtree(target)
        os.replace(entry, target)


def run_local(
    manifest_path: str, out: str | None = None, device: str | None = None, show_progress: bool | None = None, gpus: int | None = None
) -> tuple[dict, Path]:
    from abtest_evaluator import analysis

    spec = parse_abtest(load_manifest(manifest_path))
    device = device or spec.device
    out_dir = Path(out or Path("abtest-results") / spec.name).resolve()
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise WriteFailure.of(out_dir.parent, err) from None
    staging = out_dir.parent / f".{out_dir.name}.staging-{os.getpid()}"
    threads = max(1, available_cpus() // len(spec.models))
    threads = max(1, threads // spec.shards)
    gpus = usable_gpus(device, gpus)
    # queued runs cannot wait for each other at the start barrier: the first would wait for one that waits for its GPU
    together = not queued(gpus, len(spec.models) * spec.shards)
    runs = plan.plan_models(
        spec, str(staging), models_dir=str(Path(manifest_path).resolve().parent), together=together, device=device, threads=threads,
        progress="json",
    )  # fmt: skip
    runs = plan.plan_shards(runs, spec.shards)
    try:
        show = sys.stderr.isatty() if show_progress is None else show_progress
        config = plan.analysis_config(spec, str(staging))
        if config.looks:  # decide at each look as the models publish it; an early stop stops them
            result = run_models(runs, device, show, gpus=gpus, alongside=lambda idle: analysis.run(config, poll=0.2, idle=idle))
        else:
            run_models(runs, device, show, gpus=gpus)
            result = analysis.run(config)
        try:
            publish_dir(staging, out_dir)
        except OSError as err:
            raise WriteFailure.of(out_dir, err) from None
        return result, out_dir
    finally:
        shutil.rmtree(staging, ignore_errors=True)
