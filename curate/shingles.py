"""Shingles for MinHash: word or character n-grams of normalized text, hashed to uint64 and laid
out flat (one array for all texts plus row offsets), computed by NumPy passes over the texts'
UTF-8 bytes rather than by Python per token.

Normalization and tokens are those of `curate.text` (`match_key`, `words`):

- A pure-ASCII text is lowercased byte-wise: on ASCII, NFKC is the identity and casefold is
  lowercasing. Any other text goes through ``unicodedata.normalize("NFKC", t).casefold()``,
  which is `match_key` without its whitespace collapsing; whitespace is no part of any word
  token, so word tokens are unchanged (character shingles use `match_key` itself).
- A word token is a run of word characters (Python's ``\\w``: letters, numbers, underscore) or
  one character that is neither a word character nor whitespace, as in `words`. ASCII bytes are
  classed by comparisons; a non-ASCII character by Python's own `str.isalnum` / `str.isspace`,
  asked once per distinct code point of a chunk. tests/test_dedup.py checks the tokens against
  `words` on real and generated text.
- A character shingle is n consecutive characters of `match_key`.

A token's hash mixes its UTF-8 bytes, read 8 at a time, and its length (splitmix64's finalizer
between blocks); an n-gram's hash is a polynomial over its tokens' hashes mod 2^64, finished
with the same mixer. A text with fewer than n tokens is one shingle of all its tokens (so short
texts still get a signature); a text with no token has no shingle. Bump `SHINGLE_VERSION` when
any of this changes: cached signatures are keyed by it.

Why bytes and NumPy: Python's `re.findall` plus joining n-grams costs ~300 us for a 300-word
trace, Polars' `str.extract_all` ~40 ns a token; here the Python work per text is one
`normalize`/`casefold` call for non-ASCII texts only (bench/minhash_speed.py).
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import polars as pl
import pyarrow as pa

from curate.text import match_key

Unit = Literal["word", "char"]

SHINGLE_VERSION = "3"
_WHITESPACE_RUN = r"[\s\x1c-\x1f]+"  # Python's str.split() whitespace, as a Rust regex class
_BASE = np.uint64(0x9E3779B97F4A7C15)  # odd: multiplication by it is a bijection mod 2^64
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_LENGTH = np.uint64(0xD6E8FEB86659FD93)
_MASKS = np.array([(1 << (8 * k)) - 1 for k in range(8)] + [(1 << 64) - 1], dtype=np.uint64)
_SPACE, _WORD, _OTHER = np.uint8(0), np.uint8(1), np.uint8(2)


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
    texts = texts.cast(pl.String).fill_null("")
    collapsed = texts.str.to_lowercase().str.replace_all(_WHITESPACE_RUN, " ").str.strip_chars(" ")
    return _replace_non_ascii(texts, collapsed, match_key)


def _mix(values: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer, in place."""
    values ^= values >> np.uint64(30)
    values *= _MIX1
    values ^= values >> np.uint64(27)
    values *= _MIX2
    values ^= values >> np.uint64(31)
    return values


def _utf8(texts: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """The texts' UTF-8 bytes (followed by 16 zero bytes) and row offsets into them."""
    array = texts.to_arrow()
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    array = array.cast(pa.large_string())
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int64)
    offsets = offsets[array.offset : array.offset + len(array) + 1]
    data = array.buffers()[2]
    raw = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
    start, stop = int(offsets[0]), int(offsets[-1])
    padded = np.zeros(stop - start + 16, dtype=np.uint8)
    padded[: stop - start] = raw[start:stop]
    return padded, offsets - start


def _code_points(data: np.ndarray, leads: np.ndarray) -> np.ndarray:
    """The code point of the UTF-8 sequence starting at each of `leads`."""
    last = data.shape[0] - 1  # a sequence never runs past the end; clipping only guards reads
    b0 = data[leads].astype(np.int64)
    b1 = data[np.minimum(leads + 1, last)].astype(np.int64) & 0x3F
    b2 = data[np.minimum(leads + 2, last)].astype(np.int64) & 0x3F
    b3 = data[np.minimum(leads + 3, last)].astype(np.int64) & 0x3F
    two = ((b0 & 0x1F) << 6) | b1
    three = ((b0 & 0x0F) << 12) | (b1 << 6) | b2
    four = ((b0 & 0x07) << 18) | (b1 << 12) | (b2 << 6) | b3
    return np.where(b0 >= 0xF0, four, np.where(b0 >= 0xE0, three, two))


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
_POINTS: dict[int, tuple[int, bool]] = {}  # code point -> (class, changed by NFKC or casefold)


