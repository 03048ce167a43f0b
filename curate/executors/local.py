"""The local executor: one process streams a batch-scope step over the stage in batches, and
hands a global step the whole pool."""

from __future__ import annotations

from collections.abc import Iterator

import polars as pl

from curate.executors.base import Executor, StageRun, batch_stats
from curate.operators import Operator, Scope, StageIncomplete
from curate.parquet_io import PartWriter, iter_batches, read_parts
from curate.progress import SilentReporter
from curate.schemas.pool import POOL_SCHEMA
from curate.storage import AnyPath

BATCH_ROWS = 20_000


class LocalExecutor(Executor):
    kind = "local"

    def __init__(self, *, batch_rows: int = BATCH_ROWS) -> None:
        self.batch_rows = batch_rows

    def run_stage(
        self,
        operator: Operator,
        *,
        source: AnyPath,
        out: AnyPath,
        metadata: dict[str, str],
        reporter: SilentReporter,
    ) -> StageRun:
        batches: Iterator[pl.DataFrame]
        if operator.scope is Scope.BATCH:
            batches = iter_batches(source, batch_rows=self.batch_rows)
        else:
            batches = iter([read_parts(source)])
        run = StageRun()
        wrote_any = False
        with PartWriter(out, metadata=metadata, schema=POOL_SCHEMA) as writer:
            for batch in batches:
                try:
                    result = operator.run(batch)
                except StageIncomplete as exc:  # keep what it finished, marked incomplete
                    run.stopped, result = exc, exc.result
                run.stats = run.stats + batch_stats(batch.height, result)
                if result.kept.height or not wrote_any:
                    writer.write(result.kept)
                    wrote_any = True
                if result.dropped.height:
                    run.dropped.append(result.dropped)
                reporter.advance(batch.height)
                if run.stopped is not None:
                    break
        return run
