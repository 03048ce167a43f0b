"""Global dedup (`dedup: {scope: global}`) staged on Ray, with the same clusters,
representatives, reasons and details as `filters/dedup.py` run locally.

Units are numbered by the pool position of their row. With a trace column (`on: completion`)
every row is a unit. With a problem column (`on: prompt`) a unit is a problem, numbered by its
first row in pool order and compared on that row's text, with the mean score of all its rows
(as `Dedup._units` makes them); stage 0 forms them and everything after is the same for both.
Exact and MinHash (semantic: stages 1-4 are replaced by embedding actors and a partitioned
cosine search, see curate.executors.ray_semantic; stages 0 and 5-7 are shared):

0. problem units only: each slice (task) sends its rows' problem_id, row number and score to
   the partition of hash(problem_id); each partition (task) holds whole problems and makes one
   unit per problem (first row, mean score, the slices holding its rows), sent to the slice
   that holds its first row.
1. per slice (task): read the compared column, MinHash-sign the non-blank texts of its units
   (curate.minhash.sign_texts), hash each signature whole and per LSH band; exact: the
   match key (curate.shingles.match_keys). Signatures stay in the object store, by slice.
2. identical signatures (minhash) or equal match keys (exact): hash-partitioned on the key,
   each partition pairs every unit to the first unit with its key.
3. minhash: the band keys of the remaining units, hash-partitioned on (band, key); each
   partition applies the local bucket rule (all pairs up to 32 units, else a star and a
   chain), so the candidate pairs are those of `curate.minhash.candidate_pairs`.
4. minhash: each pair's similarity in two hops (the slice owning its first unit attaches that
   signature row and sends the pair to the partition owning its second unit, which compares);
   estimates within the verification margin of the threshold are replaced by the exact
   Jaccard of the two shingle sets, from texts the owning slices hand over, as the local
   operator does.
5. connected components on Ray (curate.executors.ray_components), returned as stars: one
   (label, row) per clustered row, the label being the smallest row of its component.
6. representatives on Ray: each slice attaches to its clustered rows their id, length, score
   (and minhash signature or embedding row) and sends them to the partition of their label
   (label % partitions); the duplicate pairs go to the partition of their label too. Each
   partition holds whole clusters and runs the operator's own `_write` over them (numbered in
   row order, so every `keep` rule and tie-break is the local one), then splits its decided
   columns (row, dup_cluster, dup_of, drop_reason, drop_detail) by slice.
   Problem units: a partition sends each unit's decided columns, keyed by problem_id, to
   every slice that holds a row of that problem (known from stage 0).
7. per slice (task): its pieces of decided columns are joined to its rows by row number, or
   by problem_id for problem units, so every row of a dropped problem is dropped with the
   same reason, detail, dup_cluster and dup_of (null on rows in no cluster); kept rows are
   written as the slice's part.

The driver holds the duplicate pairs and the stars (both as long as the duplicates, not the
pool) and object refs; never per-row or per-problem columns of the whole pool, texts,
signatures or embeddings. Signatures are not read from or written to the step's signature
cache (embeddings are: they cost far more to compute).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import polars as pl

from curate.executors.ray import Fragment, worker_copy
from curate.executors.ray_components import component_stars
from curate.filters.dedup import cosine
from curate.minhash import ALL_PAIRS_BUCKET, estimated_jaccard, shingle_jaccard, sign_texts
from curate.minhash import verification_margin as margin_of
from curate.operators import DROP_DETAIL, DROP_REASON
from curate.shingles import match_keys, shingle_hashes
from curate.storage import parquet_file

if TYPE_CHECKING:
    from curate.filters.dedup import Dedup

logger = logging.getLogger(__name__)

_NON_SPACE = r"[^\s\x1c-\x1f]"
_PRIME = np.uint64(0x9E3779B97F4A7C15)
PAIRS = {"i": pl.Int64, "j": pl.Int64}
DECIDED = ("dup_cluster", "dup_of", DROP_REASON, DROP_DETAIL)


def distributable(operator: Dedup) -> bool:
    """Whether this dedup step runs staged on Ray: global scope, on a trace column (units are
    rows) or a problem column (units are problems). Scope per_problem runs per problem."""
    return operator.params.scope == "global"


def by_problem(operator: Dedup) -> bool:
    """Whether the step's units are problems (`on` names a problem column)."""
    from curate.filters.dedup import PROBLEM_TEXT_COLUMNS

    return operator.params.on in PROBLEM_TEXT_COLUMNS