def _point(cp: int) -> tuple[int, bool]:
    known = _POINTS.get(cp)
    if known is None:
        ch = chr(cp)
        cls = _SPACE if ch.isspace() else _WORD if (ch.isalnum() or ch == "_") else _OTHER
        changes = (
            unicodedata.normalize("NFKC", ch) != ch
            or ch.casefold() != ch
            or unicodedata.combining(ch) != 0
            or cp in COMPOSING_STARTERS
        )
        known = _POINTS[cp] = (int(cls), changes)
    return known


@dataclass(frozen=True)
class _Bytes:
    """A chunk of texts as lowercased UTF-8 bytes, with what is known of its non-ASCII
    characters: where they start, their class, and which bytes continue a character."""

    padded: np.ndarray  # the bytes, then 16 zero bytes (so 8-byte reads never run off)
    offsets: np.ndarray  # row offsets into the bytes
    leads: np.ndarray  # offsets of non-ASCII characters
    lead_class: np.ndarray  # their class
    unstable: np.ndarray  # offsets of characters that folding would change or may compose
    continuation: np.ndarray | None  # None when every byte is ASCII

    @property
    def text(self) -> np.ndarray:
        return self.padded[: int(self.offsets[-1])]

    @classmethod
    def of(cls, texts: pl.Series) -> _Bytes:
        padded, offsets = _utf8(texts)
        text = padded[: int(offsets[-1])]
        text += ((text - np.uint8(65)) < 26).view(np.uint8) << 5  # ASCII lowercase
        none = np.empty(0, dtype=np.int64)
        high = text >= 0x80
        if not high.any():
            return cls(padded, offsets, none, none.astype(np.uint8), none, None)
        continuation = (text & 0xC0) == 0x80
        leads = np.flatnonzero(high & ~continuation)
        distinct, inverse = np.unique(_code_points(text, leads), return_inverse=True)
        props = np.array([_point(cp) for cp in distinct.tolist()], dtype=np.int64).reshape(-1, 2)
        unstable = leads[props[inverse, 1].astype(bool)]
        lead_class = props[inverse, 0].astype(np.uint8)
        return cls(padded, offsets, leads, lead_class, unstable, continuation)


def _classes(chunk: _Bytes) -> np.ndarray:
    """Class of each byte: 0 space, 1 word, 2 other; a multi-byte character's bytes all get
    its class."""
    text = chunk.text
    word = ((text - np.uint8(97)) < 26) | ((text - np.uint8(48)) < 10) | (text == 95)
    space = (text == 32) | ((text - np.uint8(9)) < 5) | ((text - np.uint8(28)) < 4)
    cls = word.view(np.uint8) | ((~(word | space)).view(np.uint8) << 1)
    if chunk.continuation is not None:
        cls[chunk.leads] = chunk.lead_class
        follow = np.flatnonzero(chunk.continuation)
        if follow.size:
            leads = chunk.leads
            owner = leads[np.maximum(np.searchsorted(leads, follow, side="right") - 1, 0)]
            cls[follow] = cls[owner]
    return cls


def _load8(words64: np.ndarray, at: np.ndarray) -> np.ndarray:
    """The 8 bytes starting at each byte offset `at`, little-endian, from aligned words."""
    q = at >> 3
    shift = ((at & 7) << 3).astype(np.uint64)
    # (x << 1) << (63 - shift) is x << (64 - shift) without a shift by 64 when shift is 0
    high = (words64[q + 1] << np.uint64(1)) << (np.uint64(63) - shift)
    high |= words64[q] >> shift
    return high


