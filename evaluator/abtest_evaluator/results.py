"""Result files on the shared volume: atomic writes, checksums, predictions readers that merge shards, and
the integrity checks the analysis runs before it trusts them (checksums, complete indices, same samples).

Torch-free: the analysis reads these without the evaluator's heavy dependencies.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from abtest_api.constants import METRICS, PREDICTIONS
from abtest_api.errors import UserError, WriteFailure

PREDICTION_COLUMNS = ("index", "label", "pred", "confidence")


def _temp_path(path: Path) -> Path:
    # Same directory, so the final os.replace is an atomic rename on one filesystem.
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextmanager
def staged(folder: Path) -> Iterator[Callable[[str], Path]]:
    """Files that appear together or not at all: ``stage(name)`` gives a temporary path in ``folder`` to write that
    file to; when the block ends, every staged file is renamed into place in the order staged (so the last one's
    presence means "complete"). Any OSError on the way — no space, a read-only volume, no permission — removes what
    was written and raises one WriteFailure naming the path and the fix."""
    temps: dict[Path, Path] = {}
    renamed: list[Path] = []
    current = folder

    def stage(name: str) -> Path:
        nonlocal current
        current = folder / name
        temps[current] = _temp_path(current)
        return temps[current]

    try:
        folder.mkdir(parents=True, exist_ok=True)
        yield stage
        for path, tmp in temps.items():
            current = path
            os.replace(tmp, path)
            renamed.append(path)
    except OSError as err:
        for path in renamed:
            path.unlink(missing_ok=True)
        raise WriteFailure.of(current, err) from None
    finally:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)


def write_bytes(path: Path, data: bytes) -> None:
    """``data`` written and synced (to a staged path: see ``staged``)."""
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def json_bytes(obj: dict) -> bytes:
    return (json.dumps(obj, indent=2, allow_nan=False) + "\n").encode()


# Encodings for the prediction columns: the index (0, 1, 2, ...) as deltas decodes ~6x faster than the plain pages a
# dictionary falls back to, and float confidences split by byte compress better; labels and classes keep dictionaries.
COLUMN_ENCODINGS = {"index": "DELTA_BINARY_PACKED", "confidence": "BYTE_STREAM_SPLIT"}


def write_parquet(path: Path, table: pa.Table) -> None:
    """The predictions file, synced (write it to a staged path: see ``staged``)."""
    encodings = {name: encoding for name, encoding in COLUMN_ENCODINGS.items() if name in table.column_names}
    # every other column keeps its dictionary; a list column's is set on its leaf
    dictionary = [f"{f.name}.list.element" if pa.types.is_fixed_size_list(f.type) or pa.types.is_list(f.type) else f.name
                  for f in table.schema if f.name not in encodings]  # fmt: skip
    pq.write_table(table, path, compression="zstd", use_dictionary=dictionary, column_encoding=encodings)
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def write_json(path: Path, obj: dict) -> None:
    write_bytes(path, json_bytes(obj))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def shard_files(model_dir: Path, stem: str, suffix: str) -> list[Path]:
    """Every shard file ``<stem>-IIIII-of-NNNNN<suffix>`` in shard order; [] when there is none, a UserError when some
    are missing (the analysis merges only whole sets)."""
    pattern = re.compile(rf"{stem}-(\d{{5}})-of-(\d{{5}}){re.escape(suffix)}")
    matches = sorted((m.group(1), m.group(2), p) for p in model_dir.glob(f"{stem}-*-of-*{suffix}") if (m := pattern.fullmatch(p.name)))
    if not matches:
        return []
    total = int(matches[0][1])
    found = {int(index) for index, _, _ in matches}
    if found != set(range(total)) or any(int(count) != total for _, count, _ in matches):
        raise UserError(f"{model_dir} has the {stem} of shards {sorted(found)} of {total}; wait for every shard or rerun the missing ones")
    return [p for _, _, p in matches]


def predictions_files(model_dir: Path) -> list[Path]:
    """``predictions.parquet``, or every shard ``predictions-IIIII-of-NNNNN.parquet`` (all must be present)."""
    single = model_dir / PREDICTIONS
    if single.is_file():
        return [single]
    shards = shard_files(model_dir, "predictions", ".parquet")
    if not shards:
        raise UserError(f"{model_dir} has no {PREDICTIONS}; did the evaluation of this model finish?")
    return shards


def read_predictions(model_dir: Path, columns: tuple[str, ...] = PREDICTION_COLUMNS) -> pa.Table:
    """One table in index order, whatever the number of shards."""
    tables = [pq.read_table(p, columns=list(columns)) for p in predictions_files(model_dir)]
    table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    if len(tables) > 1:
        table = table.sort_by("index")
    return table


def read_metrics(model_dir: Path) -> dict:
    """metrics.json, or the shards' metrics merged into the figures of one run over every sample."""
    if not (model_dir / METRICS).is_file() and (parts := shard_metrics(model_dir)):
        return merge_shards(parts)
    return _read_json(model_dir / METRICS)