def _scores(frame: pl.DataFrame) -> pl.Series:
    """The rows' scores as `Dedup._units` reads them (Float64, null without a score column)."""
    if "score" in frame.columns:
        return frame["score"].cast(pl.Float64)
    return pl.Series("score", [None] * frame.height, dtype=pl.Float64)


def problems_of(rows: pl.DataFrame, starts: np.ndarray) -> pl.DataFrame:
    """Stage 0's partition step: one unit per problem of `rows` (problem_id, row, score; whole
    problems, any order): its first row, the mean score of its rows (as `Dedup._units`
    aggregates them, in pool order) and the slices (starting at `starts`) holding its rows."""
    ordered = rows.sort("row")
    owner = np.searchsorted(starts, ordered["row"].to_numpy(), side="right") - 1
    return (
        ordered.with_columns(pl.Series("slice", owner, dtype=pl.Int64))
        .group_by("problem_id", maintain_order=True)
        .agg(
            pl.col("row").first(),
            pl.col("score").mean(),
            pl.col("slice").unique(maintain_order=True).alias("slices"),
        )
    )


def slice_units(
    frame: pl.DataFrame, on: str, first_row: int, problems: list[pl.DataFrame] | None = None
) -> tuple[pl.DataFrame, np.ndarray, pl.Series]:
    """A slice's thin rows (uid, score, length: what choosing representatives needs, as
    `Dedup._units` computes them; one per row of the slice) and its units: the row numbers of
    its units whose `on` text is not blank, with those texts (a String Series).

    Rows are the units unless `problems` is given: then they are the pieces of stage 0 naming
    the problems whose first row this slice holds; those rows are the units, with the
    problem's id, mean score and the slices holding its rows (column `slices`) as thin rows."""
    text = frame[on].cast(pl.String)
    row = np.arange(first_row, first_row + frame.height, dtype=np.int64)
    eligible = text.str.contains(_NON_SPACE).fill_null(False)
    length = text.str.len_chars().fill_null(0).cast(pl.Int64)
    if problems is None:
        uid = frame.select(
            pl.coalesce("trace_id", "problem_id")
            if "trace_id" in frame.columns
            else pl.col("problem_id")
        ).to_series()
        thin = pl.DataFrame({"uid": uid, "score": _scores(frame), "length": length})
    else:
        firsts = pl.DataFrame({"row": row}).join(
            pl.concat(problems).select("row", "score", "slices", pl.lit(True).alias("first")),
            on="row",
            how="left",
            maintain_order="left",
        )
        eligible = eligible & firsts["first"].fill_null(False)
        thin = pl.DataFrame(
            {
                "uid": frame["problem_id"],
                "score": firsts["score"].cast(pl.Float64),
                "length": length,
                "slices": firsts["slices"],
            }
        )
    return thin, row[eligible.to_numpy()], text.filter(eligible)


