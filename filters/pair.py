"""The `pair` operator: preference pairs inside the pool, marked on its rows.

Within each group of rows (default: per problem; `group: [problem_id, round]` for rounds),
candidate x is chosen over candidate y when x's value exceeds y's by more than a margin. The
value is the `score` (ReDis: demonstrations a rule reproduces) or, with `by: verdict`, the
verdict (a correct trace over an incorrect one; with `chosen_role: teacher` and
`rejected_role: student`, Tailored Learning's teacher rationale over the student's wrong one).
The rule itself, candidates made of several rows (`item`), margins per task and the seeded cap
are described in curate.pairing, which the preference export uses too.

Nothing is dropped: the rejected side of a pair must stay in the pool for the preference export
to read it. The step writes, on every row:

- `pair_item`: the candidate the row belongs to; null when it took no part (no value, a null
  group key, or a role that may be on neither side);
- `pair_score`: the candidate's compared value (its score, or its verdict as 1.0 / 0.0);
- `won_pairs` / `lost_pairs`: how many of the pairs made (after the `per_group` cap) the
  candidate was chosen / rejected in;
- `beats`: on each candidate's representative row only (see curate.pairing), the trace_ids of
  the representative rows of the candidates it was chosen over, in their order; null on every
  other row.

So ReDis's SFT set, "applications of rules that won at least one pair", is a later
`select: {where: "won_pairs > 0"}`, and `outputs.preference` with `pairs: pair_step` and
`from: <this step>` writes the pairs themselves. In SQL, a stage's pairs are
``SELECT trace_id AS chosen, unnest(beats) AS rejected FROM pool WHERE len(beats) > 0``.
A later `pair` step replaces these columns.
"""

from __future__ import annotations

import logging
from typing import ClassVar, Literal

import polars as pl
from pydantic import Field, field_validator, model_validator

from curate.errors import OperatorError
from curate.filters.common import require_columns
from curate.operators import Operator, OpResult, Params, Scope
from curate.pairing import MarginMap, PairRule, candidates, item_expr, make_pairs

logger = logging.getLogger(__name__)

OUTPUT_COLUMNS = ("pair_item", "pair_score", "won_pairs", "lost_pairs", "beats")
_ROW = "__pair_row"


class MarginByColumn(Params):
    """A margin per value of a column (ReDis: per task)."""

    column: str = Field(description="pool column whose value picks the margin, e.g. source")
    values: dict[str, float] = Field(
        description="margin per value of the column, e.g. {1d_arc: 1, acre: 2, list_func: 3}"
    )
    default: float | None = Field(
        None, ge=0, description="margin for values not listed; without it they are an error"
    )

    @field_validator("values")
    @classmethod
    def _valid(cls, values: dict[str, float]) -> dict[str, float]:
        if not values:
            raise ValueError("values: give at least one value: margin entry")
        negative = {k: v for k, v in values.items() if v < 0}
        if negative:
            raise ValueError(f"values: margins must be >= 0, got {negative}")
        return values


