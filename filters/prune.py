"""The `prune` operator: count tokens, then keep the shortest (correct) traces of each problem
that fit a token budget, optionally a different budget per difficulty band.

Writes prompt_tokens (the `prompt` text alone: no system prompt, no chat template),
reasoning_tokens (null when there is no `reasoning` column or value), completion_tokens and
`tokenizer` (the counter's label) on every row, kept or dropped. A trace's length is
``completion_tokens + reasoning_tokens`` (a null reasoning counts 0); the budget applies to it.

A dropped row carries the first reason that applies, in this order:

========================  =====================================================================
reason                    when
========================  =====================================================================
no_completion             the completion is null
not_correct               `keep: shortest_correct` and the verdict is not true
no_budget_for_difficulty  `max_tokens` is per difficulty, and the row's difficulty (possibly
                          null) has no entry and there is no `default` entry
over_budget               the length is above the budget
beyond_per_problem        `per_problem` shorter eligible traces of the problem were kept
========================  =====================================================================

Ties in length are broken by sample_index, then by row order.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

import polars as pl
from pydantic import Field, field_validator

from curate.filters.common import (
    Check,
    cap_per_problem,
    first_failure,
    order_keys,
    require_columns,
)
from curate.operators import DROP_DETAIL, DROP_REASON, Distribution, Filter, Params, Scope
from curate.tokens import APPROXIMATE, load_counter, tokenizer_file

DEFAULT_BUDGET_KEY = "default"
LENGTH = "__prune_length"
BUDGET = "__prune_budget"


class PruneParams(Params):
    tokenizer: str = Field(
        APPROXIMATE,
        description="'approximate' (ceil(chars/4)) or a path to a tokenizer.json",
    )
    max_tokens: int | dict[str, int] | None = Field(
        None,
        description=(
            "token budget for reasoning + completion: one number, or per difficulty band, "
            "e.g. {easy: 2048, medium: 8192, hard: 24576}; the key `default` covers bands not "
            "listed (and a null difficulty); leave out for no budget"
        ),
    )
    keep: Literal["shortest_correct", "shortest"] = Field(
        "shortest_correct",
        description="shortest_correct: only traces with verdict true; shortest: any verdict",
    )
    per_problem: int | None = Field(
        1,
        ge=1,
        description="traces to keep per problem, shortest first; null keeps all that qualify",
    )

    @field_validator("max_tokens")
    @classmethod
    def _positive(cls, value: int | dict[str, int] | None) -> int | dict[str, int] | None:
        budgets = value.values() if isinstance(value, dict) else [] if value is None else [value]
        if any(b < 1 for b in budgets):
            raise ValueError(f"max_tokens: budgets must be at least 1 token, got {value}")
        if isinstance(value, dict) and not value:
            raise ValueError("max_tokens: give at least one band budget, or a single number")
        return value

    @field_validator("tokenizer")
    @classmethod
    def _nonempty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("tokenizer: give 'approximate' or a path to a tokenizer.json")
        return value


class Prune(Filter[PruneParams]):
    """Count tokens and keep the shortest (correct) traces per problem within a token budget.

    The budget (one number, or one per difficulty band) applies to reasoning + completion
    tokens. `keep: shortest_correct` considers only traces whose verdict is true."""

    name: ClassVar[str] = "prune"
    version: ClassVar[str] = "1"
    scope: ClassVar[Scope] = Scope.GLOBAL
    params_model: ClassVar[type[Params]] = PruneParams
    requires: ClassVar[tuple[str, ...]] = ("problem_id", "prompt", "completion")

    def input_files(self) -> list[Path]:
        """The tokenizer.json, when one is named: a changed file re-runs the step."""
        path = tokenizer_file(self.params.tokenizer, base_dir=self.context.base_dir)
        return [] if path is None else [path]

    def distribution(self) -> Distribution:
        return Distribution.PER_PROBLEM  # token counts per row, the cap per problem

    def decide(self, frame: pl.DataFrame) -> pl.DataFrame:
        params = self.params
        step, op = self.context.stage_id, self.name
        if params.keep == "shortest_correct":
            why = "for `keep: shortest_correct` (verify traces first, or use keep: shortest)"
            require_columns(frame, ["verdict"], step=step, operator=op, why=why)
        if isinstance(params.max_tokens, dict):
            why = "for per-difficulty `max_tokens` (run a `grade` step first)"
            require_columns(frame, ["difficulty"], step=step, operator=op, why=why)

        counted = self.count_tokens(frame)
        length = pl.col("completion_tokens") + pl.col("reasoning_tokens").fill_null(0)
        counted = counted.with_columns(length.alias(LENGTH), self._budget().alias(BUDGET))

        checks: list[Check] = [
            (pl.col("completion").is_null(), "no_completion", pl.lit("completion is null")),
        ]
        if params.keep == "shortest_correct":
            checks.append(
                (
                    ~pl.col("verdict").fill_null(False),
                    "not_correct",
                    pl.format("verdict={}", pl.col("verdict").cast(pl.String).fill_null("null")),
                )
            )
        if isinstance(params.max_tokens, dict):
            budgets = ", ".join(params.max_tokens)
            checks.append(
                (
                    pl.col(BUDGET).is_null(),
                    "no_budget_for_difficulty",
                    pl.format(
                        "difficulty={} has no budget (max_tokens has: {})",
                        pl.col("difficulty").fill_null("null"),
                        pl.lit(budgets),
                    ),
                )
            )
        if params.max_tokens is not None:
            band = (
                pl.format(" (difficulty={})", pl.col("difficulty").fill_null("null"))
                if isinstance(params.max_tokens, dict)
                else pl.lit("")
            )
            checks.append(
                (
                    pl.col(LENGTH) > pl.col(BUDGET),
                    "over_budget",
                    pl.format("{} > {} tokens{}", pl.col(LENGTH), pl.col(BUDGET), band),
                )
            )

        reason, detail = first_failure(checks)
        decided = counted.with_columns(reason.alias(DROP_REASON), detail.alias(DROP_DETAIL))
        if params.per_problem is not None:
            k = params.per_problem
            decided = cap_per_problem(
                decided,
                k,
                [LENGTH, *order_keys(decided)],
                reason="beyond_per_problem",
                detail=lambda rank: pl.format(
                    "{} tokens, #{} by length among eligible traces; per_problem={}",
                    pl.col(LENGTH),
                    rank,
                    pl.lit(k),
                ),
            )
        return decided.drop(LENGTH, BUDGET)

    def count_tokens(self, frame: pl.DataFrame) -> pl.DataFrame:
        """`frame` with prompt_tokens, reasoning_tokens, completion_tokens and tokenizer."""
        counter = load_counter(self.params.tokenizer, base_dir=self.context.base_dir)
        if "reasoning" in frame.columns:
            reasoning = counter.count(frame["reasoning"])
        else:
            reasoning = pl.repeat(None, frame.height, dtype=pl.Int64, eager=True)
        return frame.with_columns(
            counter.count(frame["prompt"]).alias("prompt_tokens"),
            reasoning.alias("reasoning_tokens"),
            counter.count(frame["completion"]).alias("completion_tokens"),
            pl.lit(counter.label, dtype=pl.String).alias("tokenizer"),
        )

    def _budget(self) -> pl.Expr:
        budget = self.params.max_tokens
        if budget is None:
            return pl.lit(None, dtype=pl.Int64)
        if isinstance(budget, int):
            return pl.lit(budget, dtype=pl.Int64)
        bands = {k: v for k, v in budget.items() if k != DEFAULT_BUDGET_KEY}
        default = budget.get(DEFAULT_BUDGET_KEY)
        return pl.col("difficulty").replace_strict(
            bands, default=pl.lit(default, dtype=pl.Int64), return_dtype=pl.Int64
        )
