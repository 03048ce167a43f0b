"""What a run directory holds: its stages, whether its last build finished, and which stages are
missing when it did not. Every reader of a run (SQL views, stats, report, publish) opens it here.

A build writes `plan.json` when it starts and `manifest.json` when it ends, both with its run id.
The run is finished when the two ids match (or when there is a manifest and no plan: runs made
before plans existed). Otherwise the planned stages are walked in order and a stage counts as
present only when its folder is complete, was made by the planned operator, version and
params, and read the stage before it (its `input_fingerprint`); the first stage that fails
this and every stage after it are missing. So a build killed in its third stage shows its first
two, and a stale folder left by an older build with other params is never shown as current.

A run directory may be a local path or a filesystem URI (curate.storage); a stage counts only
with its `stage.json`, which a remote build writes last, so the same walk holds there.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from curate.engine import MANIFEST_FILE, PLAN_FILE, read_stage_record
from curate.errors import RunDirError
from curate.parquet_io import part_files
from curate.storage import AnyPath, glob, run_path


def _read_json(path: AnyPath) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as exc:
        raise RunDirError(f"{path}: not valid JSON ({exc})") from None
    return data


@dataclass(frozen=True)
class Run:
    """A run directory as its readers see it."""

    root: AnyPath
    name: str
    run_id: str | None
    finished: bool
    stages: list[dict[str, Any]]  # stage records (stage.json) of the present stages, in order
    missing: list[str] | None  # planned stage ids with no current output; None: unknown
    manifest: dict[str, Any] | None = None  # the finished build's manifest
    outputs: dict[str, Any] = field(default_factory=dict)  # the finished build's exports

    def stage_dir(self, stage_id: str) -> AnyPath:
        return self.root / "stages" / stage_id

    def status_line(self) -> str | None:
        """One sentence for an unfinished run; None when the run finished with every stage."""
        shown = ", ".join(s["stage_id"] for s in self.stages)
        if self.finished and not self.missing:
            return None
        if self.missing is None:
            return (
                f"{self.root}: no manifest.json or plan.json, so the build did not finish and "
                f"which stages are missing is unknown; showing the stages found: {shown}"
            )
        head = "the last build of this run did not finish" if not self.finished else "finished"
        return (
            f"{self.root}: {head}; missing stage(s): {', '.join(self.missing)}; "
            f"showing what exists: {shown}"
        )


def open_run(run_dir: str | AnyPath) -> Run:
    """Read a run directory; RunDirError when it does not exist or holds no finished stage."""
    root = run_path(run_dir)
    try:
        exists = root.is_dir()
    except Exception as exc:
        raise RunDirError(f"{run_dir}: cannot read this run directory ({exc})") from None
    if not exists:
        raise RunDirError(f"{run_dir}: no such run directory")
    manifest = _read_json(root / MANIFEST_FILE)
    plan = _read_json(root / PLAN_FILE)
    if manifest is not None and (plan is None or plan.get("run_id") == manifest["run_id"]):
        stages = [s for s in manifest["stages"] if part_files(root / "stages" / s["stage_id"])]
        present = {s["stage_id"] for s in stages}
        return Run(
            root=root,
            name=manifest["name"],
            run_id=manifest["run_id"],
            finished=True,
            stages=stages,
            missing=[s["stage_id"] for s in manifest["stages"] if s["stage_id"] not in present],
            manifest=manifest,
            outputs=manifest.get("outputs", {}),
        )
    if plan is not None:
        stages, missing = _walk_plan(root, plan["stages"])
        run = Run(root, plan["name"], plan["run_id"], False, stages, missing)
    else:
        run = Run(root, root.name, None, False, _walk_folders(root), None)
    if not run.stages:
        raise RunDirError(
            f"{run_dir}: no stage of this run finished yet (no manifest.json and no complete "
            "folder under stages/); is this the run directory of a `curate build`?"
        )
    return run


def _walk_plan(
    root: AnyPath, planned: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[str]]:
    present: list[dict[str, Any]] = []
    for index, stage in enumerate(planned):
        folder = root / "stages" / stage["stage_id"]
        record = read_stage_record(folder)
        current = (
            record is not None
            and bool(part_files(folder))
            and all(record.get(key) == stage[key] for key in ("operator", "version", "params"))
            and (index == 0 or record.get("input_fingerprint") == present[-1]["fingerprint"])
        )
        if not current:
            return present, [s["stage_id"] for s in planned[index:]]
        assert record is not None
        present.append(record)
    return present, []


def _walk_folders(root: AnyPath) -> list[dict[str, Any]]:
    """Without a plan: the complete stage folders, in order, as long as each read the last."""
    present: list[dict[str, Any]] = []
    folders = glob(root / "stages", "[0-9][0-9]-*") if (root / "stages").is_dir() else []
    for folder in folders:
        record = read_stage_record(folder)
        if record is None or not part_files(folder):
            break
        if present and record.get("input_fingerprint") != present[-1]["fingerprint"]:
            break
        present.append(record)
    return present
