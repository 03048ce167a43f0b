"""The UTF-8 bytes of a Polars string column as NumPy arrays (offsets and one data buffer), so
byte-level passes over a whole column run without a Python loop per row, and the split of a
column into chunks of a few MiB for such passes.

Why chunks of CHUNK_BYTES = 2 MiB: a NumPy array above glibc's mmap threshold (at most 32 MiB)
is mapped fresh on every allocation and each of its pages faulted in, while smaller ones reuse
the heap. On 60,000 traces of ~1,600 characters the repetition kernel took 5.5 s in 32 MiB
chunks (2.8 s of it system time, 130,000 page faults) and 2.2 s in 2 MiB chunks (0.05 s system
time). Per-chunk overhead is small next to that (a 2 MiB chunk is ~1,300 such traces).
"""

from __future__ import annotations

import itertools

import numpy as np
import polars as pl
import pyarrow as pa

CHUNK_BYTES = 2 * 2**20


def as_text(texts: pl.Series) -> pl.Series:
    """`texts` as a String Series with nulls as "": the series itself where it already is one
    (filling nulls copies the column even when there are none)."""
    if texts.dtype != pl.String:
        texts = texts.cast(pl.String)
    return texts.fill_null("") if texts.null_count() else texts


def utf8_buffers(texts: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """``(offsets, data)``: row i's bytes are ``data[offsets[i]:offsets[i + 1]]``; offsets start
    at 0 and have one more entry than there are rows. A null text has no bytes. The arrays may
    share memory with Arrow buffers: treat them as read-only."""
    array = as_text(texts).rechunk().to_arrow(compat_level=pl.CompatLevel.oldest())
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    array = array.cast(pa.large_string())
    _, offset_buffer, data_buffer = array.buffers()
    if offset_buffer is None or len(array) == 0:
        return np.zeros(len(array) + 1, dtype=np.int64), np.zeros(0, dtype=np.uint8)
    offsets = np.frombuffer(offset_buffer, dtype=np.int64)[
        array.offset : array.offset + len(array) + 1
    ]
    first, last = int(offsets[0]), int(offsets[-1])
    if data_buffer is None or last == first:
        return offsets - first, np.zeros(0, dtype=np.uint8)
    return offsets - first, np.frombuffer(data_buffer, dtype=np.uint8)[first:last]


def from_buffers(name: str, offsets: np.ndarray, data: np.ndarray) -> pl.Series:
    """A string Series from `utf8_buffers`-shaped arrays (the bytes must be valid UTF-8)."""
    array = pa.LargeStringArray.from_buffers(
        offsets.size - 1, pa.py_buffer(offsets), pa.py_buffer(data)
    )
    return pl.Series(name, array)


def chunk_rows(byte_lengths: np.ndarray, chunk_bytes: int) -> list[tuple[int, int]]:
    """Consecutive row ranges ``[start, stop)`` of at most `chunk_bytes` bytes each, except that
    a range always holds at least one row."""
    rows = byte_lengths.size
    if rows == 0:
        return []
    ends = np.cumsum(byte_lengths, dtype=np.int64)
    bounds = [0]
    while bounds[-1] < rows:
        done = int(ends[bounds[-1] - 1]) if bounds[-1] else 0
        stop = int(np.searchsorted(ends, done + chunk_bytes, side="right"))
        bounds.append(max(stop, bounds[-1] + 1))
    return list(itertools.pairwise(bounds))
