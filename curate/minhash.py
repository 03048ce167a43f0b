"""MinHash signatures and LSH banding for near-duplicate search.

Signatures: one-permutation MinHash (OPH) with optimal densification (Shrivastava, ICML 2017),
our own compiled kernel (curate.hash_kernels). Each shingle hash (curate.shingles) is mixed with
the seed; its top bits pick one of `num_perm` slots and its low 32 bits are the value; a slot
keeps its minimum; an empty slot borrows the value of the first filled slot along a probe
sequence shared by all rows. Two rows agree in a slot with probability equal to their Jaccard
similarity, as with k independent permutations, at the cost of one hash per shingle instead of
k. `sign_texts` goes from text to signatures in one kernel call per chunk, without making the
shingle array. Why not rensa, which the project depends on: rensa's batch call on our flat
shingle hashes (`RMinHash.digest_matrix_from_flat_token_hashes`) signs about as fast as this
kernel (0.08 s for the 20.6 M shingles of 40,000 traces, against 0.05-0.08 s), but the only way
to read its signatures back is `to_rows()`, which builds a Python list per row: 0.46-0.52 s with
it (`rensa_signatures` is kept for that comparison and for bench/dedup_accuracy.py).
datasketch's `update_batch` on pre-made shingles is 20-50x slower than our whole path from text
(bench/minhash_speed.py). OPH estimates of short texts (fewer shingles than slots) spread a
little wider than R-MinHash's (bench/dedup_accuracy.py); the exact check of close pairs below
makes that harmless for what is reported.

LSH: the signature is cut into `bands` bands of `rows` slots; two documents become a candidate
pair when all slots of some band agree, which for Jaccard similarity s happens with probability
1 - (1 - s^rows)^bands, an S-curve whose steepest point sits near (1/bands)^(1/rows) (the
"implied threshold"). Band keys are a hash of each band's slice of the signature matrix, grouped
in Polars (measured against datasketch's MinHashLSH in bench/minhash_speed.py). Candidate pairs
are then checked (`filters/dedup.py`): an estimate (the fraction of equal slots) far from the
threshold decides; one within `verification_margin` of it is replaced by the exact Jaccard of the
two shingle sets (`shingle_jaccard`).
"""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import polars as pl

from curate.filters.utf8 import as_text, chunk_rows
from curate.shingles import Shingles, Unit, encode, tokenize

CHUNK_BYTES = 1 << 19  # text per chunk of sign_texts: a task for a thread
RENSA_BLOCK = 8192  # rows per rensa call: to_rows() makes num_perm Python ints per row
ALL_PAIRS_BUCKET = 32  # buckets up to this size give all their pairs; larger, a star and a chain
VERIFY_BLOCK = 1 << 18  # candidate pairs compared per NumPy block
_GRID = np.linspace(0.0, 1.0, 2001)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


SIGNER = "oph-optimal-densification-2"  # bump when `signatures` changes: cached ones go stale


# --- LSH parameters ------------------------------------------------------------------------


def candidate_probability(similarity: float | np.ndarray, bands: int, rows: int) -> np.ndarray:
    """P(two documents of Jaccard `similarity` share at least one band)."""
    s = np.asarray(similarity, dtype=np.float64)
    return np.asarray(1.0 - (1.0 - s**rows) ** bands)


def implied_threshold(bands: int, rows: int) -> float:
    """(1/bands)^(1/rows): about where the S-curve of a bands x rows split is steepest."""
    return float((1.0 / bands) ** (1.0 / rows))


def _areas(threshold: float, bands: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, ...]:
    """Integrated false positive and false negative probability (datasketch's definitions):
    the area under P(candidate) below the threshold and above 1 - P(candidate) above it."""
    lo = _GRID[threshold >= _GRID]
    hi = _GRID[threshold <= _GRID]
    p_lo = 1.0 - (1.0 - lo[None, :] ** rows[:, None]) ** bands[:, None]
    p_hi = 1.0 - (1.0 - hi[None, :] ** rows[:, None]) ** bands[:, None]
    return _trapezoid(p_lo, lo), _trapezoid(1.0 - p_hi, hi)


