"""Connected components on Ray: the alternating large-star / small-star algorithm (Kiveris et
al., "Connected Components in MapReduce and Beyond", SoCC 2014). Edges are hash-partitioned on
their source node; each phase is one wave of tasks, one per partition, each grouping its nodes'
neighbourhoods in Polars, so no process ever holds the whole graph's adjacency.

- large-star(u): link every neighbour v > u to m(u), the smallest of u and its neighbours;
- small-star(u): link u and every neighbour v <= u to the smallest of them.

Both keep the components and shrink their diameter; when a round changes no edge, every
component is a star around its smallest node. So a node's label is the smallest node of its
component, the same labels `curate.clusters.connected_components` gives (the tests compare).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

EDGES = {"u": pl.Int64, "v": pl.Int64}
MAX_ROUNDS = 200


def _directed(edges: pl.DataFrame, partitions: int) -> list[pl.DataFrame]:
    """Both directions of each edge, split by the source's partition."""
    both = pl.concat([edges, edges.select(pl.col("v").alias("u"), pl.col("u").alias("v"))])
    part = (both["u"] % partitions).cast(pl.Int64)
    return [both.filter(part == p) for p in range(partitions)]


def _star(pieces: list[pl.DataFrame], large: bool) -> pl.DataFrame:
    """One star phase over the directed edges whose source is in this partition; returns the
    undirected edges (u < v) it emits."""
    directed = pl.concat(pieces).unique()
    if directed.height == 0:
        return pl.DataFrame(schema=EDGES)
    if large:
        m = (
            directed.group_by("u")
            .agg(pl.col("v").min().alias("m"))
            .with_columns(pl.min_horizontal("m", "u").alias("m"))
        )
        out = directed.filter(pl.col("v") > pl.col("u")).join(m, on="u")
        emitted = out.select(pl.col("v"), pl.col("m"))
    else:
        low = directed.filter(pl.col("v") <= pl.col("u"))
        m = low.group_by("u").agg(pl.col("v").min().alias("m_low"))
        nodes = directed.select("u").unique().join(m, on="u", how="left")
        nodes = nodes.with_columns(
            pl.min_horizontal(pl.col("m_low").fill_null(pl.col("u")), pl.col("u")).alias("m")
        )
        members = pl.concat([low.select("u", "v"), nodes.select("u", pl.col("u").alias("v"))]).join(
            nodes.select("u", "m"), on="u"
        )
        emitted = members.select(pl.col("v"), pl.col("m"))
    emitted = emitted.filter(pl.col("v") != pl.col("m"))
    return emitted.select(
        pl.min_horizontal("v", "m").alias("u"), pl.max_horizontal("v", "m").alias("v")
    ).unique()


def _signature(edges: pl.DataFrame) -> tuple[int, int]:
    if edges.height == 0:
        return (0, 0)
    hashed = edges.select(pl.struct("u", "v").hash(seed=3).alias("h"))["h"]
    return (edges.height, int(hashed.cast(pl.Float64).sum()))


def components_on_ray(
    ray: Any, n: int, i: np.ndarray, j: np.ndarray, *, partitions: int, options: dict[str, Any]
) -> np.ndarray:
    """Labels of nodes 0..n-1 under edges (i[k], j[k]): the smallest node of each component."""
    labels = np.arange(n, dtype=np.int64)
    final = component_stars(ray, i, j, partitions=partitions, options=options)
    # A star around its smallest node m: every other member v has the edge (m, v).
    labels[final["v"].to_numpy()] = final["u"].to_numpy()
    return labels


def component_stars(
    ray: Any, i: np.ndarray, j: np.ndarray, *, partitions: int, options: dict[str, Any]
) -> pl.DataFrame:
    """The components of edges (i[k], j[k]) as stars: one edge (u, v) per node v that is not
    the smallest node u of its component. Nodes in no edge do not appear, so the frame is as
    long as the clustered nodes, however many nodes there are."""
    if i.size == 0:
        return pl.DataFrame(schema=EDGES)

    @ray.remote(num_returns=partitions, **options)
    def split(edges: pl.DataFrame) -> Any:
        pieces = _directed(edges, partitions)
        return pieces if partitions > 1 else pieces[0]

    @ray.remote(num_returns=2, **options)
    def phase(large: bool, *pieces: pl.DataFrame) -> tuple[pl.DataFrame, tuple[int, int]]:
        out = _star(list(pieces), large)
        return out, _signature(out)

    def run_phase(chunks: list[Any], large: bool) -> tuple[list[Any], tuple[int, int]]:
        split_refs = [split.remote(chunk) for chunk in chunks]
        if partitions == 1:
            split_refs = [[ref] for ref in split_refs]
        results = [
            phase.remote(large, *[refs[p] for refs in split_refs]) for p in range(partitions)
        ]
        signatures = ray.get([r[1] for r in results])
        total = (sum(s[0] for s in signatures), sum(s[1] for s in signatures))
        return [r[0] for r in results], total

    start = pl.DataFrame(
        {"u": np.minimum(i, j).astype(np.int64), "v": np.maximum(i, j).astype(np.int64)}
    ).unique()
    step = -(-start.height // partitions)
    chunks = [ray.put(start.slice(k * step, step)) for k in range(partitions)]
    previous: tuple[int, int] | None = None
    for _ in range(MAX_ROUNDS):
        chunks, _large = run_phase(chunks, large=True)
        chunks, current = run_phase(chunks, large=False)
        if current == previous:
            break
        previous = current
    else:  # pragma: no cover - the algorithm converges in O(log n) rounds
        raise RuntimeError("connected components did not converge")
    return pl.concat(ray.get(chunks)).unique().cast(EDGES)
