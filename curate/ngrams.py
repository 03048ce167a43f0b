"""Hashed word n-grams of many texts at once, for n-gram decontamination.

Texts are tokenized by `curate.text.words` (the project's one tokenizer), keeping only its word
tokens (runs of letters, digits, underscore): punctuation and the symbols of LaTeX markup are
skipped, as GPT-3's 13-gram overlap check strips punctuation, so that `$\frac{1}{2}$` is the three
words `frac 1 2` and an n-gram spans n real words. Tokens are found
by Polars' regex engine (see WORD_PATTERN: the same tokens, faster) and each gets a 64-bit
hash (Polars' vectorized string hash), and each window of n consecutive tokens of one text
gets sum_t token[t] * C[t] (mod 2**64) for fixed random odd multipliers C, passed through the
SplitMix64 finalizer; all windows of all texts are computed together with n vectorized
multiply-adds over the flat token array, so no Python loop runs per n-gram. A text shorter than
n words (but not empty) gets one gram for its whole word sequence, hashed with its length so it
cannot equal a full n-gram. Hashes are only compared within one process; they are not stored.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl

from curate.text import match_key, words

_RNG_SEED = 0x5EED_0F_6A
_MAX_N = 64


def _multipliers() -> np.ndarray:
    rng = np.random.default_rng(_RNG_SEED)
    return rng.integers(1, 2**63, size=_MAX_N + 1, dtype=np.uint64) * np.uint64(2) + np.uint64(1)


_C = _multipliers()  # _C[t] for position t; _C[_MAX_N] marks the length of a short text


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finalizer: spreads the bits of a linear combination."""
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint64(30))
        x = x * np.uint64(0xBF58476D1CE4E5B9)
        x = x ^ (x >> np.uint64(27))
        x = x * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


# Python's `\w` for str patterns is "alphanumeric or underscore", i.e. Unicode letters (L*),
# numbers (N*) and "_": the same set as this pattern in Polars' (Rust) regex engine for every
# character that Python's Unicode database knows (tests/test_decontaminate.py checks all of
# them). So runs of it in match_key(text) are exactly the word tokens of words(text), found
# ~7x faster and without a Python string per token.
WORD_PATTERN = r"[\p{L}\p{N}_]+"


def word_tokens(text: str | None) -> list[str]:
    """The word tokens of `words(text)`: punctuation and symbol tokens left out."""
    return [t for t in words(text) if t[0].isalnum() or t[0] == "_"]


def token_counts(texts: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray]:
    """(token hashes of all texts, concatenated; tokens per text): the word tokens of each text,
    found by Polars' regex engine in `match_key(text)` (see WORD_PATTERN)."""
    keys = pl.Series("k", [match_key(t) for t in texts], dtype=pl.String)
    tokens = keys.str.extract_all(WORD_PATTERN)
    lengths = tokens.list.len().fill_null(0).to_numpy().astype(np.int64)
    flat = tokens.explode().drop_nulls()  # an empty list explodes to one null
    if flat.len() != int(lengths.sum()):
        raise AssertionError("token count mismatch")  # pragma: no cover
    return flat.hash(seed=7).to_numpy(), lengths


def ngram_hashes(texts: Sequence[str | None], n: int) -> tuple[np.ndarray, np.ndarray]:
    """(owner, hash): one row per word n-gram of each text, owner being the text's position.

    A text with at least n words has len - n + 1 grams; one with 1..n-1 words has one gram (its
    whole word sequence); an empty or null text has none. Grams of one text may repeat."""
    if not 1 <= n <= _MAX_N:
        raise ValueError(f"n must be between 1 and {_MAX_N}, got {n}")
    hashed, lengths = token_counts(texts)
    starts = np.zeros(len(lengths), dtype=np.int64)
    if len(lengths):
        np.cumsum(lengths[:-1], out=starts[1:])
    owners = np.arange(len(lengths), dtype=np.int64)

    # full windows: every start position p of a text with length >= n, p <= start + len - n
    windows = np.maximum(lengths - n + 1, 0)
    full_owner = np.repeat(owners, windows)
    first = np.repeat(starts, windows)
    offset = np.arange(full_owner.shape[0], dtype=np.int64) - np.repeat(
        np.cumsum(windows) - windows, windows
    )
    position = first + offset
    # The window hash at every flat position, by contiguous slices (no gathers), then the
    # positions whose window stays inside its text.
    span = max(hashed.shape[0] - n + 1, 0)
    every = np.zeros(span, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for t in range(n):
            every += hashed[t : t + span] * _C[t]
    acc = every[position]

    # short texts: one gram over the whole sequence, marked with its length
    short = np.nonzero((lengths > 0) & (lengths < n))[0]
    with np.errstate(over="ignore"):
        short_acc = lengths[short].astype(np.uint64) * _C[_MAX_N]
        for t in range(n - 1):
            alive = lengths[short] > t
            if not alive.any():
                break
            short_acc[alive] += hashed[starts[short[alive]] + t] * _C[t]

    owner = np.concatenate([full_owner, short])
    return owner, _mix(np.concatenate([acc, short_acc]))
