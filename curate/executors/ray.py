"""The Ray executor (`curate build --executor ray`, the `curate[ray]` extra).

A stage's input is cut into fragments (row ranges of its Parquet parts, `batch_rows` each) and
each fragment is read by a Ray task, never by the driver. How a step is spread depends on
what the operator declares (`Operator.distribution`):

- rows (batch scope): one Ray task per fragment (plain tasks rather than Ray Data's
  `map_batches`, whose per-task retry limit is only settable through the deprecated
  `ray_remote_args`); each runs the step on its slice and writes `part-<fragment>.parquet`
  itself, so parts keep the pool order.
- per_problem (grade, prune, select without sample/solved_by, dedup with scope per_problem):
  rows carry their global row number; they are hash-partitioned on problem_id (tasks split
  each fragment on `hash(problem_id) % partitions`, through the object store) and each
  partition is run with its rows in pool order. Kept rows go back to the part of the
  fragment they came from, sorted by row number, so the stage holds the same rows in the
  same order as a local run.
- dedup with scope global (exact, minhash, semantic; of rows for a trace column, of problems
  for a problem column, whose units are formed by a shuffle on problem_id): staged in Ray
  tasks, with representatives chosen per cluster on Ray too (curate.executors.ray_dedup).
  Semantic embeddings are computed by a pool of actors, one model load per actor (one actor
  per GPU, else per CPU), into the step's embedding cache, and the cosine search is split
  into query blocks over one matrix in the object store (curate.executors.ray_semantic).
- driver: the step needs the whole pool in one process and runs on the driver, with a log
  line saying so (decontaminate, pair, select with sample or solved_by).
- teachers (`sample`): planned on the driver (the cache lookups and the rows too, by the
  same code as locally); the requests the cache does not answer are sent from sampler
  actors that share each teacher's limits and the budget (curate.executors.ray_sample).

Parts, the dropped table, stage.json and the manifest are written by the engine exactly as in
local mode; the run directory must be a path every worker can reach (local disk on one node).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import socket
import time
from collections import Counter
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
from upath import UPath

from curate.errors import ExecutorError, MissingDependencyError
from curate.executors.base import Executor, ExecutorSettings, StageRun, batch_stats
from curate.executors.local import LocalExecutor
from curate.operators import DROP_DETAIL, DROP_REASON, Distribution, Operator
from curate.parquet_io import frame_of, part_files, write_part
from curate.progress import SilentReporter
from curate.schemas.pool import POOL_SCHEMA
from curate.stats import StageStats
from curate.storage import (
    AnyPath,
    glob,
    make_dirs,
    parquet_file,
    read_table,
    remove_file,
    remove_tree,
    write_parquet,
)

logger = logging.getLogger(__name__)

ROW = "__curate_row"  # global row number of a row in the stage being read
FRAGMENT = "__curate_fragment"
PARTITION = "__curate_partition"
SCRATCH = "_scratch"  # under the stage's folder (temporary, or remote): removed before commit


def import_ray() -> Any:
    """The `ray` module, or MissingDependencyError naming the extra to install."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise MissingDependencyError(
            package="ray[data]", extra="ray", feature="the Ray executor (--executor ray)"
        ) from None
    return ray


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast, with the address in the message, when a `host:port` (or `ray://host:port`)
    address does not answer: ray.init would wait minutes for an unreachable GCS. `auto` is left
    to Ray, which fails at once when no cluster runs on this node."""
    target = address.removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise ExecutorError(
            f"cannot reach Ray at {address}: {exc.strerror or exc}. Is the cluster up "
            "(`ray start --head` prints its address)? Use --address auto on a cluster node, or "
            "leave --address out to start a local Ray"
        ) from None


@dataclasses.dataclass(frozen=True)
class Fragment:
    """Rows start..stop-1 of one part file; `first_row` is its first row's number in the pool."""

    index: int
    file: str | UPath  # a local file's path, or a remote one (tasks open it there)
    start: int
    stop: int
    first_row: int


