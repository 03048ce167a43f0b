"""Semantic dedup on Ray (`dedup: {method: semantic}` with `--executor ray`): sentence embeddings
computed by a pool of actors, one model load per actor, and an exact cosine search split into
query blocks. These replace the signing and candidate stages of curate.executors.ray_dedup,
whose unit formation (problem units), connected components and representatives the semantic
step shares with MinHash.

Embeddings. Each actor holds a worker copy of the step. Slices are dealt to the actors
round-robin; an actor reads its slice's columns itself (the driver reads no rows) and embeds
the non-blank texts through the step's own `Dedup._embeddings`: the same model resolution and
the same `VectorCache` (settings, keys, folder) as the local executor, so a re-run, on either
executor, reads them back. The model stays loaded for the actor's lifetime: it is loaded at
most once per actor, and not at all when every text of its slices is cached. One actor per
GPU (`num_gpus=1`) when the cluster has GPUs, else one per CPU; never more than slices. Each
actor reports what it did (process, device, model loads, slices, texts embedded and read from
the cache): the driver logs a summary and `RayExecutor.last_actors` keeps the reports. The
actors are ended as soon as every slice is embedded, so that the search gets the CPUs back.

Problem units (`on: prompt`): each actor embeds the texts of the problems whose first row its
slice holds (stage 0 of curate.executors.ray_dedup names them), one text per problem as the
local executor embeds them.

Search. One task concatenates the slices' embedding blocks into a matrix in the object store
(units x dim, float32; the driver never holds it). Query blocks of rows, cut so that each holds
about the same share of the upper triangle, are searched by parallel tasks: a block's rows
times the rows from its first row on, in products of at most curate.similarity.BLOCK_BYTES,
keeping candidates at `CANDIDATE_SLACK` below the threshold, then the pairs whose cosine
computed pair by pair reaches the threshold (`filters.dedup.cosine_pairs`). That is the rule of
the local executor's search, so wherever it searches exactly (up to
curate.similarity.EXACT_PAIR_LIMIT compared pairs: 50,000 units) the pairs and their
similarities are the same, however either side cut its products.

Beyond that limit the local executor switches to a faiss IVF index, which is approximate. Ray
keeps searching exactly: every pair above the threshold is found, at a cost of n^2/2 x dim
multiply-adds spread over the cluster's CPUs (ten seconds on two cores at 50,000 units and dim
384, so about 400 times that at a million). There the local executor may miss pairs that Ray
finds, and the two are not expected to agree.

Equal embeddings give equal decisions. A fresh Ray run embeds slice by slice, and
sentence-transformers pads each batch to its longest text, so a vector can differ from the one
a local run (batches over the whole pool) computes in its last float32 bits (measured: up to
1.3e-7, on 41 of 240 GSM8K questions); GPUs differ more. That changes a decision only for a
pair that close to the threshold, and a detail only for a cosine that close to a rounding
boundary of its third decimal. Runs that read their embeddings from the cache are identical.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import polars as pl

from curate.errors import CurateError
from curate.executors.ray import Fragment, read_fragment, worker_copy
from curate.executors.ray_dedup import by_problem, slice_units
from curate.filters.dedup import CANDIDATE_SLACK, cosine_pairs
from curate.similarity import BLOCK_BYTES
from curate.storage import parquet_file

if TYPE_CHECKING:
    from curate.filters.dedup import Dedup

logger = logging.getLogger(__name__)


def _models_loaded() -> int:
    """How many embedding models this process has loaded: curate.embeddings loads each model
    once per process and keeps it."""
    from curate import embeddings

    return len(embeddings._MODELS)


def _device() -> str | None:
    from curate import embeddings

    models = list(embeddings._MODELS.values())
    return str(models[0].device) if models else None


class EmbedActor:
    """One embedding actor (see the module docstring); made remote by `start_actors`."""

    def __init__(self, operator: Dedup, index: int) -> None:
        self.op = operator
        self.index = index
        self.loads = 0
        self.slices = 0
        self.rows = 0
        self.embedded = 0
        self.from_cache = 0

    def _read(self, frag: Fragment) -> pl.DataFrame:
        """The slice's columns that the step reads (`start_actors` checked them)."""
        wanted = (self.op.params.on, "problem_id", "trace_id", "score")
        present = set(parquet_file(frag.file).schema_arrow.names)
        frame = read_fragment(frag, [c for c in wanted if c in present])
        self.slices += 1
        self.rows += frame.height
        return frame

    def _count(self, before: int) -> None:
        self.loads += _models_loaded() - before
        stats = self.op.cache_stats
        if stats is not None:
            self.embedded += stats.computed
            self.from_cache += stats.from_cache
            self.op.cache_stats = None

    def embed(
        self, frag: Fragment, *problems: pl.DataFrame
    ) -> tuple[pl.DataFrame, tuple[np.ndarray, np.ndarray], int]:
        """A slice's thin rows, its block (units, embeddings) and how many units it has
        (`problems`: for problem units, the slice's pieces of ray_dedup's stage 0)."""
        frame = self._read(frag)
        thin, units, texts = slice_units(
            frame,
            self.op.params.on,
            frag.first_row,
            list(problems) if by_problem(self.op) else None,
        )
        if units.size == 0:  # nothing to embed: no model load just to learn the width
            return thin, (units, np.empty((0, 0), dtype=np.float32)), 0
        before = _models_loaded()
        emb = self.op._embeddings(texts)
        self._count(before)
        return thin, (units, emb), int(units.size)

    def report(self) -> dict[str, Any]:
        import ray

        return {
            "actor": self.index,
            "pid": os.getpid(),
            "node": ray.get_runtime_context().get_node_id(),
            "gpus": [str(g) for g in ray.get_gpu_ids()],
            "device": _device(),
            "loads": self.loads,
            "slices": self.slices,
            "rows": self.rows,
            "embedded": self.embedded,
            "from_cache": self.from_cache,
        }


