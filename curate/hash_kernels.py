"""Compiled kernels behind curate.shingles and curate.minhash: word and character tokens of UTF-8
text and their hashes, token n-gram hashes, and one-permutation MinHash signatures with optimal
densification. The definitions (what a token is, how it is hashed, how a signature is made) are
the modules' docstrings; this module only runs them.

Why numba: the tokenizer walks bytes with branches (word runs, multi-byte characters), which
NumPy can only do as a dozen whole-array passes (100-140 ns per token, bench/minhash_speed.py);
compiled, it is one pass (about 15 ns per token on the 2-core machine of bench/README.md). numba
ships wheels (no compiler at install time) and compiles each kernel once per machine:
`cache=True` keeps the machine code in `__pycache__` beside this file, or, where that folder is
not writable (a read-only install), in the user's cache folder (numba's own fallback;
`NUMBA_CACHE_DIR` overrides both); where neither is writable, `kernel` compiles in each process.
Compiling all kernels takes about 5 s (2.5 s for those `sign_texts` uses); with the cache, the
first call in a process costs about 0.5 s (numba's import and start-up). numba is imported only
when something is shingled or signed. Every kernel releases the GIL (`nogil`), so
`curate.minhash.sign_texts` runs chunks on threads.

Arithmetic is on uint64 and wraps mod 2^64 as in NumPy; every constant is a NumPy uint64 so
numba never promotes a mixed signed/unsigned expression to float.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from numba import njit

BASE = np.uint64(0x9E3779B97F4A7C15)  # odd: multiplication by it is a bijection mod 2^64
MIX1 = np.uint64(0xBF58476D1CE4E5B9)
MIX2 = np.uint64(0x94D049BB133111EB)
LENGTH = np.uint64(0xD6E8FEB86659FD93)
EMPTY = np.uint32(0xFFFFFFFF)
SPACE, WORD, OTHER = 0, 1, 2
# class of each ASCII byte, by Python's own rules: str.isspace, then str.isalnum or "_"
ASCII_CLASS = np.array(
    [
        SPACE if chr(b).isspace() else WORD if (chr(b).isalnum() or b == 95) else OTHER
        for b in range(128)
    ],
    dtype=np.uint8,
)
# each byte with ASCII A-Z lowercased, as uint64
LOWER = np.array([b + 32 if 65 <= b <= 90 else b for b in range(256)], dtype=np.uint64)
_LOW32 = np.uint64(0xFFFFFFFF)
_U8, _U27, _U30, _U31, _U32 = (np.uint64(k) for k in (8, 27, 30, 31, 32))


def kernel(function: Callable[..., Any]) -> Any:
    """numba's `njit`, releasing the GIL, with the machine code cached on disk where numba
    finds a writable folder; where it finds none (a read-only install and no writable home),
    numba refuses `cache=True` outright, so the kernel is compiled in each process instead."""
    try:
        return njit(cache=True, nogil=True)(function)
    except RuntimeError:
        return njit(nogil=True)(function)


@kernel
def mix(x: np.uint64) -> np.uint64:
    """splitmix64's finalizer."""
    x ^= x >> _U30
    x *= MIX1
    x ^= x >> _U27
    x *= MIX2
    x ^= x >> _U31
    return x


@kernel
def _char_bytes(lead: int) -> int:
    if lead < 0x80:
        return 1
    if lead < 0xE0:
        return 2
    if lead < 0xF0:
        return 3
    return 4


