"""Executors: how a stage's work is scheduled (one process, or a Ray cluster). The engine
(curate.engine) owns everything else about a stage: fingerprints, reuse, the atomic stage
folder, the dropped table, stage.json and the manifest."""

from __future__ import annotations

from typing import TYPE_CHECKING

from curate.executors.base import Executor, ExecutorSettings, StageRun
from curate.executors.local import LocalExecutor

if TYPE_CHECKING:
    from curate.schemas.spec import ExecutorSpec


RAY_ONLY = ("address", "num_cpus", "memory_per_task", "sample_actors")


def executor_settings(
    spec: ExecutorSpec, *, kind: str | None = None, **flags: int | str | None
) -> ExecutorSettings:
    """The spec's `executor:` with the command line on top: `kind` from --executor, `flags`
    from --address, --num-cpus, --memory-per-task, --batch-rows and --sample-actors (None: not
    given). The result is validated by the spec's own model, so a flag gets the same checks as
    the key; choosing local on the command line sets aside the spec's Ray-only settings."""
    from pydantic import ValidationError

    from curate.errors import SpecError
    from curate.schemas.spec import ExecutorSpec

    chosen = kind or spec.kind
    if chosen not in ("local", "ray"):
        raise SpecError(f"--executor: expected local or ray, got {chosen!r}")
    merged = spec.model_dump(exclude_unset=True)
    if chosen == "local":
        merged = {k: v for k, v in merged.items() if k not in RAY_ONLY}
    given = {k: v for k, v in flags.items() if v is not None}
    unknown = set(given) - set(ExecutorSpec.model_fields)
    if unknown:
        raise TypeError(f"unknown executor setting(s): {', '.join(sorted(unknown))}")
    try:
        settings = ExecutorSpec.model_validate({**merged, **given, "kind": chosen})
    except ValidationError as exc:
        problems = "; ".join(
            f"--{str(e['loc'][0]).replace('_', '-')}: {e['msg']}" if e["loc"] else e["msg"]
            for e in exc.errors()
        )
        raise SpecError(f"executor settings on the command line: {problems}") from None
    return ExecutorSettings(**settings.model_dump())


def make_executor(settings: ExecutorSettings | None) -> Executor:
    """The executor `settings` name (default: local); Ray is imported only when asked for."""
    if settings is None or settings.kind == "local":
        return LocalExecutor(batch_rows=settings.batch_rows if settings else 20_000)
    from curate.executors.ray import RayExecutor

    return RayExecutor(settings)


__all__ = [
    "Executor",
    "ExecutorSettings",
    "LocalExecutor",
    "StageRun",
    "executor_settings",
    "make_executor",
]
