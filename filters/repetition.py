"""Repeated n-grams, found for a whole column at once: the kernel of the `quality` operator's
`repetition` check.

Tokens are whitespace-separated, exactly as Python's ``str.split()`` splits (the 29 characters
``str.isspace()`` accepts, Unicode spaces included), case and punctuation kept: a degenerate
loop repeats its text verbatim, so normalization would buy nothing, and LaTeX or code keep their
own tokens. An n-gram is n consecutive tokens of one text; its count is the number of positions
it starts at, overlaps included (so 40 copies of one token hold 21 copies of its 20-gram).

How it stays cheap (no Python loop per row or per token):

1. The texts' UTF-8 bytes are taken from Arrow in one buffer; every whitespace byte (and each
   multi-byte Unicode space) is replaced by an ASCII space, so Polars can split on " " alone
   (a literal split: cheaper than a regex `extract_all`) and hash the tokens.
2. The hash of every window of n tokens comes from one prefix sum: with token hashes h and an
   odd base B, ``S[i] = sum(h[k] * B**k, k < i)`` (mod 2**64), and the window starting at i is
   ``(S[i + n] - S[i]) * B**-i`` (B is odd, so it has an inverse mod 2**64). That is a few NumPy
   passes whatever n is.
3. Windows are keyed by (row, top bits of the window hash) in one uint64, sorted, and the runs
   of equal keys counted. Equal n-grams always get equal keys, so no repetition is missed; two
   different n-grams of one text are counted together only if their hashes agree on the top
   64 - b bits, b being the bits that number a chunk's rows (11 for a chunk of ~1,300 traces,
   leaving 53 bits).
   The reported n-gram (ties: the one that appears first) is read back from its first place.

Texts are processed in chunks of about CHUNK_BYTES of UTF-8 (see curate.filters.utf8 for why
that is small).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from curate.filters.utf8 import CHUNK_BYTES, as_text, chunk_rows, from_buffers, utf8_buffers

# The characters str.isspace() accepts (tests/test_repetition.py checks this list).
WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
    "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)

_U64 = np.uint64
_BASE = 0x9E3779B97F4A7C15  # odd: invertible mod 2**64
_INVERSE = pow(_BASE, -1, 2**64)

_TO_SPACE = np.arange(256, dtype=np.uint8)
for _char in WHITESPACE:
    if ord(_char) < 0x80:
        _TO_SPACE[ord(_char)] = 0x20
_MULTIBYTE = [c.encode() for c in WHITESPACE if ord(c) >= 0x80]  # 2 or 3 bytes each
_LEADS = sorted({seq[0] for seq in _MULTIBYTE})


@dataclass(frozen=True)
class Repetition:
    """The most repeated n-gram of one text: its row, its tokens joined by spaces, its count."""

    row: int
    ngram: str
    count: int


def find_repetitions(
    texts: pl.Series, *, n: int, max_repeats: int, chunk_bytes: int = CHUNK_BYTES
) -> list[Repetition]:
    """Rows (0-based, in order) whose most repeated n-gram starts at more than `max_repeats`
    positions. A null text has no tokens. Rows are processed about `chunk_bytes` at a time."""
    if n < 1 or max_repeats < 1:
        raise ValueError(f"n and max_repeats must be at least 1, got n={n}, max={max_repeats}")
    texts = as_text(texts)
    found: list[Repetition] = []
    for start, stop in chunk_rows(texts.str.len_bytes().to_numpy(), chunk_bytes):
        part = _chunk_repetitions(texts.slice(start, stop - start), n, max_repeats)
        found.extend(Repetition(start + r.row, r.ngram, r.count) for r in part)
    return found


def most_repeated(text: str, n: int) -> tuple[str, int]:
    """The most repeated n-gram of one text and its count, by plain Python (the reference the
    vectorized path is tested against; ties go to the n-gram that appears first)."""
    tokens = text.split()
    counts: dict[tuple[str, ...], int] = {}
    for i in range(len(tokens) - n + 1):
        gram = tuple(tokens[i : i + n])
        counts[gram] = counts.get(gram, 0) + 1
    if not counts:
        return "", 0
    best = max(counts.items(), key=lambda item: item[1])  # first maximum: earliest n-gram
    return " ".join(best[0]), best[1]


def _spaced(texts: pl.Series) -> pl.Series:
    """The texts with every whitespace character replaced by as many ASCII spaces as it has
    UTF-8 bytes (so offsets do not move): tokens are then the non-empty pieces between spaces."""
    offsets, raw = utf8_buffers(texts)
    if raw.size == 0:
        return texts
    data = np.take(_TO_SPACE, raw)
    leads = np.flatnonzero(raw >= _LEADS[0])
    if leads.size:
        padded = np.concatenate([raw, np.zeros(3, dtype=np.uint8)])
        for seq in _MULTIBYTE:
            at = leads[raw[leads] == seq[0]]
            for j in range(1, len(seq)):
                at = at[padded[at + j] == seq[j]]
            for j in range(len(seq)):
                data[at + j] = 0x20
    return from_buffers(texts.name, offsets, data)


def _powers(base: int, count: int) -> np.ndarray:
    out = np.empty(count, dtype=_U64)
    if count:
        out[0] = 1
        out[1:] = _U64(base)
        np.cumprod(out, out=out)  # wraps mod 2**64, as intended
    return out


def _chunk_repetitions(texts: pl.Series, n: int, max_repeats: int) -> list[Repetition]:
    rows = texts.len()
    pieces = _spaced(texts).str.split(" ")
    flat = pieces.explode()
    keep = np.flatnonzero((flat.str.len_bytes() > 0).to_numpy())
    row_of = np.repeat(np.arange(rows, dtype=np.int64), pieces.list.len().to_numpy())[keep]
    total = keep.size
    if total < n + max_repeats:  # too few tokens for any n-gram to occur max_repeats + 1 times
        return []
    with np.errstate(over="ignore"):
        hashes = flat.hash(seed=0).to_numpy()[keep]
        prefix = np.zeros(total + 1, dtype=_U64)
        np.cumsum(hashes * _powers(_BASE, total), out=prefix[1:])
        windows = (prefix[n:] - prefix[:-n]) * _powers(_INVERSE, total - n + 1)
    # A window is valid when its n tokens lie in one row: drop the last n - 1 starts of each row.
    valid = np.ones(total - n + 1, dtype=bool)
    ends = np.cumsum(np.bincount(row_of, minlength=rows))
    tail = (ends[:, None] - np.arange(1, n, dtype=np.int64)[None, :]).ravel()
    valid[tail[(tail >= 0) & (tail < valid.size)]] = False
    starts = np.flatnonzero(valid)
    row_bits = max(1, int(rows).bit_length())
    keys = (row_of[starts].astype(_U64) << _U64(64 - row_bits)) | (
        windows[starts] >> _U64(row_bits)
    )
    ordered = np.sort(keys)
    run_starts = np.flatnonzero(np.concatenate([[True], ordered[1:] != ordered[:-1]]))
    run_lengths = np.diff(np.append(run_starts, ordered.size))
    over = run_lengths > max_repeats
    if not over.any():
        return []
    run_keys, run_counts = ordered[run_starts[over]], run_lengths[over]
    run_rows = (run_keys >> _U64(64 - row_bits)).astype(np.int64)
    # First start of each such n-gram: `starts` ascend and the sort is stable, so the earliest
    # place of each key comes first; keys ascend as run_keys do, so the two line up.
    failing = np.zeros(rows, dtype=bool)
    failing[run_rows] = True
    near = np.flatnonzero(failing[row_of[starts]])  # windows of failing rows only
    slot = np.minimum(np.searchsorted(run_keys, keys[near]), run_keys.size - 1)
    hit = near[run_keys[slot] == keys[near]]
    by_key = hit[np.argsort(keys[hit], kind="stable")]
    first = starts[by_key[np.concatenate([[True], keys[by_key][1:] != keys[by_key][:-1]])]]
    # Per failing row, its most repeated n-gram; ties go to the one that appears first.
    order = np.lexsort((first, -run_counts, run_rows))
    top = order[np.concatenate([[True], run_rows[order][1:] != run_rows[order][:-1]])]
    top_rows, top_counts, positions = run_rows[top], run_counts[top], first[top]
    gather = keep[(positions[:, None] + np.arange(n, dtype=np.int64)[None, :]).ravel()]
    words = flat.gather(gather).to_list()
    return [
        Repetition(int(row), " ".join(words[i * n : (i + 1) * n]), int(count))
        for i, (row, count) in enumerate(zip(top_rows.tolist(), top_counts.tolist(), strict=True))
    ]
