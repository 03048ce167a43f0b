"""The engine: runs a validated spec stage by stage into a run directory.

Each stage's output is a folder `stages/<stage_id>/` of Parquet parts, its dropped rows
(`dropped.parquet`) and `stage.json` (fingerprint, params, counts). A stage's fingerprint hashes
its operator, version and params with its input's fingerprint, so a re-run reuses every stage
whose fingerprint is unchanged and re-runs only the first changed one and those after it. A
folder appears under its final name only when complete (see parquet_io.atomic_dir), so a build
killed at any moment resumes from the last finished stage and never reads a half-written file.

The run directory may be a local folder or any fsspec filesystem URI (curate.storage): on an
object store a stage folder is committed by writing `stage.json` last (and removing it first
when the stage is replaced), and the request cache, vector caches and build lock stay in a
local folder beside the spec (`.curate/<name>/`), since SQLite and file locks need a local disk.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import os
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from curate import __version__
from curate.errors import RunDirError
from curate.executors import Executor, executor_settings, make_executor
from curate.inputs import file_sha256, read_input
from curate.operators import (
    DROP_DETAIL,
    Operator,
    StageContext,
    params_json,
)
from curate.parquet_io import (
    PartWriter,
    atomic_dir,
    clean_leftovers,
    count_rows,
    part_files,
    to_arrow,
    write_table,
)
from curate.progress import SilentReporter
from curate.schemas.pool import DROP_COLUMNS, POOL_SCHEMA
from curate.spec import LoadedSpec, Step
from curate.stats import StageStats
from curate.storage import AnyPath, check_reachable, is_remote, make_dirs, write_text
from curate.teachers.budget import Budget

INPUT_STAGE = "00-input"
INPUT_READER_VERSION = "1"
BATCH_ROWS = 20_000
STAGE_FILE = "stage.json"
DROPPED_FILE = "dropped.parquet"
REJECTS_FILE = "rejects.parquet"
MANIFEST_FILE = "manifest.json"
PLAN_FILE = "plan.json"  # written when a build starts (see curate.run)
REQUEST_CACHE = "requests.sqlite"  # teacher answers, unless the spec names another file


def fingerprint(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def new_run_id() -> str:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{uuid.uuid4().hex[:6]}"


def write_json_atomic(path: AnyPath, data: dict[str, Any]) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


@dataclass(frozen=True)
class RunPaths:
    root: AnyPath
    local: Path  # the run's local folder: the run directory itself, or .curate/<name>/

    @property
    def stages(self) -> AnyPath:
        return self.root / "stages"

    def stage(self, stage_id: str) -> AnyPath:
        return self.stages / stage_id

    @property
    def cache(self) -> Path:
        return self.local / "cache"

    @property
    def manifest(self) -> AnyPath:
        return self.root / MANIFEST_FILE


def read_stage_record(folder: AnyPath) -> dict[str, Any] | None:
    try:
        record: dict[str, Any] = json.loads((folder / STAGE_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return record


@contextmanager
def _locked(paths: RunPaths) -> Iterator[None]:
    """One build at a time per run directory: a file lock in its local folder (a remote run
    directory is locked against builds from this machine only)."""
    check_reachable(paths.root)
    make_dirs(paths.root)
    paths.local.mkdir(parents=True, exist_ok=True)
    with open(paths.local / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunDirError(f"{paths.root}: another build is using this run directory") from None
        yield


class Build:
    """One `curate build`: input, steps, exports, manifest."""

    def __init__(
        self,
        loaded: LoadedSpec,
        *,
        reporter: SilentReporter | None = None,
        force: bool = False,
        workers: int | None = None,
        refresh: bool = False,
        executor: Executor | None = None,
    ) -> None:
        self.loaded = loaded
        self.reporter = reporter or SilentReporter()
        self.force = force
        self.refresh = refresh  # ask teachers again, ignoring (and overwriting) cached answers
        self.paths = RunPaths(loaded.run_dir, loaded.local_dir)
        self.run_id = new_run_id()
        self.workers = workers or loaded.spec.workers or max(1, os.cpu_count() or 1)
        self.budget = Budget(loaded.spec.budget_usd)
        # Ray starts only when a step runs (a dry run or `validate` makes a Build too).
        self._executor = executor

    @property
    def executor(self) -> Executor:
        """How this build's steps are scheduled: given, or the spec's `executor:`."""
        if self._executor is None:
            self._executor = make_executor(executor_settings(self.loaded.spec.executor))
        return self._executor

    @property
    def request_cache(self) -> Path:
        """The SQLite file of teacher answers (see curate.teachers.cache)."""
        named = self.loaded.spec.request_cache
        return self.loaded.resolve(named) if named else self.paths.local / REQUEST_CACHE

    def lineage(self, stage_id: str, stage_fingerprint: str) -> dict[str, str]:
        return {
            "run_id": self.run_id,
            "spec_hash": self.loaded.spec_hash,
            "version": __version__,
            "stage": stage_id,
            "fingerprint": stage_fingerprint,
        }

    def plan(self) -> dict[str, Any]:
        """What this build will make, stage by stage: lets a reader of an unfinished run tell
        which stages are missing and which present ones are current."""
        spec = self.loaded.spec
        stages = [
            {
                "stage_id": INPUT_STAGE,
                "operator": "input",
                "version": INPUT_READER_VERSION,
                "params": spec.input.model_dump(mode="json", by_alias=True),
            }
        ]
        for step in self.loaded.steps:
            stages.append(
                {
                    "stage_id": step.stage_id,
                    "operator": step.operator.name,
                    "version": step.operator.version,
                    "params": params_json(step.params),
                }
            )
        started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        return {
            "run_id": self.run_id,
            "name": spec.name,
            "started_at": started,
            "spec_hash": self.loaded.spec_hash,
            "stages": stages,
        }

    def run(self) -> dict[str, Any]:
        from curate.export import export_outputs
        from curate.manifest import build_manifest

        with _locked(self.paths):
            if is_remote(self.paths.root):
                self.reporter.message(
                    f"run directory {self.paths.root} is remote: the request cache, vector "
                    f"caches and build lock are kept locally in {self.paths.local}"
                )
            left = clean_leftovers(self.paths.stages)
            if left:
                self.reporter.message(
                    f"removed {left} unfinished stage folder(s) of a build that did not finish"
                )
            write_json_atomic(self.paths.root / PLAN_FILE, self.plan())
            records = [self._input_stage()]
            for step in self.loaded.steps:
                records.append(self._step_stage(step, records[-1]))
            outputs = export_outputs(self, records)
            manifest = build_manifest(self, records, outputs)
            write_json_atomic(self.paths.manifest, manifest)
            write_text(self.paths.root / "spec.yaml", self.loaded.text)
            for output in outputs.values():
                write_json_atomic(Path(output["path"]) / MANIFEST_FILE, manifest)
            self.reporter.funnel(records, outputs)
            return manifest

    # --- stages -------------------------------------------------------------------------

    def _reusable(
        self, folder: AnyPath, stage_fingerprint: str, operator: Operator | None = None
    ) -> dict[str, Any] | None:
        if self.force:
            return None
        record = read_stage_record(folder)
        if record is None:
            return None
        # An operator whose output is not decided by its fingerprint alone (sample) records
        # the fingerprint it ran under as base_fingerprint (see _step_stage).
        if record.get("base_fingerprint", record.get("fingerprint")) != stage_fingerprint:
            return None
        if record.get("complete") is False or not part_files(folder):
            return None
        if operator is not None and not operator.reusable(record):
            return None
        return record

    def input_fingerprint(self) -> str:
        spec = self.loaded.spec.input
        path = self.loaded.resolve(spec.path)
        digest = file_sha256(path) if path.is_file() else "missing"
        return fingerprint(
            {
                "stage": "input",
                "version": INPUT_READER_VERSION,
                "params": spec.model_dump(mode="json", by_alias=True),
                "sha256": digest,
            }
        )

    def _input_stage(self) -> dict[str, Any]:
        spec = self.loaded.spec.input
        stage_fingerprint = self.input_fingerprint()
        folder = self.paths.stage(INPUT_STAGE)
        reused = self._reusable(folder, stage_fingerprint)
        if reused is not None:
            return self._reused(reused)
        self.reporter.stage_started(INPUT_STAGE, None)
        started = time.perf_counter()
        result = read_input(spec, base_dir=self.loaded.base_dir)
        stats = StageStats(
            rows_in=result.frame.height + result.rejects.height,
            rows_out=result.frame.height,
            dropped_by_reason=Counter({"bad_row": result.rejects.height})
            if result.rejects.height
            else Counter(),
        )
        with atomic_dir(folder) as tmp:
            with PartWriter(
                tmp, metadata=self.lineage(INPUT_STAGE, stage_fingerprint), schema=POOL_SCHEMA
            ) as writer:
                writer.write(result.frame)
            if result.rejects.height:
                write_table(
                    tmp / REJECTS_FILE,
                    result.rejects.to_arrow(),
                    metadata=self.lineage(INPUT_STAGE, stage_fingerprint),
                )
            stats.seconds = time.perf_counter() - started
            record = {
                "stage_id": INPUT_STAGE,
                "operator": "input",
                "version": INPUT_READER_VERSION,
                "params": spec.model_dump(mode="json", by_alias=True),
                "fingerprint": stage_fingerprint,
                "input": {"path": str(result.path), "sha256": result.sha256},
                "stats": stats.to_json(),
                "run_id": self.run_id,
            }
            (tmp / STAGE_FILE).write_text(json.dumps(record, indent=2))  # last: the marker
        if result.rejects.height:
            self.reporter.message(
                f"[yellow]skipped {result.rejects.height:,} bad row(s) of {result.path.name}; "
                f"reasons are in {folder / REJECTS_FILE} (SQL view: rejects)[/yellow]"
            )
        return self._ran(record)

    def operator(self, step: Step) -> Operator:
        """The step's operator with the context of this build."""
        context = StageContext(
            stage_id=step.stage_id,
            seed=self.loaded.spec.seed,
            base_dir=self.loaded.base_dir,
            cache_dir=self.paths.cache / step.operator.name,
            workers=self.workers,
            teachers=self.loaded.spec.teachers,
            request_cache=self.request_cache,
            refresh=self.refresh,
            budget=self.budget,
        )
        return step.operator(step.params, context=context)

    def step_fingerprint(
        self, operator: Operator, previous_fingerprint: str
    ) -> tuple[str, dict[str, str]]:
        """The stage fingerprint of a step reading a stage with `previous_fingerprint`, and
        the hashes of the files it reads."""
        files = {
            str(path): file_sha256(path) if path.is_file() else "missing"
            for path in operator.input_files()
        }
        payload: dict[str, Any] = {
            "operator": operator.name,
            "version": operator.version,
            "params": params_json(operator.params),
            "input": previous_fingerprint,
        }
        if files:
            payload["files"] = files
        payload.update(operator.fingerprint_extra())
        return fingerprint(payload), files

    def _step_stage(self, step: Step, previous: dict[str, Any]) -> dict[str, Any]:
        op_cls = step.operator
        params = params_json(step.params)
        operator = self.operator(step)
        stage_fingerprint, files = self.step_fingerprint(operator, previous["fingerprint"])
        folder = self.paths.stage(step.stage_id)
        reused = self._reusable(folder, stage_fingerprint, operator)
        if reused is not None:
            # A reused sample stage's traces still count against budget_usd.
            teachers = reused.get("teachers") or {}
            self.budget.reuse(sum(t.get("cost_usd", 0.0) for t in teachers.values()))
            return self._reused(reused)
        source = self.paths.stage(previous["stage_id"])
        total = count_rows(source)
        self.reporter.stage_started(step.stage_id, total)
        started = time.perf_counter()
        metadata = self.lineage(step.stage_id, stage_fingerprint)
        with atomic_dir(folder) as tmp:
            # How the batches are scheduled is the executor's; the rest is shared (STYLE.md 8).
            stage_run = self.executor.run_stage(
                operator, source=source, out=tmp, metadata=metadata, reporter=self.reporter
            )
            stats, dropped_frames, stopped = stage_run.stats, stage_run.dropped, stage_run.stopped
            if dropped_frames:
                dropped = pl.concat(dropped_frames, how="diagonal_relaxed").with_columns(
                    pl.lit(step.stage_id).alias("drop_stage")
                )
                write_table(tmp / DROPPED_FILE, _dropped_arrow(dropped), metadata=metadata)
            stats.seconds = time.perf_counter() - started
            record = {
                "stage_id": step.stage_id,
                "operator": op_cls.name,
                "version": op_cls.version,
                "params": params,
                "fingerprint": stage_fingerprint,
                "input_fingerprint": previous["fingerprint"],
                **({"files": files} if files else {}),
                "stats": stats.to_json(),
                "run_id": self.run_id,
                "executor": self.executor.kind,
            }
            extra = stopped.record if stopped is not None else operator.record_extra()
            token = extra.pop("output_token", None)
            if token is not None:  # later stages chain on what this one produced
                record["base_fingerprint"] = stage_fingerprint
                record["fingerprint"] = fingerprint({"base": stage_fingerprint, "output": token})
            record.update(extra)
            if stopped is not None:
                record["complete"] = False
            (tmp / STAGE_FILE).write_text(json.dumps(record, indent=2))  # last: the marker
        if stopped is not None:
            raise stopped
        return self._ran(record)

    def _ran(self, record: dict[str, Any]) -> dict[str, Any]:
        entry = {**record, "status": "ran"}
        self.reporter.stage_finished(entry)
        return entry

    def _reused(self, record: dict[str, Any]) -> dict[str, Any]:
        entry = {**record, "status": "reused"}
        self.reporter.stage_finished(entry)
        return entry


def _dropped_arrow(dropped: pl.DataFrame) -> Any:
    """Dropped rows as Arrow: pool columns typed as declared, then the drop columns."""
    drop_names = [f.name for f in DROP_COLUMNS] + [DROP_DETAIL]
    body = to_arrow(dropped.drop([c for c in drop_names if c in dropped.columns]))
    tail = dropped.select([c for c in drop_names if c in dropped.columns]).to_arrow()
    for name in tail.column_names:
        body = body.append_column(name, tail.column(name))
    return body
