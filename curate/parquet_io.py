"""Parquet in and out of the run directory. Frames are cast to the pool's declared Arrow types
(one source of truth: curate.schemas.pool), every file carries lineage in its key-value metadata,
and a folder of files only appears under its final name once it is complete (written under a
temporary name, then renamed), so a killed build never leaves a half-written file to be read.
A folder on an object store, which cannot rename, is committed by its marker file instead (see
`atomic_dir` and curate.storage); every path here may be local or remote (`storage.AnyPath`)."""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import uuid
from collections import deque
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import polars as pl
import pyarrow as pa

from curate.schemas.pool import POOL_SCHEMA
from curate.storage import (
    AnyPath,
    glob,
    is_remote,
    make_dirs,
    parquet_file,
    remove_tree,
    write_parquet,
)

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


# A stage is written as several files of about PART_BYTES of Arrow data each, compressed on
# parallel threads (pyarrow releases the GIL): one zstd stream is the slowest part of writing a
# stage of long traces (100,000 traces, 166 MB: 0.45 s in one file, 0.25 s as 6 files on 2
# cores; bench/minhash_speed.py). Files of 32 MiB are still large for every reader.
PART_BYTES = 32 << 20


# The files that say a folder is complete: a stage's record, an export's manifest. On an object
# store they are written last and removed first (see atomic_dir).
COMMIT_MARKERS = ("stage.json", "manifest.json")


def _write_file(path: AnyPath, table: pa.Table) -> None:
    write_parquet(path, table, compression="zstd", row_group_size=ROW_GROUP_ROWS)


def write_part(
    path: AnyPath, frame: pl.DataFrame, *, metadata: Mapping[str, str], schema: pa.Schema
) -> None:
    """One frame as one Parquet file at `path`, cast to `schema`'s declared types."""
    write_table(path, to_arrow(frame, schema), metadata=metadata)


