"""A run directory on an object store: the quickstart built into an S3 bucket gives the same
stages and exports as a local build, a second build reuses every stage, `curate sql` reads the
URI, and a build killed mid-stage leaves nothing a re-run takes for complete.

S3 is emulated by moto's server (the S3 HTTP API on 127.0.0.1, started here) and reached through
s3fs exactly as a real bucket would be, with the endpoint and credentials in the environment
(AWS_ENDPOINT_URL, ...), which subprocess builds inherit."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import polars as pl
import pytest
from moto.server import ThreadedMotoServer
from typer.testing import CliRunner

from curate.cli.main import app
from curate.engine import Build
from curate.errors import RunDirError
from curate.parquet_io import read_parts
from curate.run import open_run
from curate.spec import load_spec
from curate.storage import run_path
from tests.conftest import QUICKSTART

BUCKET = "curate-runs"


@pytest.fixture(scope="module")
def s3_env() -> Iterator[dict[str, str]]:
    """An S3 endpoint on 127.0.0.1 with one empty bucket; the environment that reaches it."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        fsspec.filesystem("s3", skip_instance_cache=True).mkdir(BUCKET)
        yield env
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()  # later tests must not reuse this endpoint
    server.stop()


def make_copy(root: Path, run_dir: str) -> Path:
    root.mkdir(parents=True)
    shutil.copytree(QUICKSTART / "data", root / "data")
    text = (QUICKSTART / "spec.yaml").read_text()
    (root / "spec.yaml").write_text(text.replace("\nsteps:\n", f"\nrun_dir: {run_dir}\nsteps:\n"))
    return root / "spec.yaml"


def outputs(root: Path) -> dict[str, pl.DataFrame]:
    return {
        kind: pl.read_parquet(root / "out" / kind / "*.parquet") for kind in ("sft", "preference")
    }


def build(spec: Path) -> dict[str, Any]:
    return Build(load_spec(spec)).run()


