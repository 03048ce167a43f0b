"""`sample` on the Ray executor (curate.executors.ray_sample) against a real local teacher (HTTP
on 127.0.0.1): the same rows in the same order as the local executor; one rate limit and one
budget shared by the sampler actors; a build killed or interrupted mid-stage resumes sending
only what has no stored answer; a refused key stops the step with the same error and no key
reaches a file; vLLM actors are placed on GPUs or refused clearly. One local Ray with 2 CPUs for
the module (tests.test_ray_executor's fixture); killed builds are separate drivers joining it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from curate.engine import Build
from curate.errors import ExecutorError, SpecError, TeacherError
from curate.executors import ExecutorSettings, make_executor
from curate.executors.ray_sample import LEASE_S, vllm_actors
from curate.executors.ray_sample_actors import LeasedBucket, Limits
from curate.operators import StageContext, StageIncomplete
from curate.parquet_io import read_parts
from curate.progress import SilentReporter
from curate.sample import Sample, SampleParams
from curate.schemas.spec import VLLMTeacher
from curate.spec import load_spec
from tests.sample_support import teacher, write_spec
from tests.test_ray_executor import cluster as cluster  # the module's local Ray (a fixture)
from tests.test_sample_cli import cached, sample_stage

ray = pytest.importorskip("ray")

RAY2 = "executor: {kind: ray, sample_actors: 2}\n"
SAMPLE = "n: 4, seed: 0, max_tokens: 400"
TOTAL = 400  # 100 problems x 4 samples
SLOW = "max_concurrency: 4"  # with 40 ms latency: about 4 s for the 400 requests


def ray_build(spec: Path) -> dict[str, object]:
    """A build on the module's Ray, two sampler actors."""
    executor = make_executor(ExecutorSettings(kind="ray", sample_actors=2))
    return Build(load_spec(spec), executor=executor).run()


def run_dir(spec: Path) -> Path:
    return spec.parent / "runs" / "gsm"


def stage_record(spec: Path, stage_id: str = "01-sample") -> dict[str, object]:
    record: dict[str, object] = json.loads(
        (run_dir(spec) / "stages" / stage_id / "stage.json").read_text()
    )
    return record