def _hash_spans(padded: np.ndarray, first: np.ndarray, last: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each byte span padded[first:last + 1]: its first 8 bytes and its
    length, plus, for longer spans, every further 8-byte block salted with its position."""
    size = padded.shape[0] - 16
    words64 = padded[: (size // 8 + 2) * 8].view(np.uint64)
    length = (last - first + 1).astype(np.uint64)
    hashes = _load8(words64, first) & _MASKS[np.minimum(length, np.uint64(8))]
    hashes ^= length * _LENGTH
    _mix(hashes)
    longer = np.flatnonzero(length > 8)
    if longer.size:  # all further blocks of all long spans in one pass
        blocks = ((length[longer] - np.uint64(1)) >> np.uint64(3)).astype(np.int64)
        owner = np.repeat(np.arange(longer.size), blocks)
        ends = np.cumsum(blocks)
        k = np.arange(ends[-1], dtype=np.int64) - np.repeat(ends - blocks, blocks) + 1
        at = first[longer][owner] + 8 * k
        left = length[longer][owner] - (8 * k).astype(np.uint64)
        words = _load8(words64, at) & _MASKS[np.minimum(left, np.uint64(8))]
        words ^= k.astype(np.uint64) * _BASE
        _mix(words)
        hashes[longer] += np.add.reduceat(words, ends - blocks)
    return _mix(hashes)


def token_hashes(texts: pl.Series, unit: Unit) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of each row's tokens (words of `curate.text.words`, or characters of
    `match_key` for unit "char"), flat, and the number of tokens per row."""
    texts = texts.cast(pl.String).fill_null("")
    if unit == "char":
        texts = match_keys(texts)
    chunk = _Bytes.of(texts)
    if unit == "word" and chunk.unstable.size:
        # rows holding characters that NFKC or casefold change: fold them in Python
        rows = np.unique(np.searchsorted(chunk.offsets, chunk.unstable, side="right") - 1)
        folded = [_fold(t) for t in texts.gather(rows).to_list()]
        chunk = _Bytes.of(texts.scatter(rows, pl.Series(folded, dtype=pl.String)))
    text, offsets, continuation = chunk.text, chunk.offsets, chunk.continuation
    size = text.shape[0]
    if unit == "char":
        start = np.ones(size, dtype=bool) if continuation is None else ~continuation
        end = np.ones(size, dtype=bool)
        if continuation is not None and size:
            end[:-1] = ~continuation[1:]
    else:
        nonempty = offsets[1:] > offsets[:-1]
        cls = _classes(chunk)
        word = cls == _WORD
        other = cls == _OTHER
        before = np.zeros(size, dtype=bool)
        before[1:] = word[:-1]
        before[offsets[:-1][nonempty]] = False
        after = np.zeros(size, dtype=bool)
        after[:-1] = word[1:]
        after[offsets[1:][nonempty] - 1] = False
        start = other | (word & ~before)
        end = other | (word & ~after)
        if continuation is not None:
            start &= ~continuation
            end[:-1] &= ~continuation[1:]
    first = np.flatnonzero(start)
    last = np.flatnonzero(end)
    counts = np.diff(np.searchsorted(first, offsets)).astype(np.int64)
    return _hash_spans(chunk.padded, first, last), counts


def ngram_hashes(token_hashes: np.ndarray, lengths: np.ndarray, n: int) -> Shingles:
    """Hashes of the token n-grams of each row, from the rows' token hashes laid out flat
    (`lengths[k]` tokens for row k). A row with 1..n-1 tokens gets one shingle of all of them."""
    if n < 1:
        raise ValueError(f"ngram must be >= 1, got {n}")
    lengths = np.asarray(lengths, dtype=np.int64)
    rows = lengths.shape[0]
    starts = np.zeros(rows + 1, dtype=np.int64)
    np.cumsum(lengths, out=starts[1:])
    total = int(starts[-1])
    tokens = np.asarray(token_hashes, dtype=np.uint64)
    if tokens.shape[0] != total:
        raise ValueError(f"{tokens.shape[0]} token hashes for rows holding {total} tokens")
    short = (lengths > 0) & (lengths < n)
    short_hash = np.zeros(rows, dtype=np.uint64)
    first_pos = np.minimum(starts[:-1], max(total - 1, 0))
    rolled = tokens.copy()  # after step k, rolled[p] covers tokens p..p+k
    for k in range(n):
        if k and total > k:
            window = rolled[: total - k]
            window *= _BASE
            window += tokens[k:]
        ending = short & (lengths == k + 1)
        if ending.any():
            short_hash[ending] = rolled[first_pos[ending]]
    long_rows = lengths >= n
    counts = np.where(long_rows, lengths - n + 1, short.astype(np.int64))
    offsets = np.zeros(rows + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    if not short.any():  # the common case: every shingle comes from a full window
        if n == 1:
            return Shingles(hashes=_mix(rolled), offsets=offsets)
        valid = np.ones(total, dtype=bool)
        tail = np.repeat(starts[1:][long_rows], n - 1) - np.tile(
            np.arange(n - 1, 0, -1, dtype=np.int64), int(long_rows.sum())
        )
        valid[tail] = False
        return Shingles(hashes=_mix(rolled[valid]), offsets=offsets)
    out = np.empty(int(offsets[-1]), dtype=np.uint64)
    if total:
        position = np.arange(total, dtype=np.int64) - np.repeat(starts[:-1], lengths)
        valid = position <= np.repeat(lengths - n, lengths)
        from_long = np.repeat(long_rows, counts)
        out[from_long] = rolled[valid]
        out[~from_long] = short_hash[short]
    return Shingles(hashes=_mix(out), offsets=offsets)


def shingle_hashes(texts: pl.Series, *, unit: Unit, n: int) -> Shingles:
    """Word or character n-gram hashes of each text (see the module docstring)."""
    if unit not in ("word", "char"):
        raise ValueError(f"shingle must be 'word' or 'char', got {unit!r}")
    hashes, counts = token_hashes(texts, unit)
    return ngram_hashes(hashes, counts, n)
