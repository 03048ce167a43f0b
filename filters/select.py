"""The `select` operator: keep problems by difficulty, pass-rate or correct-count window, a SQL
condition, s1-style selection (drop problems reference models solve, then a stratified,
length-weighted draw of a target number of problems), and keep at most `k` traces per problem.

Checks run in this order and a dropped row carries the first one it fails:

=========================  =====================================================================
reason                     when
=========================  =====================================================================
no_pass_rate               `pass_rate` window given and the problem has no judged trace
difficulty_not_selected    `difficulty` given and the problem's band is not listed (or is null)
pass_rate_outside_window   `pass_rate` window given and the pass rate is outside it
n_correct_outside_window   `n_correct` window given and the count is outside it
solved_by_reference        `solved_by` given and a trace of one of those models (by `model`) of
                           the problem has verdict true; the detail names the models
reference_trace            `solved_by` given, the row is a trace of one of those models, and
                           `keep_reference_traces` is false: reference traces judge difficulty,
                           they are not training data
where_false                `where` given and the condition is false or null for the row
not_correct                `correct_only: true` and the verdict is not true
not_sampled                `sample` given and the problem was not drawn (see below); the detail
                           gives its stratum, what the stratum had and gave, and its length rank
beyond_k                   `k` given and k earlier traces of the problem (by sample_index) were
                           kept
=========================  =====================================================================

`sample` (s1's diversity step, curate.filters.stratified) draws `size` problems among those with
a row left after the checks above. A problem's stratum is its `by` value (on its first
remaining row); its length is the longest of its remaining traces by `length`. Every row of
a problem that entered the draw gets `length_rank` (0 = most preferred in its stratum) and
`draw_order` (1-based; null when not drawn), kept or not, so the choice can be audited in SQL;
the stratum counts are also logged (logger `curate.filters.select`, INFO).
"""

from __future__ import annotations

import logging
from typing import ClassVar, Literal

import polars as pl
from pydantic import Field, field_validator, model_validator

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
from curate.filters.stratified import draw_problems
from curate.operators import DROP_DETAIL, DROP_REASON, Distribution, Filter, Params, Scope

logger = logging.getLogger(__name__)

GRADE_HINT = "(run a `grade` step before `select`)"
SAMPLE_COLUMNS = ("length_rank", "draw_order")
_SOLVERS = "__select_solvers"
_LENGTH = "__select_length"


def parse_sql(text: str, field: str) -> pl.Expr:
    """A SQL expression as a Polars expression; ValueError naming `field` when it does not
    parse."""
    if not text.strip():
        raise ValueError(f"{field}: the expression is empty")
    try:
        return pl.sql_expr(text)
    except Exception as exc:  # polars raises SQLInterfaceError / SQLSyntaxError / others
        raise ValueError(f"{field}: cannot parse {text!r} as a SQL expression: {exc}") from exc


def parse_where(text: str) -> pl.Expr:
    """A SQL boolean expression as a Polars expression; ValueError when it does not parse."""
    return parse_sql(text, "where")