@pytest.fixture(scope="module")
def remote_run(s3_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The quickstart built with the local executor into s3://curate-runs/<id>/quickstart."""
    spec = make_copy(tmp_path_factory.mktemp("s3") / "q", f"s3://{BUCKET}/built/quickstart")
    result = CliRunner().invoke(app, ["build", str(spec)])
    assert result.exit_code == 0, result.output
    assert "is remote: the request cache" in result.output
    return spec


def test_remote_build_has_the_stages_and_exports_of_a_local_build(
    remote_run: Path, quickstart_run: Path
) -> None:
    remote = open_run(f"s3://{BUCKET}/built/quickstart")
    local = open_run(quickstart_run)
    assert remote.finished and not remote.missing
    assert [s["stage_id"] for s in remote.stages] == [s["stage_id"] for s in local.stages]
    for stage in local.stages:
        stage_id = stage["stage_id"]
        mine = remote.stages[[s["stage_id"] for s in remote.stages].index(stage_id)]
        assert mine["fingerprint"] == stage["fingerprint"]
        assert mine["stats"]["rows_out"] == stage["stats"]["rows_out"]
        assert read_parts(remote.stage_dir(stage_id)).equals(read_parts(local.stage_dir(stage_id)))
        dropped = local.stage_dir(stage_id) / "dropped.parquet"
        if dropped.exists():
            with (remote.stage_dir(stage_id) / "dropped.parquet").open("rb") as handle:
                assert pl.read_parquet(handle).equals(pl.read_parquet(dropped))
    theirs, mine_out = outputs(quickstart_run.parent.parent), outputs(remote_run.parent)
    for kind, frame in theirs.items():
        assert mine_out[kind].equals(frame), kind
    # Nothing of the run was written locally but its local folder (request cache, lock).
    assert not (remote_run.parent / "runs").exists()
    assert (remote_run.parent / ".curate" / "quickstart" / ".lock").exists()


def test_second_remote_build_reuses_every_stage(remote_run: Path) -> None:
    manifest = build(remote_run)
    stages = manifest["stages"]
    assert isinstance(stages, list) and stages
    assert {s["status"] for s in stages} == {"reused"}
    assert {o["status"] for o in manifest["outputs"].values()} == {"reused"}


def test_curate_sql_answers_over_the_uri(remote_run: Path, quickstart_run: Path) -> None:
    query = "SELECT count(*) AS n, count(DISTINCT problem_id) AS p FROM pool"
    uri = f"s3://{BUCKET}/built/quickstart"
    remote = CliRunner().invoke(app, ["sql", uri, query, "--format", "csv"])
    local = CliRunner().invoke(app, ["sql", str(quickstart_run), query, "--format", "csv"])
    assert remote.exit_code == 0, remote.output
    assert remote.stdout == local.stdout
    assert remote.stdout.splitlines()[0] == "n,p"
    dropped = CliRunner().invoke(app, ["sql", uri, "SELECT count(*) FROM dropped", "-f", "csv"])
    assert dropped.exit_code == 0 and int(dropped.stdout.splitlines()[1]) > 0


@pytest.mark.slow
def test_killed_remote_build_leaves_no_complete_stage_and_resumes(
    s3_env: dict[str, str], tmp_path: Path, quickstart_run: Path
) -> None:
    prefix = f"{BUCKET}/killed-{uuid.uuid4().hex[:6]}/quickstart"
    spec = make_copy(tmp_path / "q", f"s3://{prefix}")
    fs = fsspec.filesystem("s3")
    cmd = [sys.executable, "-m", "curate.cli.main", "build", str(spec)]
    proc = subprocess.Popen(
        cmd, env={**os.environ, **s3_env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    marker = f"{prefix}/stages/00-input/stage.json"
    while True:  # kill while the verify stage (the slowest) is being written
        fs.invalidate_cache()
        if fs.exists(marker):
            break
        assert proc.poll() is None, "the build finished before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    fs.invalidate_cache()
    assert not fs.exists(f"{prefix}/manifest.json")
    assert not fs.exists(f"{prefix}/stages/01-verify/stage.json")
    run = open_run(f"s3://{prefix}")
    assert not run.finished and run.missing is not None and "01-verify" in run.missing
    assert [s["stage_id"] for s in run.stages] == ["00-input"]

    manifest = build(spec)  # the re-run, in this process: reuses the input, redoes the rest
    statuses = {s["stage_id"]: s["status"] for s in manifest["stages"]}
    assert statuses["00-input"] == "reused" and statuses["01-verify"] == "ran"
    theirs, mine = outputs(quickstart_run.parent.parent), outputs(spec.parent)
    for kind, frame in theirs.items():
        assert mine[kind].equals(frame), kind
    remote, local = open_run(f"s3://{prefix}"), open_run(quickstart_run)
    for stage in local.stages:
        assert read_parts(remote.stage_dir(stage["stage_id"])).equals(
            read_parts(local.stage_dir(stage["stage_id"]))
        )


def test_unreachable_bucket_fails_fast_naming_the_uri(
    s3_env: dict[str, str], tmp_path: Path
) -> None:
    spec = make_copy(tmp_path / "q", "s3://no-such-bucket-here/runs/quickstart")
    started = time.monotonic()
    result = CliRunner().invoke(app, ["build", str(spec)])
    assert result.exit_code == RunDirError.exit_code, result.output
    assert "s3://no-such-bucket-here/runs/quickstart" in result.output
    assert "no-such-bucket-here' does not exist" in result.output
    assert time.monotonic() - started < 20
    assert not fsspec.filesystem("s3").exists("no-such-bucket-here")  # not created on the way


def test_uri_of_a_filesystem_that_is_not_installed_names_its_package() -> None:
    result = CliRunner().invoke(app, ["sql", "gs://bucket/runs/quickstart", "SELECT 1"])
    assert result.exit_code == RunDirError.exit_code
    assert "gs://bucket/runs/quickstart" in result.output and "gcsfs" in result.output
    with pytest.raises(RunDirError, match="no fsspec filesystem is known for nosuch://"):
        run_path("nosuch://x/y")


@pytest.mark.slow
def test_ray_build_writes_and_reads_its_parts_on_the_uri(
    s3_env: dict[str, str], tmp_path: Path, quickstart_run: Path
) -> None:
    """`--executor ray` (a local Ray, 2 CPUs): tasks read their slices from the bucket and
    write their parts there; the stages equal the local executor's, row for row."""
    ray = pytest.importorskip("ray")  # the `ray` extra is installed in the dev environment
    from curate.executors import ExecutorSettings, make_executor

    # Workers reach the bucket with the same environment (and import tests/ for nothing).
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": dict(s3_env)},
    )
    try:
        prefix = f"{BUCKET}/ray/quickstart"
        spec = make_copy(tmp_path / "q", f"s3://{prefix}")
        executor = make_executor(ExecutorSettings(kind="ray", batch_rows=150))
        manifest = Build(load_spec(spec), executor=executor).run()
    finally:
        ray.shutdown()
    ran_on = {s["stage_id"]: s.get("executor") for s in manifest["stages"]}
    assert ran_on["01-verify"] == ran_on["03-grade"] == ran_on["05-dedup"] == "ray"
    remote, local = open_run(f"s3://{prefix}"), open_run(quickstart_run)
    assert remote.finished and not remote.missing
    fs = fsspec.filesystem("s3")
    fs.invalidate_cache()
    verify_parts = fs.glob(f"{prefix}/stages/01-verify/part-*.parquet")
    assert len(verify_parts) == 6  # one per 150-row slice of the 800 traces, from the tasks
    assert not fs.exists(f"{prefix}/stages/01-verify/_scratch")
    for stage in local.stages:
        stage_id = stage["stage_id"]
        assert read_parts(remote.stage_dir(stage_id)).equals(
            read_parts(local.stage_dir(stage_id))
        ), stage_id
    theirs, mine = outputs(quickstart_run.parent.parent), outputs(spec.parent)
    for kind, frame in theirs.items():
        assert mine[kind].equals(frame), kind


def test_stats_and_report_read_the_uri(
    remote_run: Path, quickstart_run: Path, tmp_path: Path
) -> None:
    uri = f"s3://{BUCKET}/built/quickstart"
    stats = CliRunner().invoke(app, ["stats", uri, "--format", "json"])
    assert stats.exit_code == 0, stats.output
    local = CliRunner().invoke(app, ["stats", str(quickstart_run), "--format", "json"])
    mine, theirs = json.loads(stats.stdout), json.loads(local.stdout)
    for key in ("problems", "traces", "kept", "outputs", "drops", "pass_rates", "bands"):
        assert mine[key] == theirs[key], key
    report = tmp_path / "report.html"
    result = CliRunner().invoke(app, ["report", uri, "--output", str(report)])
    assert result.exit_code == 0, result.output
    assert uri in report.read_text()


def test_remote_stage_is_uncommitted_before_it_is_rewritten() -> None:
    """On a filesystem without rename (memory://), replacing a stage first removes its marker
    and its old parts; a write that fails leaves nothing behind."""
    from curate.parquet_io import atomic_dir, part_files, write_part
    from curate.schemas.pool import POOL_SCHEMA

    folder = run_path(f"memory://runs-{uuid.uuid4().hex[:6]}/stages/01-verify")
    frame = pl.DataFrame({"problem_id": ["p1", "p2"]})
    with atomic_dir(folder) as out:
        for index in range(3):
            write_part(out / f"part-{index:05d}.parquet", frame, metadata={}, schema=POOL_SCHEMA)
        (out / "stage.json").write_text("{}")
    assert len(part_files(folder)) == 3
    with pytest.raises(RuntimeError), atomic_dir(folder) as out:
        assert not (out / "stage.json").exists() and part_files(out) == []
        write_part(out / "part-00000.parquet", frame, metadata={}, schema=POOL_SCHEMA)
        raise RuntimeError("killed")
    assert not folder.exists() or list(folder.iterdir()) == []
