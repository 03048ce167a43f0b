"""The operator contract: a named, versioned step with a typed params model and one method.

An operator maps a Polars frame (the pool) to an `OpResult`: the rows it keeps (possibly with new
columns) and the rows it dropped, each with a short reason code and a human-readable detail. A
`Filter` only decides: it returns the frame with a `drop_reason` column (null keeps the row) and
the base class does the routing, so every filter drops rows the same way.

Operators are found by name through `curate.registry`, never through an if-chain.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

import polars as pl
from pydantic import BaseModel, ConfigDict

from curate.errors import BuildStopped, OperatorError

if TYPE_CHECKING:
    from curate.teachers.budget import Budget


class Scope(str, enum.Enum):
    """`batch`: row-local, may run on any slice of the pool. `global`: needs the whole pool."""

    BATCH = "batch"
    GLOBAL = "global"


class Distribution(str, enum.Enum):
    """How an executor may spread an operator over workers (see curate.executors).

    `rows`: any slice of the pool (batch scope). `per_problem`: the operator looks only within
    a problem, so the pool may be hash-partitioned on problem_id and each partition run apart.
    `driver`: it needs the whole pool in one process; a staged operator may still do part of
    its work in parallel first (`prepare`)."""

    ROWS = "rows"
    PER_PROBLEM = "per_problem"
    DRIVER = "driver"


class Params(BaseModel):
    """Base of every operator's params model: unknown keys are errors, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


P = TypeVar("P", bound=Params)


@dataclass(frozen=True, kw_only=True)
class StageContext:
    """What an operator may know about the run it is part of."""

    stage_id: str  # e.g. "03-prune"
    seed: int = 0
    base_dir: Path = field(default_factory=Path.cwd)  # the spec file's folder: paths resolve here
    cache_dir: Path | None = None  # a folder under the run directory this stage may reuse
    workers: int = 1
    # For operators that call teachers (sample): the spec's `teachers:` by name, the request
    # cache file, whether to ignore that cache (--refresh) and the build's spending tracker.
    teachers: Mapping[str, Any] = field(default_factory=dict)
    request_cache: Path | None = None
    refresh: bool = False
    budget: Budget | None = None

    def resolve(self, path: str | Path) -> Path:
        """A path from the spec, resolved relative to the spec file."""
        candidate = Path(path).expanduser()
        return candidate if candidate.is_absolute() else (self.base_dir / candidate).resolve()


DROP_REASON = "drop_reason"
DROP_DETAIL = "drop_detail"


class StageIncomplete(BuildStopped):
    """An operator stopped before its end on purpose (Ctrl-C, budget reached) and hands back what
    it finished. The engine writes `result` as the stage marked incomplete (readable by `curate
    sql`, never reused as complete) and stops the build with this error's message and code."""

    def __init__(
        self, message: str, *, result: OpResult, record: dict[str, Any], exit_code: int
    ) -> None:
        super().__init__(message)
        self.result = result
        self.record = record  # extra stage.json fields, as Operator.record_extra() gives
        self.exit_code = exit_code


@dataclass(frozen=True)
class OpResult:
    """Rows kept and rows dropped; `dropped` adds drop_reason and drop_detail columns."""

    kept: pl.DataFrame
    dropped: pl.DataFrame

    @classmethod
    def keep_all(cls, frame: pl.DataFrame) -> OpResult:
        return cls(kept=frame, dropped=empty_dropped(frame))


def empty_dropped(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.clear().with_columns(
        pl.lit(None, dtype=pl.String).alias(DROP_REASON),
        pl.lit(None, dtype=pl.String).alias(DROP_DETAIL),
    )


class Operator(ABC, Generic[P]):
    """One pipeline step. Subclasses set the class variables and implement `apply`."""

    name: ClassVar[str]
    version: ClassVar[str]
    scope: ClassVar[Scope]
    params_model: ClassVar[type[Params]]
    requires: ClassVar[tuple[str, ...]] = ()  # pool columns that must exist before this step
    calls_teachers: ClassVar[bool] = False  # sends requests: --refresh re-runs it, --dry-run plans
    summary: ClassVar[str] = ""  # one line for `curate ops`; defaults to the docstring's first

    def __init__(self, params: P, *, context: StageContext) -> None:
        self.params = params
        self.context = context

    @abstractmethod
    def apply(self, frame: pl.DataFrame) -> OpResult:
        """Map the pool (or a batch of it, for batch scope) to kept and dropped rows."""

    def input_files(self) -> list[Path]:
        """Files this step reads besides the pool (a tokenizer, a benchmark set). The engine
        hashes their content into the stage fingerprint, so editing one re-runs the step."""
        return []

    def fingerprint_extra(self) -> dict[str, Any]:
        """What besides its params decides this step's output (a teacher's model and endpoint);
        hashed into the stage fingerprint."""
        return {}

    def reusable(self, record: dict[str, Any]) -> bool:
        """Whether a finished stage with an unchanged fingerprint may be reused."""
        return True

    def record_extra(self) -> dict[str, Any]:
        """Fields to add to stage.json once `run` returned (usage and cost of teachers). An
        `output_token` there is folded into the fingerprint later stages chain on, for an
        output that is not decided by the fingerprint alone (answers re-sent after errors)."""
        return {}

    def distribution(self) -> Distribution:
        """How this step may be spread over workers; a global operator that looks only within
        a problem (for its params) returns PER_PROBLEM."""
        return Distribution.ROWS if self.scope is Scope.BATCH else Distribution.DRIVER

    def run(self, frame: pl.DataFrame) -> OpResult:
        """Check required columns, then apply. The engine calls this."""
        missing = [c for c in self.requires if c not in frame.columns]
        if missing:
            raise OperatorError(
                f"step '{self.context.stage_id}' ({self.name}) needs column(s) "
                f"{', '.join(missing)}, which no earlier step produced; "
                f"columns present: {', '.join(frame.columns)}"
            )
        return self.apply(frame)

    @classmethod
    def describe(cls) -> str:
        doc = (cls.__doc__ or "").strip()
        return cls.summary or (doc.splitlines()[0] if doc else "")


class Filter(Operator[P]):
    """An operator that only decides. `decide` returns the frame (it may add columns) with a
    `drop_reason` column: null keeps the row, a short code drops it. An optional `drop_detail`
    column explains the decision for that row. The base class routes the rows."""

    @abstractmethod
    def decide(self, frame: pl.DataFrame) -> pl.DataFrame:
        """Return `frame` plus `drop_reason` (and optionally `drop_detail`) columns."""

    def apply(self, frame: pl.DataFrame) -> OpResult:
        decided = self.decide(frame)
        if DROP_REASON not in decided.columns:
            raise OperatorError(f"{self.name}.decide() returned no '{DROP_REASON}' column")
        if DROP_DETAIL not in decided.columns:
            decided = decided.with_columns(pl.lit(None, dtype=pl.String).alias(DROP_DETAIL))
        is_kept = pl.col(DROP_REASON).is_null()
        kept = decided.filter(is_kept).drop(DROP_REASON, DROP_DETAIL)
        dropped = decided.filter(~is_kept)
        return OpResult(kept=kept, dropped=dropped)


def params_json(params: BaseModel) -> dict[str, Any]:
    """Params as plain JSON values, the form that is hashed into a stage fingerprint."""
    return params.model_dump(mode="json", by_alias=True)