def shard_metrics(model_dir: Path) -> list[dict]:
    """Each shard's own metrics-IIIII-of-NNNNN.json, unmerged, in shard order (each pod's times are its own)."""
    return [_read_json(p) for p in shard_files(model_dir, "metrics", ".json")]


def merge_shards(parts: list[dict]) -> dict:
    """One run's metrics from its shards' (in shard order): counts, the confusion matrix and the calibration bins add up,
    so accuracy, top-5, per-class accuracy and ECE equal an unsharded run's; latency pools every batch; throughput is
    the images over the shards' common wall-clock span (they ran in parallel), compute throughput their sum."""
    from abtest_evaluator import measurements

    first, n = parts[0], sum(p["n"] for p in parts)
    if len({p["fingerprint"] for p in parts}) > 1 or len({p["shard"]["n_total"] for p in parts}) > 1:
        raise UserError(f"the shards of {first.get('model')} saw different samples (fingerprints differ); rerun them with the same dataset")
    matrix = np.sum([np.asarray(p["confusion_matrix"]) for p in parts], axis=0)
    support = matrix.sum(axis=1)
    bins = [p["reliability"] for p in parts]
    count = np.sum([b["count"] for b in bins], axis=0)

    def pooled(key: str) -> list:
        weighted = np.sum([np.nan_to_num(np.array(b[key], dtype=float)) * np.array(b["count"]) for b in bins], axis=0)
        return [float(w / c) if c else None for w, c in zip(weighted, count)]

    accuracy, confidence = pooled("accuracy"), pooled("confidence")
    mean = sum(p["confidence"]["mean"] * p["n"] for p in parts) / n
    square = sum((p["confidence"]["std"] ** 2 + p["confidence"]["mean"] ** 2) * p["n"] for p in parts) / n
    batch_ms = np.concatenate([p["latency"]["batches_ms"] for p in parts])
    sizes = np.concatenate([p["latency"]["batch_sizes"] for p in parts])
    loop, wait = sum(p["loop_seconds"] for p in parts), sum(p["loader_wait_fraction"] * p["loop_seconds"] for p in parts)
    span = max(p["finished_at"] for p in parts) - min(p["loop_started_at"] for p in parts)
    merged = {
        **first,
        "n": n,
        "correct": int(np.trace(matrix)),
        "accuracy": float(np.trace(matrix) / n),
        "top5": None if any(p["top5"] is None for p in parts) else sum(p["top5"] * p["n"] for p in parts) / n,
        "throughput": n / span if span > 0 else sum(p["throughput"] for p in parts),
        "compute_throughput": sum(p["compute_throughput"] for p in parts),
        "loop_seconds": span,
        "loader_wait_fraction": wait / loop if loop else 0.0,
        "data_bound": any(p["data_bound"] for p in parts),
        "latency": measurements.latency_summary(batch_ms / 1e3, sizes) | {"measures": first["latency"].get("measures", "")},
        "confidence": {"mean": mean, "std": float(np.sqrt(max(square - mean * mean, 0.0)))},
        "ece": float(sum(abs(a - c) * k for a, c, k in zip(accuracy, confidence, count) if k) / n),
        "reliability": {**bins[0], "count": count.tolist(), "accuracy": accuracy, "confidence": confidence},
        "per_class_accuracy": [float(matrix[c, c] / support[c]) if support[c] else None for c in range(len(matrix))],
        "class_support": support.tolist(),
        "confusion_matrix": matrix.tolist(),
        "gpu_memory": first.get("gpu_memory"),
        "predictions_sha256": {k: v for p in parts for k, v in p["predictions_sha256"].items()},
        "started_at": min(p["started_at"] for p in parts),
        "loop_started_at": min(p["loop_started_at"] for p in parts),
        "finished_at": max(p["finished_at"] for p in parts),
        "shard": {"count": len(parts), "n_total": first["shard"]["n_total"]},
    }
    return merged


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path} is missing; the evaluation of this model did not finish") from None
    except json.JSONDecodeError as err:
        raise UserError(f"{path} is not valid JSON ({err.msg} at line {err.lineno})") from None


@dataclass
class ModelData:
    name: str
    metrics: dict
    labels: np.ndarray
    correct: np.ndarray  # bool per sample, in index order
    confidence: np.ndarray
    folder: Path | None = None  # where its files are (None when built in memory): the concurrency block reads shards there


def model_dirs(root: Path, models: list[str] | None = None) -> list[Path]:
    """The model folders, in the given order (A, B, … as the ABTest lists them), else by name."""
    if not root.is_dir():
        raise UserError(f"results folder {root} does not exist; pass the --out folder of the evaluations")
    if models:
        missing = [m for m in models if not (root / m).is_dir()]
        if missing:
            raise UserError(f"{root} has no folder for model(s) {', '.join(missing)}; did their evaluation run?")
        dirs = [root / m for m in models]
    else:
        dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(dirs) < 2:
        raise UserError(f"{root} holds {len(dirs)} model folder(s); an A/B test needs at least 2 evaluated models")
    return dirs


