"""Parquet in and out of the run directory. Frames are cast to the pool's declared Arrow types
(one source of truth: curate.schemas.pool), every file carries lineage in its key-value metadata,
and a folder of files only appears under its final name once it is complete (written under a
temporary name, then renamed), so a killed build never leaves a half-written file to be read."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from curate.schemas.pool import POOL_SCHEMA

TMP_PREFIX = ".tmp-"
OLD_PREFIX = ".old-"


def to_arrow(frame: pl.DataFrame, schema: pa.Schema = POOL_SCHEMA) -> pa.Table:
    """The frame as Arrow, declared columns cast to their declared types and put in order."""
    declared = [f.name for f in schema if f.name in frame.columns]
    frame = frame.select(declared + [c for c in frame.columns if c not in declared])
    table = frame.to_arrow()
    fields = []
    for column in table.schema:
        index = schema.get_field_index(column.name)
        target = schema.field(index).type if index >= 0 else column.type
        if pa.types.is_null(column.type) and index < 0:
            target = pa.string()  # an all-null extra column: give it a concrete type
        fields.append(pa.field(column.name, target))
    wanted = pa.schema(fields)
    if table.schema.equals(wanted):
        return table
    return table.cast(wanted)


# Row groups of 100k rows: readers (Polars, DuckDB, datasets) can stream and parallelize a stage
# file instead of facing one group of a million rows (pyarrow's default cap is 1Mi rows).
ROW_GROUP_ROWS = 100_000


def lineage_metadata(values: Mapping[str, str]) -> dict[bytes, bytes]:
    return {f"curate.{k}".encode(): str(v).encode() for k, v in values.items()}


class PartWriter:
    """Writes a stream of frames as one Parquet file; every batch is cast to the first's schema."""

    def __init__(self, path: Path, *, metadata: Mapping[str, str], schema: pa.Schema) -> None:
        self.path = path
        self.metadata = lineage_metadata(metadata)
        self.schema = schema
        self._writer: pq.ParquetWriter | None = None
        self.rows = 0

    def write(self, frame: pl.DataFrame) -> None:
        table = to_arrow(frame, self.schema)
        if self._writer is None:
            merged = table.schema.with_metadata({**(table.schema.metadata or {}), **self.metadata})
            self._writer = pq.ParquetWriter(self.path, merged, compression="zstd")
        table = table.cast(self._writer.schema.remove_metadata()).replace_schema_metadata(
            self._writer.schema.metadata
        )
        self._writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
        self.rows += table.num_rows

    def close(self) -> int:
        if self._writer is not None:
            self._writer.close()
            with open(self.path, "rb") as handle:
                os.fsync(handle.fileno())
        return self.rows


def write_table(path: Path, table: pa.Table, *, metadata: Mapping[str, str]) -> None:
    merged = table.schema.with_metadata(
        {**(table.schema.metadata or {}), **lineage_metadata(metadata)}
    )
    pq.write_table(
        table.replace_schema_metadata(merged.metadata),
        path,
        compression="zstd",
        row_group_size=ROW_GROUP_ROWS,
    )


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary folder beside `final`; on success it replaces `final` in one rename."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f"{TMP_PREFIX}{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        _fsync_dir(tmp)
        old = None
        if final.exists():
            old = final.parent / f"{OLD_PREFIX}{final.name}-{uuid.uuid4().hex[:8]}"
            final.rename(old)
        tmp.rename(final)
        _fsync_dir(final.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def clean_leftovers(folder: Path) -> int:
    """Remove temporary folders a killed build left behind; returns how many."""
    if not folder.exists():
        return 0
    removed = 0
    for child in folder.iterdir():
        if child.name.startswith((TMP_PREFIX, OLD_PREFIX)):
            shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink()
            removed += 1
    return removed


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def part_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("part-*.parquet"))


def read_parts(folder: Path) -> pl.DataFrame:
    files = part_files(folder)
    if not files:
        return pl.DataFrame()
    return pl.read_parquet(files)


def iter_batches(folder: Path, *, batch_rows: int) -> Iterator[pl.DataFrame]:
    """Stream a stage's rows in batches without loading the whole stage."""
    for file in part_files(folder):
        parquet = pq.ParquetFile(file)
        for batch in parquet.iter_batches(batch_size=batch_rows):
            yield pl.from_arrow(pa.Table.from_batches([batch]))  # type: ignore[misc]


def count_rows(folder: Path) -> int:
    return sum(pq.ParquetFile(f).metadata.num_rows for f in part_files(folder))
