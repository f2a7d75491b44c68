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

from abtest_api.errors import UserError
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


def child_envs(n: int, device: str) -> list[dict]:
    """One GPU per model when there are enough, and the CPU threads split between models."""
    gpus = gpu_count() if device != "cpu" else 0
    envs = []
    for i in range(n):
        env = dict(os.environ)
        if gpus >= n:
            env["CUDA_VISIBLE_DEVICES"] = str(i)
        envs.append(env)
    return envs


def run_models(runs: list[plan.ModelRun], device: str, show_progress: bool, alongside=None):
    """Every model at once; ``alongside(idle)`` (a sequential analysis) runs meanwhile and its answer ends the run:
    the models still evaluating are stopped. ``idle()`` raises when a model failed."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

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

    children: list[Child] = []
    try:
        with progress:
            children = [Child(r, env, on_progress) for r, env in zip(runs, child_envs(len(runs), device))]
            if alongside:
                return alongside(lambda: _raise_failed(children))
            pending = list(children)
            while pending:
                finished = _wait_any(pending)
                pending.remove(finished)
                if finished.proc.returncode != 0:
                    raise UserError(f"model {finished.run.name} failed: {finished.error()}")
    finally:
        for child in children:
            child.stop()


def _raise_failed(children: list[Child]) -> None:
    for child in children:
        if child.proc.poll() not in (None, 0):
            child.wait()
            raise UserError(f"model {child.run.name} failed: {child.error()}")


def _wait_any(children: list[Child]) -> Child:
    while True:
        for child in children:
            if child.proc.poll() is not None:
                child.wait()
                return child
        time.sleep(0.1)


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
    manifest_path: str, out: str | None = None, device: str | None = None, show_progress: bool | None = None
) -> tuple[dict, Path]:
    from abtest_evaluator.analysis import run_analysis, run_sequential

    spec = parse_abtest(load_manifest(manifest_path))
    device = device or spec.device
    out_dir = Path(out or Path("abtest-results") / spec.name).resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.parent / f".{out_dir.name}.staging-{os.getpid()}"
    threads = max(1, available_cpus() // len(spec.models))
    runs = plan.plan_models(
        spec, str(staging), models_dir=str(Path(manifest_path).resolve().parent), device=device, threads=threads, progress="json"
    )
    try:
        show = sys.stderr.isatty() if show_progress is None else show_progress
        order = [m.name for m in spec.models]
        if spec.looks:  # decide at each look as the models publish it; an early stop stops them
            result = run_models(
                runs,
                device,
                show,
                alongside=lambda idle: run_sequential(
                    staging, spec.alpha, spec.test, order, spec.looks, spec.spending, poll=0.2, idle=idle
                ),
            )
        else:
            run_models(runs, device, show)
            result = run_analysis(staging, spec.alpha, spec.test, order, hypothesis=spec.hypothesis, margin=spec.margin)
        publish_dir(staging, out_dir)
        return result, out_dir
    finally:
        shutil.rmtree(staging, ignore_errors=True)