def start_actors(
    ray: Any, operator: Dedup, frags: list[Fragment], options: dict[str, Any]
) -> tuple[list[Any], str]:
    """The embedding actors (one per GPU, else one per CPU, at most one per slice) and what
    each holds. `options` are the executor's task options: their retries become the actors'
    restarts and retried calls (a restarted actor loads the model again). Missing columns and
    a model that is not on this machine fail here, with the local executor's messages, before
    any actor starts."""
    from curate.embeddings import resolve_model

    empty = pl.from_arrow(parquet_file(frags[0].file).schema_arrow.empty_table())
    operator._check(cast(pl.DataFrame, empty))
    resolve_model(operator.params.model, base_dir=operator.context.base_dir)
    slices = len(frags)
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    retries = int(options.get("max_retries", 0))
    actor_options: dict[str, Any] = {
        "num_cpus": 1,
        "max_restarts": retries,
        "max_task_retries": retries,
    }
    if options.get("memory"):
        actor_options["memory"] = options["memory"]
    if gpus:
        actor_options["num_gpus"] = 1
        count, holds = min(slices, gpus), "1 GPU"
    else:
        count, holds = min(slices, max(1, int(resources.get("CPU", 1)))), "1 CPU"
    remote = ray.remote(**actor_options)(EmbedActor)
    worker = worker_copy(operator)
    return [remote.remote(worker, k) for k in range(max(1, count))], holds


def _raise_cause(exc: Exception) -> None:
    """An actor that stopped on one of curate's own errors (a column that is not text, a
    model that does not load): raise that error, whose message names the problem."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, CurateError):
        raise cause from None


def end_actors(ray: Any, actors: list[Any]) -> None:
    """End the actors now (also when a slice failed), so that their CPUs or GPUs are free."""
    for actor in actors:
        ray.kill(actor)


def summarize(
    ray: Any, operator: Dedup, actors: list[Any], holds: str, slices: int
) -> list[dict[str, Any]]:
    """The actors' reports, with a summary in the log."""
    reports: list[dict[str, Any]] = ray.get([a.report.remote() for a in actors])
    logger.info(
        "step '%s' (dedup on %s): embeddings of %d slices by %d actors (%s each): model "
        "loaded %d times; %d texts embedded, %d read from the cache",
        operator.context.stage_id,
        operator.params.on,
        slices,
        len(actors),
        holds,
        sum(r["loads"] for r in reports),
        sum(r["embedded"] for r in reports),
        sum(r["from_cache"] for r in reports),
    )
    return reports


@dataclasses.dataclass(frozen=True)
class Embedded:
    """Per slice, the refs of its thin rows and of its (units, embeddings) block; the number
    of units; what each actor did."""

    thin: list[Any]
    blocks: list[Any]
    units: int
    reports: list[dict[str, Any]]


