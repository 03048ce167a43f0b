"""Preference pairs inside a pool: the one pairing rule behind the `pair` operator and the
preference export.

Candidates. Rows are grouped by `group` (default: per problem) and, within a group, by `item`:
the column (or the first non-null of several columns) naming one candidate. By default every
trace is its own candidate (`item: trace_id`); with `item: [parent_trace_id, trace_id]`, a rule
and the traces that apply it are one candidate (ReDis). A candidate's value is its `score`, or
its `verdict` as 1.0 / 0.0, taken over the non-null values of its rows by `aggregate` (`same`
requires them to agree). A candidate with no value, or with a null group key, takes no part.

A candidate's *representative row* is its row whose `trace_id` equals the item, or else its
first row by `sample_index` (then pool order). Its role, parent, margin and order are read from
that row, and the export takes its text from it.

Pairs. Within a group, candidate x is chosen over candidate y when
``value_x > value_y + margin`` (strictly, as in ReDis's construct_pair.py), where the margin is
read from x's representative row: a number, or a per-value map over a column (ReDis: 1, 2, 3, 4
for 1D-ARC, ACRE, List Functions, MiniSCAN). With `by: verdict` the margin is 0, so every
correct candidate is chosen over every incorrect one. Role filters restrict each side (teacher
over student), and `link: parent` pairs a candidate only with the one it was made from (its
`parent_trace_id`), as in the student-feedback recipe. With `per_group`, a group with more pairs
keeps that many: the first ones by (chosen order, rejected order) with `pick: first`, or a
seeded uniform sample with `pick: random`. The sample depends only on the seed and the set of
pairs, not on row order.

REDI's rule (the preference export's default) is this rule with `by: verdict`, one pair per
problem, `pick: first`: the first correct trace against the first incorrect one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import polars as pl

Compare = Literal["score", "verdict"]
Aggregate = Literal["same", "sum", "mean", "max", "min"]
Pick = Literal["first", "random"]
Link = Literal["any", "parent"]

# Private column names used while pairing; none is left in any result.
_ROW = "__pair_row"
_ITEM = "__pair_item"
_VALUE = "__pair_value"
_MARGIN = "__pair_margin"
_ROLE = "__pair_role"
_PARENT = "__pair_parent"
_INDEX = "__pair_sample_index"
_IS_OWN = "__pair_is_own_row"
_KEY = "__pair_key"
_MARGIN_KEY = "__pair_margin_key"

# Columns of the pairs frame `make_pairs` returns, after the group columns.
PAIR_COLUMNS = (
    "chosen",  # item of the chosen candidate
    "rejected",  # item of the rejected candidate
    "chosen_score",  # the values that were compared
    "rejected_score",
    "margin",
    "chosen_row",  # row index, in the frame given, of each side's representative row
    "rejected_row",
    "chosen_order",  # each side's position among its group's candidates (0-based)
    "rejected_order",
)


@dataclass(frozen=True, kw_only=True)
class MarginMap:
    """A margin per value of a column; values not listed take `default` (an error if None)."""

    column: str
    values: Mapping[str, float]
    default: float | None = None


@dataclass(frozen=True, kw_only=True)
class PairRule:
    """Everything that decides which pairs a pool yields (see the module docstring)."""

    by: Compare = "score"
    group: tuple[str, ...] = ("problem_id",)
    item: tuple[str, ...] = ("trace_id",)
    aggregate: Aggregate = "same"
    margin: float | MarginMap = 0.0
    chosen_roles: tuple[str, ...] | None = None
    rejected_roles: tuple[str, ...] | None = None
    link: Link = "any"
    per_group: int | None = None
    pick: Pick = "random"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.by == "verdict" and self.aggregate not in ("same", "max", "min"):
            raise ValueError(
                f"aggregate: {self.aggregate} is for scores; with by: verdict use same, "
                "max (correct if any row is) or min (correct if every row is)"
            )
        if self.by == "verdict" and self.margin != 0.0:
            raise ValueError("margin: with by: verdict a correct trace beats an incorrect one")

    @property
    def value_column(self) -> str:
        return "verdict" if self.by == "verdict" else "score"

    def required_columns(self) -> list[str]:
        """Pool columns this rule reads."""
        needed = [*self.group, *self.item, self.value_column]
        if self.chosen_roles is not None or self.rejected_roles is not None:
            needed.append("role")
        if self.link == "parent":
            needed.append("parent_trace_id")
        if isinstance(self.margin, MarginMap):
            needed.append(self.margin.column)
        return list(dict.fromkeys(needed))


def _missing(frame: pl.DataFrame, rule: PairRule) -> list[str]:
    return [c for c in rule.required_columns() if c not in frame.columns]


def _margin_exprs(margin: float | MarginMap) -> list[pl.Expr]:
    """The margin of each row (and, for a map, the column value it was looked up by)."""
    if not isinstance(margin, MarginMap):
        return [pl.lit(float(margin), dtype=pl.Float64).alias(_MARGIN)]
    key = pl.col(margin.column).cast(pl.String)
    value = key.replace_strict(
        {str(k): float(v) for k, v in margin.values.items()},
        default=None if margin.default is None else float(margin.default),
        return_dtype=pl.Float64,
    )
    return [value.alias(_MARGIN), key.alias(_MARGIN_KEY)]


def _check_margins(per_item: pl.DataFrame, margin: float | MarginMap) -> None:
    if not isinstance(margin, MarginMap):
        return
    unlisted = per_item.filter(pl.col(_MARGIN).is_null())[_MARGIN_KEY].unique().sort().to_list()
    if unlisted:
        shown = ", ".join("null" if v is None else repr(v) for v in unlisted)
        listed = ", ".join(map(repr, margin.values))
        raise ValueError(
            f"margin: column '{margin.column}' has value(s) {shown} that `values` does not "
            f"list (it lists {listed}); add them or give a `default`"
        )


def _value_expr(rule: PairRule) -> pl.Expr:
    return pl.col(rule.value_column).cast(pl.Float64)


def _aggregate(rule: PairRule) -> pl.Expr:
    values = pl.col(_VALUE).drop_nulls()
    if rule.aggregate == "same":
        agg = values.first()
    elif rule.aggregate == "sum":
        agg = values.sum()
    elif rule.aggregate == "mean":
        agg = values.mean()
    elif rule.aggregate == "max":
        agg = values.max()
    else:
        agg = values.min()
    return pl.when(values.len() > 0).then(agg).otherwise(None).cast(pl.Float64)


def item_expr(rule: PairRule) -> pl.Expr:
    """The candidate a row belongs to: the first non-null of the rule's item columns."""
    return pl.coalesce([pl.col(c).cast(pl.String) for c in rule.item])