class SampleParams(Params):
    """s1's diversity step: draw `size` problems, stratified, preferring longer traces."""

    size: int = Field(ge=1, description="problems to keep (all of them when fewer are left)")
    by: str | None = Field(
        "domain",
        description="problem column to stratify on, e.g. domain or source; null: one stratum",
    )
    strata: Literal["uniform", "proportional"] = Field(
        "uniform",
        description=(
            "uniform (s1): each draw picks a stratum at random among those with problems "
            "left, then a problem in it, so small strata are used up first; proportional: "
            "each stratum gets a share of `size` proportional to its problem count"
        ),
    )
    prefer: Literal["longer", "shorter", "none"] = Field(
        "longer",
        description=(
            "within a stratum, rank problems by length and draw with weight 2^-rank, rank 0 "
            "the longest (longer, s1) or the shortest (shorter); none: equal weights"
        ),
    )
    length: str | None = Field(
        None,
        description=(
            "SQL expression for a trace's length, e.g. reasoning_tokens or "
            "length(completion); default: reasoning_tokens + completion_tokens when the pool "
            "has them (prune writes them), else characters of reasoning + completion. A "
            "problem's length is its longest remaining trace's"
        ),
    )
    seed: int | None = Field(None, description="seed of the draw (default: the spec's seed)")

    @field_validator("length")
    @classmethod
    def _parses(cls, value: str | None) -> str | None:
        if value is not None:
            parse_sql(value, "length")
        return value


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
    solved_by: list[str] | None = Field(
        None,
        description=(
            "reference models (values of `model`): drop every problem one of them solved, "
            "i.e. has a trace with verdict true; s1 used Qwen2.5-7B- and 32B-Instruct"
        ),
    )
    keep_reference_traces: bool | None = Field(
        None,
        description=(
            "with solved_by: keep the reference models' own traces of the problems that stay "
            "(default, false: drop them as reference_trace)"
        ),
    )
    sample: SampleParams | None = Field(
        None,
        description=(
            "then draw problems, stratified and length-weighted (s1): {size, by: domain, "
            "strata: uniform | proportional, prefer: longer | shorter | none, length: a SQL "
            "expression, seed}, e.g. {size: 1000, by: domain}"
        ),
    )
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

    @field_validator("solved_by")
    @classmethod
    def _models(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("solved_by: give at least one model name, or leave it out")
        return value

    @model_validator(mode="after")
    def _reference_flag(self) -> SelectParams:
        if self.keep_reference_traces and self.solved_by is None:
            raise ValueError("keep_reference_traces only applies with solved_by")
        return self


class Select(Filter[SelectParams]):
    """Keep problems by difficulty, pass rate, correct count, SQL or s1's selection; cap at k.

    Problem-level checks (difficulty, pass_rate, n_correct) read the columns `grade` writes;
    `where` is any SQL boolean expression over pool columns (null counts as false); `solved_by`
    drops problems reference models solved and `sample` draws a stratified, length-weighted
    set of the rest (s1); `k` keeps the first k surviving traces of each problem by
    sample_index (with `correct_only`, the first k correct ones)."""

    name: ClassVar[str] = "select"
    version: ClassVar[str] = "1"
    scope: ClassVar[Scope] = Scope.GLOBAL
    params_model: ClassVar[type[Params]] = SelectParams
    requires: ClassVar[tuple[str, ...]] = ("problem_id",)

    def _require(self, frame: pl.DataFrame, columns: list[str], why: str) -> None:
        require_columns(frame, columns, step=self.context.stage_id, operator=self.name, why=why)

    def _expr_dtype(self, frame: pl.DataFrame, expr: pl.Expr, setting: str) -> pl.DataType:
        """The type a spec's SQL expression gives on the pool, after checking the columns it
        names exist; OperatorError naming the `setting` when it cannot be evaluated."""
        self._require(frame, expr.meta.root_names(), f"named in `{setting}`")
        try:
            return frame.head(0).select(expr.alias("value")).schema["value"]
        except Exception as exc:
            raise OperatorError(
                f"step '{self.context.stage_id}' (select): `{setting}` cannot be evaluated "
                f"on the pool: {exc}"
            ) from exc

    def distribution(self) -> Distribution:
        """Per problem, unless `sample` draws across problems or `solved_by` checks that the
        named models appear anywhere in the pool (a `where` expression is read per row)."""
        if self.params.sample is None and self.params.solved_by is None:
            return Distribution.PER_PROBLEM
        return Distribution.DRIVER

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
        if params.solved_by is not None:
            frame = self._with_solvers(frame, params.solved_by)
            checks.extend(self._reference_checks(params.solved_by))
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
        if params.sample is not None:
            decided = self._sample(decided, params.sample)
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
        return decided.drop([c for c in (_SOLVERS, _LENGTH) if c in decided.columns])

    # --- s1: reference models, then a stratified draw ------------------------------------------

    def _with_solvers(self, frame: pl.DataFrame, models: list[str]) -> pl.DataFrame:
        """`frame` plus, per problem, the reference models that solved it (null: none did)."""
        self._require(frame, ["model", "verdict"], "for `solved_by` (run a verify step first)")
        present = set(frame["model"].drop_nulls().unique().to_list())
        absent = [m for m in models if m not in present]
        if absent:
            shown = ", ".join(sorted(present)[:20]) or "none"
            raise OperatorError(
                f"step '{self.context.stage_id}' (select): solved_by names model(s) "
                f"{', '.join(absent)} with no trace in the pool; models present: {shown}"
            )
        is_reference = pl.col("model").is_in(models)
        solvers = (
            frame.filter(is_reference & pl.col("verdict").fill_null(False))
            .group_by("problem_id")
            .agg(pl.col("model").unique().sort().str.join(", ").alias(_SOLVERS))
        )
        counts = frame.group_by("problem_id").agg(is_reference.any().alias("has_reference"))
        logger.info(
            "%s: %d of %d problems solved by reference model(s) %s; %d have no reference trace",
            self.context.stage_id,
            solvers.height,
            counts.height,
            ", ".join(models),
            int((~counts["has_reference"]).sum()),
        )
        return frame.join(solvers, on="problem_id", how="left", maintain_order="left")

    def _reference_checks(self, models: list[str]) -> list[Check]:
        checks: list[Check] = [
            (
                pl.col(_SOLVERS).is_not_null(),
                "solved_by_reference",
                pl.format("solved by reference model(s): {}", pl.col(_SOLVERS)),
            )
        ]
        if not self.params.keep_reference_traces:
            checks.append(
                (
                    pl.col("model").is_in(models).fill_null(False),
                    "reference_trace",
                    pl.format("a trace of reference model {}", pl.col("model")),
                )
            )
        return checks

    def _length(self, frame: pl.DataFrame, text: str | None) -> tuple[pl.Expr, str]:
        """A trace's length as an expression, and how it was measured (for details and logs)."""
        has = frame.columns
        if text is not None:
            expr = parse_sql(text, "length")
            dtype = self._expr_dtype(frame, expr, f"sample.length: {text}")
            if not (dtype.is_numeric() or dtype == pl.Null):
                raise OperatorError(
                    f"step '{self.context.stage_id}' (select): `sample.length: {text}` must be "
                    f"a number, but it gives {dtype}"
                )
            return expr.cast(pl.Float64), text
        if "completion_tokens" in has and "reasoning_tokens" in has:
            tokens = pl.col("completion_tokens") + pl.col("reasoning_tokens").fill_null(0)
            return tokens.cast(pl.Float64), "reasoning_tokens + completion_tokens"
        self._require(frame, ["completion"], "for `sample` (a length to rank traces by)")
        chars = pl.col("completion").str.len_chars().fill_null(0)
        if "reasoning" in has:
            chars = chars + pl.col("reasoning").str.len_chars().fill_null(0)
            return chars.cast(pl.Float64), "characters of reasoning + completion"
        return chars.cast(pl.Float64), "characters of completion"

    def _sample(self, decided: pl.DataFrame, sample: SampleParams) -> pl.DataFrame:
        """Draw among the problems with a row left; mark the rest of them not_sampled."""
        if sample.by is not None:
            self._require(decided, [sample.by], "named in `sample.by`")
        length, measure = self._length(decided, sample.length)
        decided = decided.drop([c for c in SAMPLE_COLUMNS if c in decided.columns])
        alive = decided.filter(pl.col(DROP_REASON).is_null())
        stratum = pl.col(sample.by) if sample.by is not None else pl.lit("all")
        problems = alive.group_by("problem_id", maintain_order=True).agg(
            stratum.first().alias("stratum"), length.max().alias("length")
        )
        seed = sample.seed if sample.seed is not None else self.context.seed
        drawn, summary = draw_problems(
            problems, size=sample.size, allocation=sample.strata, prefer=sample.prefer, seed=seed
        )
        label = sample.by or "stratum"
        for entry in summary:
            logger.info(
                "%s: sample: %s=%s: %d of %d problems drawn",
                self.context.stage_id,
                label,
                entry.value,
                entry.drawn,
                entry.available,
            )
        per_stratum = pl.DataFrame(
            {
                "stratum": [e.value for e in summary],
                "__available": [e.available for e in summary],
                "__drawn": [e.drawn for e in summary],
            },
            schema={
                "stratum": drawn.schema["stratum"],
                "__available": pl.Int64,
                "__drawn": pl.Int64,
            },
        )
        drawn = drawn.join(per_stratum, on="stratum", how="left", nulls_equal=True)
        weight = (
            pl.format(
                "; length {} ranks {} (weight 2^-{})",
                pl.col("length").round(1).cast(pl.String).fill_null("null"),
                pl.col("length_rank"),
                pl.col("length_rank"),
            )
            if sample.prefer != "none"
            else pl.lit("; equal weights")
        )
        drawn = drawn.with_columns(
            pl.format(
                "not drawn: {}={} had {} problem(s), {} drawn ({} strata, size {}){}",
                pl.lit(label),
                pl.col("stratum").cast(pl.String).fill_null("null"),
                pl.col("__available"),
                pl.col("__drawn"),
                pl.lit(sample.strata),
                pl.lit(sample.size),
                weight,
            ).alias("__not_drawn")
        )
        marked = decided.join(
            drawn.select("problem_id", "length_rank", "draw_order", "__not_drawn"),
            on="problem_id",
            how="left",
            maintain_order="left",
        )
        not_sampled = pl.col(DROP_REASON).is_null() & pl.col("draw_order").is_null()
        logger.info("%s: sample: lengths are %s", self.context.stage_id, measure)
        return marked.with_columns(
            pl.when(not_sampled)
            .then(pl.lit("not_sampled"))
            .otherwise(pl.col(DROP_REASON))
            .alias(DROP_REASON),
            pl.when(not_sampled)
            .then(pl.col("__not_drawn"))
            .otherwise(pl.col(DROP_DETAIL))
            .alias(DROP_DETAIL),
        ).drop("__not_drawn")

    def _where_check(self, frame: pl.DataFrame, text: str) -> Check:
        expr = parse_where(text)
        dtype = self._expr_dtype(frame, expr, f"where: {text}")
        if dtype not in (pl.Boolean, pl.Null):
            raise OperatorError(
                f"step '{self.context.stage_id}' (select): `where: {text}` must be a boolean "
                f"condition, but it gives {dtype}"
            )
        return (~expr.fill_null(False), "where_false", pl.lit(f"where is not true: {text}"))