def embed_slices(
    ray: Any,
    operator: Dedup,
    frags: list[Fragment],
    *,
    options: dict[str, Any],
    problems: list[list[Any]] | None = None,
) -> Embedded:
    """Every slice's thin rows and embeddings, computed by the actor pool and left in the
    object store (`problems`: per slice, its refs of ray_dedup's stage 0, for problem
    units)."""
    actors, holds = start_actors(ray, operator, frags, options)
    try:
        refs = [
            actors[k % len(actors)]
            .embed.options(num_returns=3)
            .remote(frag, *(problems[k] if problems is not None else []))
            for k, frag in enumerate(frags)
        ]
        counts = ray.get([r[2] for r in refs])
        reports = summarize(ray, operator, actors, holds, len(frags))
    except ray.exceptions.RayTaskError as exc:
        _raise_cause(exc)
        raise
    finally:
        end_actors(ray, actors)  # what they returned stays in the object store
    return Embedded([r[0] for r in refs], [r[1] for r in refs], sum(counts), reports)


# --- search ----------------------------------------------------------------------------------


def query_blocks(n: int, blocks: int) -> list[tuple[int, int]]:
    """Row ranges [a, b) of an n-row self-search, each with about the same number of pairs to
    compare (row r is compared with the n - 1 - r rows after it)."""
    if n < 2:
        return []
    blocks = max(1, min(blocks, n - 1))
    rows = np.arange(n, dtype=np.float64)
    done = np.cumsum(n - 1 - rows)  # pairs compared by rows 0..r
    cuts = np.searchsorted(done, done[-1] * np.arange(1, blocks) / blocks, side="left") + 1
    bounds = np.unique(np.concatenate([[0], cuts, [n]]))
    return [(int(a), int(b)) for a, b in itertools.pairwise(bounds) if a < b]


def assemble(*blocks: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The slices' (units, embeddings) blocks as one matrix, rows in unit (pool) order."""
    full = [b for b in blocks if b[0].size]
    if not full:
        return np.empty(0, dtype=np.int64), np.empty((0, 0), dtype=np.float32)
    return np.concatenate([b[0] for b in full]), np.concatenate([b[1] for b in full])


def search_block(
    matrix: tuple[np.ndarray, np.ndarray], start: int, stop: int, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The pairs (unit i, unit j > i, cosine) at or above the threshold whose first row is in
    start..stop-1, and how many candidates the products proposed."""
    units, emb = matrix
    n = emb.shape[0]
    step = max(1, BLOCK_BYTES // (4 * n))  # rows per product, as the local search
    cut = np.float32(threshold - CANDIDATE_SLACK)
    found_i, found_j = [np.empty(0, np.int64)], [np.empty(0, np.int64)]
    for a in range(start, stop, step):
        b = min(stop, a + step)
        sims = emb[a:b] @ emb[a:].T
        rows, cols = np.nonzero(np.triu(sims >= cut, k=1))
        found_i.append(rows.astype(np.int64) + a)
        found_j.append(cols.astype(np.int64) + a)
    i, j = np.concatenate(found_i), np.concatenate(found_j)
    candidates = int(i.size)
    i, j, sim = cosine_pairs(emb, i, j, threshold)
    return units[i], units[j], sim, candidates


def search_pairs(
    ray: Any,
    operator: Dedup,
    blocks: list[Any],
    units: int,
    *,
    partitions: int,
    options: dict[str, Any],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """All pairs (i < j, cosine) of units at or above the step's threshold, sorted by (i, j),
    and how many candidates the products proposed (see the module docstring)."""
    from curate.similarity import EXACT_PAIR_LIMIT

    params = operator.params
    threshold = params.similarity_threshold
    if units * (units - 1) // 2 > EXACT_PAIR_LIMIT:
        logger.info(
            "step '%s' (dedup on %s): %d embeddings, beyond the local exact-search limit: "
            "searched exactly on Ray (a local run would use an approximate index)",
            operator.context.stage_id,
            params.on,
            units,
        )
    ranges = query_blocks(units, partitions)
    empty = np.empty(0, dtype=np.int64)
    if not ranges:
        return empty, empty, np.empty(0, dtype=np.float32), 0
    matrix = ray.remote(**options)(assemble).remote(*blocks)
    search = ray.remote(num_returns=4, **options)(search_block)
    refs = [search.remote(matrix, a, b, threshold) for a, b in ranges]
    got = cast(list[list[Any]], [ray.get(list(r)) for r in refs])
    return (
        np.concatenate([g[0] for g in got]).astype(np.int64),
        np.concatenate([g[1] for g in got]).astype(np.int64),
        np.concatenate([g[2] for g in got]).astype(np.float32),
        sum(int(g[3]) for g in got),
    )
