"""Stratified, length-weighted draws of problems: the sampling half of s1's selection.

Within each stratum (a value of the `by` column; null is a stratum of its own), problems are
ranked by length, 0 for the most preferred (the longest with `prefer: longer`), ties broken by
problem_id, and drawn one after another without replacement with probability proportional to
``2^-rank`` among those left, as in s1's Algorithm 1. The order of a stratum's draws is taken
in one pass with the Gumbel-top-k trick (sorting ``-rank * ln 2 + Gumbel noise``), which gives
exactly that successive-sampling distribution and stays exact for ranks far beyond float
range. With `prefer: none` every problem has the same weight.

How the strata share the `size`:

- `uniform` (s1): each draw first picks a stratum uniformly at random among those with
  problems left, then the next problem of that stratum. Small strata are used up and the rest
  share what is left, which favours diversity over the pool's proportions.
- `proportional`: stratum s gets ``size * n_s / N`` problems, rounded down, and the problems
  left over go to the strata with the largest remainders (ties: the larger stratum, then
  stratum order). Draw order is then stratum by stratum.

Everything comes from one NumPy generator seeded with `seed`, consuming its draws in an order
fixed by the data (strata sorted, problems in rank order), so the same problems, lengths and
seed give the same draw whatever order the pool's rows are in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import polars as pl

Allocation = Literal["uniform", "proportional"]
Prefer = Literal["longer", "shorter", "none"]


@dataclass(frozen=True)
class StratumDraw:
    """What one stratum had and gave."""

    value: object
    available: int
    drawn: int


def largest_remainder(counts: list[int], size: int) -> list[int]:
    """Quotas proportional to `counts` summing to min(size, sum(counts))."""
    total = sum(counts)
    if size >= total:
        return list(counts)
    exact = [size * n / total for n in counts]
    quotas = [math.floor(x) for x in exact]
    left = size - sum(quotas)
    order = sorted(range(len(counts)), key=lambda i: (-(exact[i] - quotas[i]), -counts[i], i))
    for i in order[:left]:
        quotas[i] += 1
    return quotas


def draw_problems(
    problems: pl.DataFrame,
    *,
    size: int,
    allocation: Allocation,
    prefer: Prefer,
    seed: int,
) -> tuple[pl.DataFrame, list[StratumDraw]]:
    """`problems` has one row per problem: problem_id, stratum, length (nulls rank last).
    Returns it with `length_rank` (null with prefer none) and `draw_order` (1-based; null for
    problems not drawn), sorted by stratum and rank, and a summary per stratum."""
    keys: list[pl.Expr | str] = [pl.col("stratum").cast(pl.String)]
    descending = [False]
    if prefer != "none":
        keys.append("length")
        descending.append(prefer == "longer")
    keys.append("problem_id")
    descending.append(False)
    ranked = problems.sort(keys, descending=descending, nulls_last=True)
    start = pl.col("stratum").ne_missing(pl.col("stratum").shift(1))
    index = pl.int_range(pl.len(), dtype=pl.Int64)
    ranked = ranked.with_columns((index - pl.when(start).then(index).forward_fill()).alias("_pos"))
    n = ranked.height
    stratum_of = ranked.select(start.cum_sum() - 1).to_series().to_numpy().astype(np.int64)
    positions = ranked["_pos"].to_numpy()
    rng = np.random.default_rng(seed)
    key = rng.gumbel(size=n)
    if prefer != "none":
        key = key - positions * math.log(2.0)
    # Draw order within each stratum: by stratum, then key from high to low.
    order = np.lexsort((-key, stratum_of))
    counts: list[int] = np.bincount(stratum_of).tolist() if n else []
    starts = np.concatenate(([0], np.cumsum(counts, dtype=np.int64)[:-1])).astype(np.int64)
    draw_order = np.zeros(n, dtype=np.int64)  # 0: not drawn
    if allocation == "uniform":
        taken = [0] * len(counts)
        active = [s for s, c in enumerate(counts) if c > 0]
        for step in range(1, min(size, n) + 1):
            j = int(rng.integers(len(active)))
            s = active[j]
            draw_order[order[starts[s] + taken[s]]] = step
            taken[s] += 1
            if taken[s] == counts[s]:
                active.pop(j)
    else:
        step = 0
        for s, quota in enumerate(largest_remainder(counts, size)):
            for t in range(quota):
                step += 1
                draw_order[order[starts[s] + t]] = step
    result = ranked.with_columns(
        (pl.col("_pos") if prefer != "none" else pl.lit(None, dtype=pl.Int64)).alias("length_rank"),
        pl.Series("draw_order", draw_order).replace(0, None).cast(pl.Int64),
    ).drop("_pos")
    values = ranked["stratum"].to_list()
    summary = [
        StratumDraw(
            value=values[starts[s]],
            available=counts[s],
            drawn=int((draw_order[starts[s] : starts[s] + counts[s]] > 0).sum()),
        )
        for s in range(len(counts))
    ]
    return result, summary
