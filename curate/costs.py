"""The cost plan of a build: per sample step and teacher, how many samples it asks for, how many
the request cache already answers, and the worst case of the rest (prompt estimate + max_tokens
per request, at the teacher's prices). `curate validate` and `curate build --dry-run` print it;
nothing is sent and no stage is written.

The numbers come from `Sample.plan`, the code that builds the requests of a real build. The
rows a step samples from are exact when the stage before it is current in the run directory;
otherwise they are estimated from the input file, with the steps before it assumed to keep every
row and earlier sample steps simulated (an upper bound).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import polars as pl

from curate.errors import CurateError
from curate.inputs import read_input
from curate.parquet_io import read_parts

if TYPE_CHECKING:
    from curate.engine import Build
    from curate.sample import TeacherPlan


@dataclass
class StepPlan:
    """The plan of one sample step."""

    stage_id: str
    exact: bool  # rows read from the current stage before it (else: estimated from the input)
    teachers: list[TeacherPlan] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "stage_id": self.stage_id,
            "exact": self.exact,
            "teachers": [t.to_json() for t in self.teachers],
        }


@dataclass
class CostPlan:
    steps: list[StepPlan]
    budget_usd: float | None
    note: str | None = None  # why there is no plan (the input cannot be read)

    @property
    def worst_cost_usd(self) -> float:
        return sum(t.cost_usd for s in self.steps for t in s.teachers)


def cost_plan(build: Build) -> CostPlan:
    """Plan every sample step of `build` without sending a request or writing a stage."""
    from curate.engine import INPUT_STAGE

    loaded = build.loaded
    budget = loaded.spec.budget_usd
    if not any(step.operator.calls_teachers for step in loaded.steps):
        return CostPlan(steps=[], budget_usd=budget)
    try:
        simulated = read_input(loaded.spec.input, base_dir=loaded.base_dir).frame
    except CurateError as exc:
        return CostPlan(steps=[], budget_usd=budget, note=f"no cost plan: {exc}")
    previous_fp = build.input_fingerprint()
    previous_folder = build.paths.stage(INPUT_STAGE)
    current = build._reusable(previous_folder, previous_fp) is not None
    steps: list[StepPlan] = []
    for step in loaded.steps:
        operator = build.operator(step)
        stage_fp, _ = build.step_fingerprint(operator, previous_fp)
        if operator.calls_teachers:
            frame: pl.DataFrame = read_parts(previous_folder) if current else simulated
            steps.append(
                StepPlan(
                    stage_id=step.stage_id,
                    exact=current or step.index == 0,  # the input file is read as is
                    teachers=operator.plan(frame),  # type: ignore[attr-defined]
                )
            )
            simulated = operator.simulate(simulated)  # type: ignore[attr-defined]
        folder = build.paths.stage(step.stage_id)
        record = build._reusable(folder, stage_fp, operator) if current else None
        current = record is not None
        previous_fp = record["fingerprint"] if record is not None else stage_fp
        previous_folder = folder
    return CostPlan(steps=steps, budget_usd=budget)
