"""Cosine search: hand-checkable pairs, blockwise exact search, and the faiss IVF index agreeing
with exact search on a few thousand vectors with planted near-duplicates."""

from __future__ import annotations

import numpy as np
import pytest

from curate import similarity
from curate.embeddings import normalize_rows
from curate.similarity import best_matches, self_pairs

# Unit vectors with exact float32 cosines: 0 . 1 = 0.6, 1 . 2 = 0.8, 0 . 2 = 0, 3 is a copy of 0.
FOUR = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [1.0, 0.0]], dtype=np.float32)


def as_list(found: tuple[np.ndarray, np.ndarray, np.ndarray]) -> list[tuple[int, int, float]]:
    i, j, s = found
    return [(int(a), int(b), round(float(c), 5)) for a, b, c in zip(i, j, s, strict=True)]


def test_self_pairs_by_hand() -> None:
    assert as_list(self_pairs(FOUR, 0.6)) == [
        (0, 1, 0.6),
        (0, 3, 1.0),
        (1, 2, 0.8),
        (1, 3, 0.6),
    ]
    assert as_list(self_pairs(FOUR, 0.7)) == [(0, 3, 1.0), (1, 2, 0.8)]
    assert as_list(self_pairs(FOUR, 1.0)) == [(0, 3, 1.0)]  # exactly on the threshold counts
    assert as_list(self_pairs(FOUR, -1.0)) == [
        (i, j, round(float(FOUR[i] @ FOUR[j]), 5)) for i in range(4) for j in range(i + 1, 4)
    ]


def test_empty_and_single_row() -> None:
    for emb in (np.empty((0, 3), np.float32), np.ones((1, 3), np.float32)):
        i, j, s = self_pairs(emb, 0.5)
        assert i.shape == j.shape == s.shape == (0,)
    assert as_list(best_matches(np.empty((0, 2)), FOUR, 0.5)) == []
    assert as_list(best_matches(FOUR, np.empty((0, 2)), 0.5)) == []


def test_best_matches_by_hand() -> None:
    queries = np.array([[0.0, 1.0], [-1.0, 0.0], [1.0, 0.0]], dtype=np.float32)
    # query 0 best: row 2 (1.0); query 1: nothing >= 0.5; query 2: rows 0 and 3 tie -> row 0
    assert as_list(best_matches(queries, FOUR, 0.5)) == [(0, 2, 1.0), (2, 0, 1.0)]
    assert as_list(best_matches(queries, FOUR[1:2], 0.7)) == [(0, 0, 0.8)]


def test_bad_shapes() -> None:
    with pytest.raises(ValueError, match="2-d array"):
        self_pairs(np.ones(3, np.float32), 0.5)
    with pytest.raises(ValueError, match="dimension 3, reference 2"):
        best_matches(np.ones((1, 3), np.float32), FOUR, 0.5)


def test_exact_search_in_blocks_matches_one_block(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    emb = normalize_rows(rng.standard_normal((300, 4)))
    whole = as_list(self_pairs(emb, 0.9))
    whole_best = as_list(best_matches(emb[:100], emb[100:], 0.9))
    monkeypatch.setattr(similarity, "BLOCK_BYTES", 4 * 300 * 7)  # 7 rows per block
    assert as_list(self_pairs(emb, 0.9)) == whole
    assert as_list(best_matches(emb[:100], emb[100:], 0.9)) == whole_best
    assert len(whole) > 100  # 4-d random vectors: many pairs above 0.9


def planted(seed: int = 0) -> np.ndarray:
    """3,000 random 64-d unit vectors plus 900 perturbed copies of the first 900 (cosine to their
    original spread from about 0.75 to 0.99)."""
    rng = np.random.default_rng(seed)
    base = normalize_rows(rng.standard_normal((3000, 64)))
    scale = np.linspace(0.02, 0.12, 900, dtype=np.float32)[:, None]
    copies = normalize_rows(base[:900] + scale * rng.standard_normal((900, 64)))
    return np.vstack([base, copies]).astype(np.float32)


@pytest.mark.parametrize("threshold", [0.8, 0.9, 0.95])
def test_ann_agrees_with_exact(threshold: float) -> None:
    emb = planted()
    exact = {(i, j): s for i, j, s in as_list(self_pairs(emb, threshold, engine="exact"))}
    ann = {(i, j): s for i, j, s in as_list(self_pairs(emb, threshold, engine="ann"))}
    assert len(exact) >= 150
    assert set(ann) <= set(exact)  # the index never invents a pair
    assert all(abs(ann[p] - exact[p]) < 1e-4 for p in ann)
    assert len(ann) / len(exact) >= 0.99
    # deterministic: a second build finds the same pairs
    assert as_list(self_pairs(emb, threshold, engine="ann")) == sorted(
        (i, j, s) for (i, j), s in ann.items()
    )


def test_ann_best_matches_agree_with_exact() -> None:
    emb = planted()
    queries, reference = emb[3000:], emb[:3000]
    exact = as_list(best_matches(queries, reference, 0.8, engine="exact"))
    ann = as_list(best_matches(queries, reference, 0.8, engine="ann"))
    assert len(exact) > 600
    exact_pairs = {(i, j) for i, j, _ in exact}
    assert {(i, j) for i, j, _ in ann} <= exact_pairs
    assert len(ann) / len(exact) >= 0.99
    assert all(j == i for i, j, _ in exact)  # each copy's best match is its original
