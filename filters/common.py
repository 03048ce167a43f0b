"""Pieces shared by grade, select and prune: difficulty bands, numeric windows, column checks.

Band rule (used by `grade` to name a problem's difficulty from its pass rate): each band
``name: [lo, hi]`` holds the pass rates ``lo <= p < hi`` (half-open), except that a band whose
``hi`` is 1.0 also holds ``p == 1.0``. Bands must lie in [0, 1], have ``lo < hi`` and must not
overlap; gaps are allowed, and a pass rate in a gap (or a null pass rate) gets no band.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import polars as pl
from pydantic import Field, model_validator

from curate.errors import OperatorError
from curate.operators import DROP_DETAIL, DROP_REASON, Params

DEFAULT_BANDS: dict[str, tuple[float, float]] = {
    "easy": (0.75, 1.0),
    "medium": (0.25, 0.75),
    "hard": (0.0, 0.25),
}


def check_bands(bands: Mapping[str, tuple[float, float]]) -> None:
    """Raise ValueError, with a message naming the bands at fault, unless the bands are valid."""
    if not bands:
        raise ValueError("bands: give at least one band, e.g. {hard: [0.0, 0.25]}")
    for name, (lo, hi) in bands.items():
        if not name.strip():
            raise ValueError("bands: a band name must not be empty")
        if not (0.0 <= lo <= 1.0 and 0.0 <= hi <= 1.0):
            raise ValueError(f"bands: {name} = [{lo}, {hi}] must lie within [0, 1]")
        if not lo < hi:
            raise ValueError(f"bands: {name} = [{lo}, {hi}] needs lo < hi")
    ordered = sorted(bands.items(), key=lambda item: item[1][0])
    for (name_a, (lo_a, hi_a)), (name_b, (lo_b, hi_b)) in itertools.pairwise(ordered):
        if lo_b < hi_a:
            raise ValueError(
                f"bands: {name_a} = [{lo_a}, {hi_a}] and {name_b} = [{lo_b}, {hi_b}] overlap "
                f"(a band holds lo <= pass_rate < hi; the band ending at 1.0 also holds 1.0)"
            )


def band_contains(lo: float, hi: float, column: pl.Expr) -> pl.Expr:
    """True where `column` lies in the band [lo, hi) (or [lo, 1.0] when hi is 1.0)."""
    upper = column <= hi if hi >= 1.0 else column < hi
    return (column >= lo) & upper


def band_of(p: float, bands: Mapping[str, tuple[float, float]]) -> str | None:
    """The band of one pass rate, by the same rule as `band_expr` (for tests and reports)."""
    for name, (lo, hi) in bands.items():
        if lo <= p < hi or (hi >= 1.0 and p == hi):
            return name
    return None


def band_expr(bands: Mapping[str, tuple[float, float]], column: pl.Expr) -> pl.Expr:
    """The band name for each value of `column`; null for null values and values in no band."""
    ordered = sorted(bands.items(), key=lambda item: item[1][0])
    name0, (lo0, hi0) = ordered[0]
    chain: Any = pl.when(band_contains(lo0, hi0, column)).then(pl.lit(name0))
    for name, (lo, hi) in ordered[1:]:
        chain = chain.when(band_contains(lo, hi, column)).then(pl.lit(name))
    result: pl.Expr = chain.otherwise(pl.lit(None, dtype=pl.String))
    return result.cast(pl.String)


class FloatWindow(Params):
    """Bounds on a number; give at most one lower (gt or ge) and at most one upper (lt or le)."""

    gt: float | None = Field(None, description="keep values strictly greater than this")
    ge: float | None = Field(None, description="keep values greater than or equal to this")
    lt: float | None = Field(None, description="keep values strictly less than this")
    le: float | None = Field(None, description="keep values less than or equal to this")

    @model_validator(mode="after")
    def _consistent(self) -> FloatWindow:
        _check_window(self.gt, self.ge, self.lt, self.le)
        return self

    def expr(self, column: pl.Expr) -> pl.Expr:
        return window_expr(column, self.gt, self.ge, self.lt, self.le)

    def describe(self, name: str) -> str:
        return describe_window(name, self.gt, self.ge, self.lt, self.le)


class IntWindow(FloatWindow):
    """Bounds on a count; give at most one lower (gt or ge) and at most one upper (lt or le)."""

    gt: int | None = Field(None, description="keep counts strictly greater than this")
    ge: int | None = Field(None, description="keep counts greater than or equal to this")
    lt: int | None = Field(None, description="keep counts strictly less than this")
    le: int | None = Field(None, description="keep counts less than or equal to this")


def _check_window(gt: float | None, ge: float | None, lt: float | None, le: float | None) -> None:
    if gt is not None and ge is not None:
        raise ValueError("give at most one lower bound: gt or ge, not both")
    if lt is not None and le is not None:
        raise ValueError("give at most one upper bound: lt or le, not both")
    lower = gt if gt is not None else ge
    upper = lt if lt is not None else le
    if lower is None and upper is None:
        raise ValueError("give at least one bound: gt, ge, lt or le")
    if lower is not None and upper is not None:
        strict = gt is not None or lt is not None
        if lower > upper or (strict and lower == upper):
            raise ValueError(
                f"the window is empty: nothing is {describe_window('x', gt, ge, lt, le)}"
            )


def window_expr(
    column: pl.Expr, gt: float | None, ge: float | None, lt: float | None, le: float | None
) -> pl.Expr:
    """True where `column` is within the bounds; null where `column` is null."""
    cond = pl.lit(True)
    if gt is not None:
        cond = cond & (column > gt)
    if ge is not None:
        cond = cond & (column >= ge)
    if lt is not None:
        cond = cond & (column < lt)
    if le is not None:
        cond = cond & (column <= le)
    return cond


def describe_window(
    name: str, gt: float | None, ge: float | None, lt: float | None, le: float | None
) -> str:
    """e.g. ``0.1 < pass_rate < 0.6`` or ``n_correct >= 1``."""
    lower = f"{gt} < " if gt is not None else f"{ge} <= " if ge is not None else ""
    upper = f" < {lt}" if lt is not None else f" <= {le}" if le is not None else ""
    if lower and not upper:  # one-sided: read with the name first
        return f"{name} > {gt}" if gt is not None else f"{name} >= {ge}"
    return f"{lower}{name}{upper}"


Check = tuple[pl.Expr, str, pl.Expr]  # (row fails, reason code, detail text)


def first_failure(checks: list[Check]) -> tuple[pl.Expr, pl.Expr]:
    """Reason and detail expressions: those of the first check a row fails, null if none."""
    null = pl.lit(None, dtype=pl.String)
    if not checks:
        return null, null
    reason: Any = pl.when(checks[0][0]).then(pl.lit(checks[0][1]))
    detail: Any = pl.when(checks[0][0]).then(checks[0][2])
    for fails, code, text in checks[1:]:
        reason = reason.when(fails).then(pl.lit(code))
        detail = detail.when(fails).then(text)
    return (
        reason.otherwise(null).cast(pl.String),
        detail.otherwise(null).cast(pl.String),
    )


def require_columns(
    frame: pl.DataFrame, columns: Iterable[str], *, step: str, operator: str, why: str
) -> None:
    """Raise OperatorError naming the columns `frame` lacks and why the step needs them."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise OperatorError(
            f"step '{step}' ({operator}) needs column(s) {', '.join(missing)} {why}; "
            f"columns present: {', '.join(frame.columns)}"
        )


