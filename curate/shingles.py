"""Shingles for MinHash: word or character n-grams of normalized text, hashed to uint64 and laid
out flat (one array for all texts plus row offsets), computed by compiled kernels
(curate.hash_kernels) over the texts' UTF-8 bytes rather than by Python per token.

Normalization and tokens are those of `curate.text` (`match_key`, `words`):

- A pure-ASCII text is lowercased byte-wise: on ASCII, NFKC is the identity and casefold is
  lowercasing. Any other text goes through ``unicodedata.normalize("NFKC", t).casefold()``,
  which is `match_key` without its whitespace collapsing; whitespace is no part of any word
  token, so word tokens are unchanged (character shingles use `match_key` itself). Only the
  runs of non-ASCII characters holding one that NFKC or casefold would change (or that may
  compose with the one before it) are folded in Python, which gives the same text
  (`_fold_runs`); the rest go to the kernel as they are.
- A word token is a run of word characters (Python's ``\\w``: letters, numbers, underscore) or
  one character that is neither a word character nor whitespace, as in `words`. ASCII bytes are
  classed by a table made from Python's `str.isspace` / `str.isalnum`; a non-ASCII character by
  Python's own `str.isalnum` / `str.isspace`, asked once per distinct code point.
  tests/test_dedup.py checks the tokens against `words` on real and generated text.
- A character shingle is n consecutive characters of `match_key`.

A token's hash mixes its UTF-8 bytes, read 8 at a time, and its length (splitmix64's finalizer
between blocks); an n-gram's hash is a polynomial over its tokens' hashes mod 2^64, finished
with the same mixer. A text with fewer than n tokens is one shingle of all its tokens (so short
texts still get a signature); a text with no token has no shingle. Bump `SHINGLE_VERSION` when
any of this changes: cached signatures are keyed by it. tests/test_minhash_kernels.py checks
the kernels against a plain-Python statement of these rules on generated Unicode text.

Why compiled code: Python's `re.findall` plus joining n-grams costs ~300 us for a 300-word
trace, Polars' `str.extract_all` ~40 ns a token before any hashing, and these rules as NumPy
whole-array passes cost 100-140 ns a token; the kernel walks the bytes once, about 15 ns a token
with its hash (bench/minhash_speed.py). Python still folds the few texts that need it and looks
up each non-ASCII code point once per process.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import polars as pl

from curate.filters.utf8 import as_text, utf8_buffers
from curate.text import match_key

Unit = Literal["word", "char"]

SHINGLE_VERSION = "3"
_WHITESPACE_RUN = r"[\s\x1c-\x1f]+"  # Python's str.split() whitespace, as a Rust regex class
_SPACE, _WORD, _OTHER = 0, 1, 2  # the classes of curate.hash_kernels


@dataclass(frozen=True)
class Shingles:
    """Shingle hashes of n texts: row k's are hashes[offsets[k]:offsets[k+1]]."""

    hashes: np.ndarray  # uint64
    offsets: np.ndarray  # int64, length n + 1

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)


def shingle_settings(unit: Unit, n: int) -> dict[str, Any]:
    """What determines the shingle hashes of a text (part of the signature cache key)."""
    return {
        "shingle": unit,
        "ngram": n,
        "normalization": "curate.text.match_key",
        "shingle_version": SHINGLE_VERSION,
    }


