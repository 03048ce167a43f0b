"""The run manifest: what was built, from what, by which code. Written beside the run and beside
every output. It holds the validated spec (which names environment variables, never secrets)
and, under `teachers`, the samples, tokens and cost of each teacher summed over the sample
steps (tokens and cost count every attempt that was paid for, failed ones included)."""

from __future__ import annotations

import datetime as dt
import platform
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from curate import __version__

if TYPE_CHECKING:
    from curate.engine import Build

KEY_LIBRARIES = (
    "polars",
    "pyarrow",
    "duckdb",
    "pydantic",
    "math-verify",
    "tokenizers",
    "datasketch",
    "openai",
)


def library_versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in KEY_LIBRARIES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def teacher_usage(stages: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per teacher, the usage its sample steps recorded in stage.json, summed."""
    totals: dict[str, dict[str, Any]] = {}
    for stage in stages:
        for name, usage in (stage.get("teachers") or {}).items():
            entry = totals.setdefault(name, {})
            for key, value in usage.items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    entry[key] = entry.get(key, 0) + value
                else:
                    entry.setdefault(key, value)
    for entry in totals.values():
        for key in ("cost_usd", "cost_usd_sent"):
            if key in entry:
                entry[key] = round(entry[key], 8)
    return totals


def build_manifest(
    build: Build, stages: list[dict[str, Any]], outputs: dict[str, Any]
) -> dict[str, Any]:
    loaded = build.loaded
    inputs = [
        stage["input"] | {"rows": stage["stats"]["rows_out"], "rejected": stage["stats"]["dropped"]}
        for stage in stages
        if "input" in stage
    ]
    return {
        "run_id": build.run_id,
        "name": loaded.spec.name,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "spec_path": str(loaded.path),
        "spec_hash": loaded.spec_hash,
        "spec": {
            **loaded.spec.model_dump(mode="json", by_alias=True, exclude={"steps"}),
            "steps": [
                {s.name: s.params.model_dump(mode="json", by_alias=True)} for s in loaded.steps
            ],
        },
        "inputs": inputs,
        "stages": stages,
        "outputs": outputs,
        "teachers": teacher_usage(stages),
        "curate_version": __version__,
        "python": platform.python_version(),
        "libraries": library_versions(),
    }
