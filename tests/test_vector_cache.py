"""The content-hash vector cache: repeated texts computed once, a second call computes nothing."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import xxhash

from curate.errors import OperatorError
from curate.vector_cache import VectorCache, content_keys


def lengths(texts: list[str]) -> np.ndarray:
    return np.array([[len(t), len(t.encode())] for t in texts], dtype=np.uint32)


def make(folder: Path | None, **settings: object) -> VectorCache:
    return VectorCache(
        folder=folder, kind="test", settings=dict(settings), width=2, dtype=np.dtype(np.uint32)
    )


def test_repeated_texts_are_computed_once_and_rows_keep_their_order(tmp_path: Path) -> None:
    calls: list[list[str]] = []

    def compute(texts: list[str]) -> np.ndarray:
        calls.append(texts)
        return lengths(texts)

    texts = ["ab", "é", "ab", "", "xyz", "é"]
    out, stats = make(tmp_path).vectors(texts, compute)
    assert calls == [["ab", "é", "", "xyz"]]
    assert out.tolist() == lengths(texts).tolist()
    assert (stats.rows, stats.distinct, stats.computed, stats.from_cache) == (6, 4, 4, 0)


def test_second_call_reads_the_cache_and_computes_only_new_texts(tmp_path: Path) -> None:
    calls: list[list[str]] = []

    def compute(texts: list[str]) -> np.ndarray:
        calls.append(texts)
        return lengths(texts)

    make(tmp_path, n=1).vectors(["a", "bb"], compute)
    out, stats = make(tmp_path, n=1).vectors(["bb", "ccc", "a"], compute)
    assert calls[1] == ["ccc"]
    assert out.tolist() == [[2, 2], [3, 3], [1, 1]]
    assert (stats.from_cache, stats.computed) == (2, 1)
    # other settings: a separate cache, everything computed again
    _, other = make(tmp_path, n=2).vectors(["a"], compute)
    assert other.computed == 1


def test_no_folder_means_no_cache_and_empty_input_works(tmp_path: Path) -> None:
    out, stats = make(None).vectors([], lengths)
    assert out.shape == (0, 2) and stats.rows == 0
    out, _ = make(None).vectors(["abc"], lengths)
    assert out.tolist() == [[3, 3]]


def test_content_keys_and_the_xxh3_scheme(tmp_path: Path) -> None:
    texts = ["ab", "é", None, "ab" * 3000]
    keys = content_keys(texts).to_list()
    assert keys == [hashlib.blake2b((t or "").encode(), digest_size=16).digest() for t in texts]
    fast = content_keys(pl.Series(texts), "xxh3-128").to_list()
    assert fast == [xxhash.xxh3_128_digest((t or "").encode()) for t in texts]
    with pytest.raises(ValueError, match="content key 'md5'"):
        content_keys(texts, "md5")
    # the scheme is a setting: its own folder, and a second call computes nothing
    calls: list[list[str]] = []

    def compute(batch: list[str]) -> np.ndarray:
        calls.append(batch)
        return lengths(batch)

    cache = make(tmp_path, n=1, content_key="xxh3-128")
    assert cache.path != make(tmp_path, n=1).path
    cache.vectors(["a", "bb", "a"], compute)
    out, stats = cache.vectors(["bb", "a", "ccc"], compute)
    assert calls == [["a", "bb"], ["ccc"]]
    assert out.tolist() == [[2, 2], [1, 1], [3, 3]]
    assert (stats.from_cache, stats.computed) == (2, 1)


def test_hits_spread_over_several_parts_come_back_in_row_order(tmp_path: Path) -> None:
    for batch in (["a", "bb"], ["ccc"], ["dddd", "eeeee"]):  # three parts
        make(tmp_path, n=1).vectors(batch, lengths)
    texts = ["eeeee", "a", "ccc", "bb", "a", "new!"]
    out, stats = make(tmp_path, n=1).vectors(texts, lengths)
    assert out.tolist() == lengths(texts).tolist()
    assert (stats.from_cache, stats.computed) == (4, 1)


def test_cheap_vectors_on_a_cold_cache_compute_every_row_and_match(tmp_path: Path) -> None:
    calls: list[list[str]] = []

    def compute(texts: pl.Series) -> np.ndarray:
        calls.append(texts.to_list())
        return lengths(texts.to_list())

    texts = pl.Series(["ab", "é", "ab", None, "xyz"])
    cache = make(tmp_path, n=1)
    out, stats = cache.series_vectors(texts, compute, cheap=True)
    assert calls == [["ab", "é", "ab", "", "xyz"]]  # as they come, the repeat too
    assert out.tolist() == lengths(["ab", "é", "ab", "", "xyz"]).tolist()
    assert (stats.rows, stats.distinct, stats.from_cache, stats.computed) == (5, 4, 0, 4)
    # warm: looked up like any cache, only new texts computed, repeats once
    again, warm = cache.series_vectors(pl.Series(["xyz", "new", "new", "ab"]), compute, cheap=True)
    assert calls[1] == ["new"]
    assert again.tolist() == lengths(["xyz", "new", "new", "ab"]).tolist()
    assert (warm.from_cache, warm.computed) == (2, 1)
    # the same answers as the non-cheap path
    plain, _ = make(tmp_path / "plain", n=1).series_vectors(texts, compute)
    assert plain.tolist() == out.tolist()
    with pytest.raises(OperatorError, match=r"computed vectors have shape \(1, 2\), expected"):
        make(tmp_path / "bad").series_vectors(texts, lambda t: lengths(["x"]), cheap=True)
