"""The `grade` operator: per-problem pass rate, coefficient of variation and difficulty band.

Counts are over a problem's traces. A trace whose verdict is null (the verifier could not judge
it) counts in `n_samples` but not in `n_judged`, so it neither helps nor hurts the pass rate.
With 0/1 scores and pass rate p over n judged traces:

- ``cv_population = sqrt((1 - p) / p)`` (population std / mean),
- ``cv_sample = sqrt((1 - p) / p * n / (n - 1))`` (sample, n-1 std / mean),

both null when p is null or 0 (the mean is 0) and `cv_sample` also when n < 2. "CV above t" is
"pass_rate below 1 / (1 + t²)" for the population form (DeepDistill); DeepDistill's worked
examples use the sample form. Both columns are written; say which one a later step filters on.
"""

from __future__ import annotations

from typing import ClassVar

import polars as pl
from pydantic import Field, field_validator

from curate.errors import OperatorError
from curate.filters.common import DEFAULT_BANDS, band_expr, check_bands
from curate.operators import Distribution, Operator, OpResult, Params, Scope

TEACHER_COLUMNS = ("teacher_n_judged", "teacher_n_correct", "teacher_pass_rate")


class GradeParams(Params):
    bands: dict[str, tuple[float, float]] = Field(
        default_factory=lambda: dict(DEFAULT_BANDS),
        description=(
            "difficulty band name -> [lo, hi] of pass rate; a band holds lo <= p < hi, the band "
            "ending at 1.0 also holds 1.0; bands must not overlap; a problem with no judged "
            "trace, or whose pass rate falls in a gap, gets a null difficulty"
        ),
    )
    per_teacher: bool = Field(
        False,
        description=(
            "also write teacher_n_judged / teacher_n_correct / teacher_pass_rate, counted per "
            "(problem_id, model)"
        ),
    )

    @field_validator("bands")
    @classmethod
    def _valid_bands(cls, bands: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        check_bands(bands)
        return bands


def grade_exprs(bands: dict[str, tuple[float, float]], group: list[str]) -> list[pl.Expr]:
    """Window expressions for the per-problem grade columns, grouped by `group`."""
    verdict = pl.col("verdict")
    n_judged = verdict.count().over(group).cast(pl.Int64)
    n_correct = verdict.cast(pl.Int64).sum().over(group).cast(pl.Int64)
    pass_rate = pl.when(n_judged > 0).then(n_correct.cast(pl.Float64) / n_judged)
    p = pl.col("pass_rate")
    n = pl.col("n_judged").cast(pl.Float64)
    ratio = (1.0 - p) / p  # population variance p(1-p) over mean² p²
    cv_population = pl.when(p > 0).then(ratio.sqrt())
    cv_sample = pl.when((p > 0) & (n >= 2)).then((ratio * n / (n - 1.0)).sqrt())
    return [
        pl.len().over(group).cast(pl.Int64).alias("n_samples"),
        n_judged.alias("n_judged"),
        n_correct.alias("n_correct"),
        pass_rate.cast(pl.Float64).alias("pass_rate"),
        # The three below read the columns above, so they go in a second with_columns.
        cv_population.cast(pl.Float64).alias("cv_population"),
        cv_sample.cast(pl.Float64).alias("cv_sample"),
        band_expr(bands, p).alias("difficulty"),
    ]


class Grade(Operator[GradeParams]):
    """Per-problem pass rate, CV (population and sample) and difficulty band; keeps every row.

    Writes n_samples, n_judged, n_correct, pass_rate, cv_population, cv_sample and difficulty on
    every trace row of a problem (and the teacher_* columns with `per_teacher`). Null verdicts
    are left out of the pass-rate denominator."""

    name: ClassVar[str] = "grade"
    version: ClassVar[str] = "1"
    scope: ClassVar[Scope] = Scope.GLOBAL
    params_model: ClassVar[type[Params]] = GradeParams
    requires: ClassVar[tuple[str, ...]] = ("problem_id", "verdict")

    def distribution(self) -> Distribution:
        return Distribution.PER_PROBLEM  # every column is a window over problem_id

    def apply(self, frame: pl.DataFrame) -> OpResult:
        if frame.schema["verdict"] not in (pl.Boolean, pl.Null):
            raise OperatorError(
                f"step '{self.context.stage_id}' (grade) needs a boolean 'verdict' column, "
                f"got {frame.schema['verdict']}"
            )
        exprs = grade_exprs(self.params.bands, ["problem_id"])
        graded = frame.with_columns(exprs[:4]).with_columns(exprs[4:])
        if self.params.per_teacher:
            if "model" not in frame.columns:
                raise OperatorError(
                    f"step '{self.context.stage_id}' (grade) has per_teacher: true but the pool "
                    f"has no 'model' column to group traces by teacher"
                )
            group = ["problem_id", "model"]
            verdict = pl.col("verdict")
            judged = verdict.count().over(group).cast(pl.Int64)
            correct = verdict.cast(pl.Int64).sum().over(group).cast(pl.Int64)
            graded = graded.with_columns(
                judged.alias("teacher_n_judged"),
                correct.alias("teacher_n_correct"),
                pl.when(judged > 0)
                .then(correct.cast(pl.Float64) / judged)
                .cast(pl.Float64)
                .alias("teacher_pass_rate"),
            )
        return OpResult.keep_all(graded)
