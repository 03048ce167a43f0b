"""Executors: how a stage's work is scheduled (one process, or a Ray cluster). The engine
(curate.engine) owns everything else about a stage: fingerprints, reuse, the atomic stage
folder, the dropped table, stage.json and the manifest."""

from __future__ import annotations

from typing import TYPE_CHECKING

from curate.executors.base import Executor, ExecutorSettings, StageRun
from curate.executors.local import LocalExecutor

if TYPE_CHECKING:
    from curate.schemas.spec import ExecutorSpec


def executor_settings(
    spec: ExecutorSpec, *, kind: str | None = None, address: str | None = None
) -> ExecutorSettings:
    """The spec's `executor:` with the command line's --executor / --address on top."""
    chosen = kind or spec.kind
    if chosen not in ("local", "ray"):
        from curate.errors import SpecError

        raise SpecError(f"--executor: expected local or ray, got {chosen!r}")
    return ExecutorSettings(
        kind="ray" if chosen == "ray" else "local",
        address=address or spec.address,
        num_cpus=spec.num_cpus,
        memory_per_task=spec.memory_per_task,
        batch_rows=spec.batch_rows,
        sample_actors=spec.sample_actors,
    )


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