def fragments(source: AnyPath, batch_rows: int) -> list[Fragment]:
    out: list[Fragment] = []
    row = 0
    for file in part_files(source):
        rows = parquet_file(file).metadata.num_rows
        for start in range(0, max(rows, 1), batch_rows):
            stop = min(rows, start + batch_rows)
            name = str(file) if isinstance(file, Path) else file
            out.append(Fragment(len(out), name, start, stop, row + start))
        row += rows
    return out


def read_fragment(fragment: Fragment, columns: list[str] | None = None) -> pl.DataFrame:
    """The fragment's rows (all columns, or `columns`), reading only the row groups that hold
    them."""
    parquet = parquet_file(fragment.file)
    groups, offset, first = [], 0, None
    for g in range(parquet.metadata.num_row_groups):
        rows = parquet.metadata.row_group(g).num_rows
        if offset < fragment.stop and offset + rows > fragment.start:
            groups.append(g)
            first = offset if first is None else first
        offset += rows
    if not groups:
        table = parquet.schema_arrow.empty_table()
        table = table.select(columns) if columns is not None else table
        return pl.from_arrow(table)  # type: ignore[return-value]
    table = parquet.read_row_groups(groups, columns=columns)
    assert first is not None
    table = table.slice(fragment.start - first, fragment.stop - fragment.start)
    return pl.from_arrow(table)  # type: ignore[return-value]


def worker_copy(operator: Operator) -> Operator:
    """The operator as a task gets it: same params and context, no build-wide spending tracker
    (steps that spend, `sample`, run on the driver)."""
    context = dataclasses.replace(operator.context, budget=None, workers=1)
    return type(operator)(operator.params, context=context)


def _reasons_json(stats: StageStats) -> str:
    return json.dumps(dict(stats.dropped_by_reason))


def _stats_row(stats: StageStats) -> dict[str, list[Any]]:
    return {
        "rows_in": [stats.rows_in],
        "rows_out": [stats.rows_out],
        "reasons": [_reasons_json(stats)],
    }


def _sum_stats(rows: list[dict[str, Any]]) -> StageStats:
    total = StageStats()
    for row in rows:
        total = total + StageStats(
            rows_in=int(row["rows_in"]),
            rows_out=int(row["rows_out"]),
            dropped_by_reason=Counter(json.loads(row["reasons"])),
        )
    return total