def _trapezoid(values: np.ndarray, grid: np.ndarray) -> np.ndarray:
    if grid.size < 2:
        return np.zeros(values.shape[0])
    steps = np.diff(grid)
    return np.asarray(((values[:, 1:] + values[:, :-1]) * 0.5 * steps).sum(axis=1))


def error_areas(threshold: float, bands: int, rows: int) -> tuple[float, float]:
    """(false positive area, false negative area) of a split at a threshold."""
    fp, fn = _areas(threshold, np.array([bands]), np.array([rows]))
    return float(fp[0]), float(fn[0])


@functools.lru_cache(maxsize=64)
def optimal_split(
    threshold: float, num_perm: int, *, fp_weight: float = 0.5, fn_weight: float = 0.5
) -> tuple[int, int]:
    """The (bands, rows) with bands * rows <= num_perm that minimizes the weighted integrated
    false positive and false negative probability at `threshold` (datasketch's rule)."""
    pairs = [(b, r) for b in range(1, num_perm + 1) for r in range(1, num_perm // b + 1)]
    bands = np.array([p[0] for p in pairs], dtype=np.float64)
    rows = np.array([p[1] for p in pairs], dtype=np.float64)
    fp, fn = _areas(threshold, bands, rows)
    best = int(np.argmin(fp * fp_weight + fn * fn_weight))
    return pairs[best]


@dataclass(frozen=True)
class Banding:
    """A bands x rows split of a num_perm signature, with what it implies."""

    num_perm: int
    bands: int
    rows: int
    threshold: float  # the Jaccard threshold pairs are verified against

    @property
    def implied(self) -> float:
        return implied_threshold(self.bands, self.rows)

    def describe(self) -> str:
        """The line a user reads before a MinHash dedup runs."""
        used = self.bands * self.rows
        fp, fn = error_areas(self.threshold, self.bands, self.rows)
        at = float(candidate_probability(self.threshold, self.bands, self.rows))
        low = max(0.0, self.threshold - 0.2)
        at_low = float(candidate_probability(low, self.bands, self.rows))
        unused = (
            f" ({self.num_perm - used} of {self.num_perm} unused)" if used < self.num_perm else ""
        )
        return (
            f"minhash LSH: {self.num_perm} permutations as {self.bands} bands x {self.rows} rows"
            f"{unused}; the split implies a similarity threshold (1/b)^(1/r) = "
            f"{self.implied:.3f}; pairs are verified at estimated Jaccard >= "
            f"{self.threshold:.3f}. A pair at Jaccard {self.threshold:.2f} becomes a candidate "
            f"with probability {at:.3f}, at {low:.2f} with {at_low:.3f} (integrated false "
            f"positive {fp:.4f}, false negative {fn:.4f})"
        )


# --- signatures ----------------------------------------------------------------------------


def signatures(shingles: Shingles, *, num_perm: int, seed: int) -> np.ndarray:
    """The (rows, num_perm) uint32 one-permutation MinHash signature of each row's shingle set,
    densified (see the module docstring). A row with no shingle gets all slots 0xFFFFFFFF;
    callers must not treat two of those as similar."""
    from curate import hash_kernels

    order, _ = _probe_order(num_perm, seed)
    return np.asarray(
        hash_kernels.sign_shingles(
            np.ascontiguousarray(shingles.hashes, dtype=np.uint64),
            np.ascontiguousarray(shingles.counts, dtype=np.int64),
            _seed_key(seed, 0),
            order,
        )
    )


@functools.lru_cache(maxsize=16)
def _probe_order(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """order[j]: slot j's probe order, a permutation of the slots from our own hash (not a
    NumPy random stream, whose algorithms may change between versions); rank[j, k]: the
    position of slot k in it."""
    keys = np.arange(num_perm * num_perm, dtype=np.uint64) ^ _seed_key(seed, 1)
    order = np.argsort(_mix(keys).reshape(num_perm, num_perm), axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(num_perm)[None, :].repeat(num_perm, 0), axis=1)
    return order, rank


def _seed_key(seed: int, purpose: int) -> np.uint64:
    mixed = (seed * 0x9E3779B1 + purpose * 0x85EBCA77 + 0x27D4EB2F) & 0xFFFFFFFFFFFFFFFF
    value = np.array([mixed], dtype=np.uint64)
    return np.uint64(_mix(value)[0])


def _mix(values: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer, in place."""
    values ^= values >> np.uint64(30)
    values *= _MIX1
    values ^= values >> np.uint64(27)
    values *= _MIX2
    values ^= values >> np.uint64(31)
    return values


def rensa_signatures(shingles: Shingles, *, num_perm: int, seed: int) -> np.ndarray:
    """The same shingles signed by rensa's R-MinHash through its flat-hash batch call, read
    back with `to_rows` (the comparison in bench/minhash_speed.py; not used by `dedup`)."""
    import rensa

    counts = shingles.counts
    rows = counts.shape[0]
    out = np.empty((rows, num_perm), dtype=np.uint32)
    offsets = shingles.offsets.astype(np.uint64)
    for start in range(0, rows, RENSA_BLOCK):
        stop = min(rows, start + RENSA_BLOCK)
        lo, hi = int(offsets[start]), int(offsets[stop])
        block_offsets = np.ascontiguousarray(offsets[start : stop + 1] - offsets[start])
        block = np.ascontiguousarray(shingles.hashes[lo:hi])
        matrix = rensa.RMinHash.digest_matrix_from_flat_token_hashes(
            block, block_offsets, num_perm, seed
        )
        out[start:stop] = np.asarray(matrix.to_rows(), dtype=np.uint32).reshape(-1, num_perm)
    return out


# --- candidates and verification -----------------------------------------------------------


def _repeated(keys: np.ndarray) -> np.ndarray:
    """Which keys occur more than once. A counting pass over the keys' top bits (a table of
    about 4 slots per key) rules out most keys; only those sharing a slot are compared."""
    bits = max(8, int(np.ceil(np.log2(max(keys.shape[0], 1)))) + 2)
    slots = (keys >> np.uint64(64 - bits)).astype(np.int64)
    crowded = np.flatnonzero(np.bincount(slots, minlength=1 << bits)[slots] > 1)
    out = np.zeros(keys.shape[0], dtype=bool)
    if crowded.size:
        out[crowded] = pl.Series(keys[crowded], dtype=pl.UInt64).is_duplicated().to_numpy()
    return out


def _bucket_pairs(units: np.ndarray, keys: np.ndarray) -> pl.DataFrame:
    """Pairs (i < j) of units whose keys are equal."""
    shared = _repeated(keys)
    if not shared.any():
        return pl.DataFrame(schema={"i": pl.Int64, "j": pl.Int64})
    sized = pl.DataFrame({"unit": units[shared], "key": keys[shared]}).with_columns(
        pl.len().over("key").alias("size")
    )
    small = sized.filter(pl.col("size") <= ALL_PAIRS_BUCKET).select("unit", "key")
    pairs = (
        small.join(small, on="key", suffix="_r")
        .filter(pl.col("unit") < pl.col("unit_r"))
        .select(pl.col("unit").alias("i"), pl.col("unit_r").alias("j"))
    )
    large = sized.filter(pl.col("size") > ALL_PAIRS_BUCKET).sort("key", "unit")
    if large.height == 0:
        return pairs
    star = large.select(pl.col("unit").first().over("key").alias("i"), pl.col("unit").alias("j"))
    chain = large.select(
        pl.col("unit").shift(1).over("key").alias("i"), pl.col("unit").alias("j")
    ).drop_nulls()
    extra = pl.concat([star, chain]).filter(pl.col("i") < pl.col("j"))
    return pl.concat([pairs, extra])


def candidate_pairs(
    sig: np.ndarray, banding: Banding, groups: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Unique candidate pairs (i < j) of rows of `sig` that share a band; with `groups`, only
    rows of the same group are paired. Rows with identical signatures are paired to their
    first such row directly, and only one of them enters the bands, so a thousand copies of a
    text make 999 pairs, not half a million. A bucket of more than `ALL_PAIRS_BUCKET` rows
    gives a star (each to the first) and a chain (each to the previous), not all its pairs."""
    n = sig.shape[0]
    if n < 2:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty
    from curate import hash_kernels

    group = np.zeros(n, dtype=np.int64) if groups is None else np.asarray(groups, np.int64)
    salt = _mix(group.astype(np.uint64) ^ _seed_key(0, 2))  # keys differ across groups
    keys = hash_kernels.band_keys(
        np.ascontiguousarray(sig, dtype=np.uint32), banding.rows, banding.bands, salt
    )
    bands, whole = list(keys[:-1]), keys[-1]
    units = np.arange(n, dtype=np.int64)
    rows = pl.DataFrame({"unit": units, "key": whole}).with_columns(
        pl.col("unit").first().over("key").alias("canonical")
    )
    identical = rows.filter(pl.col("unit") != pl.col("canonical")).select(
        pl.col("canonical").alias("i"), pl.col("unit").alias("j")
    )
    canonical = (rows["unit"] == rows["canonical"]).to_numpy()
    found = [identical]
    found += [_bucket_pairs(units[canonical], key[canonical]) for key in bands]
    pairs = pl.concat(found).unique().sort("i", "j")
    i, j = pairs["i"].to_numpy().astype(np.int64), pairs["j"].to_numpy().astype(np.int64)
    same = group[i] == group[j]  # keys of different groups could only meet by a hash collision
    return i[same], j[same]


def estimated_jaccard(sig: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """The fraction of equal slots of each pair's signatures (float32)."""
    out = np.empty(i.shape[0], dtype=np.float32)
    for start in range(0, i.shape[0], VERIFY_BLOCK):
        stop = start + VERIFY_BLOCK
        equal = sig[i[start:stop]] == sig[j[start:stop]]
        out[start:stop] = equal.mean(axis=1, dtype=np.float32)
    return out


def shingle_jaccard(shingles: Shingles, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The exact Jaccard similarity of the shingle sets of rows a[k] and b[k] (float32; 0 when
    both sets are empty)."""
    from curate import hash_kernels

    sets, bounds = hash_kernels.sorted_sets(
        np.ascontiguousarray(shingles.hashes, dtype=np.uint64),
        np.ascontiguousarray(shingles.offsets, dtype=np.int64),
    )
    return np.asarray(
        hash_kernels.pair_jaccard(
            sets,
            bounds,
            np.ascontiguousarray(a, dtype=np.int64),
            np.ascontiguousarray(b, dtype=np.int64),
        ),
        dtype=np.float32,
    )


def verification_margin(banding: Banding) -> float:
    """How far below the threshold an estimate may fall and still be checked exactly: four
    binomial standard deviations of a num_perm-slot estimate at the threshold. One-permutation
    estimates of short texts spread a little wider than binomial (bench/dedup_accuracy.py
    measures it), hence four rather than three."""
    t = banding.threshold
    return 4.0 * float(np.sqrt(t * (1.0 - t) / banding.num_perm))


def sign_texts(
    texts: pl.Series, *, unit: Unit, n: int, num_perm: int, seed: int, workers: int = 1
) -> np.ndarray:
    """Signatures of `texts` (shingled as `curate.shingles.shingle_hashes`), computed in chunks
    of about `CHUNK_BYTES` of text, on `workers` threads (the kernels release the GIL; only
    the folding of texts with characters that NFKC or casefold change holds it). Equal to
    `signatures(shingle_hashes(texts))`, without making the shingle array."""
    from curate import hash_kernels

    texts = as_text(texts)
    spans = chunk_rows(texts.str.len_bytes().to_numpy(), CHUNK_BYTES)
    out = np.empty((texts.len(), num_perm), dtype=np.uint32)
    order, _ = _probe_order(num_perm, seed)
    key = _seed_key(seed, 0)

    def run(span: tuple[int, int]) -> None:
        start, stop = span
        tokens, counts = tokenize(encode(texts.slice(start, stop - start), unit), unit)
        out[start:stop] = hash_kernels.sign_tokens(tokens, counts, n, key, order)

    if workers <= 1 or len(spans) <= 1:
        for span in spans:
            run(span)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(run, spans))
    return out
