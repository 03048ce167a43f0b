"""The `dedup` operator: cluster rows whose text in one column is the same (`exact`), nearly the
same by shingle overlap (`minhash`) or by meaning (`semantic`), keep one representative per
cluster and drop the rest.

What is compared. With `on` naming a problem column (`prompt`, `system_prompt`,
`reference_answer`, `problem_meta`) and `scope: global`, the unit is the *problem*: its text is
compared once, however many traces it has, and when a problem loses, every trace of it is
dropped while the representative problem keeps all of its traces. (Comparing trace rows would
find the traces of one problem to be duplicates of each other and leave one trace per problem.)
With a trace column (`completion`, `reasoning`, ...) the unit is the row. `scope: per_problem`
compares only units of the same problem (near-identical traces of one problem are a diversity
problem, not a leak); it is refused for problem columns, whose text is the same on every trace
of a problem.

Clusters are the connected components of the duplicate pairs (curate.clusters), so A~B and B~C
put A, B and C together even when A and C are less alike; each dropped row's detail gives its
similarity to the representative, and its closest match when that is another member.

Which unit represents a cluster (`keep`): `first` (earliest in pool order), `shortest` /
`longest` (characters of the compared text), `best_score` (highest `score`; for a problem unit
the mean score of its traces; null scores last). Ties go to the earliest unit in pool order.

Columns written on every row (a later dedup step replaces them):

- `dup_cluster`: the id of the cluster's representative (its `trace_id`, or its `problem_id` for
  problem units and pools without traces) on every member, representative included; null for a
  row in no cluster. The same input and params give the same ids on every run.
- `dup_of`: the representative's id on rows dropped as its duplicates; null on representatives
  and on rows in no cluster.

Rows whose text is null or only whitespace are never clustered.

Methods:

- exact: `curate.text.match_key` (NFKC, casefold, whitespace collapsed) equal.
- minhash: word or character n-gram shingles of the normalized text (curate.shingles),
  one-permutation MinHash signatures cached by content hash (a re-run with a new threshold or
  banding signs nothing), LSH band keys grouped in Polars (curate.minhash). Candidate pairs are
  verified unless `verify: false`: a pair whose estimated Jaccard is more than a margin (4
  binomial standard deviations) above the threshold is a duplicate, one more than the margin
  below is not, and one in between gets the exact Jaccard of its two shingle sets (those texts
  are shingled again). So a reported pair is at or above the threshold, exactly or by a wide
  estimate. Without a `bands`/`rows` split, the split minimizes datasketch's weighted false
  positive and false negative areas with false negatives weighted 0.9. The split, the
  threshold it implies ((1/b)^(1/r)) and candidate probabilities are logged when the step
  starts (logger `curate.filters.dedup`, level INFO), as is how many signatures came from the
  cache.
- semantic: sentence embeddings (curate.embeddings, cached by content hash), pairs at cosine >=
  threshold (curate.similarity: exact blockwise search, an index beyond that); per problem, all
  pairs within each problem are compared exactly. The search only proposes candidates (at
  `CANDIDATE_SLACK` below the threshold); each candidate's cosine is then computed pair by pair
  (`cosine`), so whether a pair counts, and its similarity, do not depend on how the search cut
  its matrix products into blocks (BLAS sums a block's dot products in a shape-dependent order;
  the Ray executor searches in other blocks and must find the same pairs).

==========  ==================================================================================
reason      when
==========  ==================================================================================
duplicate   the row's unit is in a cluster whose representative is another unit; the detail
            names the representative, the method and the similarity to it
==========  ==================================================================================
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import polars as pl
from pydantic import Field, model_validator

from curate.clusters import component_sizes, connected_components
from curate.errors import OperatorError
from curate.filters.common import require_columns
from curate.minhash import (
    SIGNER,
    Banding,
    candidate_pairs,
    estimated_jaccard,
    optimal_split,
    shingle_jaccard,
    sign_texts,
    verification_margin,
)
from curate.operators import DROP_DETAIL, DROP_REASON, Distribution, Filter, Params, Scope
from curate.schemas.pool import PROBLEM_COLUMNS
from curate.shingles import Shingles, match_keys, shingle_hashes, shingle_settings
from curate.vector_cache import CacheStats, VectorCache

logger = logging.getLogger(__name__)

Method = Literal["exact", "minhash", "semantic"]
DEFAULT_THRESHOLD = {"minhash": 0.8, "semantic": 0.9}
PROBLEM_TEXT_COLUMNS = frozenset(f.name for f in PROBLEM_COLUMNS) - {"problem_id"}
MINHASH_ONLY = ("shingle", "ngram", "num_perm", "bands", "rows", "seed", "verify")
SEMANTIC_ONLY = ("model", "batch_size")
# How far below the threshold the semantic search proposes candidates. Two float32 dot products
# of the same unit vectors, summed in different orders (a matrix product, the pair-by-pair
# cosine), differ by at most about 2 x dim x 2^-24 (4.6e-5 at dim 384, 1e-3 at dim 8,192);
# measured differences are near 3e-7.
CANDIDATE_SLACK = 1e-3
# The split rule: datasketch's (minimize weighted integrated false positive and false negative
# probability), weighted towards recall because verification removes false positives while
# nothing recovers a false negative.
FN_WEIGHT = 0.9
_NON_SPACE = r"[^\s\x1c-\x1f]"  # a character that is not Python whitespace


class DedupParams(Params):
    method: Method = Field("exact", description="exact, minhash or semantic")
    on: str = Field(
        "prompt",
        description=(
            "the text column to compare, e.g. prompt, completion or reasoning; with a problem "
            "column and scope global, problems are compared and all traces of a dropped "
            "problem go"
        ),
    )
    scope: Literal["global", "per_problem"] = Field(
        "global",
        description="global: compare across the pool; per_problem: only within each problem",
    )
    keep: Literal["first", "shortest", "longest", "best_score"] = Field(
        "first",
        description=(
            "which member represents a cluster: first in pool order, shortest or longest text, "
            "or highest score (ties: first)"
        ),
    )
    threshold: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description=(
            "minhash: Jaccard similarity (default 0.8); semantic: cosine similarity (default "
            "0.9); pairs at or above it are duplicates. Not used by exact"
        ),
    )
    shingle: Literal["word", "char"] = Field("word", description="minhash: word or char n-grams")
    ngram: int = Field(5, ge=1, le=64, description="minhash: tokens (or characters) per shingle")
    num_perm: int = Field(128, ge=8, le=1024, description="minhash: signature length")
    bands: int | None = Field(
        None, ge=1, description="minhash: LSH bands (give rows too; default: chosen from threshold)"
    )
    rows: int | None = Field(None, ge=1, description="minhash: signature slots per LSH band")
    seed: int = Field(1, ge=0, description="minhash: seed of the hash permutations")
    verify: bool = Field(
        True,
        description=(
            "minhash: keep only candidate pairs whose estimated Jaccard reaches the threshold "
            "(false: every pair sharing a band is a duplicate)"
        ),
    )
    model: str = Field(
        "all-MiniLM-L6-v2",
        description="semantic: sentence-transformers model: the packaged default, a folder or "
        "a hub name already downloaded",
    )
    batch_size: int = Field(64, ge=1, description="semantic: texts per encoder batch")

    @model_validator(mode="after")
    def _consistent(self) -> DedupParams:
        given = self.model_fields_set
        if self.method != "minhash":
            wrong = [name for name in MINHASH_ONLY if name in given]
            if wrong:
                raise ValueError(f"{', '.join(wrong)} only apply to method: minhash")
        if self.method != "semantic":
            wrong = [name for name in SEMANTIC_ONLY if name in given]
            if wrong:
                raise ValueError(f"{', '.join(wrong)} only apply to method: semantic")
        if self.method == "exact" and self.threshold is not None:
            raise ValueError("threshold does not apply to method: exact")
        if (self.bands is None) != (self.rows is None):
            raise ValueError("give bands and rows together, or neither")
        used = (self.bands or 0) * (self.rows or 0)
        if used > self.num_perm:
            raise ValueError(
                f"bands x rows = {self.bands} x {self.rows} = {used} exceeds num_perm = "
                f"{self.num_perm}"
            )
        if self.scope == "per_problem" and self.on in PROBLEM_TEXT_COLUMNS:
            raise ValueError(
                f"on: {self.on} is a problem column, the same on every trace of a problem, so "
                f"scope: per_problem would find each problem's traces identical; use scope: "
                f"global to dedup problems"
            )
        return self

    @property
    def similarity_threshold(self) -> float:
        if self.threshold is not None:
            return self.threshold
        return DEFAULT_THRESHOLD.get(self.method, 1.0)

    def banding(self) -> Banding:
        threshold = self.similarity_threshold
        if self.bands is not None and self.rows is not None:
            bands, rows = self.bands, self.rows
        else:
            bands, rows = optimal_split(
                threshold, self.num_perm, fp_weight=1.0 - FN_WEIGHT, fn_weight=FN_WEIGHT
            )
        return Banding(num_perm=self.num_perm, bands=bands, rows=rows, threshold=threshold)


Similarity = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Found:
    """Duplicate pairs (i, j, sim) among compared units, and how similar any two of them are
    (for the detail of a row and its representative)."""

    i: np.ndarray
    j: np.ndarray
    sim: np.ndarray
    similarity: Similarity


@dataclass(frozen=True)
class ExactJaccard:
    """Exact Jaccard similarity of the shingle sets of some units, shingled once: units with
    the same text share one shingle set."""

    shingles: Shingles
    slot: np.ndarray  # unit -> row of `shingles` (-1: not shingled)

    @classmethod
    def of(cls, texts: pl.Series, units: np.ndarray, params: DedupParams) -> ExactJaccard:
        slot = np.full(texts.len(), -1, dtype=np.int64)
        wanted = np.unique(units)
        if wanted.size == 0:
            return cls(Shingles(np.empty(0, np.uint64), np.zeros(1, np.int64)), slot)
        frame = pl.DataFrame({"unit": wanted, "text": texts.gather(wanted)})
        distinct = frame.unique("text", keep="first", maintain_order=True).with_row_index("k")
        mapped = frame.join(distinct.select("text", "k"), on="text", how="left")
        slot[mapped["unit"].to_numpy()] = mapped["k"].to_numpy()
        shingles = shingle_hashes(distinct["text"], unit=params.shingle, n=params.ngram)
        return cls(shingles, slot)

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return shingle_jaccard(self.shingles, self.slot[a], self.slot[b])


class Dedup(Filter[DedupParams]):
    """Drop exact, MinHash or semantic duplicates of a text column, keeping one per cluster.

    Problem columns (prompt) are compared per problem and a losing problem loses all its
    traces; trace columns (completion, reasoning) are compared per row, across the pool or
    within each problem (`scope: per_problem`). Writes dup_cluster and dup_of on every row."""

    name: ClassVar[str] = "dedup"
    version: ClassVar[str] = "1"
    scope: ClassVar[Scope] = Scope.GLOBAL
    params_model: ClassVar[type[Params]] = DedupParams
    requires: ClassVar[tuple[str, ...]] = ("problem_id",)

    cache_stats: CacheStats | None = None  # the last signature or embedding cache lookup

    def distribution(self) -> Distribution:
        """scope per_problem compares only within a problem; global needs the whole pool."""
        if self.params.scope == "per_problem":
            return Distribution.PER_PROBLEM
        return Distribution.DRIVER

    def decide(self, frame: pl.DataFrame) -> pl.DataFrame:
        units = self._units(frame)
        found = self._find(units)
        labels = connected_components(units.height, found.i, found.j)
        return self._write(frame, units, labels, found)

    def pairs(self, frame: pl.DataFrame) -> pl.DataFrame:
        """The duplicate pairs that `decide` joins into clusters: columns `a`, `b` (ids of the
        compared units: trace ids, or problem ids for problem units) and `similarity` (exact:
        1.0; minhash: the exact Jaccard of the shingle sets where the estimate was within the
        verification margin of the threshold, else the signatures' estimate; semantic: the
        cosine)."""
        units = self._units(frame)
        found = self._find(units)
        uid = units["uid"]
        return pl.DataFrame(
            {
                "a": uid.gather(found.i),
                "b": uid.gather(found.j),
                "similarity": pl.Series(found.sim, dtype=pl.Float32),
            }
        )

    def _check(self, frame: pl.DataFrame) -> None:
        params = self.params
        on = params.on
        step = self.context.stage_id
        require_columns(frame, [on], step=step, operator=self.name, why="named by `on`")
        dtype = frame.schema[on]
        if dtype not in (pl.String, pl.Null):
            raise OperatorError(
                f"step '{step}' (dedup): `on: {on}` must be a text column, but it is {dtype}"
            )
        if params.keep == "best_score":
            require_columns(
                frame,
                ["score"],
                step=step,
                operator=self.name,
                why="for `keep: best_score` (run a verify step that writes scores first)",
            )

    # --- units ---------------------------------------------------------------------------

    def _units(self, frame: pl.DataFrame) -> pl.DataFrame:
        """One row per compared unit: unit, text, group, first_row, length, score, uid."""
        self._check(frame)
        params = self.params
        rows = frame.select(
            pl.int_range(pl.len(), dtype=pl.Int64).alias("row"),
            pl.col("problem_id"),
            pl.col(params.on).cast(pl.String).alias("text"),
            (
                pl.coalesce(pl.col("trace_id"), pl.col("problem_id"))
                if "trace_id" in frame.columns
                else pl.col("problem_id")
            ).alias("uid"),
            (pl.col("score").cast(pl.Float64) if "score" in frame.columns else pl.lit(None))
            .cast(pl.Float64)
            .alias("score"),
        )
        by_problem = params.on in PROBLEM_TEXT_COLUMNS
        if by_problem:
            units = rows.group_by("problem_id", maintain_order=True).agg(
                pl.col("row").first().alias("first_row"),
                pl.col("text").first(),
                pl.col("problem_id").first().alias("uid"),
                pl.col("score").mean(),
            )
        else:
            units = rows.rename({"row": "first_row"})
        group = (
            pl.col("problem_id").rank("dense").cast(pl.Int64)
            if params.scope == "per_problem"
            else pl.lit(0, dtype=pl.Int64)
        )
        return units.with_columns(
            pl.int_range(pl.len(), dtype=pl.Int64).alias("unit"),
            group.alias("group"),
            pl.col("text").str.len_chars().fill_null(0).alias("length"),
            pl.col("text").str.contains(_NON_SPACE).fill_null(False).alias("eligible"),
        )

    # --- clustering ----------------------------------------------------------------------

    def _find(self, units: pl.DataFrame) -> Found:
        """The duplicate pairs among the units (unit ids) and a similarity over unit ids."""
        eligible = units.filter(pl.col("eligible"))
        index = eligible["unit"].to_numpy()
        method = self.params.method
        if method == "exact":
            found = self._exact(eligible)
        elif method == "minhash":
            found = self._minhash(eligible)
        else:
            found = self._semantic(eligible)
        position = np.full(units.height, -1, dtype=np.int64)
        position[index] = np.arange(index.shape[0])
        local = found.similarity

        def similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            return local(position[a], position[b])

        return Found(index[found.i], index[found.j], found.sim, similarity)

    def _exact(self, units: pl.DataFrame) -> Found:
        keys = units.select(
            pl.int_range(pl.len(), dtype=pl.Int64).alias("k"),
            pl.col("group"),
            match_keys(units["text"]).alias("key"),
        )
        star = keys.with_columns(pl.col("k").first().over("group", "key").alias("first")).filter(
            pl.col("k") != pl.col("first")
        )
        i = star["first"].to_numpy()
        return Found(i, star["k"].to_numpy(), np.ones(i.shape[0], np.float32), _identical)

    def _minhash(self, units: pl.DataFrame) -> Found:
        params = self.params
        banding = params.banding()
        logger.info(
            "step '%s' (dedup on %s): %s", self.context.stage_id, params.on, banding.describe()
        )
        sig = self._signatures(units["text"])
        groups = units["group"].to_numpy() if params.scope == "per_problem" else None
        i, j = candidate_pairs(sig, banding, groups)
        sim = estimated_jaccard(sig, i, j)

        def estimated(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            return estimated_jaccard(sig, a, b)

        if not params.verify:
            return Found(i, j, sim, estimated)
        # An estimate within `margin` of the threshold is too close to call: that pair's
        # Jaccard is computed exactly from its shingle sets. Further above, the estimate stands.
        margin = verification_margin(banding)
        sure = sim >= np.float32(banding.threshold + margin)
        close = ~sure & (sim >= np.float32(banding.threshold - margin))
        if close.any():
            exact = ExactJaccard.of(units["text"], np.concatenate([i[close], j[close]]), params)
            sim[close] = exact(i[close], j[close])
        keep = sure | (close & (sim >= np.float32(banding.threshold)))
        return Found(i[keep], j[keep], sim[keep], estimated)

    def _signatures(self, texts: pl.Series) -> np.ndarray:
        """MinHash signatures of `texts`, through the content-hash cache."""
        params = self.params
        cache = VectorCache(
            folder=self.context.cache_dir,
            kind="minhash",
            settings={
                "num_perm": params.num_perm,
                "seed": params.seed,
                "signer": SIGNER,
                "content_key": "xxh3-128",  # every run keys every text: the fast digest
                **shingle_settings(params.shingle, params.ngram),
            },
            width=params.num_perm,
            dtype=np.dtype(np.uint32),
        )

        def sign(todo: pl.Series) -> np.ndarray:
            return sign_texts(
                todo,
                unit=params.shingle,
                n=params.ngram,
                num_perm=params.num_perm,
                seed=params.seed,
                workers=self.context.workers,
            )

        sig, stats = cache.series_vectors(texts, sign, cheap=True)
        self.cache_stats = stats
        logger.info(
            "step '%s' (dedup): minhash signatures of %d distinct texts: %d from the cache, "
            "%d computed",
            self.context.stage_id,
            stats.distinct,
            stats.from_cache,
            stats.computed,
        )
        return sig

    def _embeddings(self, texts: pl.Series) -> np.ndarray:
        """Sentence embeddings of `texts` (L2-normalized float32 rows), through the
        content-hash cache; the model is loaded only when some text is not cached."""
        from curate.embeddings import embed_texts

        params = self.params
        emb, stats = embed_texts(
            texts.to_list(),
            model=params.model,
            batch_size=params.batch_size,
            cache_dir=self.context.cache_dir,
            base_dir=self.context.base_dir,
        )
        self.cache_stats = stats
        logger.info(
            "step '%s' (dedup): embeddings of %d distinct texts: %d from the cache, %d computed",
            self.context.stage_id,
            stats.distinct,
            stats.from_cache,
            stats.computed,
        )
        return emb

    def _semantic(self, units: pl.DataFrame) -> Found:
        from curate.similarity import self_pairs

        params = self.params
        threshold = params.similarity_threshold
        emb = self._embeddings(units["text"])
        if params.scope == "per_problem":
            i, j = group_pairs(units["group"].to_numpy())
        else:
            i, j, _ = self_pairs(emb, threshold - CANDIDATE_SLACK)
        i, j, sim = cosine_pairs(emb, i, j, threshold)

        def similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            return cosine(emb, a, b)

        return Found(i, j, sim, similarity)

    # --- output --------------------------------------------------------------------------

    def _write(
        self,
        frame: pl.DataFrame,
        units: pl.DataFrame,
        labels: np.ndarray,
        found: Found,
    ) -> pl.DataFrame:
        params = self.params
        sizes = component_sizes(labels)
        order = _keep_order(params.keep)
        ranked = units.select("unit", "first_row", "length", "score", "uid").with_columns(
            pl.Series("label", labels), pl.Series("size", sizes)
        )
        reps = (
            ranked.filter(pl.col("size") > 1)
            .sort([*order[0]], descending=order[1], nulls_last=True)
            .group_by("label", maintain_order=True)
            .agg(pl.col("unit").first().alias("rep"), pl.col("uid").first().alias("rep_uid"))
        )
        clustered = ranked.join(reps, on="label", how="left")
        losers = clustered.filter(pl.col("rep").is_not_null() & (pl.col("unit") != pl.col("rep")))
        sims = found.similarity(losers["unit"].to_numpy(), losers["rep"].to_numpy())
        losers = losers.select("unit", "rep").with_columns(pl.Series("sim", sims, pl.Float32))
        losers = losers.join(_closest(found), on="unit", how="left")
        uid_of = ranked.select(pl.col("unit").alias("near"), pl.col("uid").alias("near_uid"))
        losers = losers.join(uid_of, on="near", how="left")
        per_unit = clustered.select("unit", "rep", "rep_uid", "size").join(
            losers.select("unit", "sim", "near", "near_uid", "near_sim"), on="unit", how="left"
        )
        unit_of_row = self._unit_of_row(frame, units)
        decided = unit_of_row.join(per_unit, on="unit", how="left").sort("row")
        is_dup = pl.col("rep").is_not_null() & (pl.col("unit") != pl.col("rep"))
        detail = self._detail(is_dup)
        columns = decided.select(
            pl.col("rep_uid").alias("dup_cluster"),
            pl.when(is_dup).then(pl.col("rep_uid")).alias("dup_of"),
            pl.when(is_dup).then(pl.lit("duplicate")).alias(DROP_REASON),
            detail.alias(DROP_DETAIL),
        )
        body = frame.drop([c for c in ("dup_cluster", "dup_of") if c in frame.columns])
        return pl.concat([body, columns], how="horizontal")

    def _unit_of_row(self, frame: pl.DataFrame, units: pl.DataFrame) -> pl.DataFrame:
        rows = frame.select(pl.int_range(pl.len(), dtype=pl.Int64).alias("row"), "problem_id")
        if self.params.on in PROBLEM_TEXT_COLUMNS:
            return rows.join(units.select("problem_id", "unit"), on="problem_id", how="left")
        return rows.with_columns(pl.col("row").alias("unit")).drop("problem_id")

    def _detail(self, is_dup: pl.Expr) -> pl.Expr:
        params = self.params
        what = "problems" if params.on in PROBLEM_TEXT_COLUMNS else "rows"
        where = "" if params.scope == "global" else " of the same problem"
        if params.method == "exact":
            measure = pl.lit("identical after normalization")
        else:
            name = "estimated Jaccard" if params.method == "minhash" else "cosine"
            measure = pl.format(
                "{} {} to it, threshold {}",
                pl.lit(name),
                pl.col("sim").round(3).cast(pl.String),
                pl.lit(f"{params.similarity_threshold:g}"),
            )
            closer = (pl.col("near") != pl.col("rep")) & (pl.col("near_sim") > pl.col("sim"))
            measure = (
                pl.when(closer)
                .then(
                    pl.format(
                        "{}; closest member {} at {}",
                        measure,
                        pl.col("near_uid"),
                        pl.col("near_sim").round(3).cast(pl.String),
                    )
                )
                .otherwise(measure)
            )
        text = pl.format(
            "{} duplicate of {} on {}: {} (cluster of {} {}{})",
            pl.lit(params.method),
            pl.col("rep_uid"),
            pl.lit(params.on),
            measure,
            pl.col("size").cast(pl.String),
            pl.lit(what),
            pl.lit(where),
        )
        return pl.when(is_dup).then(text)


def group_pairs(groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every pair (i < j) of positions whose group is the same."""
    order = np.argsort(groups, kind="stable")
    ordered = groups[order]
    n = ordered.shape[0]
    if n < 2:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], n]
    end_of = np.repeat(ends, ends - starts)  # the end of each position's group
    after = end_of - np.arange(n) - 1  # partners after each position in its group
    first = np.repeat(np.arange(n), after)
    offset = np.arange(first.shape[0]) - np.repeat(np.cumsum(after) - after, after)
    second = first + 1 + offset
    a, b = order[first], order[second]
    return np.minimum(a, b), np.maximum(a, b)


