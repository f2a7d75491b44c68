"""Result files on the shared volume: atomic writes, checksums, and predictions readers that merge shards.

Torch-free: the analysis reads these without the evaluator's heavy dependencies.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from abtest_operator.errors import UserError

PREDICTIONS = "predictions.parquet"
METRICS = "metrics.json"
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
