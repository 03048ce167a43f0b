"""The run manifest: what was built, from what, by which code. Written beside the run and beside
every output. It holds the validated spec (which names environment variables, never secrets)."""

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
        "curate_version": __version__,
        "python": platform.python_version(),
        "libraries": library_versions(),
    }