class RayExecutor(Executor):
    kind = "ray"

    def __init__(self, settings: ExecutorSettings) -> None:
        self.settings = settings
        self.last_timings: dict[str, float] = {}
        self.last_candidates = 0
        self.last_actors: list[dict[str, Any]] = []  # semantic dedup: each embedding actor's report
        self.ray = import_ray()
        self._connect()

    def describe(self) -> dict[str, object]:
        resources = self.ray.cluster_resources()
        return {
            "kind": self.kind,
            "address": self.settings.address,
            "cpus": resources.get("CPU"),
            "nodes": len(self.ray.nodes()),
        }

    def _connect(self) -> None:
        ray = self.ray
        if self.settings.address:
            check_reachable(self.settings.address)
        if ray.is_initialized():  # a Ray this process joined already (tests, notebooks)
            return
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if self.settings.address:
            kwargs["address"] = self.settings.address
        elif self.settings.num_cpus:
            kwargs["num_cpus"] = self.settings.num_cpus
        try:
            ray.init(**kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = self.settings.address or "a new local Ray"
            raise ExecutorError(
                f"cannot connect to Ray at {where}: {str(exc).rstrip('.')}. Start a cluster "
                "(`ray start --head`) and pass its address (--address auto on a cluster "
                "node), or leave --address out to start a local Ray"
            ) from None
        ray.data.DataContext.get_current().enable_progress_bars = False

    def _task_options(self) -> dict[str, Any]:
        # A task whose worker dies (killed, out of memory) is run again, up to task_retries
        # times; then the step fails with ExecutorError and a re-run resumes at this stage.
        options: dict[str, Any] = {"num_cpus": 1, "max_retries": self.settings.task_retries}
        if self.settings.memory_per_task:
            options["memory"] = self.settings.memory_per_task
        return options

    # --- stages ----------------------------------------------------------------------------

    def run_stage(
        self,
        operator: Operator,
        *,
        source: AnyPath,
        out: AnyPath,
        metadata: dict[str, str],
        reporter: SilentReporter,
    ) -> StageRun:
        distribution = operator.distribution()
        step = f"step '{operator.context.stage_id}' ({operator.name})"
        frags = fragments(source, self.settings.batch_rows)
        try:
            if operator.calls_teachers:
                from curate.executors.ray_sample import sample_on_ray

                return sample_on_ray(
                    self, operator, source=source, out=out, metadata=metadata, reporter=reporter
                )
            elif distribution is Distribution.ROWS:
                return self._rows(operator, frags, out, metadata, reporter)
            elif distribution is Distribution.PER_PROBLEM:
                return self._per_problem(operator, frags, out, metadata, reporter)
            elif _staged_dedup(operator):
                return self._dedup(operator, frags, out, metadata, reporter)
            else:
                logger.info("%s runs on the driver: it needs the whole pool at once", step)
        except self.ray.exceptions.RayError as exc:
            raise ExecutorError(f"{step} failed on Ray: {exc}") from None
        finally:
            remove_tree(out / SCRATCH)
        return LocalExecutor(batch_rows=self.settings.batch_rows).run_stage(
            operator, source=source, out=out, metadata=metadata, reporter=reporter
        )

    def _rows(
        self,
        operator: Operator,
        frags: list[Fragment],
        out: AnyPath,
        metadata: dict[str, str],
        reporter: SilentReporter,
    ) -> StageRun:
        """Batch scope: each task runs the step on one fragment and writes its part."""
        worker = worker_copy(operator)
        scratch = out / SCRATCH
        make_dirs(scratch)

        def task(frag: Fragment) -> dict[str, Any]:
            frame = read_fragment(frag)
            result = worker.run(frame)
            _write_part(out / f"part-{frag.index:05d}.parquet", result.kept, metadata)
            if result.dropped.height:
                write_parquet(
                    scratch / f"dropped-{frag.index:05d}.parquet", result.dropped.to_arrow()
                )
            return {k: v[0] for k, v in _stats_row(batch_stats(frame.height, result)).items()}

        remote = self.ray.remote(**self._task_options())(task)
        rows = self.ray.get([remote.remote(frag) for frag in frags])
        return self._finish(rows, out, metadata, reporter)

    def _per_problem(
        self,
        operator: Operator,
        frags: list[Fragment],
        out: AnyPath,
        metadata: dict[str, str],
        reporter: SilentReporter,
    ) -> StageRun:
        """Hash-partition the rows on problem_id (a shuffle through the object store), run each
        partition in pool order, and send kept rows back to the output part of the row range
        they came from, so the stage holds the same rows in the same order as a local run."""
        ray = self.ray
        worker = worker_copy(operator)
        cpus = int(ray.cluster_resources().get("CPU", 1))
        partitions = max(1, min(len(frags), 2 * cpus))
        outputs = max(1, min(len(frags), 4 * cpus))
        per_output = -(-len(frags) // outputs)  # fragments per output part, rounded up
        options = self._task_options()

        @ray.remote(num_returns=partitions, **options)
        def split(frag: Fragment) -> Any:
            frame = read_fragment(frag).with_columns(
                pl.int_range(frag.first_row, frag.first_row + pl.len(), dtype=pl.Int64).alias(ROW),
                pl.lit(frag.index // per_output, dtype=pl.Int64).alias(FRAGMENT),
            )
            part = (frame["problem_id"].hash(seed=17) % partitions).cast(pl.Int64)
            pieces = [frame.filter(part == p) for p in range(partitions)]
            return pieces if partitions > 1 else pieces[0]

        @ray.remote(num_returns=outputs + 2, **options)
        def run_partition(*pieces: pl.DataFrame) -> list[Any]:
            frame = _concat(list(pieces)).sort(ROW)
            result = worker.run(frame)
            kept = [result.kept.filter(pl.col(FRAGMENT) == o) for o in range(outputs)]
            stats = _stats_row(batch_stats(frame.height, result))
            return [*kept, stats, result.dropped]

        @ray.remote(**options)
        def gather(index: int, *pieces: pl.DataFrame) -> int:
            frame = _concat(list(pieces)).sort(ROW).drop(ROW, FRAGMENT)
            if frame.height:
                _write_part(out / f"part-{index:05d}.parquet", frame, metadata)
            return frame.height

        split_refs = [split.remote(frag) for frag in frags]
        if partitions == 1:
            split_refs = [[ref] for ref in split_refs]
        reduce_refs = [
            run_partition.remote(*[refs[p] for refs in split_refs]) for p in range(partitions)
        ]
        written = [gather.remote(o, *[refs[o] for refs in reduce_refs]) for o in range(outputs)]
        ray.get(written)
        rows = [
            {k: v[0] for k, v in stats.items()}
            for stats in ray.get([refs[outputs] for refs in reduce_refs])
        ]
        run = StageRun(stats=_sum_stats(rows))
        dropped = [d for d in ray.get([refs[outputs + 1] for refs in reduce_refs]) if d.height]
        if dropped:
            frame = _concat(dropped).sort(ROW).drop(ROW, FRAGMENT)
            run.dropped.append(frame)
            if not part_files(out):  # every row dropped: an empty part with the pool's columns
                drop = [c for c in (DROP_REASON, DROP_DETAIL) if c in frame.columns]
                _write_part(out / "part-00000.parquet", frame.clear().drop(drop), metadata)
        unify_parts(out, metadata)
        reporter.advance(run.stats.rows_in)
        return run

    def _dedup(
        self,
        operator: Operator,
        frags: list[Fragment],
        out: AnyPath,
        metadata: dict[str, str],
        reporter: SilentReporter,
    ) -> StageRun:
        """Global dedup (exact, MinHash, semantic; of rows or of problems), staged
        (curate.executors.ray_dedup)."""
        from curate.executors.ray_dedup import RayDedup, apply_decisions

        ray = self.ray
        # The checks `run` makes, with the same errors, on the stage's columns.
        empty: pl.DataFrame = pl.from_arrow(  # type: ignore[assignment]
            parquet_file(frags[0].file).schema_arrow.empty_table()
        )
        missing = [c for c in operator.requires if c not in empty.columns]
        if missing:
            operator.run(empty)  # raises the OperatorError naming them
        operator._check(empty)  # type: ignore[attr-defined]  # dedup's own column checks
        cpus = int(ray.cluster_resources().get("CPU", 1))
        options = self._task_options()
        staged = RayDedup(ray, operator, frags, options=options, partitions=2 * cpus)
        decided = staged.decide()
        key = "problem_id" if staged.by_problem else "row"  # how decided columns reach rows
        self.last_timings = staged.timings  # seconds per stage (bench/ray_scale.py)
        self.last_candidates = staged.candidates
        self.last_actors = staged.actors
        started = time.perf_counter()

        @ray.remote(num_returns=2, **options)
        def write(frag: Fragment, *pieces: pl.DataFrame) -> tuple[dict[str, Any], pl.DataFrame]:
            frame = read_fragment(frag)
            kept, dropped = apply_decisions(frame, frag.first_row, list(pieces), key=key)
            _write_part(out / f"part-{frag.index:05d}.parquet", kept, metadata)
            stats = StageStats(
                rows_in=frame.height,
                rows_out=kept.height,
                dropped_by_reason=Counter({"duplicate": dropped.height} if dropped.height else {}),
            )
            return {k: v[0] for k, v in _stats_row(stats).items()}, dropped

        refs = [write.remote(frag, *pieces) for frag, pieces in zip(frags, decided, strict=True)]
        run = StageRun(stats=_sum_stats(ray.get([r[0] for r in refs])))
        dropped = [d for d in ray.get([r[1] for r in refs]) if d.height]
        if dropped:
            run.dropped.append(pl.concat(dropped, how="diagonal_relaxed"))
        unify_parts(out, metadata)
        self.last_timings["write"] = time.perf_counter() - started
        reporter.advance(run.stats.rows_in)
        return run

    def _finish(
        self,
        rows: list[dict[str, Any]],
        out: AnyPath,
        metadata: dict[str, str],
        reporter: SilentReporter,
        order_by: str | None = None,
    ) -> StageRun:
        """Sum the tasks' stats, collect the dropped rows, make the parts one schema."""
        run = StageRun(stats=_sum_stats(rows))
        scratch = out / SCRATCH
        dropped_files = glob(scratch, "dropped-*.parquet")
        if dropped_files:
            dropped = pl.concat(
                [frame_of(read_table(f)) for f in dropped_files],
                how="diagonal_relaxed",
            )
            if order_by is not None:
                dropped = dropped.sort(order_by).drop(order_by, FRAGMENT)
            run.dropped.append(dropped)
            if not part_files(out):  # every row dropped: an empty part with the pool's columns
                drop = [c for c in (DROP_REASON, DROP_DETAIL) if c in dropped.columns]
                _write_part(out / "part-00000.parquet", dropped.clear().drop(drop), metadata)
        remove_tree(scratch)
        unify_parts(out, metadata)
        reporter.advance(run.stats.rows_in)
        return run


def _staged_dedup(operator: Operator) -> bool:
    from curate.filters.dedup import Dedup

    if not isinstance(operator, Dedup):
        return False
    from curate.executors.ray_dedup import distributable

    return distributable(operator)


def _concat(frames: list[pl.DataFrame]) -> pl.DataFrame:
    """Frames of one step's output from different tasks as one (an all-null column may have
    come out as Null in one of them)."""
    full = [f for f in frames if f.height] or frames[:1]
    return pl.concat(full, how="diagonal_relaxed") if len(full) > 1 else full[0]


def _write_part(path: AnyPath, frame: pl.DataFrame, metadata: dict[str, str]) -> None:
    write_part(path, frame, metadata=metadata, schema=POOL_SCHEMA)


def unify_parts(out: AnyPath, metadata: dict[str, str]) -> None:
    """Parts written by different tasks must read as one table: drop empty parts when some part
    has rows (keeping one when none has), then rewrite parts whose schema differs from the
    unified one (a column that was all null in one slice, for example)."""
    files = part_files(out)
    if not files:
        _write_part(out / "part-00000.parquet", pl.DataFrame(), metadata)
        return
    sizes = {f: parquet_file(f).metadata.num_rows for f in files}
    if any(sizes.values()):
        for f in files:
            if sizes[f] == 0:
                remove_file(f)
        files = [f for f in files if sizes[f]]
    else:
        for f in files[1:]:
            remove_file(f)
        files = files[:1]
    schemas = {f: parquet_file(f).schema_arrow.remove_metadata() for f in files}
    if len({s.to_string() for s in schemas.values()}) <= 1:
        return
    unified = pa.unify_schemas(list(schemas.values()), promote_options="permissive")
    for f in files:
        if schemas[f].equals(unified):
            continue
        table = read_table(f)
        columns = [
            table.column(field.name).cast(field.type)
            if field.name in table.column_names
            else pa.nulls(table.num_rows, field.type)
            for field in unified
        ]
        frame: pl.DataFrame = pl.from_arrow(  # type: ignore[assignment]
            pa.Table.from_arrays(columns, schema=unified)
        )
        _write_part(f, frame, metadata)