def splits(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What each send gave each actor, from the driver's log: ['30 + 30', …]."""
    lines = [r.getMessage() for r in caplog.records if "sampler actor(s): " in r.getMessage()]
    return [line.split("sampler actor(s): ")[1] for line in lines]


def test_rows_equal_the_local_executor_over_several_tries(
    tmp_path: Path, cluster: None, caplog: pytest.LogCaptureFixture
) -> None:
    """until: verified sends three times (the actors are reused); verify and grade follow.
    Every stage holds the local run's rows, in the same order, with the same counts."""
    sample = "n: 2, seed: 0, until: verified, max_tries: 3, verify: {method: numeric}"
    steps = "  - verify: {method: numeric}\n  - grade: {}\n"
    with teacher(style={"error_rate": 0.6, "spread": 0.5}) as server:

        def spec(folder: str, top: str = "") -> Path:
            return write_spec(
                tmp_path / folder,
                server.base_url,
                limit=60,
                sample=sample,
                steps=steps,
                teacher="max_concurrency: 8",
                top=top,
            )

        local_spec = spec("local")
        local = Build(load_spec(local_spec)).run()
        sent_locally = server.stats()["requests"]
        server.reset()
        remote_spec = spec("ray", top=RAY2)
        with caplog.at_level("INFO", logger="curate"):
            remote = Build(load_spec(remote_spec)).run()  # the spec's executor block: Ray
        assert server.stats()["requests"] == sent_locally
    assert len(splits(caplog)) == 3  # three tries, each spread over both actors
    assert all(len(split.split(" + ")) == 2 for split in splits(caplog))
    for a, b in zip(local["stages"], remote["stages"], strict=True):
        assert b.get("executor") == ("ray" if b["stage_id"] != "00-input" else None)
        assert a.get("base_fingerprint") == b.get("base_fingerprint")
        assert a["stats"]["rows_out"] == b["stats"]["rows_out"], a["stage_id"]
        kept_a = read_parts(run_dir(local_spec) / "stages" / a["stage_id"])
        kept_b = read_parts(run_dir(remote_spec) / "stages" / b["stage_id"])
        assert_frame_equal(kept_a, kept_b)  # same rows, same order, same columns
    rows = read_parts(run_dir(remote_spec) / "stages" / "01-sample")
    assert rows.height == sent_locally > 120  # some problems needed a second or third try
    usage = ("teachers", "request_errors")
    assert {k: stage_record(local_spec)[k] for k in usage} == {
        k: stage_record(remote_spec)[k] for k in usage
    }


def sends_per_window(counts: list[tuple[float, int]], window: float) -> int:
    """The most requests the server received within any `window` seconds."""
    most = 0
    for i, (start, first) in enumerate(counts):
        later = [n for t, n in counts[i:] if t - start <= window]
        most = max(most, later[-1] - first)
    return most


def test_the_actors_share_one_rpm_limit(
    tmp_path: Path, cluster: None, caplog: pytest.LogCaptureFixture
) -> None:
    """rpm 1200 (20/s, a bucket of 20) over 2 actors: 60 requests take about 2 s, as from one
    process. Two separate limits would send them in about 0.5 s, 40 in the first instant."""
    rate, burst = 20, 20
    slack = 2 * max(1.0, rate * LEASE_S / 2)  # a lease per actor
    with teacher() as server:
        spec = write_spec(
            tmp_path,
            server.base_url,
            limit=30,
            sample="n: 2, seed: 0",
            teacher=f"max_concurrency: 8, rpm: {rate * 60}",
        )
        counts: list[tuple[float, int]] = []
        done = threading.Event()

        def watch() -> None:
            while not done.is_set():
                counts.append((time.monotonic(), server.stats()["requests"]))
                time.sleep(0.01)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        with caplog.at_level("INFO", logger="curate"):
            ray_build(spec)
        done.set()
        watcher.join()
        assert server.stats()["requests"] == 60
    assert splits(caplog) == ["30 + 30"]
    sending = [t for t, n in counts if 0 < n < 60]
    assert sending[-1] - sending[0] >= (60 - burst - slack) / rate - 0.3
    assert sends_per_window(counts, 1.0) <= burst + rate + slack


def test_a_tpm_refund_goes_back_to_the_shared_bucket(cluster: None) -> None:
    """A request charges prompt + max_tokens and refunds what it did not use: an actor keeps at
    most a lease of it, the rest is another actor's to take at once."""
    limits = ray.remote(Limits).remote({"t": (None, 6000)})  # 100 tokens/s, a bucket of 100
    first, second = (LeasedBucket(limits, "t", "tpm", lease=5.0) for _ in range(2))

    async def scenario() -> float:
        await first.take(100)  # the whole bucket
        first.refund(90)  # used 10
        started = time.monotonic()
        await second.take(80)
        return time.monotonic() - started

    waited = asyncio.run(scenario())
    assert first.tokens == 5.0  # a lease kept
    assert waited < 0.3  # without the refund it would wait 0.8 s for the bucket to refill
    ray.kill(limits)


def test_budget_stops_every_actor_and_a_higher_budget_resumes(
    tmp_path: Path, cluster: None
) -> None:
    prices = "max_concurrency: 8, input_usd_per_mtok: 1000, output_usd_per_mtok: 2000"
    with teacher(latency_s=0.01) as server:
        spec = write_spec(
            tmp_path, server.base_url, limit=100, teacher=prices, top="budget_usd: 20\n"
        )
        with pytest.raises(StageIncomplete, match="budget reached") as stopped:
            ray_build(spec)
        assert stopped.value.exit_code == 9
        assert stage_record(spec)["complete"] is False
        rows = sample_stage(spec)
        costs = rows["cost_usd"].to_list()
        assert sum(costs) >= 20
        # In flight (max_concurrency 8) plus what the other actor sends within one 10 ms sync.
        assert sum(costs) - 20 <= 16 * max(costs)
        assert server.stats()["succeeded"] == rows.height == cached(spec) < TOTAL
        spec.write_text(spec.read_text().replace("budget_usd: 20", "budget_usd: 1000"))
        server.reset()
        manifest = ray_build(spec)
        assert server.stats()["requests"] == TOTAL - rows.height
    pool = sample_stage(spec)
    assert pool.height == TOTAL
    cost = manifest["teachers"]["local"]["cost_usd"]  # type: ignore[index]
    assert cost == pytest.approx(pool["cost_usd"].sum())


def test_a_refused_key_stops_the_step_and_no_key_reaches_a_file(
    tmp_path: Path, cluster: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key is read by the driver (the workers were started before it was set) and passed
    to the actors; a 401 in an actor is raised on the driver as the same TeacherError."""
    key = "sk-curate-ray-probe-4b1e8d2c9a7f6e5d3c2b1a0f9e8d7c6b"
    with teacher(api_key=key) as server:
        spec = write_spec(tmp_path, server.base_url, limit=20, teacher="api_key_env: RAY_PROBE_KEY")
        monkeypatch.setenv("RAY_PROBE_KEY", "sk-curate-wrong-key-0000000000000000")
        with pytest.raises(TeacherError, match="refused the API key; check the key in"):
            ray_build(spec)
        monkeypatch.setenv("RAY_PROBE_KEY", key)
        ray_build(spec)
        assert server.stats()["succeeded"] == 80
    session = Path(ray._private.worker._global_node.get_session_dir_path())  # Ray's own logs
    for root in (tmp_path, session / "logs"):
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                assert key.encode() not in path.read_bytes(), path


def test_a_dead_actor_fails_the_step_and_the_rerun_sends_only_the_rest(
    tmp_path: Path, cluster: None
) -> None:
    """A sampler actor killed mid-step (its worker lost): the other one stops, what reached the
    driver stays cached, the step fails with ExecutorError and no stage; a re-run resends only
    the requests with no stored answer."""
    with teacher(latency_s=0.04) as server:
        spec = write_spec(tmp_path, server.base_url, limit=30, sample=SAMPLE, teacher=SLOW)
        failed: list[BaseException] = []

        def build() -> None:
            try:
                ray_build(spec)
            except BaseException as exc:
                failed.append(exc)

        builder = threading.Thread(target=build)
        builder.start()
        while cached(spec) < 30:
            assert builder.is_alive(), failed
            time.sleep(0.01)
        victim = next(
            name for name in ray.util.list_named_actors() if name.startswith("curate-sampler-")
        )
        ray.kill(ray.get_actor(victim), no_restart=True)
        builder.join(timeout=60)
        assert len(failed) == 1 and isinstance(failed[0], ExecutorError), failed
        assert "a sampler actor died" in str(failed[0])
        assert not (run_dir(spec) / "stages" / "01-sample").exists()
        quiet(server)
        answered = cached(spec)
        assert 30 <= answered < 120
        server.reset()
        ray_build(spec)
        assert server.stats()["requests"] == 120 - answered
    assert sample_stage(spec).height == 120


# --- killed and interrupted drivers ----------------------------------------------------------


@pytest.fixture
def gcs(cluster: None) -> Iterator[str]:
    """The address of the module's Ray, for builds run as separate drivers."""
    yield ray.get_runtime_context().gcs_address


def start_and_signal(spec: Path, address: str, sig: int, at: int) -> subprocess.Popen[str]:
    """Start `curate build --executor ray` joining the module's Ray; send `sig` once the cache
    holds `at` answers."""
    command = [sys.executable, "-m", "curate.cli.main", "build", str(spec)]
    command += ["--executor", "ray", "--address", address]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while cached(spec) < at:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.kill(proc.pid, sig)
    return proc


def quiet(server: object) -> None:
    """Wait until the server gets no more requests (a killed driver's actors are gone)."""
    last = -1
    while (now := server.stats()["requests"]) != last:  # type: ignore[attr-defined]
        last = now
        time.sleep(0.5)


@pytest.mark.slow
def test_killed_ray_build_resends_only_the_unanswered_requests(tmp_path: Path, gcs: str) -> None:
    with teacher(latency_s=0.04) as server:
        reference = write_spec(tmp_path / "ref", server.base_url, limit=100, sample=SAMPLE)
        Build(load_spec(reference)).run()
        spec = write_spec(
            tmp_path / "killed", server.base_url, limit=100, sample=SAMPLE, teacher=SLOW
        )
        proc = start_and_signal(spec, gcs, signal.SIGKILL, TOTAL // 2)
        proc.communicate()
        quiet(server)
        answered = cached(spec)
        assert TOTAL // 2 <= answered < TOTAL
        assert not (run_dir(spec) / "stages" / "01-sample").exists()
        server.reset()
        ray_build(spec)
        assert server.stats()["requests"] == TOTAL - answered
    resumed, uninterrupted = sample_stage(spec), sample_stage(reference)
    assert resumed.height == TOTAL
    assert_frame_equal(resumed, uninterrupted)


@pytest.mark.slow
def test_ctrl_c_stops_every_actor_writes_an_incomplete_stage_and_resumes(
    tmp_path: Path, gcs: str
) -> None:
    with teacher(latency_s=0.04) as server:
        spec = write_spec(tmp_path, server.base_url, limit=100, sample=SAMPLE, teacher=SLOW)
        proc = start_and_signal(spec, gcs, signal.SIGINT, TOTAL // 4)
        started = time.monotonic()
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 130, stderr[-2000:]
        assert time.monotonic() - started < 15  # in flight: 4 requests of 40 ms
        message = " ".join(stderr.split())
        assert "interrupted" in message and "Build again to resume" in message
        answered = cached(spec)
        assert TOTAL // 4 <= answered < TOTAL
        assert server.stats()["succeeded"] == answered  # answered in flight: kept
        assert stage_record(spec)["complete"] is False
        assert sample_stage(spec).height == answered
        server.reset()
        ray_build(spec)
        assert server.stats()["requests"] == TOTAL - answered
    assert sample_stage(spec).height == TOTAL


# --- vLLM placement --------------------------------------------------------------------------


def test_vllm_actors_take_whole_models_of_gpus_or_refuse() -> None:
    one = {"teachers": 1, "requests": 10_000, "chunk_size": 512}
    assert vllm_actors("v", tensor_parallel_size=1, gpus=8, **one) == 8
    assert vllm_actors("v", tensor_parallel_size=2, gpus=8, **one) == 4
    assert vllm_actors("v", tensor_parallel_size=2, gpus=7, **one) == 3
    # two vLLM teachers in the step share the GPUs evenly
    assert vllm_actors("v", tensor_parallel_size=1, gpus=8, **{**one, "teachers": 2}) == 4
    # no more models than the requests fill, a chunk each
    assert vllm_actors("v", tensor_parallel_size=1, gpus=8, **{**one, "requests": 700}) == 2
    with pytest.raises(ExecutorError, match="the Ray cluster has no GPUs"):
        vllm_actors("v", tensor_parallel_size=1, gpus=0, **one)
    with pytest.raises(ExecutorError, match=r"needs 4 GPU\(s\) per model.* has 2 GPU\(s\)"):
        vllm_actors("v", tensor_parallel_size=4, gpus=2, **one)
    with pytest.raises(ExecutorError, match="1 for each of the step's 2 vllm teachers"):
        vllm_actors("v", tensor_parallel_size=2, gpus=3, **{**one, "teachers": 2})


def test_a_vllm_teacher_on_a_ray_cluster_without_gpus_is_refused(
    tmp_path: Path, cluster: None
) -> None:
    """The real path: planned on the driver, refused when its actors are placed. (vllm is not
    installed here, so the teacher is built without the spec's installed-package check.)"""
    source = tmp_path / "source"
    source.mkdir()
    pl.DataFrame({"problem_id": ["p1", "p2"], "prompt": ["1+1?", "2+2?"]}).write_parquet(
        source / "part-00000.parquet"
    )
    vllm = VLLMTeacher.model_construct(provider="vllm", model="org/model")
    context = StageContext(stage_id="01-sample", teachers={"v": vllm})
    operator = Sample(SampleParams(teachers=["v"], n=2), context=context)
    executor = make_executor(ExecutorSettings(kind="ray"))
    (tmp_path / "out").mkdir()
    with pytest.raises(ExecutorError, match=r"teacher 'v' .*the Ray cluster has no GPUs"):
        executor.run_stage(
            operator, source=source, out=tmp_path / "out", metadata={}, reporter=SilentReporter()
        )


def test_sample_actors_is_a_ray_setting(tmp_path: Path) -> None:
    with teacher() as server:
        spec = write_spec(tmp_path, server.base_url, top="executor: {sample_actors: 2}\n")
    with pytest.raises(SpecError, match="sample_actors only apply to kind: ray"):
        load_spec(spec)
    spec.write_text(spec.read_text().replace("{sample_actors", "{kind: ray, sample_actors"))
    assert load_spec(spec).spec.executor.sample_actors == 2
