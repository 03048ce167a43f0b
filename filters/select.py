"""The `select` operator: keep problems by difficulty, pass-rate or correct-count window, a SQL
condition, and keep at most `k` traces per problem.

Checks run in this order and a dropped row carries the first one it fails:

=========================  =====================================================================
reason                     when
=========================  =====================================================================
no_pass_rate               `pass_rate` window given and the problem has no judged trace
difficulty_not_selected    `difficulty` given and the problem's band is not listed (or is null)
pass_rate_outside_window   `pass_rate` window given and the pass rate is outside it
n_correct_outside_window   `n_correct` window given and the count is outside it
where_false                `where` given and the condition is false or null for the row
not_correct                `correct_only: true` and the verdict is not true
beyond_k                   `k` given and k earlier traces of the problem (by sample_index) were
                           kept
=========================  =====================================================================
"""

from __future__ import annotations

from typing import ClassVar

import polars as pl
from pydantic import Field, field_validator

from curate.errors import OperatorError
from curate.filters.common import (
    Check,
    FloatWindow,
    IntWindow,
    cap_per_problem,
    first_failure,
    number_text,
    order_keys,
    require_columns,
)
from curate.operators import DROP_DETAIL, DROP_REASON, Filter, Params, Scope

GRADE_HINT = "(run a `grade` step before `select`)"


def parse_where(text: str) -> pl.Expr:
    """A SQL boolean expression as a Polars expression; ValueError when it does not parse."""
    if not text.strip():
        raise ValueError("where: the expression is empty")
    try:
        return pl.sql_expr(text)
    except Exception as exc:  # polars raises SQLInterfaceError / SQLSyntaxError / others
        raise ValueError(f"where: cannot parse {text!r} as a SQL expression: {exc}") from exc


class SelectParams(Params):
    difficulty: list[str] | None = Field(
        None, description="keep problems whose difficulty band is one of these, e.g. [medium, hard]"
    )
    pass_rate: FloatWindow | None = Field(
        None, description="keep problems whose pass rate is within bounds, e.g. {gt: 0.1, lt: 0.6}"
    )
    n_correct: IntWindow | None = Field(
        None, description="keep problems with this many correct traces, e.g. {ge: 1, le: 3}"
    )
    where: str | None = Field(
        None,
        description=(
            "keep rows where this SQL boolean expression over pool columns is true, "
            "e.g. \"domain = 'algebra' AND cv_sample > 0.5\""
        ),
    )
    correct_only: bool = Field(False, description="keep only traces whose verdict is true")
    k: int | None = Field(
        None,
        ge=1,
        description=(
            "keep at most the first k traces per problem (by sample_index) among those that "
            "pass the other checks"
        ),
    )

    @field_validator("difficulty")
    @classmethod
    def _nonempty(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("difficulty: give at least one band name, or leave it out")
        return value

    @field_validator("where")
    @classmethod
    def _parses(cls, value: str | None) -> str | None:
        if value is not None:
            parse_where(value)
        return value


class Select(Filter[SelectParams]):
    """Keep problems by difficulty, pass rate, correct count or a SQL condition; cap traces at k.

    Problem-level checks (difficulty, pass_rate, n_correct) read the columns `grade` writes;
    `where` is any SQL boolean expression over pool columns (null counts as false); `k` keeps
    the first k surviving traces of each problem by sample_index (with `correct_only`, the first
    k correct ones)."""

    name: ClassVar[str] = "select"
    version: ClassVar[str] = "1"
    scope: ClassVar[Scope] = Scope.GLOBAL
    params_model: ClassVar[type[Params]] = SelectParams
    requires: ClassVar[tuple[str, ...]] = ("problem_id",)

    def _require(self, frame: pl.DataFrame, columns: list[str], why: str) -> None:
        require_columns(frame, columns, step=self.context.stage_id, operator=self.name, why=why)

    def decide(self, frame: pl.DataFrame) -> pl.DataFrame:
        params = self.params
        checks: list[Check] = []

        if params.pass_rate is not None:
            self._require(frame, ["pass_rate"], f"for `pass_rate` {GRADE_HINT}")
            checks.append(
                (
                    pl.col("pass_rate").is_null(),
                    "no_pass_rate",
                    pl.lit("pass_rate is null: no trace of the problem was judged"),
                )
            )
        if params.difficulty is not None:
            self._require(frame, ["difficulty"], f"for `difficulty` {GRADE_HINT}")
            listed = ", ".join(params.difficulty)
            checks.append(
                (
                    ~pl.col("difficulty").is_in(params.difficulty).fill_null(False),
                    "difficulty_not_selected",
                    pl.format(
                        "difficulty={} not in [{}]",
                        pl.col("difficulty").fill_null("null"),
                        pl.lit(listed),
                    ),
                )
            )
        if params.pass_rate is not None:
            window = params.pass_rate.describe("pass_rate")
            checks.append(
                (
                    ~params.pass_rate.expr(pl.col("pass_rate")).fill_null(False),
                    "pass_rate_outside_window",
                    pl.format(
                        "pass_rate={} outside {}", number_text(pl.col("pass_rate")), pl.lit(window)
                    ),
                )
            )
        if params.n_correct is not None:
            self._require(frame, ["n_correct"], f"for `n_correct` {GRADE_HINT}")
            window = params.n_correct.describe("n_correct")
            checks.append(
                (
                    ~params.n_correct.expr(pl.col("n_correct")).fill_null(False),
                    "n_correct_outside_window",
                    pl.format(
                        "n_correct={} outside {}", number_text(pl.col("n_correct")), pl.lit(window)
                    ),
                )
            )
        if params.where is not None:
            checks.append(self._where_check(frame, params.where))
        if params.correct_only:
            self._require(frame, ["verdict"], "for `correct_only` (run a verify step first)")
            checks.append(
                (
                    ~pl.col("verdict").fill_null(False),
                    "not_correct",
                    pl.format("verdict={}", pl.col("verdict").cast(pl.String).fill_null("null")),
                )
            )

        reason, detail = first_failure(checks)
        decided = frame.with_columns(reason.alias(DROP_REASON), detail.alias(DROP_DETAIL))
        if params.k is not None:
            keys = order_keys(frame)
            by = "sample_index" if keys else "row order"
            decided = cap_per_problem(
                decided,
                params.k,
                keys,
                reason="beyond_k",
                detail=lambda rank: pl.format(
                    "#{} among the problem's remaining traces by {}; k={}",
                    rank,
                    pl.lit(by),
                    pl.lit(params.k),
                ),
            )
        return decided

    def _where_check(self, frame: pl.DataFrame, text: str) -> Check:
        expr = parse_where(text)
        self._require(frame, expr.meta.root_names(), f"named in `where: {text}`")
        try:
            dtype = frame.head(0).select(expr.alias("w")).schema["w"]
        except Exception as exc:
            raise OperatorError(
                f"step '{self.context.stage_id}' (select): `where: {text}` cannot be evaluated "
                f"on the pool: {exc}"
            ) from exc
        if dtype not in (pl.Boolean, pl.Null):
            raise OperatorError(
                f"step '{self.context.stage_id}' (select): `where: {text}` must be a boolean "
                f"condition, but it gives {dtype}"
            )
        return (~expr.fill_null(False), "where_false", pl.lit(f"where is not true: {text}"))