def _mix(values: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: a 64-bit hash of each value."""
    x = values.copy()
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def row_keys(sig: np.ndarray, first: int, last: int) -> np.ndarray:
    """A 64-bit hash of each row's slots first..last-1 (equal slices give equal keys)."""
    key = np.full(sig.shape[0], np.uint64(first + 1), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for col in range(first, last):
            key = _mix(key * _PRIME + sig[:, col].astype(np.uint64))
    return key


def bucket_pairs(rows: pl.DataFrame) -> pl.DataFrame:
    """Pairs (i < j) of units sharing a (band, key), by the rule of curate.minhash."""
    sized = rows.with_columns(pl.len().over("band", "key").alias("size")).filter(pl.col("size") > 1)
    small = sized.filter(pl.col("size") <= ALL_PAIRS_BUCKET).select("band", "key", "unit")
    pairs = (
        small.join(small, on=["band", "key"], suffix="_r")
        .filter(pl.col("unit") < pl.col("unit_r"))
        .select(pl.col("unit").alias("i"), pl.col("unit_r").alias("j"))
    )
    large = sized.filter(pl.col("size") > ALL_PAIRS_BUCKET).sort("band", "key", "unit")
    star = large.select(
        pl.col("unit").first().over("band", "key").alias("i"), pl.col("unit").alias("j")
    )
    chain = large.select(
        pl.col("unit").shift(1).over("band", "key").alias("i"), pl.col("unit").alias("j")
    ).drop_nulls()
    extra = pl.concat([star, chain]).filter(pl.col("i") < pl.col("j"))
    return pl.concat([pairs, extra]).unique()


class RayDedup:
    """One global dedup step over a stage's slices, on Ray (see the module docstring)."""

    def __init__(
        self,
        ray: Any,
        operator: Dedup,
        frags: list[Fragment],
        *,
        options: dict[str, Any],
        partitions: int,
    ) -> None:
        self.ray = ray
        self.op = operator
        self.frags = frags
        self.options = options
        self.partitions = max(1, partitions)
        self.starts = np.array([f.first_row for f in frags], dtype=np.int64)
        self.timings: dict[str, float] = {}  # seconds per stage, for bench/ray_scale.py
        self.candidates = 0
        self.actors: list[dict[str, Any]] = []  # semantic: what each embedding actor did
        self.by_problem = by_problem(operator)

    def _remote(self, fn: Callable[..., Any], num_returns: int = 1) -> Any:
        return self.ray.remote(num_returns=num_returns, **self.options)(fn)

    # --- 0. problem units --------------------------------------------------------------

    def problem_units(self) -> list[list[Any]] | None:
        """Problem units: per slice, the refs of the pieces (one per partition) naming the
        problems whose first row it holds (`problems_of`); None when rows are the units.

        Rows are hash-partitioned on problem_id (as the executor's per-problem steps are), so
        each partition holds whole problems and no task sees more than its share of them."""
        if not self.by_problem:
            return None
        parts, starts, slices = self.partitions, self.starts, len(self.frags)

        def split(frag: Fragment) -> Any:
            from curate.executors.ray import read_fragment

            present = set(parquet_file(frag.file).schema_arrow.names)
            frame = read_fragment(frag, [c for c in ("problem_id", "score") if c in present])
            rows = pl.DataFrame(
                {
                    "problem_id": frame["problem_id"],
                    "row": pl.int_range(frag.first_row, frag.first_row + frame.height, eager=True),
                    "score": _scores(frame),
                }
            )
            part = (rows["problem_id"].hash(seed=17) % parts).cast(pl.Int64)
            pieces = [rows.filter(part == p) for p in range(parts)]
            return pieces if parts > 1 else pieces[0]

        def gather(*pieces: pl.DataFrame) -> Any:
            units = problems_of(pl.concat(pieces), starts)
            owner = np.searchsorted(starts, units["row"].to_numpy(), side="right") - 1
            out = [units.filter(owner == f) for f in range(slices)]
            return out if slices > 1 else out[0]

        split_remote = self._remote(split, num_returns=parts)
        split_refs = [split_remote.remote(frag) for frag in self.frags]
        if parts == 1:
            split_refs = [[ref] for ref in split_refs]
        gather_remote = self._remote(gather, num_returns=slices)
        gathered = [gather_remote.remote(*[refs[p] for refs in split_refs]) for p in range(parts)]
        if slices == 1:
            gathered = [[ref] for ref in gathered]
        return [[refs[f] for refs in gathered] for f in range(slices)]

    # --- 1. sign -----------------------------------------------------------------------

    def sign(
        self, problems: list[list[Any]] | None
    ) -> tuple[list[Any], list[Any], list[list[Any]]]:
        """Per slice: its thin rows, its signature block and its key pieces by partition
        (`problems`: see `problem_units`)."""
        params = self.op.params
        on, method, parts = params.on, params.method, self.partitions
        banding = params.banding() if method == "minhash" else None
        per_problem = problems is not None

        def task(frag: Fragment, *pieces: pl.DataFrame) -> list[Any]:
            from curate.executors.ray import read_fragment

            thin, units, texts = slice_units(
                read_fragment(frag), on, frag.first_row, list(pieces) if per_problem else None
            )
            if banding is None:  # exact: the match key itself is the key
                keyed = pl.DataFrame({"unit": units, "key": match_keys(texts)})
                block: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
                hashed = keyed["key"].hash(seed=5)
            else:
                sig = sign_texts(
                    texts,
                    unit=params.shingle,
                    n=params.ngram,
                    num_perm=params.num_perm,
                    seed=params.seed,
                )
                whole = row_keys(sig, 0, sig.shape[1])
                bands = (
                    np.stack(
                        [
                            row_keys(sig, b * banding.rows, (b + 1) * banding.rows)
                            for b in range(banding.bands)
                        ],
                        axis=1,
                    )
                    if units.size
                    else np.empty((0, banding.bands), np.uint64)
                )
                block = (units, sig, bands)
                keyed = pl.DataFrame({"unit": units, "key": pl.Series(whole, dtype=pl.UInt64)})
                hashed = keyed["key"]
            part = (hashed % parts).cast(pl.Int64)
            keyed_pieces = [keyed.filter(part == p) for p in range(parts)]
            return [thin, block, *keyed_pieces]

        remote = self._remote(task, num_returns=2 + parts)
        refs = [
            remote.remote(frag, *(problems[f] if problems is not None else []))
            for f, frag in enumerate(self.frags)
        ]
        return [r[0] for r in refs], [r[1] for r in refs], [list(r[2:]) for r in refs]

    # --- 2, 3. candidate pairs ---------------------------------------------------------

    def first_of_key(self, pieces: list[list[Any]]) -> pl.DataFrame:
        """Every unit paired to the first unit with its key (equal signatures or match keys)."""

        def task(*keyed: pl.DataFrame) -> pl.DataFrame:
            frame = pl.concat(keyed)
            firsts = frame.with_columns(pl.col("unit").min().over("key").alias("first"))
            return firsts.filter(pl.col("unit") != pl.col("first")).select(
                pl.col("first").alias("i"), pl.col("unit").alias("j")
            )

        remote = self._remote(task)
        refs = [remote.remote(*[p[k] for p in pieces]) for k in range(self.partitions)]
        return pl.concat(self.ray.get(refs)).cast(PAIRS)

    def band_pairs(self, blocks: list[Any], repeated: np.ndarray) -> pl.DataFrame:
        """Candidate pairs of units that share a band (only the first of identical ones)."""
        parts = self.partitions
        skip = self.ray.put(repeated)

        def split(block: tuple[np.ndarray, np.ndarray, np.ndarray], skip: np.ndarray) -> Any:
            units, _, bands = block
            keep = ~np.isin(units, skip)
            units, bands = units[keep], bands[keep]
            frame = pl.DataFrame(
                {
                    "band": np.tile(np.arange(bands.shape[1], dtype=np.int64), units.shape[0]),
                    "key": pl.Series(bands.reshape(-1), dtype=pl.UInt64),
                    "unit": np.repeat(units, bands.shape[1]),
                }
            )
            part = ((frame["key"] ^ frame["band"].cast(pl.UInt64)) % parts).cast(pl.Int64)
            pieces = [frame.filter(part == p) for p in range(parts)]
            return pieces if parts > 1 else pieces[0]

        def buckets(*pieces: pl.DataFrame) -> pl.DataFrame:
            return bucket_pairs(pl.concat(pieces))

        split_remote = self._remote(split, num_returns=parts)
        split_refs = [split_remote.remote(b, skip) for b in blocks]
        if parts == 1:
            split_refs = [[r] for r in split_refs]
        bucket_remote = self._remote(buckets)
        refs = [bucket_remote.remote(*[s[p] for s in split_refs]) for p in range(parts)]
        return pl.concat(self.ray.get(refs)).cast(PAIRS)

    def _owner(self, units: np.ndarray) -> np.ndarray:
        """The slice that holds each unit (units are row numbers)."""
        return np.searchsorted(self.starts, units, side="right") - 1

    # --- 4. similarity -----------------------------------------------------------------

    def similarity(
        self, blocks: list[Any], i: np.ndarray, j: np.ndarray, *, verify: bool
    ) -> np.ndarray:
        """The estimated Jaccard of each pair; with `verify`, the exact one for estimates
        within the verification margin of the threshold (as filters/dedup.py decides).

        Estimates take two hops, so no task sees more than its share of the pairs: the slice
        owning a pair's first unit attaches that unit's signature row and sends the pair to
        the partition owning its second unit, which compares. For close pairs, each slice
        hands over the texts of its units in one, and tasks over chunks of those pairs compare
        shingle sets (close pairs are few: those within the margin of the threshold)."""
        out = np.empty(i.shape[0], dtype=np.float32)
        if i.size == 0:
            return out
        ray = self.ray
        params = self.op.params
        banding = params.banding()
        margin, threshold = margin_of(banding), banding.threshold
        frags, on = self.frags, params.on

        parts = self.partitions
        owner_of = self._owner

        def attach(
            block: tuple[np.ndarray, np.ndarray, np.ndarray],
            k: np.ndarray,
            a: np.ndarray,
            b: np.ndarray,
        ) -> Any:
            """Hop 1, on the slice that owns each pair's first unit: attach that unit's
            signature row, then split the pairs by the partition of their second unit."""
            units, sig, _ = block
            rows = sig[np.searchsorted(units, a)]
            target = owner_of(b) % parts
            pieces = [(k[target == q], b[target == q], rows[target == q]) for q in range(parts)]
            return pieces if parts > 1 else pieces[0]

        def estimate(
            block_refs: list[Any], *pieces: tuple[np.ndarray, np.ndarray, np.ndarray]
        ) -> tuple[np.ndarray, np.ndarray]:
            """Hop 2, on the partition that owns each pair's second unit: compare."""
            k = np.concatenate([p[0] for p in pieces])
            if k.size == 0:
                return k, np.empty(0, dtype=np.float32)
            blocks_here = ray.get(block_refs)  # refs inside a list are not resolved for us
            b = np.concatenate([p[1] for p in pieces])
            left = np.concatenate([p[2] for p in pieces])
            units = np.concatenate([blk[0] for blk in blocks_here])
            sig = np.concatenate([blk[1] for blk in blocks_here])
            order = np.argsort(units)
            right = sig[order][np.searchsorted(units[order], b)]
            both = np.concatenate([left, right])
            n = k.shape[0]
            sims = estimated_jaccard(both, np.arange(n), np.arange(n, 2 * n))
            return k, sims

        def texts_of(frag: Fragment, wanted: np.ndarray) -> pl.DataFrame:
            from curate.executors.ray import read_fragment

            rows = read_fragment(frag, [on]).with_columns(
                (pl.int_range(pl.len(), dtype=pl.Int64) + frag.first_row).alias("unit")
            )
            return rows.filter(pl.col("unit").is_in(wanted))

        def exact(a: np.ndarray, b: np.ndarray, *pieces: pl.DataFrame) -> np.ndarray:
            table = pl.concat(pieces).sort("unit")
            shingles = shingle_hashes(
                table[on].cast(pl.String), unit=params.shingle, n=params.ngram
            )
            units = table["unit"].to_numpy()
            return shingle_jaccard(shingles, np.searchsorted(units, a), np.searchsorted(units, b))

        def by_slice(units: np.ndarray) -> list[np.ndarray]:
            owner = owner_of(units)
            return [units[owner == f] for f in range(len(frags))]

        k_all = np.arange(i.shape[0], dtype=np.int64)
        first_owner = owner_of(i)
        attach_remote = self._remote(attach, num_returns=parts)
        hop1 = []
        for f in np.unique(first_owner).tolist():
            mine = first_owner == f
            hop1.append(attach_remote.remote(blocks[f], k_all[mine], i[mine], j[mine]))
        if parts == 1:
            hop1 = [[ref] for ref in hop1]
        estimate_remote = self._remote(estimate, num_returns=2)
        hop2 = [
            estimate_remote.remote(
                [blocks[f] for f in range(len(frags)) if f % parts == q],
                *[refs[q] for refs in hop1],
            )
            for q in range(parts)
        ]
        for k_ref, s_ref in hop2:
            k, sims = ray.get([k_ref, s_ref])
            out[k] = sims
        if not verify:
            return out
        sure = out >= np.float32(threshold + margin)
        close = np.flatnonzero(~sure & (out >= np.float32(threshold - margin)))
        if close.size == 0:
            return out
        ci, cj = i[close], j[close]
        wanted = by_slice(np.unique(np.concatenate([ci, cj])))
        texts_remote = self._remote(texts_of)
        texts = [
            texts_remote.remote(frags[f], wanted[f]) for f in range(len(frags)) if wanted[f].size
        ]
        chunk = max(1, -(-close.size // self.partitions))
        exact_remote = self._remote(exact)
        spans = [(k, min(k + chunk, close.size)) for k in range(0, close.size, chunk)]
        refs = [exact_remote.remote(ci[a:b], cj[a:b], *texts) for a, b in spans]
        for (a, b), ref in zip(spans, refs, strict=True):
            out[close[a:b]] = ray.get(ref)
        return out

    # --- 6. representatives ------------------------------------------------------------

    def representatives(
        self,
        thin_refs: list[Any],
        blocks: list[Any],
        found: tuple[np.ndarray, np.ndarray, np.ndarray],
        stars: pl.DataFrame,
    ) -> list[list[Any]]:
        """Per slice, the refs of its clustered rows' decided columns (row, dup_cluster,
        dup_of, drop_reason, drop_detail), one piece per partition; empty for a slice with no
        clustered row. Problem units: keyed by problem_id instead of row, sent to every slice
        holding a row of the problem (each slice gets one piece per partition).

        Clustered rows are routed to the partition of their component's label (with their id,
        length, score and, for minhash and semantic, signature or embedding row, attached by the
        slice that holds them),
        the duplicate pairs to the partition of their label too, and each partition runs the
        operator's own `_write` over its clusters: the same representatives (`keep`, ties to
        the earliest row), similarities and details as a local run."""
        ray = self.ray
        parts = self.partitions
        worker = cast("Dedup", worker_copy(self.op))
        members, cuts, pair_parts = route(stars, found, self.starts, parts)
        active = [f for f in range(len(self.frags)) if cuts[f + 1] > cuts[f]]
        if not active:
            return [[] for _ in self.frags]
        per_problem = self.by_problem
        # The slices that get decided columns: those holding clustered rows, or (problem
        # units, whose rows the driver does not know) every slice.
        targets = list(range(len(self.frags))) if per_problem else active
        starts = self.starts[targets]
        key = "problem_id" if per_problem else "row"
        method = self.op.params.method

        def attach(
            first_row: int,
            thin: pl.DataFrame,
            block: tuple[np.ndarray, ...] | None,
            mine: pl.DataFrame,
        ) -> Any:
            """On the slice holding them: its clustered rows' id, length and score (and
            signature or embedding rows), split by the partition of their label."""
            at = mine["row"].to_numpy()
            frame = pl.concat([mine, thin[at - first_row]], how="horizontal")
            sig = block[1][np.searchsorted(block[0], at)] if block is not None else None
            target = mine["label"].to_numpy() % parts
            pieces = [
                (frame.filter(target == q), sig[target == q] if sig is not None else None)
                for q in range(parts)
            ]
            return pieces if parts > 1 else pieces[0]

        def choose(
            pairs: tuple[np.ndarray, np.ndarray, np.ndarray],
            *pieces: tuple[pl.DataFrame, np.ndarray | None],
        ) -> Any:
            """On one partition: whole clusters, numbered 0..m-1 in row order, through the
            operator's own `_write`; its decided columns split by slice."""
            from curate.filters.dedup import Found

            got = [p for p in pieces if p[0].height]
            if not got:
                key_type = pl.String if per_problem else pl.Int64
                empty = pl.DataFrame(schema={key: key_type, **dict.fromkeys(DECIDED, pl.String)})
                return [empty] * len(starts) if len(starts) > 1 else empty
            frame = pl.concat([p[0] for p in got])
            order = frame["row"].arg_sort().to_numpy()
            frame = frame[order]
            at = frame["row"].to_numpy()
            local = frame.select(
                pl.int_range(pl.len(), dtype=pl.Int64).alias("unit"),
                pl.col("row").alias("first_row"),
                "length",
                "score",
                "uid",
                pl.col("uid").alias("problem_id"),  # problem units: `_write` maps rows by it
            )
            labels = np.searchsorted(at, frame["label"].to_numpy())
            i, j, sim = pairs
            if method == "exact":
                similarity = _ones
            else:
                vectors = np.concatenate([p[1] for p in got])[order]
                measure = cosine if method == "semantic" else estimated_jaccard

                def similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
                    return measure(vectors, a, b)

            found = Found(np.searchsorted(at, i), np.searchsorted(at, j), sim, similarity)
            ids = frame.select(pl.col("uid").alias("problem_id"))
            decided = worker._write(ids, local, labels, found)
            if per_problem:  # to every slice holding a row of the problem
                out = pl.concat(
                    [frame.select(pl.col("uid").alias(key), "slices"), decided.select(DECIDED)],
                    how="horizontal",
                ).explode("slices")
                target = out["slices"].to_numpy()
                out = out.drop("slices")
            else:  # to the slice holding the row
                out = pl.concat([frame.select("row"), decided.select(DECIDED)], how="horizontal")
                target = np.searchsorted(starts, at, side="right") - 1
            order = np.argsort(target, kind="stable")
            out, target = out[order], target[order]
            bounds = np.searchsorted(target, np.arange(len(starts) + 1))
            split = [out[a:b] for a, b in itertools.pairwise(bounds)]
            return split if len(starts) > 1 else split[0]

        attach_remote = self._remote(attach, num_returns=parts)
        attached = [
            attach_remote.remote(
                self.frags[f].first_row, thin_refs[f], blocks[f], members[cuts[f] : cuts[f + 1]]
            )
            for f in active
        ]
        if parts == 1:
            attached = [[ref] for ref in attached]
        choose_remote = self._remote(choose, num_returns=len(targets))
        chosen = [
            choose_remote.remote(pair_parts[q], *[refs[q] for refs in attached])
            for q in range(parts)
        ]
        if len(targets) == 1:
            chosen = [[ref] for ref in chosen]
        # Wait (without fetching) so the stage's time is its own, not the write's.
        ray.wait([refs[0] for refs in chosen], num_returns=parts, fetch_local=False)
        out: list[list[Any]] = [[] for _ in self.frags]
        for a, f in enumerate(targets):
            out[f] = [refs[a] for refs in chosen]
        return out

    # --- all stages ----------------------------------------------------------------------

    def decide(self) -> list[list[Any]]:
        """Per slice, the refs of its clustered rows' decided columns (see `representatives`;
        `apply_decisions` joins them to the slice's rows)."""
        params = self.op.params
        clock = _Clock(self.timings)
        problems = self.problem_units()
        if problems is not None:
            formed = [ref for refs in problems for ref in refs]
            self.ray.wait(formed, num_returns=len(formed), fetch_local=False)
            clock.lap("units")
        if params.method == "semantic":
            from curate.executors.ray_semantic import embed_slices, search_pairs

            embedded = embed_slices(
                self.ray, self.op, self.frags, options=self.options, problems=problems
            )
            thin_refs, blocks, self.actors = embedded.thin, embedded.blocks, embedded.reports
            clock.lap("embed")
            i, j, sim, self.candidates = search_pairs(
                self.ray,
                self.op,
                blocks,
                embedded.units,
                partitions=self.partitions,
                options=self.options,
            )
            clock.lap("search")
            return self._cluster(thin_refs, blocks, (i, j, sim), clock)
        thin_refs, blocks, pieces = self.sign(problems)
        self.ray.wait(thin_refs, num_returns=len(thin_refs), fetch_local=False)
        clock.lap("sign")
        identical = self.first_of_key(pieces)
        clock.lap("identical")
        if params.method == "exact":
            i, j = identical["i"].to_numpy(), identical["j"].to_numpy()
            sim = np.ones(i.shape[0], dtype=np.float32)
        else:
            banded = self.band_pairs(blocks, np.unique(identical["j"].to_numpy()))
            pairs = pl.concat([identical, banded]).unique().sort("i", "j")
            i, j = pairs["i"].to_numpy(), pairs["j"].to_numpy()
            clock.lap("bands")
            self.candidates = i.shape[0]
            sim = self.similarity(blocks, i, j, verify=params.verify)
            if params.verify:
                # The local rule keeps a pair whose estimate is sure (>= threshold + margin) or
                # whose exact Jaccard (computed when the estimate was close) reaches the
                # threshold; with close estimates replaced by exact values, that is sim >= t.
                keep = sim >= np.float32(params.banding().threshold)
                i, j, sim = i[keep], j[keep], sim[keep]
            clock.lap("verify")
        return self._cluster(thin_refs, blocks, (i, j, sim), clock)

    def _cluster(
        self,
        thin_refs: list[Any],
        blocks: list[Any],
        found: tuple[np.ndarray, np.ndarray, np.ndarray],
        clock: _Clock,
    ) -> list[list[Any]]:
        """Stages 5 and 6, whatever found the duplicate pairs."""
        params = self.op.params
        i = found[0]
        stars = component_stars(
            self.ray, i, found[1], partitions=self.partitions, options=self.options
        )
        clock.lap("components")
        logger.info(
            "step '%s' (dedup on %s): staged on Ray over %d slices and %d partitions: %d "
            "duplicate pairs, %d %s in clusters",
            self.op.context.stage_id,
            params.on,
            len(self.frags),
            self.partitions,
            i.shape[0],
            stars.height + stars["u"].n_unique(),
            "problems" if self.by_problem else "rows",
        )
        decided = self.representatives(thin_refs, blocks, found, stars)
        clock.lap("representatives")
        return decided


def route(
    stars: pl.DataFrame,
    found: tuple[np.ndarray, np.ndarray, np.ndarray],
    starts: np.ndarray,
    parts: int,
) -> tuple[pl.DataFrame, np.ndarray, list[tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """The driver's share of step 6 (bench/ray_scale.py times it at scale): the clustered rows
    (label, row) sorted by row, where each slice's rows start (slices beginning at `starts`,
    one more cut at the end), and the duplicate pairs (i, j, sim) by their label's partition.
    Its cost grows with the duplicates, not with the pool."""
    members = pl.concat(
        [
            stars.select(pl.col("u").alias("label"), pl.col("v").alias("row")),
            stars.select(pl.col("u").alias("label"), pl.col("u").alias("row")).unique(),
        ]
    ).sort("row")
    cuts = np.searchsorted(members["row"].to_numpy(), np.append(starts, np.iinfo(np.int64).max))
    i, j, sim = found
    pairs = pl.DataFrame({"row": i, "j": j, "sim": sim}).join(
        members, on="row", how="left", maintain_order="left"
    )
    by_part = pairs.with_columns((pl.col("label") % parts).alias("q")).partition_by(
        "q", as_dict=True, include_key=False
    )
    nothing = np.empty(0, dtype=np.int64)
    pair_parts = []
    for q in range(parts):
        mine = by_part.get((q,))
        pair_parts.append(
            (mine["row"].to_numpy(), mine["j"].to_numpy(), mine["sim"].to_numpy())
            if mine is not None
            else (nothing, nothing, np.empty(0, dtype=np.float32))
        )
    return members, cuts, pair_parts


class _Clock:
    def __init__(self, timings: dict[str, float]) -> None:
        self.timings = timings
        self.last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = now - self.last
        self.last = now


def _ones(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.ones(a.shape[0], dtype=np.float32)


def apply_decisions(
    frame: pl.DataFrame, first_row: int, pieces: list[pl.DataFrame], *, key: str = "row"
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """A slice's rows (the first numbered `first_row`) with the decided columns of its
    clustered rows (null on the others), split as `Filter.apply` splits them. The pieces are
    keyed by row number, or with `key="problem_id"` (problem units) by problem: every row of
    a clustered problem gets its columns."""
    if key == "row":
        rows = pl.DataFrame({"row": pl.int_range(first_row, first_row + frame.height, eager=True)})
    else:
        rows = frame.select(key)
    decided = rows.join(
        pl.concat(pieces) if pieces else pl.DataFrame(schema={key: rows.schema[key]}),
        on=key,
        how="left",
        maintain_order="left",
    )
    columns = [
        (decided[c] if c in decided.columns else pl.Series(c, [None] * frame.height)).cast(
            pl.String
        )
        for c in DECIDED
    ]
    body = frame.drop([c for c in ("dup_cluster", "dup_of") if c in frame.columns])
    full = body.with_columns(columns)
    is_kept = pl.col(DROP_REASON).is_null()
    return full.filter(is_kept).drop(DROP_REASON, DROP_DETAIL), full.filter(~is_kept)