def candidates(frame: pl.DataFrame, rule: PairRule) -> pl.DataFrame:
    """One row per candidate: the group columns, `item`, `value`, `margin`, `role`, `parent`,
    `row` (its representative row's index in `frame`) and `order` (0-based, within its group,
    by the representative's sample_index and then row index). ValueError names what is wrong."""
    missing = _missing(frame, rule)
    if missing:
        raise ValueError(f"needs column(s) {', '.join(missing)}")
    group = list(rule.group)
    has = frame.columns

    def optional(name: str, dtype: pl.DataType) -> pl.Expr:
        return (pl.col(name) if name in has else pl.lit(None)).cast(dtype)

    item = item_expr(rule)
    own_row = (
        (pl.col("trace_id").cast(pl.String) == item).fill_null(False)
        if "trace_id" in has
        else pl.lit(False)
    )
    rows = (
        frame.select(
            *group,
            item.alias(_ITEM),
            _value_expr(rule).alias(_VALUE),
            own_row.alias(_IS_OWN),
            optional("sample_index", pl.Int64()).alias(_INDEX),
            optional("role", pl.String()).alias(_ROLE),
            optional("parent_trace_id", pl.String()).alias(_PARENT),
            *_margin_exprs(rule.margin),
        )
        .with_row_index(_ROW)
        .filter(pl.all_horizontal(pl.col(c).is_not_null() for c in [*group, _ITEM]))
    )
    extra = [_MARGIN_KEY] if isinstance(rule.margin, MarginMap) else []
    keys = [*group, _ITEM]
    if rows[_ITEM].n_unique() == rows.height:
        # Every candidate is one row (the usual case: item = trace_id): nothing to aggregate.
        per_item = rows.select(
            *keys,
            pl.col(_VALUE).alias("value"),
            pl.col(_ROW).alias("row"),
            _INDEX,
            pl.col(_ROLE).alias("role"),
            pl.col(_PARENT).alias("parent"),
            _MARGIN,
            *extra,
        )
    else:
        if rule.aggregate == "same":
            _check_same(rows, rule)
        per_item = (
            # The representative first: the item's own row, then by sample_index, then row order.
            rows.sort(
                [*keys, _IS_OWN, _INDEX, _ROW],
                descending=[False] * len(keys) + [True, False, False],
                nulls_last=True,
            )
            .group_by(keys, maintain_order=True)
            .agg(
                _aggregate(rule).alias("value"),
                pl.col(_ROW).first().alias("row"),
                pl.col(_INDEX).first(),
                pl.col(_ROLE).first().alias("role"),
                pl.col(_PARENT).first().alias("parent"),
                pl.col(_MARGIN).first(),
                *(pl.col(c).first() for c in extra),
            )
        )
    per_item = (
        per_item
        # No value, or a role that may be on neither side: the candidate takes no part.
        .filter(
            pl.col("value").is_not_null()
            & (
                _side_ok(rule.chosen_roles, pl.col("role"))
                | _side_ok(rule.rejected_roles, pl.col("role"))
            )
        )
    )
    _check_margins(per_item, rule.margin)
    return (
        per_item.sort([*group, _INDEX, "row"], nulls_last=True)
        .with_columns(_position_in_group(group).alias("order"))
        .rename({_ITEM: "item", _MARGIN: "margin"})
        .drop(_INDEX, *extra)
    )


