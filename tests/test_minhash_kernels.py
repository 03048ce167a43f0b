"""The compiled shingling and MinHash kernels (curate.hash_kernels) against a plain-Python
statement of the same rules: tokens from `curate.text.words` (or the characters of `match_key`),
hashes in Python integers, signatures slot by slot. Equal on generated Unicode text."""

from __future__ import annotations

import numpy as np
import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from curate.minhash import shingle_jaccard, sign_texts, signatures
from curate.shingles import Unit, shingle_hashes
from curate.text import match_key, words

M64 = (1 << 64) - 1
BASE = 0x9E3779B97F4A7C15
MIX1 = 0xBF58476D1CE4E5B9
MIX2 = 0x94D049BB133111EB
LENGTH = 0xD6E8FEB86659FD93


def mix(x: int) -> int:
    x ^= x >> 30
    x = (x * MIX1) & M64
    x ^= x >> 27
    x = (x * MIX2) & M64
    return x ^ (x >> 31)


def token_hash(token: str) -> int:
    """First 8 bytes and length, mixed; each further 8-byte block k salted with k, mixed and
    added; mixed again."""
    data = token.encode()
    h = mix(int.from_bytes(data[:8], "little") ^ (len(data) * LENGTH & M64))
    for k in range(1, (len(data) + 7) // 8):
        block = int.from_bytes(data[8 * k : 8 * k + 8], "little")
        h = (h + mix(block ^ (k * BASE & M64))) & M64
    return mix(h)


def reference_shingles(text: str | None, unit: Unit, n: int) -> list[int]:
    tokens = words(text) if unit == "word" else list(match_key(text))
    hashes = [token_hash(t) for t in tokens]
    windows = [hashes[k : k + n] for k in range(len(hashes) - n + 1)] or (
        [hashes] if hashes else []
    )
    out = []
    for window in windows:
        h = 0
        for value in window:
            h = (h * BASE + value) & M64
        out.append(mix(h))
    return out


def seed_key(seed: int, purpose: int) -> int:
    return mix((seed * 0x9E3779B1 + purpose * 0x85EBCA77 + 0x27D4EB2F) & M64)


def reference_signature(shingles: list[int], num_perm: int, seed: int) -> list[int]:
    """One-permutation MinHash: the seeded hash's top 32 bits pick the slot, its low 32 bits
    are the value, a slot keeps its minimum; an empty slot takes the value of the first filled
    slot in its probe order (slots sorted by a seeded hash of (slot, other slot))."""
    empty = 0xFFFFFFFF
    if not shingles:
        return [empty] * num_perm
    key, probe = seed_key(seed, 0), seed_key(seed, 1)
    slots: list[int | None] = [None] * num_perm
    for shingle in shingles:
        keyed = mix(shingle ^ key)
        slot = ((keyed >> 32) * num_perm) >> 32
        value = keyed & 0xFFFFFFFF
        current = slots[slot]
        slots[slot] = value if current is None else min(current, value)
    out = []
    for j, value in enumerate(slots):
        if value is None:
            order = sorted(range(num_perm), key=lambda k: mix((j * num_perm + k) ^ probe))
            value = next(v for v in (slots[k] for k in order) if v is not None)
        out.append(value)
    return out


texts = st.lists(
    st.one_of(
        st.text(max_size=60),
        st.text(alphabet="ab cD.\n_é1ß", max_size=80),
        st.none(),
    ),
    max_size=6,
)


@settings(max_examples=80, deadline=None)
@given(
    texts,
    st.sampled_from(["word", "char"]),
    st.integers(1, 6),
    st.sampled_from([8, 16, 64]),
    st.integers(0, 2**32),
)
def test_kernels_equal_plain_python(
    values: list[str | None], unit: Unit, n: int, num_perm: int, seed: int
) -> None:
    series = pl.Series(values, dtype=pl.String)
    expected_shingles = [reference_shingles(t, unit, n) for t in values]
    shingles = shingle_hashes(series, unit=unit, n=n)
    got = [
        shingles.hashes[a:b].tolist()
        for a, b in zip(shingles.offsets[:-1], shingles.offsets[1:], strict=True)
    ]
    assert got == expected_shingles
    expected = [reference_signature(s, num_perm, seed) for s in expected_shingles]
    assert signatures(shingles, num_perm=num_perm, seed=seed).tolist() == expected
    signed = sign_texts(series, unit=unit, n=n, num_perm=num_perm, seed=seed, workers=2)
    assert signed.tolist() == expected


@settings(max_examples=40, deadline=None)
@given(texts, texts)
def test_exact_jaccard_equals_python_sets(left: list[str | None], right: list[str | None]) -> None:
    pairs = list(zip(left, right, strict=False))
    series = pl.Series([t for pair in pairs for t in pair], dtype=pl.String)
    shingles = shingle_hashes(series, unit="word", n=2)
    a = np.arange(0, 2 * len(pairs), 2, dtype=np.int64)
    got = shingle_jaccard(shingles, a, a + 1).tolist()
    expected = []
    for x, y in pairs:
        sx, sy = set(reference_shingles(x, "word", 2)), set(reference_shingles(y, "word", 2))
        expected.append(np.float32(len(sx & sy) / len(sx | sy)) if sx | sy else 0.0)
    assert got == expected


def test_long_tokens_and_many_slots() -> None:
    """Tokens longer than 8 and 16 bytes, multi-byte characters across block edges, and a
    signature of more slots than shingles (densification over long probe sequences)."""
    values = [
        "a" * 7 + " " + "b" * 8 + " " + "c" * 9 + " " + "d" * 17 + " é" * 3 + " xé" * 4,
        "ñ" * 9 + " 𝔘𝔫𝔦 " + "ab" * 20,
        "one",
    ]
    series = pl.Series(values)
    units: tuple[Unit, ...] = ("word", "char")
    for unit in units:
        expected = [reference_signature(reference_shingles(t, unit, 3), 256, 7) for t in values]
        got = sign_texts(series, unit=unit, n=3, num_perm=256, seed=7)
        assert got.tolist() == expected
