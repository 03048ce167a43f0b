"""Cosine similarity search over L2-normalized embeddings: all pairs above a threshold within one
set (`self_pairs`, for semantic dedup) and each query's best match in a reference set
(`best_matches`, for semantic decontamination).

Two engines, one contract:

- exact: NumPy matrix products in blocks of rows, so memory stays near `BLOCK_BYTES` whatever
  the pool size. Cost grows with n x m x dim; it is the default while the number of compared
  pairs stays under `EXACT_PAIR_LIMIT` (50,000 x 50,000 / 2 pairs for `self_pairs`, about ten
  seconds of BLAS on two cores at dim 384).
- ann: a faiss `IndexIVFFlat` (inner product) beyond that. Why faiss, and why IVF: faiss-cpu
  ships one abi3 wheel for every Python >= 3.10 with no dependency past numpy and packaging,
  and IVF indexes answer *range* queries (`range_search`: every neighbour above a similarity),
  which is exactly what threshold dedup asks; HNSW libraries (hnswlib, usearch, faiss's own
  HNSW) answer only top-k, so a range has to be emulated by growing k. IVF's k-means uses a
  fixed seed and its search is deterministic, so a re-run finds the same pairs (HNSW built with
  several threads is not reproducible). The cost: it is approximate. A pair is found when the
  query's `nprobe` nearest cells hold its partner; near-duplicates (cosine >= 0.8) almost always
  share a cell, and tests/test_similarity.py checks agreement with the exact engine.

Scores are float32 cosines. A pair counts when sim >= threshold - `TOLERANCE`, so a pair that
sits exactly on the threshold is not lost to float32 rounding (identical unit vectors can score
0.99999994).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

from curate.errors import MissingDependencyError

Engine = Literal["auto", "exact", "ann"]

TOLERANCE = 1e-6
BLOCK_BYTES = 128 * 1024 * 1024  # per block of the similarity matrix (float32)
EXACT_PAIR_LIMIT = 50_000 * 50_000 // 2  # compared pairs beyond which "auto" uses the index
DEFAULT_NPROBE = 16

Pairs = tuple[np.ndarray, np.ndarray, np.ndarray]


def _check(name: str, emb: np.ndarray) -> np.ndarray:
    array = np.asarray(emb)
    if array.ndim != 2:
        raise ValueError(f"{name}: expected a 2-d array (rows x dim), got shape {array.shape}")
    return np.ascontiguousarray(array, dtype=np.float32)


def _empty() -> Pairs:
    return (np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32))


def _block_rows(columns: int) -> int:
    return max(1, BLOCK_BYTES // (4 * max(1, columns)))


def self_pairs(
    emb: np.ndarray,
    threshold: float,
    *,
    engine: Engine = "auto",
    nprobe: int = DEFAULT_NPROBE,
) -> Pairs:
    """All pairs (i, j, sim) with i < j and cosine sim >= threshold, sorted by (i, j).

    `emb` rows must be L2-normalized. `engine`: "exact", "ann" (faiss IVF), or "auto" (exact
    while n*(n-1)/2 <= EXACT_PAIR_LIMIT)."""
    emb = _check("emb", emb)
    n = emb.shape[0]
    if n < 2:
        return _empty()
    use_ann = engine == "ann" or (engine == "auto" and n * (n - 1) // 2 > EXACT_PAIR_LIMIT)
    if use_ann:
        return _ann_self_pairs(emb, threshold, nprobe)
    return _exact_self_pairs(emb, threshold)


def best_matches(
    queries: np.ndarray,
    reference: np.ndarray,
    threshold: float,
    *,
    engine: Engine = "auto",
    nprobe: int = DEFAULT_NPROBE,
) -> Pairs:
    """For each query with a reference row at cosine >= threshold: (query_idx, ref_idx, sim) of
    its most similar reference row (ties: the lowest ref_idx for the exact engine), sorted by
    query_idx. Rows must be L2-normalized; "auto" uses the index when queries x reference
    exceeds EXACT_PAIR_LIMIT."""
    queries = _check("queries", queries)
    reference = _check("reference", reference)
    if queries.shape[0] and reference.shape[0] and queries.shape[1] != reference.shape[1]:
        raise ValueError(
            f"queries have dimension {queries.shape[1]}, reference {reference.shape[1]}"
        )
    if queries.shape[0] == 0 or reference.shape[0] == 0:
        return _empty()
    pairs = queries.shape[0] * reference.shape[0]
    if engine == "ann" or (engine == "auto" and pairs > EXACT_PAIR_LIMIT):
        return _ann_best_matches(queries, reference, threshold, nprobe)
    return _exact_best_matches(queries, reference, threshold)


def _exact_self_pairs(emb: np.ndarray, threshold: float) -> Pairs:
    n = emb.shape[0]
    step = _block_rows(n)
    cut = np.float32(threshold - TOLERANCE)
    found_i, found_j, found_s = [], [], []
    for start in range(0, n - 1, step):
        stop = min(n, start + step)
        # Rows start..stop against columns start..n: the upper triangle only.
        sims = emb[start:stop] @ emb[start:].T
        rows, cols = np.nonzero(np.triu(sims >= cut, k=1))
        found_i.append(rows + start)
        found_j.append(cols + start)
        found_s.append(sims[rows, cols])
    return _concat(found_i, found_j, found_s)


def _exact_best_matches(queries: np.ndarray, reference: np.ndarray, threshold: float) -> Pairs:
    step = _block_rows(reference.shape[0])
    cut = np.float32(threshold - TOLERANCE)
    found_i, found_j, found_s = [], [], []
    for start in range(0, queries.shape[0], step):
        sims = queries[start : start + step] @ reference.T
        best = np.argmax(sims, axis=1)
        score = sims[np.arange(sims.shape[0]), best]
        hit = np.nonzero(score >= cut)[0]
        found_i.append(hit + start)
        found_j.append(best[hit])
        found_s.append(score[hit])
    return _concat(found_i, found_j, found_s)


def _concat(i: list[np.ndarray], j: list[np.ndarray], s: list[np.ndarray]) -> Pairs:
    if not i:
        return _empty()
    return (
        np.concatenate(i).astype(np.int64),
        np.concatenate(j).astype(np.int64),
        np.minimum(np.concatenate(s).astype(np.float32), np.float32(1.0)),
    )


def _faiss():  # type: ignore[no-untyped-def]
    try:
        import faiss
    except ImportError as exc:
        raise MissingDependencyError(
            package="faiss-cpu", extra="semantic", feature="approximate similarity search"
        ) from exc
    return faiss


def _ivf_index(data: np.ndarray, nprobe: int):  # type: ignore[no-untyped-def]
    """An IVF-Flat inner-product index over `data`: about 4*sqrt(n) cells (at least 39 training
    points per cell, as faiss's k-means asks), k-means seeded, `nprobe` cells searched."""
    faiss = _faiss()
    n, dim = data.shape
    nlist = max(1, min(int(4 * math.sqrt(n)), n // 39))
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = 1234
    index.cp.max_points_per_centroid = 256  # k-means on at most 256 points per cell
    index.train(data)
    index.add(data)
    index.nprobe = min(nlist, max(1, nprobe))
    return index


def _ann_self_pairs(emb: np.ndarray, threshold: float, nprobe: int) -> Pairs:
    index = _ivf_index(emb, nprobe)
    radius = float(threshold - TOLERANCE)
    step = max(1, _block_rows(emb.shape[0]) // 4)
    found_i, found_j, found_s = [], [], []
    for start in range(0, emb.shape[0], step):
        lims, sims, ids = index.range_search(emb[start : start + step], radius)
        counts = np.diff(lims.astype(np.int64))
        rows = np.repeat(np.arange(counts.shape[0], dtype=np.int64), counts) + start
        found_i.append(rows)
        found_j.append(ids)
        found_s.append(sims)
    i, j, s = _concat(found_i, found_j, found_s)
    # A pair can be found from either end (or only one): keep each unordered pair once.
    keep = i != j
    lo, hi, s = np.minimum(i, j)[keep], np.maximum(i, j)[keep], s[keep]
    order = np.lexsort((hi, lo))
    lo, hi, s = lo[order], hi[order], s[order]
    first = np.ones(lo.shape[0], dtype=bool)
    first[1:] = (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])
    return lo[first], hi[first], s[first]


def _ann_best_matches(
    queries: np.ndarray, reference: np.ndarray, threshold: float, nprobe: int
) -> Pairs:
    index = _ivf_index(reference, nprobe)
    sims, ids = index.search(queries, 1)
    score, best = sims[:, 0], ids[:, 0]
    hit = np.nonzero((best >= 0) & (score >= np.float32(threshold - TOLERANCE)))[0]
    return (
        hit.astype(np.int64),
        best[hit].astype(np.int64),
        np.minimum(score[hit].astype(np.float32), np.float32(1.0)),
    )