def _position_in_group(group: list[str]) -> pl.Expr:
    """0-based position of each row within its group, on a frame sorted by `group` (cheaper
    than a window over string keys)."""
    index = pl.int_range(pl.len(), dtype=pl.Int64)
    starts = pl.any_horizontal([pl.col(c).ne_missing(pl.col(c).shift(1)) for c in group])
    return index - pl.when(starts).then(index).forward_fill()


def _check_same(rows: pl.DataFrame, rule: PairRule) -> None:
    group = list(rule.group)
    spread = (
        rows.filter(pl.col(_VALUE).is_not_null())
        .group_by([*group, _ITEM])
        .agg(pl.col(_VALUE).unique().sort().alias("values"))
        .filter(pl.col("values").list.len() > 1)
        .sort([*group, _ITEM])
    )
    if spread.height:
        first = spread.row(0, named=True)
        raise ValueError(
            f"aggregate: same, but the rows of candidate {first[_ITEM]!r} have different "
            f"{rule.value_column} values {first['values']} ({spread.height} candidate(s) like "
            "it); choose aggregate: sum, mean, max or min"
        )


def _side_ok(roles: tuple[str, ...] | None, role: pl.Expr) -> pl.Expr:
    if roles is None:
        return pl.lit(True)
    return role.is_in(list(roles)).fill_null(False)


def make_pairs(cands: pl.DataFrame, rule: PairRule) -> pl.DataFrame:
    """Pairs among `candidates(...)`: the group columns then PAIR_COLUMNS, ordered by group,
    chosen order and rejected order."""
    group = list(rule.group)
    left = cands.filter(_side_ok(rule.chosen_roles, pl.col("role")))
    right = cands.filter(_side_ok(rule.rejected_roles, pl.col("role")))
    if rule.by == "verdict":
        left = left.filter(pl.col("value") == 1.0)
        right = right.filter(pl.col("value") == 0.0)
        if rule.per_group is not None and rule.pick == "first" and rule.link == "any":
            # Every (correct, incorrect) pair is valid here, so the first k pairs by (chosen
            # order, rejected order) use only the first k of each side: skip the full product.
            left = left.group_by(group, maintain_order=True).head(rule.per_group)
            right = right.group_by(group, maintain_order=True).head(rule.per_group)
    left = left.select(
        *group,
        pl.col("item").alias("chosen"),
        pl.col("value").alias("chosen_score"),
        "margin",
        pl.col("row").alias("chosen_row"),
        pl.col("order").alias("chosen_order"),
        pl.col("parent").alias(_PARENT),
    )
    right = right.select(
        *group,
        pl.col("item").alias("rejected"),
        pl.col("value").alias("rejected_score"),
        pl.col("row").alias("rejected_row"),
        pl.col("order").alias("rejected_order"),
    )
    wins = (pl.col("chosen_score") > pl.col("rejected_score") + pl.col("margin")) & (
        pl.col("chosen") != pl.col("rejected")
    )
    if rule.link == "parent":
        wins = wins & (pl.col(_PARENT) == pl.col("rejected")).fill_null(False)
    # Both sides are in candidate order (by group, then order), so a join that keeps the left
    # order, then the right order, yields pairs ordered by group, chosen and rejected order.
    pairs = left.join(right, on=group, how="inner", maintain_order="left_right").filter(wins)
    pairs = _cap(pairs, rule)
    return pairs.select(*group, *PAIR_COLUMNS)


def _cap(pairs: pl.DataFrame, rule: PairRule) -> pl.DataFrame:
    if rule.per_group is None or pairs.height == 0:
        return pairs
    group = list(rule.group)
    if rule.pick == "first":
        return pairs.group_by(group, maintain_order=True).head(rule.per_group)
    # A seeded uniform sample per group: random keys drawn in an order that depends only on
    # the pairs themselves (group, chosen item, rejected item), then the smallest k per group.
    keyed = pairs.sort([*group, "chosen", "rejected"])
    keys = np.random.default_rng(rule.seed).random(keyed.height)
    return (
        keyed.with_columns(pl.Series(_KEY, keys))
        .filter(pl.col(_KEY).rank("ordinal").over(group) <= rule.per_group)
        .drop(_KEY)
        .sort([*group, "chosen_order", "rejected_order"])
    )


def pairs_of(frame: pl.DataFrame, rule: PairRule) -> pl.DataFrame:
    """The pairs `rule` finds in `frame` (group columns, then PAIR_COLUMNS)."""
    return make_pairs(candidates(frame, rule), rule)