def _fold(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


def _replace_non_ascii(texts: pl.Series, replaced: pl.Series, fn: Any) -> pl.Series:
    """`replaced`, with each non-ASCII row set to `fn` of the original text."""
    todo = (texts.str.len_bytes() != texts.str.len_chars()).arg_true()
    if todo.len() == 0:
        return replaced
    values = [fn(t) for t in texts.gather(todo).to_list()]
    return replaced.scatter(todo, pl.Series(values, dtype=pl.String))


def match_keys(texts: pl.Series) -> pl.Series:
    """`curate.text.match_key` of every row (nulls become ""); ASCII rows in Polars."""
    texts = as_text(texts)
    collapsed = texts.str.to_lowercase().str.replace_all(_WHITESPACE_RUN, " ").str.strip_chars(" ")
    return _replace_non_ascii(texts, collapsed, match_key)


# Characters of combining class 0 that canonical composition can join to the character before
# them (the second half of a two-character canonical decomposition), plus the Hangul vowel and
# trailing jamo. Every other such second half has a non-zero combining class. The set is fixed
# by Unicode's normalization stability policy for encoded characters; tests/test_dedup.py
# recomputes it from the running Python's unicodedata.
COMPOSING_STARTERS = frozenset(
    [
        *(0x9BE, 0x9D7, 0xB3E, 0xB56, 0xB57, 0xBBE, 0xBD7, 0xCC2, 0xCD5, 0xCD6, 0xD3E, 0xD57),
        *(0xDCF, 0xDDF, 0xFB5, 0xFB7, 0x102E, 0x1B35, 0x11127, 0x1133E, 0x11357, 0x114B0),
        *(0x114BA, 0x114BD, 0x115AF, 0x11930),
        *range(0x1161, 0x1176),
        *range(0x11A8, 0x11C3),
    ]
)
# What is known of each code point met so far: its class plus 4 if NFKC or casefold would change
# it (or it may compose with the character before it); -1 not looked up yet. Filled from
# Python's unicodedata on first sight; concurrent fills write the same values.
_POINTS = np.full(0x110000, -1, dtype=np.int8)


def _describe(cp: int) -> int:
    ch = chr(cp)
    cls = _SPACE if ch.isspace() else _WORD if (ch.isalnum() or ch == "_") else _OTHER
    changes = (
        unicodedata.normalize("NFKC", ch) != ch
        or ch.casefold() != ch
        or unicodedata.combining(ch) != 0
        or cp in COMPOSING_STARTERS
    )
    return cls + 4 * changes


def _points(points: np.ndarray) -> np.ndarray:
    """`_describe` of each code point, from the table."""
    known = _POINTS[points]
    new = np.unique(points[known < 0])
    if new.size:
        _POINTS[new] = [_describe(cp) for cp in new.tolist()]
        known = _POINTS[points]
    return known


@dataclass(frozen=True)
class Encoded:
    """Texts as UTF-8 bytes, ready for the tokenizer kernels: row k is
    data[offsets[k]:offsets[k+1]]; `lead_class` is the class (space, word, other) of each
    non-ASCII character in order (word tokens only)."""

    data: np.ndarray  # uint8
    offsets: np.ndarray  # int64, from 0
    lead_class: np.ndarray  # uint8


def _non_ascii(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The byte offset and the code point of every non-ASCII character of UTF-8 `data`."""
    if data.shape[0] == 0 or data.max() < 0x80:
        none = np.empty(0, dtype=np.int64)
        return none, none
    at = np.flatnonzero(data >= 0xC0)  # lead bytes of multi-byte sequences
    last = data.shape[0] - 1  # a sequence never runs past the end; clipping only guards reads
    b0 = data[at].astype(np.int64)
    b1 = data[np.minimum(at + 1, last)].astype(np.int64) & 0x3F
    b2 = data[np.minimum(at + 2, last)].astype(np.int64) & 0x3F
    b3 = data[np.minimum(at + 3, last)].astype(np.int64) & 0x3F
    two = ((b0 & 0x1F) << 6) | b1
    three = ((b0 & 0x0F) << 12) | (b1 << 6) | b2
    four = ((b0 & 0x07) << 18) | (b1 << 12) | (b2 << 6) | b3
    return at, np.where(b0 >= 0xF0, four, np.where(b0 >= 0xE0, three, two))


def encode(texts: pl.Series, unit: Unit) -> Encoded:
    """`texts` (nulls as "") as the tokenizer kernels take them: `match_key` of each for
    character shingles; for words, the runs of characters that NFKC or casefold would change
    folded in Python (`_fold_runs`), and the class of every non-ASCII character looked up."""
    texts = as_text(texts)
    none = np.empty(0, dtype=np.uint8)
    if unit == "char":
        offsets, data = utf8_buffers(match_keys(texts))
        return Encoded(data, offsets, none)
    offsets, data = utf8_buffers(texts)
    at, points = _non_ascii(data)
    if points.size == 0:
        return Encoded(data, offsets, none)
    props = _points(points)
    unstable = at[props >= 4]
    if unstable.size:
        data, offsets = _fold_runs(data, offsets, unstable)
        at, points = _non_ascii(data)
        props = _points(points)
    return Encoded(data, offsets, (props & 3).astype(np.uint8))


def _fold_runs(
    data: np.ndarray, offsets: np.ndarray, unstable: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """UTF-8 `data` with `_fold` applied to each run of non-ASCII characters (within a row)
    that holds a character at a byte offset in `unstable`, together with the character just
    before the run: the bytes and row offsets of each row's `_fold`.

    Folding runs rather than whole rows gives the same text: an ASCII character is never
    changed by NFKC (beyond what the tokenizer's lowercasing does) nor combined with a
    character before it, so NFKC can be applied piece by piece between ASCII characters; a
    run of characters that neither NFKC nor casefold change, none of which composes with the
    one before it, is left as it is by both; and casefold maps each character on its own. The
    character before a run is folded with it because the run's first character may compose
    with it. On real traces a few superscripts, subscripts or capital Greek letters make a
    text unstable; folding whole texts cost more than tokenizing them."""
    raw = data.tobytes()
    bounds = offsets.tolist()
    pieces: list[bytes] = []
    starts: list[int] = []
    growth: list[int] = []
    done = 0  # bytes of raw copied into pieces
    rows = np.searchsorted(offsets, unstable, side="right") - 1
    for at, row in zip(unstable.tolist(), rows.tolist(), strict=True):
        if at < done:  # in a run already folded
            continue
        first, stop = bounds[row], bounds[row + 1]
        lo = at
        while lo > first and raw[lo - 1] >= 0x80:
            lo -= 1
        if lo > first:  # the character before the run: ASCII
            lo -= 1
        hi = at
        while hi < stop and raw[hi] >= 0x80:
            hi += 1
        folded = _fold(raw[lo:hi].decode()).encode()
        pieces += [raw[done:lo], folded]
        starts.append(lo)
        growth.append(len(folded) - (hi - lo))
        done = hi
    pieces.append(raw[done:])
    shift = np.concatenate([[0], np.cumsum(growth)])
    new_offsets = offsets + shift[np.searchsorted(np.asarray(starts), offsets, side="left")]
    return np.frombuffer(b"".join(pieces), dtype=np.uint8), new_offsets.astype(np.int64)


def tokenize(encoded: Encoded, unit: Unit) -> tuple[np.ndarray, np.ndarray]:
    """The token hashes of encoded texts, flat, and the number of tokens per row."""
    from curate import hash_kernels

    tokens, counts = hash_kernels.tokens(
        encoded.data, encoded.offsets, encoded.lead_class, unit == "char"
    )
    return tokens, counts


def token_hashes(texts: pl.Series, unit: Unit) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of each row's tokens (words of `curate.text.words`, or characters of
    `match_key` for unit "char"), flat, and the number of tokens per row."""
    return tokenize(encode(texts, unit), unit)


def ngram_hashes(token_hashes: np.ndarray, lengths: np.ndarray, n: int) -> Shingles:
    """Hashes of the token n-grams of each row, from the rows' token hashes laid out flat
    (`lengths[k]` tokens for row k). A row with 1..n-1 tokens gets one shingle of all of them."""
    from curate import hash_kernels

    if n < 1:
        raise ValueError(f"ngram must be >= 1, got {n}")
    lengths = np.ascontiguousarray(lengths, dtype=np.int64)
    tokens = np.ascontiguousarray(token_hashes, dtype=np.uint64)
    total = int(lengths.sum())
    if tokens.shape[0] != total:
        raise ValueError(f"{tokens.shape[0]} token hashes for rows holding {total} tokens")
    offsets = np.zeros(lengths.shape[0] + 1, dtype=np.int64)
    np.cumsum(hash_kernels.shingle_counts(lengths, n), out=offsets[1:])
    return Shingles(hashes=hash_kernels.ngrams(tokens, lengths, n), offsets=offsets)


def shingle_hashes(texts: pl.Series, *, unit: Unit, n: int) -> Shingles:
    """Word or character n-gram hashes of each text (see the module docstring)."""
    if unit not in ("word", "char"):
        raise ValueError(f"shingle must be 'word' or 'char', got {unit!r}")
    hashes, counts = token_hashes(texts, unit)
    return ngram_hashes(hashes, counts, n)