class PartWriter:
    """Writes a stream of frames, in order, as `<prefix>-00000.parquet`, `<prefix>-00001...`
    in `folder`: small frames are gathered into files of about PART_BYTES of Arrow data, a
    large one is cut into files of equal size, as many as a multiple of `workers`; each file is
    converted to Arrow and compressed on one of `workers` threads while the caller goes on.
    Every batch is cast to the first's declared types; with no rows at all, one empty file
    still gives the stage its columns. Use it in a `with` block, which closes it, or on an
    error stops it without starting more files."""

    def __init__(
        self,
        folder: AnyPath,
        *,
        metadata: Mapping[str, str],
        schema: pa.Schema,
        prefix: str = "part",
        workers: int | None = None,
    ) -> None:
        self.folder = folder
        self.prefix = prefix
        self.metadata = lineage_metadata(metadata)
        self.schema = schema
        self.workers = workers or max(1, os.cpu_count() or 1)
        self.rows = 0
        self.files = 0
        self._target: pa.Schema | None = None  # the first batch's schema, lineage included
        self._buffer: list[pl.DataFrame] = []
        self._buffered_bytes = 0
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="parquet")
        self._pending: deque[Future[None]] = deque()

    def write(self, frame: pl.DataFrame) -> None:
        if self._target is None:  # the declared types, from no rows
            first = to_arrow(frame.head(0), self.schema).schema
            self._target = first.with_metadata({**(first.metadata or {}), **self.metadata})
        self.rows += frame.height
        size = int(frame.estimated_size())  # bytes of Arrow data, about
        if size >= PART_BYTES:  # a whole stage at once: even files, all threads busy
            self._flush()
            files = -(-size // PART_BYTES)
            files = -(-files // self.workers) * self.workers
            cuts = [k * frame.height // files for k in range(files + 1)]
            for start, stop in itertools.pairwise(cuts):
                self._buffer.append(frame.slice(start, stop - start))
                self._flush()
            return
        self._buffer.append(frame)
        self._buffered_bytes += size
        if self._buffered_bytes >= PART_BYTES:
            self._flush()

    def _flush(self) -> None:
        if not self._buffer:
            return
        frames = self._buffer
        path = self.folder / f"{self.prefix}-{self.files:05d}.parquet"
        self.files += 1
        self._buffer, self._buffered_bytes = [], 0
        while len(self._pending) >= 2 * self.workers:  # bound the frames held in memory
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(self._write_frames, path, frames))

    def _write_frames(self, path: AnyPath, frames: list[pl.DataFrame]) -> None:
        """Convert to Arrow and write on a writer thread: each file's Arrow copy of its rows
        is made there, in parallel, and reuses the memory of the files written before it."""
        assert self._target is not None
        target = self._target.remove_metadata()
        table = pa.concat_tables([to_arrow(f, self.schema).cast(target) for f in frames])
        _write_file(path, table.replace_schema_metadata(self._target.metadata))

    def __enter__(self) -> PartWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is None:
            self.close()
        else:  # let running writes finish (their folder is about to go), start no more
            self._pool.shutdown(wait=True, cancel_futures=True)

    def close(self) -> int:
        """Write what is buffered, wait for every file; returns the rows written."""
        try:
            self._flush()
            if self.files == 0 and self._target is not None:
                path = self.folder / f"{self.prefix}-00000.parquet"
                self._pending.append(
                    self._pool.submit(_write_file, path, self._target.empty_table())
                )
                self.files = 1
            while self._pending:
                self._pending.popleft().result()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
        return self.rows


def write_table(path: AnyPath, table: pa.Table, *, metadata: Mapping[str, str]) -> None:
    """`table` as one Parquet file at `path`, with lineage in its key-value metadata."""
    merged = {**(table.schema.metadata or {}), **lineage_metadata(metadata)}
    _write_file(path, table.replace_schema_metadata(merged))


@contextlib.contextmanager
def atomic_dir(final: AnyPath) -> Iterator[AnyPath]:
    """Yield a temporary folder beside `final`; on success it replaces `final` in one rename.

    On a remote filesystem (no atomic rename) the old folder is removed, its commit marker
    first, and `final` itself is yielded: the caller writes its commit marker (COMMIT_MARKERS)
    last, so until then no reader takes the folder for complete; on an error what was written
    is removed."""
    if is_remote(final):
        remove_tree(final, first=COMMIT_MARKERS)
        make_dirs(final)
        try:
            yield final
        except BaseException:
            with contextlib.suppress(Exception):
                remove_tree(final, first=COMMIT_MARKERS)
            raise
        return
    assert isinstance(final, Path)
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


def clean_leftovers(folder: AnyPath) -> int:
    """Remove temporary folders a killed build left behind; returns how many. (A remote
    build leaves none: an unfinished remote stage has no marker and is replaced when
    written again.)"""
    if not isinstance(folder, Path) or not folder.exists():
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


def part_files(folder: AnyPath) -> list[AnyPath]:
    if is_remote(folder):  # parts may come from other processes (Ray tasks): list afresh
        assert not isinstance(folder, Path)
        folder.fs.invalidate_cache(folder.path)
    return glob(folder, "part-*.parquet")


def read_parts(folder: AnyPath) -> pl.DataFrame:
    files = part_files(folder)
    if not files:
        return pl.DataFrame()
    if not is_remote(folder):
        return pl.read_parquet(files)  # type: ignore[arg-type]
    frames = [frame_of(parquet_file(f).read()) for f in files]
    return pl.concat(frames, how="vertical")


def frame_of(table: pa.Table) -> pl.DataFrame:
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    return frame


def iter_batches(folder: AnyPath, *, batch_rows: int) -> Iterator[pl.DataFrame]:
    """Stream a stage's rows in batches without loading the whole stage."""
    for file in part_files(folder):
        parquet = parquet_file(file)
        for batch in parquet.iter_batches(batch_size=batch_rows):
            yield pl.from_arrow(pa.Table.from_batches([batch]))  # type: ignore[misc]


def count_rows(folder: AnyPath) -> int:
    return sum(parquet_file(f).metadata.num_rows for f in part_files(folder))