def order_keys(frame: pl.DataFrame) -> list[str]:
    """Columns that order the traces of a problem: sample_index when the pool has it."""
    return [c for c in ("sample_index",) if c in frame.columns]


def cap_per_problem(
    decided: pl.DataFrame,
    k: int,
    keys: list[str],
    *,
    reason: str,
    detail: Callable[[pl.Expr], pl.Expr],
) -> pl.DataFrame:
    """Among rows not yet dropped (null drop_reason), keep the first `k` of each problem ordered
    by `keys` (nulls last) and then by row order; give the rest `reason` and `detail(rank)`,
    where rank is the row's 1-based position among its problem's surviving rows."""
    row = "__cap_row"
    index = pl.int_range(pl.len(), dtype=pl.Int64)
    first = pl.col("problem_id").ne_missing(pl.col("problem_id").shift(1))
    ranked = (
        decided.select("problem_id", *keys, pl.col(DROP_REASON).is_null().alias("__alive"))
        .with_row_index(row)
        .filter(pl.col("__alive"))
        .sort(["problem_id", *keys, row], nulls_last=True)
        # Sorted by problem: rank = position - position of the problem's first row + 1. Cheaper
        # than a window over a string key, and pools usually arrive grouped by problem.
        .with_columns((index - pl.when(first).then(index).forward_fill() + 1).alias("r"))
        .filter(pl.col("r") > k)
    )
    if ranked.height == 0:
        return decided
    rank = pl.repeat(None, decided.height, dtype=pl.Int64, eager=True).alias("__cap_rank")
    rank.scatter(ranked[row], ranked["r"])
    beyond = pl.col(rank.name).is_not_null()
    return (
        decided.with_columns(rank)
        .with_columns(
            pl.when(beyond).then(pl.lit(reason)).otherwise(pl.col(DROP_REASON)).alias(DROP_REASON),
            pl.when(beyond)
            .then(detail(pl.col(rank.name)))
            .otherwise(pl.col(DROP_DETAIL))
            .alias(DROP_DETAIL),
        )
        .drop(rank.name)
    )


def number_text(column: pl.Expr, digits: int = 4) -> pl.Expr:
    """A number as text for detail strings ("null" for null), floats rounded to `digits`."""
    return column.round(digits).cast(pl.String).fill_null("null")
