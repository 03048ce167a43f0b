"""PartWriter: a stage written as several files on parallel threads reads back as the rows
written, in order, with lineage in every file."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

from curate import parquet_io
from curate.parquet_io import PartWriter, part_files, read_parts
from curate.schemas.pool import POOL_SCHEMA

SOLUTIONS = Path(__file__).parent / "data" / "gsm8k_gpt3_solutions" / "solutions.parquet"


def real_traces() -> pl.DataFrame:
    """1,319 GSM8K problems, each with a GPT-3 solution: 5,276 traces of real text."""
    frame = pl.read_parquet(SOLUTIONS)
    models = [c for c in frame.columns if c.endswith("_solution")]
    return pl.concat(
        frame.select(
            problem_id=pl.format("gsm8k-{}", "line"),
            trace_id=pl.format("gsm8k-{}-{}", "line", pl.lit(model)),
            completion=pl.col(model),
        )
        for model in models
    )


def test_a_stream_becomes_ordered_files_with_lineage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    traces = real_traces()
    monkeypatch.setattr(parquet_io, "PART_BYTES", 256 << 10)
    with PartWriter(tmp_path, metadata={"stage": "02-dedup"}, schema=POOL_SCHEMA) as writer:
        for batch in traces.iter_slices(1_500):
            writer.write(batch)
    files = part_files(tmp_path)
    assert writer.rows == traces.height
    assert len(files) == writer.files > 4  # 1.3 MB of Arrow data, a file per 256 KiB
    assert [f.name for f in files] == [f"part-{k:05d}.parquet" for k in range(len(files))]
    assert read_parts(tmp_path).equals(traces)
    for file in files:
        meta = pq.read_schema(file).metadata
        assert meta[b"curate.stage"] == b"02-dedup"
        assert pq.ParquetFile(file).metadata.num_rows > 0


def test_a_large_frame_is_cut_into_even_files_for_every_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    traces = real_traces()
    monkeypatch.setattr(parquet_io, "PART_BYTES", 256 << 10)
    monkeypatch.setattr(parquet_io, "ROW_GROUP_ROWS", 500)
    with PartWriter(tmp_path, metadata={}, schema=POOL_SCHEMA, workers=4) as writer:
        writer.write(traces)  # about 1.3 MB: 6 files of 256 KiB, rounded up to 8 for 4 threads
    files = part_files(tmp_path)
    rows = [pq.ParquetFile(f).metadata.num_rows for f in files]
    assert len(files) % 4 == 0 and len(files) >= 4
    assert max(rows) - min(rows) <= 1 and sum(rows) == traces.height
    groups = [pq.ParquetFile(f).metadata.row_group(0).num_rows for f in files]
    assert max(groups) == 500  # row groups within a file stay at ROW_GROUP_ROWS
    assert read_parts(tmp_path).equals(traces)


def test_no_rows_still_gives_one_file_with_the_columns(tmp_path: Path) -> None:
    empty = real_traces().clear()
    with PartWriter(tmp_path, metadata={}, schema=POOL_SCHEMA) as writer:
        writer.write(empty)
    files = part_files(tmp_path)
    assert len(files) == 1
    assert pl.read_parquet(files[0]).columns == ["problem_id", "trace_id", "completion"]


def test_later_batches_take_the_first_batchs_types(tmp_path: Path) -> None:
    first = pl.DataFrame({"problem_id": ["a"], "extra": pl.Series([1], dtype=pl.Int32)})
    second = pl.DataFrame({"problem_id": ["b"], "extra": pl.Series([2], dtype=pl.Int64)})
    with PartWriter(tmp_path, metadata={}, schema=POOL_SCHEMA) as writer:
        writer.write(first)
        writer.write(second)
    back = read_parts(tmp_path)
    assert back["extra"].dtype == pl.Int32 and back["extra"].to_list() == [1, 2]


def test_an_error_in_the_block_starts_no_more_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    traces = real_traces()
    monkeypatch.setattr(parquet_io, "PART_BYTES", 256 << 10)
    with (
        pytest.raises(RuntimeError, match="operator failed"),
        PartWriter(tmp_path, metadata={}, schema=POOL_SCHEMA) as writer,
    ):
        writer.write(traces.head(100))  # buffered, not yet a file
        raise RuntimeError("operator failed")
    assert part_files(tmp_path) == []