@kernel
def tokens(
    data: np.ndarray, offsets: np.ndarray, lead_class: np.ndarray, every_char: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of the tokens of each row data[offsets[r]:offsets[r + 1]], flat, and the count
    per row. A token is a run of word characters or one character that is neither word nor
    space; with `every_char`, every character (UTF-8 sequence) is one. `lead_class` is the
    class of each non-ASCII character of `data`, in order (unused with `every_char`).

    A token's hash: its first 8 bytes (ASCII lowercased, little-endian) xor its length times
    LENGTH, mixed; plus, for each further 8-byte block k, the block xor k * BASE, mixed; then
    mixed again. The first block of an ASCII token is gathered while its run is scanned; longer
    or non-ASCII tokens are read again. Everything is inline: a call that passes an array costs
    a reference count update, more than the hash."""
    rows = offsets.shape[0] - 1
    out = np.empty(max(offsets[rows] - offsets[0], 0), dtype=np.uint64)
    counts = np.zeros(rows, dtype=np.int64)
    t = 0
    lead = 0  # the next non-ASCII character's index in lead_class
    for r in range(rows):
        i = offsets[r]
        stop = offsets[r + 1]
        before = t
        while i < stop:
            first = i
            b = data[i]
            ascii = b < 0x80
            if ascii:
                cls = OTHER if every_char else ASCII_CLASS[b]
                i += 1
            else:
                cls = OTHER if every_char else lead_class[lead]
                lead += 1
                i += _char_bytes(b)
            if cls == SPACE:
                continue
            block = LOWER[b]
            if cls == WORD:  # the run goes on to the next character that is not a word one
                while i < stop:
                    b = data[i]
                    if b < 0x80:
                        if ASCII_CLASS[b] != WORD:
                            break
                        if i - first < 8:
                            block |= LOWER[b] << (_U8 * np.uint64(i - first))
                        i += 1
                    else:
                        if lead_class[lead] != WORD:
                            break
                        lead += 1
                        i += _char_bytes(b)
                        ascii = False
            length = i - first
            if ascii and length <= 8:
                out[t] = mix(mix(block ^ (np.uint64(length) * LENGTH)))
                t += 1
                continue
            h = np.uint64(0)
            k = 0
            while True:  # block k of the token, up to 8 bytes
                at = first + 8 * k
                block = np.uint64(0)
                for j in range(min(8, i - at)):
                    block |= LOWER[data[at + j]] << (_U8 * np.uint64(j))
                if k == 0:
                    h = mix(block ^ (np.uint64(length) * LENGTH))
                else:
                    h += mix(block ^ (np.uint64(k) * BASE))
                k += 1
                if 8 * k >= length:
                    break
            out[t] = mix(h)
            t += 1
        counts[r] = t - before
    return out[:t], counts


@kernel
def _power(n: int) -> np.uint64:
    top = np.uint64(1)
    for _ in range(n - 1):
        top *= BASE
    return top


@kernel
def _first_window(tokens: np.ndarray, at: int, size: int) -> np.uint64:
    """The polynomial t0 * BASE^(size-1) + ... + t(size-1) of tokens[at:at + size]."""
    h = tokens[at]
    for k in range(1, size):
        h = h * BASE + tokens[at + k]
    return h


@kernel
def shingle_counts(counts: np.ndarray, n: int) -> np.ndarray:
    """Shingles per row from tokens per row: count - n + 1, or 1 for 1..n-1 tokens."""
    out = np.zeros(counts.shape[0], dtype=np.int64)
    for r in range(counts.shape[0]):
        m = counts[r]
        out[r] = m - n + 1 if m >= n else (1 if m > 0 else 0)
    return out


@kernel
def ngrams(tokens: np.ndarray, counts: np.ndarray, n: int) -> np.ndarray:
    """Hashes of the token n-grams of each row, flat: the polynomial of each window of n
    tokens (rolled from the previous window), or of all tokens of a row with 1..n-1, mixed."""
    sizes = shingle_counts(counts, n)
    out = np.empty(sizes.sum(), dtype=np.uint64)
    top = _power(n)
    pos = 0
    o = 0
    for r in range(counts.shape[0]):
        m = counts[r]
        if 0 < m < n:
            out[o] = mix(_first_window(tokens, pos, m))
        elif m >= n:
            h = _first_window(tokens, pos, n)
            out[o] = mix(h)
            for p in range(1, m - n + 1):
                h = (h - tokens[pos + p - 1] * top) * BASE + tokens[pos + p + n - 1]
                out[o + p] = mix(h)
        pos += m
        o += sizes[r]
    return out


@kernel
def _densify(row: np.ndarray, filled: np.ndarray, order: np.ndarray) -> None:
    """Each empty slot j takes the value of the first filled slot in order[j]."""
    for j in range(row.shape[0]):
        if filled[j]:
            continue
        for step in range(order.shape[1]):
            source = order[j, step]
            if filled[source]:
                row[j] = row[source]
                break


@kernel
def sign_shingles(
    hashes: np.ndarray, counts: np.ndarray, key: np.uint64, order: np.ndarray
) -> np.ndarray:
    """Densified one-permutation MinHash of each row's shingle hashes (rows with none: all
    slots EMPTY)."""
    num_perm = order.shape[0]
    sig = np.full((counts.shape[0], num_perm), EMPTY, dtype=np.uint32)
    filled = np.zeros(num_perm, dtype=np.bool_)
    pos = 0
    for r in range(counts.shape[0]):
        m = counts[r]
        if m == 0:
            continue
        row = sig[r]
        filled[:] = False
        for k in range(pos, pos + m):
            keyed = mix(hashes[k] ^ key)
            slot = np.int64(((keyed >> _U32) * np.uint64(num_perm)) >> _U32)
            row[slot] = min(row[slot], np.uint32(keyed & _LOW32))
            filled[slot] = True
        _densify(row, filled, order)
        pos += m
    return sig


@kernel
def sign_tokens(
    tokens: np.ndarray, counts: np.ndarray, n: int, key: np.uint64, order: np.ndarray
) -> np.ndarray:
    """`sign_shingles` of `ngrams(tokens, counts, n)` without making the shingle array."""
    num_perm = order.shape[0]
    sig = np.full((counts.shape[0], num_perm), EMPTY, dtype=np.uint32)
    filled = np.zeros(num_perm, dtype=np.bool_)
    top = _power(n)
    pos = 0
    for r in range(counts.shape[0]):
        m = counts[r]
        if m == 0:
            continue
        row = sig[r]
        filled[:] = False
        size = min(m, n)  # a row of 1..n-1 tokens is one shingle of all of them
        h = _first_window(tokens, pos, size)
        for p in range(max(m - n + 1, 1)):
            if p:
                h = (h - tokens[pos + p - 1] * top) * BASE + tokens[pos + p + n - 1]
            # the shingle's seeded hash: its top bits pick the slot, its low 32 bits are the
            # value, and the slot keeps its minimum (inline: see `tokens`)
            keyed = mix(mix(h) ^ key)
            slot = np.int64(((keyed >> _U32) * np.uint64(num_perm)) >> _U32)
            row[slot] = min(row[slot], np.uint32(keyed & _LOW32))
            filled[slot] = True
        _densify(row, filled, order)
        pos += m
    return sig


@kernel
def sorted_sets(hashes: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's hashes sorted with repeats removed, flat, and the new row offsets."""
    rows = offsets.shape[0] - 1
    out = np.empty(hashes.shape[0], dtype=np.uint64)
    bounds = np.zeros(rows + 1, dtype=np.int64)
    o = 0
    for r in range(rows):
        values = np.sort(hashes[offsets[r] : offsets[r + 1]])
        for k in range(values.shape[0]):
            if k == 0 or values[k] != values[k - 1]:
                out[o] = values[k]
                o += 1
        bounds[r + 1] = o
    return out[:o], bounds


