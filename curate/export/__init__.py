"""Exports: the training sets a build writes (SFT, preference), sharded Parquet with lineage."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from curate.errors import OperatorError
from curate.export.preference import preference_rows
from curate.export.sft import sft_rows
from curate.parquet_io import atomic_dir, read_parts, to_arrow, write_table
from curate.schemas.exports import EXPORT_SCHEMAS
from curate.schemas.spec import PreferenceOutput, SFTOutput
from curate.storage import AnyPath

if TYPE_CHECKING:
    from curate.engine import Build

EXPORT_VERSION = "1"


def shard_name(index: int, count: int) -> str:
    return f"train-{index:05d}-of-{count:05d}.parquet"


def write_shards(
    folder: AnyPath, table: pa.Table, *, shard_rows: int, metadata: dict[str, str]
) -> list[str]:
    count = max(1, math.ceil(table.num_rows / shard_rows))
    names = []
    for index in range(count):
        name = shard_name(index, count)
        write_table(folder / name, table.slice(index * shard_rows, shard_rows), metadata=metadata)
        names.append(name)
    return names


def _previous_fingerprint(folder: Path, kind: str) -> str | None:
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        value: str | None = manifest["outputs"][kind]["fingerprint"]
        return value
    except (FileNotFoundError, KeyError, json.JSONDecodeError):
        return None


def export_outputs(build: Build, records: list[dict[str, Any]]) -> dict[str, Any]:
    """Write every configured output; reuse one whose inputs and config are unchanged."""
    from curate.engine import fingerprint

    loaded = build.loaded
    results: dict[str, Any] = {}
    outputs: dict[str, SFTOutput | PreferenceOutput | None] = {
        "sft": loaded.spec.outputs.sft,
        "preference": loaded.spec.outputs.preference,
    }
    by_id = {r["stage_id"]: r for r in records}
    for kind, config in outputs.items():
        if config is None:
            continue
        stage_id = (
            loaded.step_named(config.from_stage).stage_id
            if config.from_stage
            else records[-1]["stage_id"]
        )
        source = by_id[stage_id]
        folder = loaded.resolve(config.path)
        export_fingerprint = fingerprint(
            {
                "export": kind,
                "version": EXPORT_VERSION,
                "config": config.model_dump(mode="json", by_alias=True),
                "input": source["fingerprint"],
            }
        )
        entry = {"path": str(folder), "from_stage": stage_id, "fingerprint": export_fingerprint}
        if not build.force and _previous_fingerprint(folder, kind) == export_fingerprint:
            previous = json.loads((folder / "manifest.json").read_text())["outputs"][kind]
            results[kind] = {**previous, **entry, "status": "reused"}
            build.reporter.stage_finished(
                {
                    "stage_id": f"export {kind}",
                    "status": "reused",
                    "output": str(folder),
                    "fingerprint": export_fingerprint,
                    "stats": {"rows_out": previous["rows"]},
                }
            )
            continue
        build.reporter.stage_started(f"export {kind}", None)
        started = time.perf_counter()
        pool = read_parts(build.paths.stage(stage_id))
        try:
            if isinstance(config, SFTOutput):
                rows = sft_rows(pool, config)
            else:
                rows = preference_rows(pool, config, base_dir=loaded.base_dir)
        except ValueError as exc:
            raise OperatorError(f"outputs.{kind}: {exc}") from None
        table = to_arrow(rows, EXPORT_SCHEMAS[kind]).cast(EXPORT_SCHEMAS[kind])
        metadata = build.lineage(f"export-{kind}", export_fingerprint)
        with atomic_dir(folder) as tmp:
            files = write_shards(tmp, table, shard_rows=config.shard_rows, metadata=metadata)
            (tmp / "spec.yaml").write_text(loaded.text)
        results[kind] = {
            **entry,
            "status": "ran",
            "rows": table.num_rows,
            "files": files,
            "problems": rows["problem_id"].n_unique() if rows.height else 0,
            "seconds": round(time.perf_counter() - started, 3),
            "run_id": build.run_id,
        }
        build.reporter.stage_finished(
            {
                "stage_id": f"export {kind}",
                "status": "ran",
                "output": str(folder),
                "fingerprint": export_fingerprint,
                "stats": {"rows_out": table.num_rows},
            }
        )
    return results


__all__ = ["export_outputs", "write_shards"]
