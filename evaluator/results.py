"""Result files on the shared volume: atomic writes, checksums, predictions readers that merge shards, and
the integrity checks the analysis runs before it trusts them (checksums, complete indices, same samples).

Torch-free: the analysis reads these without the evaluator's heavy dependencies.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from abtest_api.constants import METRICS, PREDICTIONS
from abtest_api.errors import UserError

SHARD_RE = re.compile(r"predictions-(\d{5})-of-(\d{5})\.parquet")
PREDICTION_COLUMNS = ("index", "label", "pred", "confidence")


def _temp_path(path: Path) -> Path:
    # Same directory, so the final os.replace is an atomic rename on one filesystem.
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = _temp_path(path)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_json(path: Path, obj: dict) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, allow_nan=False) + "\n").encode())


def atomic_write_parquet(path: Path, table: pa.Table) -> None:
    tmp = _temp_path(path)
    try:
        pq.write_table(table, tmp, compression="zstd")
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def predictions_files(model_dir: Path) -> list[Path]:
    """``predictions.parquet``, or every shard ``predictions-IIIII-of-NNNNN.parquet`` (all must be present)."""
    single = model_dir / PREDICTIONS
    if single.is_file():
        return [single]
    shards = sorted(p for p in model_dir.glob("predictions-*-of-*.parquet") if SHARD_RE.fullmatch(p.name))
    if not shards:
        raise UserError(f"{model_dir} has no {PREDICTIONS}; did the evaluation of this model finish?")
    total = int(SHARD_RE.fullmatch(shards[0].name).group(2))
    found = {int(SHARD_RE.fullmatch(p.name).group(1)) for p in shards}
    if found != set(range(total)) or any(int(SHARD_RE.fullmatch(p.name).group(2)) != total for p in shards):
        raise UserError(f"{model_dir} has shards {sorted(found)} of {total}; wait for every shard or rerun the missing ones")
    return shards


def read_predictions(model_dir: Path, columns: tuple[str, ...] = PREDICTION_COLUMNS) -> pa.Table:
    """One table in index order, whatever the number of shards."""
    tables = [pq.read_table(p, columns=list(columns)) for p in predictions_files(model_dir)]
    table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    if len(tables) > 1:
        table = table.sort_by("index")
    return table


def read_metrics(model_dir: Path) -> dict:
    path = model_dir / METRICS
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
    return ModelData(metrics.get("model") or model_dir.name, metrics, labels, correct, confidence)


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
    for other in models[1:]:
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