@kernel
def pair_jaccard(sets: np.ndarray, bounds: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The Jaccard similarity of rows a[k] and b[k] of `sorted_sets` output (0 when both are
    empty), by merging the two sorted rows."""
    out = np.zeros(a.shape[0], dtype=np.float64)
    for k in range(a.shape[0]):
        i, i_stop = bounds[a[k]], bounds[a[k] + 1]
        j, j_stop = bounds[b[k]], bounds[b[k] + 1]
        union = (i_stop - i) + (j_stop - j)
        shared = 0
        while i < i_stop and j < j_stop:
            x = sets[i]
            y = sets[j]
            if x == y:
                shared += 1
            if x <= y:
                i += 1
            if y <= x:
                j += 1
        union -= shared
        if union > 0:
            out[k] = shared / union
    return out


@kernel
def band_keys(sig: np.ndarray, rows: int, bands: int, salt: np.ndarray) -> np.ndarray:
    """keys[b, r]: a 64-bit hash of row r's slots b * rows .. (b + 1) * rows - 1 (the
    polynomial of the slots over BASE, from the row's salt, mixed); keys[bands, r]: of the
    band keys and then the slots no band uses, the same way: equal for equal signatures."""
    n, width = sig.shape
    keys = np.empty((bands + 1, n), dtype=np.uint64)
    for r in range(n):
        whole = salt[r]
        for b in range(bands):
            key = salt[r]
            for c in range(b * rows, (b + 1) * rows):
                key = key * BASE + np.uint64(sig[r, c])
            key = mix(key)
            keys[b, r] = key
            whole = whole * BASE + key
        for c in range(bands * rows, width):
            whole = whole * BASE + np.uint64(sig[r, c])
        keys[bands, r] = mix(whole)
    return keys