def _roles(value: str | list[str] | None, name: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    roles = (value,) if isinstance(value, str) else tuple(value)
    if not roles:
        raise ValueError(f"{name}: give at least one role, or leave it out")
    return roles


class PairParams(Params):
    by: Literal["score", "verdict"] = Field(
        "score",
        description=(
            "score: x over y when score_x > score_y + margin; verdict: a correct trace over an "
            "incorrect one (traces with a null verdict take no part)"
        ),
    )
    group: list[str] = Field(
        default_factory=lambda: ["problem_id"],
        description="pairs are made within rows sharing these columns, e.g. [problem_id, round]",
    )
    item: str | list[str] = Field(
        "trace_id",
        description=(
            "column naming a candidate; rows sharing its value are one candidate. A list takes "
            "the first non-null column: [parent_trace_id, trace_id] makes a rule and the traces "
            "that apply it one candidate"
        ),
    )
    aggregate: Literal["same", "sum", "mean", "max", "min"] = Field(
        "same",
        description=(
            "a candidate's value from its rows' non-null values: same (they must agree), sum, "
            "mean, max, min; with by: verdict only same, max (any correct) or min (all correct)"
        ),
    )
    margin: float | MarginByColumn = Field(
        0.0,
        description=(
            "how much the chosen value must exceed the rejected one by (strictly): a number, or "
            "{column, values, default} for a margin per task, read from the chosen row"
        ),
    )
    chosen_role: str | list[str] | None = Field(
        None, description="only traces with this role (or one of these) may be chosen, e.g. teacher"
    )
    rejected_role: str | list[str] | None = Field(
        None, description="only traces with this role (or one of these) may be rejected"
    )
    link: Literal["any", "parent"] = Field(
        "any",
        description=(
            "any: every qualifying pair in the group; parent: only a trace over the trace it was "
            "made from (chosen's parent_trace_id = rejected's item), e.g. a teacher's correction "
            "over the student trace it corrects"
        ),
    )
    per_group: int | None = Field(
        None, ge=1, description="at most this many pairs per group; null keeps every pair"
    )
    pick: Literal["random", "first"] = Field(
        "random",
        description=(
            "which pairs a group over `per_group` keeps: random (a seeded uniform sample) or "
            "first (by the chosen's, then the rejected's, sample_index)"
        ),
    )
    seed: int | None = Field(None, description="seed of `pick: random` (default: the spec's)")

    @field_validator("group")
    @classmethod
    def _group(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("group: give at least one column, e.g. [problem_id]")
        return value

    @field_validator("item")
    @classmethod
    def _item(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and not value:
            raise ValueError("item: give a column, or a list of at least one")
        return value

    @field_validator("margin")
    @classmethod
    def _margin(cls, value: float | MarginByColumn) -> float | MarginByColumn:
        if isinstance(value, float | int) and value < 0:
            raise ValueError(f"margin must be >= 0, got {value}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> PairParams:
        self.rule(seed=0)  # PairRule checks by/aggregate/margin together
        _roles(self.chosen_role, "chosen_role")
        _roles(self.rejected_role, "rejected_role")
        return self

    def rule(self, *, seed: int) -> PairRule:
        margin: float | MarginMap
        if isinstance(self.margin, MarginByColumn):
            margin = MarginMap(
                column=self.margin.column, values=self.margin.values, default=self.margin.default
            )
        else:
            margin = float(self.margin)
        return PairRule(
            by=self.by,
            group=tuple(self.group),
            item=(self.item,) if isinstance(self.item, str) else tuple(self.item),
            aggregate=self.aggregate,
            margin=margin,
            chosen_roles=_roles(self.chosen_role, "chosen_role"),
            rejected_roles=_roles(self.rejected_role, "rejected_role"),
            link=self.link,
            per_group=self.per_group,
            pick=self.pick,
            seed=self.seed if self.seed is not None else seed,
        )


class Pair(Operator[PairParams]):
    """Preference pairs within each problem by score margin or verdict; keeps every row.

    Writes pair_item, pair_score, won_pairs, lost_pairs and beats (the trace_ids each candidate
    was chosen over). Select on won_pairs (e.g. ReDis's SFT set: `where: won_pairs > 0`); export the
    pairs with `outputs.preference: {pairs: pair_step, from: <this step>}`."""

    name: ClassVar[str] = "pair"
    version: ClassVar[str] = "1"
    scope: ClassVar[Scope] = Scope.GLOBAL
    params_model: ClassVar[type[Params]] = PairParams

    def apply(self, frame: pl.DataFrame) -> OpResult:
        rule = self.params.rule(seed=self.context.seed)
        require_columns(
            frame,
            ["trace_id", *rule.required_columns()],
            step=self.context.stage_id,
            operator=self.name,
            why=f"for pairing by {rule.by}",
        )
        try:
            cands = candidates(frame, rule)
            pairs = make_pairs(cands, rule)
        except ValueError as exc:
            raise OperatorError(f"step '{self.context.stage_id}' (pair): {exc}") from None
        group = list(rule.group)
        trace_ids = frame["trace_id"].cast(pl.String)
        won = (
            pairs.with_columns(trace_ids.gather(pairs["rejected_row"]).alias("beats"))
            .group_by([*group, "chosen"])
            .agg(pl.len().cast(pl.Int64).alias("won_pairs"), pl.col("beats"))
        )
        lost = pairs.group_by([*group, "rejected"]).agg(pl.len().cast(pl.Int64).alias("lost_pairs"))
        items = (
            cands.select(*group, "item", pl.col("value").alias("pair_score"), "row")
            .join(won, left_on=[*group, "item"], right_on=[*group, "chosen"], how="left")
            .join(lost, left_on=[*group, "item"], right_on=[*group, "rejected"], how="left")
            .with_columns(pl.col("won_pairs", "lost_pairs").fill_null(0))
        )
        base = frame.drop([c for c in OUTPUT_COLUMNS if c in frame.columns])
        keys = base.select(*group, item_expr(rule).alias("pair_item")).with_row_index(_ROW)
        keys = keys.with_columns(pl.col(_ROW).cast(pl.Int64))
        marked = keys.join(
            items.select(*group, "item", "pair_score", "won_pairs", "lost_pairs").rename(
                {"item": "pair_item"}
            ),
            on=[*group, "pair_item"],
            how="left",
            maintain_order="left",
        ).with_columns(
            pl.when(pl.col("pair_score").is_not_null()).then(pl.col("pair_item")).alias("pair_item")
        )
        own_rows = items.select(
            pl.col("row").cast(pl.Int64).alias(_ROW),
            pl.col("beats").fill_null(pl.lit([], dtype=pl.List(pl.String))),
        )
        marked = marked.join(own_rows, on=_ROW, how="left", maintain_order="left")
        kept = base.with_columns(
            marked["pair_item"],
            marked["pair_score"].cast(pl.Float64),
            marked["won_pairs"].cast(pl.Int64),
            marked["lost_pairs"].cast(pl.Int64),
            marked["beats"].cast(pl.List(pl.String)),
        )
        logger.info(
            "%s: %d pairs in %d of %d groups; %d of %d candidates won at least one",
            self.context.stage_id,
            pairs.height,
            pairs.select(group).n_unique() if pairs.height else 0,
            frame.select(group).n_unique() if frame.height else 0,
            int((items["won_pairs"] > 0).sum()),
            items.height,
        )
        return OpResult.keep_all(kept)