def cosine(emb: np.ndarray, a: np.ndarray, b: np.ndarray, block: int = 1 << 16) -> np.ndarray:
    """Cosine similarity of rows a[k] and b[k] of L2-normalized `emb` (float32)."""
    out = np.empty(a.shape[0], dtype=np.float32)
    for start in range(0, a.shape[0], block):
        stop = start + block
        out[start:stop] = np.einsum("ij,ij->i", emb[a[start:stop]], emb[b[start:stop]])
    return np.minimum(out, np.float32(1.0))


def cosine_pairs(
    emb: np.ndarray, i: np.ndarray, j: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The candidate pairs (i[k], j[k]) whose cosine, computed pair by pair, reaches the
    threshold (within curate.similarity.TOLERANCE, so a pair on it is not lost to float32
    rounding), with that cosine. Order is kept."""
    from curate.similarity import TOLERANCE

    sim = cosine(emb, i, j)
    keep = sim >= np.float32(threshold - TOLERANCE)
    return i[keep], j[keep], sim[keep]


def _identical(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.ones(a.shape[0], dtype=np.float32)


def _closest(found: Found) -> pl.DataFrame:
    """Each unit's most similar partner among its duplicate pairs (ties: lowest unit)."""
    i, j, sim = found.i, found.j, found.sim
    both = pl.DataFrame(
        {
            "unit": np.concatenate([i, j]),
            "near": np.concatenate([j, i]),
            "near_sim": np.concatenate([sim, sim]).astype(np.float32),
        },
        schema={"unit": pl.Int64, "near": pl.Int64, "near_sim": pl.Float32},
    )
    return (
        both.sort(["unit", "near_sim", "near"], descending=[False, True, False])
        .group_by("unit", maintain_order=True)
        .first()
    )


def _keep_order(keep: str) -> tuple[list[str], list[bool]]:
    if keep == "first":
        return ["first_row"], [False]
    if keep == "shortest":
        return ["length", "first_row"], [False, False]
    if keep == "longest":
        return ["length", "first_row"], [True, False]
    return ["score", "first_row"], [True, False]
