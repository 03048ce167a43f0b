"""A build killed with SIGKILL at any point, then re-run, gives the same rows as a build that
was never interrupted, and no half-written file is ever read."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from tests.conftest import QUICKSTART


def make_copy(root: Path) -> Path:
    root.mkdir(parents=True)
    shutil.copytree(QUICKSTART / "data", root / "data")
    shutil.copy(QUICKSTART / "spec.yaml", root / "spec.yaml")
    return root / "spec.yaml"


def build_cmd(spec: Path) -> list[str]:
    return [sys.executable, "-m", "curate.cli.main", "build", str(spec)]


def outputs(root: Path) -> dict[str, pl.DataFrame]:
    return {
        kind: pl.read_parquet(root / "out" / kind / "*.parquet").sort(
            "problem_id", "trace_id" if kind == "sft" else "chosen_trace_id"
        )
        for kind in ("sft", "preference")
    }


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pl.DataFrame]:
    spec = make_copy(tmp_path_factory.mktemp("ref") / "q")
    subprocess.run(build_cmd(spec), check=True, capture_output=True)
    return outputs(spec.parent)


def kill_when(spec: Path, appears: str, extra_delay: float) -> None:
    """Start a build, SIGKILL it once `appears` (a path under the run dir) exists."""
    run = spec.parent / "runs" / "quickstart"
    proc = subprocess.Popen(build_cmd(spec), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (run / appears).exists():
        assert proc.poll() is None, "the build finished before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(extra_delay)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.parametrize(
    ("appears", "delay"),
    [
        ("stages/00-input/stage.json", 0.3),  # killed while verifying
        ("stages/01-verify/stage.json", 0.0),  # killed right after a stage finished
    ],
)
def test_killed_build_resumes_to_the_same_rows(
    tmp_path: Path, reference: dict[str, pl.DataFrame], appears: str, delay: float
) -> None:
    spec = make_copy(tmp_path / "q")
    kill_when(spec, appears, delay)
    run = spec.parent / "runs" / "quickstart"
    assert not (run / "manifest.json").exists()
    finished = {p.name for p in (run / "stages").iterdir() if not p.name.startswith(".")}
    for name in finished:  # whatever exists under a final name is complete
        assert (run / "stages" / name / "stage.json").exists()
        pl.read_parquet(run / "stages" / name / "part-*.parquet")
    rerun = subprocess.run(build_cmd(spec), check=True, capture_output=True, text=True)
    assert "reused" in rerun.stderr  # finished stages are not paid for twice
    leftovers = [p.name for p in (run / "stages").iterdir() if p.name.startswith(".")]
    assert leftovers == []
    got = outputs(spec.parent)
    for kind, frame in reference.items():
        assert got[kind].equals(frame), kind
