"""`curate build` with a `sample` step, as a process, against a real local teacher: killed with
SIGKILL halfway it resumes sending only the rest and ends with the same pool; Ctrl-C stops
cleanly with a readable, incomplete stage; the API key appears in no file and no output; and
the gsm8k-sampling example runs end to end."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from curate.cli.main import app
from curate.engine import Build
from curate.local_teacher import LocalTeacher
from curate.local_teacher_policies import ReferencePolicy, Style
from curate.parquet_io import read_parts
from curate.spec import load_spec
from curate.sql import connect
from tests.sample_support import REPO, teacher, write_spec

pytestmark = pytest.mark.slow

SAMPLE = "n: 4, seed: 0, max_tokens: 400"
TOTAL = 400  # 100 problems x 4 samples
SLOW_TEACHER = "max_concurrency: 4"  # with 40 ms latency: about 4 s for the 400 requests


def build_cmd(spec: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "curate.cli.main", "build", str(spec), *extra]


def cached(spec: Path) -> int:
    """Answers committed to the run's request cache (0 before it exists)."""
    path = spec.parent / "runs" / "gsm" / "requests.sqlite"
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True) as db:
            return int(db.execute("SELECT count(*) FROM answers").fetchone()[0])
    except sqlite3.OperationalError:  # the table is being created
        return 0


def start_and_signal(spec: Path, sig: int, at: int) -> subprocess.Popen[str]:
    """Start a build; send `sig` once the cache holds `at` answers."""
    proc = subprocess.Popen(
        build_cmd(spec), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while cached(spec) < at:
        assert proc.poll() is None, "the build finished before it could be stopped"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.kill(proc.pid, sig)
    return proc


def sample_stage(spec: Path) -> pl.DataFrame:
    return read_parts(spec.parent / "runs" / "gsm" / "stages" / "01-sample")


def test_killed_build_resends_only_the_rest_and_ends_with_the_same_pool(tmp_path: Path) -> None:
    with teacher(latency_s=0.04) as server:
        reference = write_spec(
            tmp_path / "ref", server.base_url, limit=100, sample=SAMPLE, teacher=SLOW_TEACHER
        )
        Build(load_spec(reference)).run()  # in this process: no start-up to wait for
        spec = write_spec(
            tmp_path / "killed", server.base_url, limit=100, sample=SAMPLE, teacher=SLOW_TEACHER
        )
        proc = start_and_signal(spec, signal.SIGKILL, TOTAL // 2)
        proc.communicate()
        answered = cached(spec)
        assert TOTAL // 2 <= answered < TOTAL
        assert not (spec.parent / "runs" / "gsm" / "stages" / "01-sample").exists()
        server.reset()
        subprocess.run(build_cmd(spec), check=True, capture_output=True)
        assert server.stats()["requests"] == TOTAL - answered
    resumed, uninterrupted = sample_stage(spec), sample_stage(reference)
    assert resumed.height == TOTAL
    assert resumed.equals(uninterrupted)


def test_ctrl_c_stops_sending_writes_an_incomplete_stage_and_resumes(tmp_path: Path) -> None:
    with teacher(latency_s=0.04) as server:
        spec = write_spec(tmp_path, server.base_url, limit=100, sample=SAMPLE, teacher=SLOW_TEACHER)
        proc = start_and_signal(spec, signal.SIGINT, TOTAL // 4)
        started = time.monotonic()
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 130, stderr
        assert time.monotonic() - started < 5.5  # in flight: 4 requests of 40 ms
        message = " ".join(stderr.split())
        assert "interrupted" in message and "Build again to resume" in message
        answered = cached(spec)
        assert TOTAL // 4 <= answered < TOTAL
        sent_first = server.stats()["succeeded"]
        assert sent_first == answered  # what was answered in flight was kept
        record = spec.parent / "runs" / "gsm" / "stages" / "01-sample" / "stage.json"
        assert '"complete": false' in record.read_text()
        pool = connect(spec.parent / "runs" / "gsm").execute("SELECT count(*) FROM pool")
        assert pool.fetchall() == [(answered,)]  # `curate sql` reads the incomplete stage
        server.reset()
        subprocess.run(build_cmd(spec), check=True, capture_output=True)
        assert server.stats()["requests"] == TOTAL - answered
    assert sample_stage(spec).height == TOTAL


def test_the_api_key_appears_in_no_file_log_or_output(tmp_path: Path) -> None:
    key = "sk-curate-leak-probe-7f3a9c1e5b2d4086a1f0e9d8c7b6a5f4"
    env = {**os.environ, "LEAK_PROBE_KEY": key}
    steps = "  - verify: {method: numeric}\n  - grade: {}\n"
    outputs = "outputs:\n  sft: {path: out/sft}\n  preference: {path: out/preference}\n"
    with teacher(
        api_key=key, rate_500=0.05, rate_429=0.05, retry_after=0.01, style={"error_rate": 0.4}
    ) as server:
        spec = write_spec(
            tmp_path,
            server.base_url,
            limit=50,
            sample="n: 2, seed: 0",
            teacher="api_key_env: LEAK_PROBE_KEY, max_retries: 1",
            steps=steps,
        )
        spec.write_text(spec.read_text() + outputs)
        runs = [
            subprocess.run(cmd, env=env, capture_output=True, text=True)
            for cmd in (
                [sys.executable, "-m", "curate.cli.main", "validate", str(spec)],
                build_cmd(spec, "--dry-run"),
                build_cmd(spec),
                build_cmd(spec, "--refresh"),
            )
        ]
        assert server.stats()["by_status"].get("401", 0) == 0  # the key was sent, and right
    assert [r.returncode for r in runs] == [0, 0, 0, 0], [r.stderr for r in runs]
    for run in runs:
        assert key not in run.stdout and key not in run.stderr
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "requests.sqlite" for p in written)
    assert any(p.suffix == ".parquet" and "sft" in str(p) for p in written)
    for path in written:
        assert key.encode() not in path.read_bytes(), path


def test_gsm8k_sampling_example_end_to_end(tmp_path: Path) -> None:
    example = REPO / "examples" / "gsm8k-sampling"
    root = tmp_path / "example"
    shutil.copytree(example / "data", root / "data")
    policy = ReferencePolicy.from_file(
        root / "data" / "gsm8k_test_100.jsonl",
        prompt_column="question",
        answer_column="answer",
        style=Style(error_rate=0.3, spread=0.5),
    )
    with LocalTeacher(policy=policy) as server:
        text = (example / "spec.yaml").read_text()
        assert "http://127.0.0.1:8000/v1" in text
        (root / "spec.yaml").write_text(text.replace("http://127.0.0.1:8000/v1", server.base_url))
        result = CliRunner().invoke(app, ["build", str(root / "spec.yaml")])
        assert result.exit_code == 0, result.output
        assert server.stats()["succeeded"] == 400
    run = root / "runs" / "gsm8k-sampling"
    graded = read_parts(run / "stages" / "03-grade")
    assert graded.height == 400
    assert graded["verdict"].is_not_null().all()
    assert 0.5 < graded["verdict"].mean() < 0.9  # type: ignore[operator]
    assert set(graded["difficulty"].drop_nulls().unique()) >= {"easy", "medium"}
    sft = pl.read_parquet(root / "out" / "sft" / "*.parquet")
    preference = pl.read_parquet(root / "out" / "preference" / "*.parquet")
    assert sft.height == graded["verdict"].sum()
    assert preference.height > 0
    assert "\\boxed{" in sft["messages"][0][-1]["content"]
    manifest = (run / "manifest.json").read_text()
    assert '"teachers"' in manifest and '"cost_usd"' in manifest
