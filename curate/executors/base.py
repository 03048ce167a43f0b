"""The executor interface: run one step over a stage's Parquet parts and write the kept rows as
the new stage's parts. Executors differ only in how that work is scheduled (STYLE.md 8)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

import polars as pl

from curate.operators import DROP_REASON, Operator, OpResult, StageIncomplete
from curate.progress import SilentReporter
from curate.stats import StageStats
from curate.storage import AnyPath


@dataclass(frozen=True, kw_only=True)
class ExecutorSettings:
    """Which executor runs the steps, and the resources it may use: the spec's `executor:`
    (schemas.spec.ExecutorSpec, the same fields but task_retries) with `curate build`'s
    options on top."""

    kind: Literal["local", "ray"] = "local"
    address: str | None = None  # ray: "auto", "ray://host:10001"; None starts a local Ray
    num_cpus: int | None = None  # ray: CPUs of a local Ray started here (None: all)
    memory_per_task: int | None = None  # ray: bytes of memory each task reserves
    batch_rows: int = 20_000  # rows per task of a batch-scope step
    task_retries: int = 3  # ray: runs again of a task whose worker died
    sample_actors: int | None = None  # ray: actors a sample step sends HTTP requests from


@dataclass
class StageRun:
    """What running a step produced besides the part files: counts, dropped rows, and the
    StageIncomplete an operator stopped with (its partial result is already written)."""

    stats: StageStats = field(default_factory=StageStats)
    dropped: list[pl.DataFrame] = field(default_factory=list)
    stopped: StageIncomplete | None = None


class Executor(ABC):
    """Runs one step of a build. `run_stage` reads the parts in `source`, writes kept rows as
    `part-*.parquet` in `out` (at least one file, even when empty) and returns the rest."""

    kind: str

    @abstractmethod
    def run_stage(
        self,
        operator: Operator,
        *,
        source: AnyPath,
        out: AnyPath,
        metadata: dict[str, str],
        reporter: SilentReporter,
    ) -> StageRun: ...

    def describe(self) -> dict[str, object]:
        """What the manifest records about the executor."""
        return {"kind": self.kind}


def batch_stats(rows_in: int, result: OpResult) -> StageStats:
    """The stats of one slice: rows in and out, dropped rows by reason."""
    reasons: Counter[str] = Counter()
    if result.dropped.height:
        counts = result.dropped.group_by(DROP_REASON).len()
        reasons = Counter(
            dict(zip(counts[DROP_REASON].to_list(), counts["len"].to_list(), strict=True))
        )
    return StageStats(rows_in=rows_in, rows_out=result.kept.height, dropped_by_reason=reasons)
