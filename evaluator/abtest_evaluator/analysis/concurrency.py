"""Did the models' timed loops run together? result.json's ``concurrency`` block and its warning. Torch-free.

Latency, throughput and GPU figures are comparable only when the models ran under the same conditions: at the same
time, so that one did not have the node (its CPUs, memory bandwidth, a shared GPU) to itself while another waited.
Every evaluator process (each model, each shard) records its own window; the block compares them all.
"""

from __future__ import annotations

import numpy as np

from abtest_api.constants import METRICS
from abtest_evaluator import results
from abtest_evaluator.results import ModelData

# The largest start skew that still counts as "together": the barrier releases within a poll (20 ms) plus what the
# shared filesystem takes to show a file, and the windows' times come from each node's own clock (NTP keeps them within
# milliseconds, a drifting node within tenths of a second). 10% of the shortest loop: a skew that small changes little
# of what the loops shared.
SKEW_FLOOR_SECONDS = 0.25
SKEW_SHARE_OF_SHORTEST = 0.10


def evaluator_metrics(model: ModelData) -> list[tuple[str | None, dict]]:
    """(shard "I/N" or None, metrics) of each evaluator process of a model: a sharded model's shards read one by one."""
    if model.folder is None or (model.folder / METRICS).is_file():
        return [(None, model.metrics)]
    return [(f"{m['shard']['index']}/{m['shard']['count']}", m) for m in results.shard_metrics(model.folder)]


def windows(models: list[ModelData]) -> list[dict] | None:
    """One window per evaluator process; None when any metrics lacks the loop's times (files from before they were
    recorded, hand-made fixtures)."""
    out = []
    for model in models:
        for shard, m in evaluator_metrics(model):
            if m.get("loop_started_at") is None or m.get("finished_at") is None:
                return None
            out.append(
                {
                    "model": model.name,
                    "shard": shard,
                    "started_at": m.get("started_at"),
                    "ready_at": m.get("ready_at"),
                    "loop_started_at": m["loop_started_at"],
                    "finished_at": m["finished_at"],
                    "barrier": m.get("start_barrier") is not None,
                }
            )
    return out


def summarize(found: list[dict]) -> dict:
    """The block: how much of the longest timed loop all loops shared, how far apart they started, and the verdict."""
    starts = np.array([w["loop_started_at"] for w in found], dtype=float)
    ends = np.array([w["finished_at"] for w in found], dtype=float)
    lengths = ends - starts
    # Intervals that intersect pairwise all share one common part (Helly, in one dimension): one test covers every pair.
    together = bool(starts.max() <= ends.min())
    shared = max(0.0, float(ends.min() - starts.max()))
    skew = float(starts.max() - starts.min())
    tolerance = max(SKEW_FLOOR_SECONDS, SKEW_SHARE_OF_SHORTEST * float(lengths.min()))
    return {
        "windows": [{k: v for k, v in w.items() if k != "barrier"} for w in found],
        "overlap": shared / float(lengths.max()) if lengths.max() > 0 else float(together),
        "start_skew_seconds": skew,
        "skew_tolerance_seconds": tolerance,
        "concurrent": together and skew <= tolerance,
        "barrier": all(w["barrier"] for w in found),
    }


def block(models: list[ModelData]) -> dict | None:
    """result.json's ``concurrency``, or None when the metrics do not say when the loops ran."""
    found = windows(models)
    return summarize(found) if found else None


def warnings(concurrency: dict | None) -> list[str]:
    """One sentence when the loops did not run together: efficiency figures are then not comparable."""
    if not concurrency or concurrency["concurrent"]:
        return []
    cause = (
        "an evaluator restarted after the start barrier released, or the nodes' clocks differ"
        if concurrency["barrier"]
        else "queued for lack of GPUs, or no start barrier"
    )
    return [
        f"the models' timed loops did not run together (start skew {concurrency['start_skew_seconds']:.1f} s, overlap "
        f"{concurrency['overlap'] * 100:.0f}% of the longest; {cause}): their latency, throughput and GPU figures were not "
        "measured under the same conditions; the accuracy comparison stays valid (same samples, same order)"
    ]