def model_name(model_dir: Path, metrics: dict) -> str:
    return metrics.get("model") or model_dir.name


def load_model(model_dir: Path) -> ModelData:
    metrics = read_metrics(model_dir)
    expected = metrics.get("predictions_sha256") or {}
    files = predictions_files(model_dir)
    with ThreadPoolExecutor(max_workers=1) as pool:  # hashing (GIL-free) overlaps the decoding
        digests = pool.map(sha256_file, files)
        try:
            labels, correct, confidence = _read_columns(model_dir, files)
        finally:  # a changed file is named as such, whatever else is wrong with it
            for file, digest in zip(files, digests):
                if expected.get(file.name) != digest:
                    raise UserError(
                        f"{file} does not match the sha256 in {model_dir / METRICS}; it changed after the evaluation: re-run that model"
                    )
    if np.isnan(confidence).any():
        raise UserError(
            f"{model_dir.name}: predictions hold NaN confidences (a diverged model or broken AMP); re-run without --amp or check the checkpoint"
        )
    if metrics.get("n") != len(labels):
        raise UserError(
            f"{model_dir.name}: metrics.json says n={metrics.get('n')} but predictions hold {len(labels)} rows; re-run that model"
        )
    return ModelData(model_name(model_dir, metrics), metrics, labels, correct, confidence, model_dir)


def _read_columns(model_dir: Path, files: list[Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """labels, correct and confidence in index order, checked for missing values and a complete index. One file is
    read a row group at a time into arrays of the final size (at 10 million rows a whole table and its pred and
    index columns would double the peak memory); shards are read whole and merged."""
    if len(files) > 1:
        table = read_predictions(model_dir)
        return _checked(model_dir, table, 0, table.num_rows)
    source = pq.ParquetFile(files[0])
    n = source.metadata.num_rows
    labels, correct, confidence = np.empty(n, np.int64), np.empty(n, bool), np.empty(n, np.float32)
    pos = 0
    for batch in source.iter_batches(batch_size=1 << 20, columns=list(PREDICTION_COLUMNS)):
        m = batch.num_rows
        labels[pos : pos + m], correct[pos : pos + m], confidence[pos : pos + m] = _checked(model_dir, batch, pos, n)
        pos += m
    return labels, correct, confidence


def _checked(model_dir: Path, part: pa.Table | pa.RecordBatch, start: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One part of the predictions (rows ``start``… in index order) as arrays, refused when values are missing or the
    index is not consecutive."""
    for column in PREDICTION_COLUMNS:
        if part.column(column).null_count:
            raise UserError(
                f"{model_dir.name}: predictions column {column!r} has {part.column(column).null_count} missing values; re-run that model"
            )
    if not np.array_equal(part.column("index").to_numpy(), np.arange(start, start + part.num_rows)):
        raise UserError(f"{model_dir.name}: predictions index is not 0..{n - 1} in order (missing or repeated samples); re-run that model")
    labels = part.column("label").to_numpy()
    return labels, part.column("pred").to_numpy() == labels, part.column("confidence").to_numpy()


def check_same_samples(models: list[ModelData]) -> None:
    """Refuse unless every model saw the same samples, in the same order, with the same labels."""
    ref = models[0]

    def skipped(m: ModelData) -> list[str]:
        return (m.metrics.get("dataset") or {}).get("skipped") or []

    for other in models[1:]:
        if skipped(other) != skipped(ref):
            raise UserError(
                f"models skipped different unreadable samples ({ref.name}: {len(skipped(ref))}, {other.name}: {len(skipped(other))}); "
                "the files changed between their runs: evaluate all on the same files"
            )
        if len(other.labels) != len(ref.labels):
            raise UserError(
                f"models saw different numbers of samples ({ref.name}: {len(ref.labels)}, {other.name}: {len(other.labels)}); evaluate all with the same dataset, split and limit"
            )
        if other.metrics.get("fingerprint") != ref.metrics.get("fingerprint"):
            raise UserError(
                f"models saw different samples or orders (fingerprint of {ref.name} != {other.name}); evaluate all with the same dataset, split, limit and seed"
            )
        if not np.array_equal(other.labels, ref.labels):
            mismatch = int(np.flatnonzero(other.labels != ref.labels)[0])
            raise UserError(
                f"labels differ between {ref.name} and {other.name} (first at index {mismatch}); evaluate all on the same dataset"
            )


def load_models(root: Path, order: list[str] | None = None) -> list[ModelData]:
    """Every model's predictions and metrics, checked to be comparable; a UserError otherwise."""
    return load_model_dirs(model_dirs(root, order))


def load_model_dirs(dirs: list[Path]) -> list[ModelData]:
    """These folders' predictions and metrics (model folders, or their look folders), checked to be comparable."""
    models = [load_model(d) for d in dirs]
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise UserError(f"two model folders report the same model name ({', '.join(names)}); give each model a distinct --name")
    check_same_samples(models)
    return models
