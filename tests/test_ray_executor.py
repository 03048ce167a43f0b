"""The Ray executor (`curate build --executor ray`): a build on a local Ray with 2 CPUs gives
the same stages as the local executor, row for row and in the same order, with the same dropped
rows, reasons and duplicate clusters. One Ray is started for the whole module (start-up is the
slow part)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal
from pydantic import Field
from typer.testing import CliRunner

from curate.cli.main import app
from curate.clusters import connected_components
from curate.engine import Build
from curate.errors import ExecutorError, MissingDependencyError, SpecError
from curate.executors import ExecutorSettings, make_executor
from curate.executors.ray import RayExecutor, fragments, import_ray
from curate.executors.ray_components import components_on_ray
from curate.operators import Operator, OpResult, Params, Scope
from curate.spec import LoadedSpec, Step, load_spec
from tests.conftest import QUICKSTART, REPO

ray = pytest.importorskip("ray")  # the `ray` extra is installed in the dev environment

GSM_HARD = Path(__file__).parent / "data" / "gsm_hard_pairs" / "pairs.parquet"
BATCH_ROWS = 150  # small slices, so that problems and duplicates straddle fragments


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    # Workers import this module (for the test operator below) from the repository.
    env = {"env_vars": {"PYTHONPATH": str(REPO)}}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env=env)
    yield
    ray.shutdown()


def ray_executor() -> RayExecutor:
    executor = make_executor(ExecutorSettings(kind="ray", batch_rows=BATCH_ROWS))
    assert isinstance(executor, RayExecutor)
    return executor


def copy_quickstart(root: Path) -> Path:
    shutil.copytree(QUICKSTART / "data", root / "data")
    shutil.copy(QUICKSTART / "spec.yaml", root / "spec.yaml")
    return root / "spec.yaml"


def stage_tables(run: Path, stage: str) -> tuple[pl.DataFrame, pl.DataFrame | None]:
    folder = run / "stages" / stage
    kept = pl.read_parquet(sorted(folder.glob("part-*.parquet")))
    dropped_file = folder / "dropped.parquet"
    dropped = pl.read_parquet(dropped_file) if dropped_file.exists() else None
    return kept, dropped


def by_id(frame: pl.DataFrame) -> pl.DataFrame:
    key = "trace_id" if "trace_id" in frame.columns else "problem_id"
    return frame.sort(key)


def assert_same_runs(local: dict, remote: dict, local_run: Path, remote_run: Path) -> None:
    """Every stage: same fingerprint and counts, same kept rows in the same order, same dropped
    rows (compared sorted by id) with the same reasons, details and duplicate clusters."""
    assert [s["stage_id"] for s in local["stages"]] == [s["stage_id"] for s in remote["stages"]]
    for a, b in zip(local["stages"], remote["stages"], strict=True):
        assert a["fingerprint"] == b["fingerprint"]
        assert {k: v for k, v in a["stats"].items() if k != "seconds"} == {
            k: v for k, v in b["stats"].items() if k != "seconds"
        }, a["stage_id"]
        kept_a, dropped_a = stage_tables(local_run, a["stage_id"])
        kept_b, dropped_b = stage_tables(remote_run, b["stage_id"])
        assert_frame_equal(kept_a, kept_b)  # same order too: `keep: first` depends on it
        assert (dropped_a is None) == (dropped_b is None), a["stage_id"]
        if dropped_a is not None and dropped_b is not None:
            assert_frame_equal(by_id(dropped_a), by_id(dropped_b))


def test_quickstart_on_ray_equals_local(tmp_path: Path, cluster: None) -> None:
    local_spec = copy_quickstart(tmp_path / "local")
    remote_spec = copy_quickstart(tmp_path / "ray")
    local = Build(load_spec(local_spec)).run()
    remote = Build(load_spec(remote_spec), executor=ray_executor()).run()
    local_run = tmp_path / "local" / "runs" / "quickstart"
    remote_run = tmp_path / "ray" / "runs" / "quickstart"
    # 800 traces in 150-row slices: several tasks per step, problems cut across slices
    assert len(fragments(local_run / "stages" / "00-input", BATCH_ROWS)) == 6
    assert_same_runs(local, remote, local_run, remote_run)
    ran_on = {s["stage_id"]: s.get("executor") for s in remote["stages"]}
    assert ran_on["05-dedup"] == ran_on["03-grade"] == "ray"
    assert remote["stages"][5]["stats"]["dropped_by_reason"]["duplicate"] > 0
    for kind in ("sft", "preference"):
        assert_frame_equal(
            pl.read_parquet(sorted((tmp_path / "local" / "out" / kind).glob("*.parquet"))),
            pl.read_parquet(sorted((tmp_path / "ray" / "out" / kind).glob("*.parquet"))),
        )
    # A re-run, on either executor, reuses every stage.
    again = Build(load_spec(remote_spec), executor=ray_executor()).run()
    assert {s["status"] for s in again["stages"]} == {"reused"}


def dedup_pool(root: Path) -> Path:
    """GSM8K test questions, then their GSM-Hard versions (329 byte-identical, most others near
    duplicates), then a copy of the first question planted at the end, 2,639 rows away."""
    pairs = pl.read_parquet(GSM_HARD)
    n = pairs.height
    rows = [{"id": f"gsm8k-{i}", "question": q} for i, q in enumerate(pairs["original"])]
    rows += [{"id": f"hard-{i}", "question": q} for i, q in enumerate(pairs["perturbed"])]
    rows.append({"id": "planted", "question": pairs["original"][0]})
    for row in rows:  # a trace per problem, its text the question: row units for dedup
        row["trace"] = row["question"]
    (root / "data").mkdir(parents=True)
    with open(root / "data" / "pool.jsonl", "w") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    assert len(rows) == 2 * n + 1
    spec = root / "spec.yaml"
    spec.write_text(
        "name: dedup-pool\n"
        "input:\n  path: data/pool.jsonl\n"
        "  columns: {id: id, prompt: question, completion: trace}\n"
        "steps:\n"
        # staged on Ray: rows are the units
        '  - dedup: {"on": completion, method: exact}\n'
        '  - dedup: {"on": completion, method: minhash, threshold: 0.5, keep: longest}\n'
        # problems are the units: formed, signed and clustered on Ray too
        '  - dedup: {"on": prompt, method: minhash, threshold: 0.3}\n'
    )
    return spec


def test_dedup_pool_on_ray_equals_local_and_is_global(
    tmp_path: Path, cluster: None, caplog: pytest.LogCaptureFixture
) -> None:
    local = Build(load_spec(dedup_pool(tmp_path / "local"))).run()
    with caplog.at_level(logging.INFO, logger="curate"):
        remote = Build(load_spec(dedup_pool(tmp_path / "ray")), executor=ray_executor()).run()
    staged = [r.getMessage() for r in caplog.records if "staged on Ray" in r.getMessage()]
    assert [m.split(" (")[0] for m in staged] == [
        "step '01-dedup'",
        "step '02-dedup'",
        "step '03-dedup'",
    ]
    assert "330 duplicate pairs" in staged[0]
    local_run = tmp_path / "local" / "runs" / "dedup-pool"
    remote_run = tmp_path / "ray" / "runs" / "dedup-pool"
    assert_same_runs(local, remote, local_run, remote_run)
    exact = remote["stages"][1]["stats"]
    assert exact["dropped_by_reason"] == {"duplicate": 330}  # 329 GSM-Hard pairs + planted
    pool, _ = stage_tables(remote_run, "00-input")
    first = pool.filter(pl.col("problem_id") == "gsm8k-0")["trace_id"].item()
    _, dropped = stage_tables(remote_run, "01-dedup")
    assert dropped is not None
    planted = dropped.filter(pl.col("problem_id") == "planted")
    # The copy is in the last slice, its original in the first: found across partitions.
    assert planted["dup_of"].to_list() == [first]
    assert planted["dup_cluster"].to_list() == [first]
    assert "exact duplicate of" in planted["drop_detail"].item()
    near = remote["stages"][2]["stats"]["dropped_by_reason"]["duplicate"]
    assert near > 500  # most GSM-Hard questions differ from their original only in numbers
    _, near_dropped = stage_tables(remote_run, "02-dedup")
    assert near_dropped is not None
    assert near_dropped["drop_detail"].str.contains("estimated Jaccard").all()
    # Problem units: compared on Ray, the signatures never went through the driver's cache.
    assert "32 problems in clusters" in staged[2]
    assert remote["stages"][3]["stats"]["dropped_by_reason"]["duplicate"] == 16
    assert not (remote_run / "cache" / "dedup").exists()


def test_cli_executor_option_and_spec_block(tmp_path: Path, cluster: None) -> None:
    spec = dedup_pool(tmp_path)
    result = CliRunner().invoke(app, ["build", str(spec), "--executor", "ray"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "runs" / "dedup-pool" / "manifest.json").read_text())
    assert [s.get("executor") for s in manifest["stages"][1:]] == ["ray", "ray", "ray"]
    text = spec.read_text()
    spec.write_text(text + "executor: {kind: local, address: auto}\n")
    with pytest.raises(SpecError, match="address only apply to kind: ray"):
        load_spec(spec)
    spec.write_text(text + "executor: {kind: ray, num_cpus: 2, batch_rows: 1000}\n")
    assert load_spec(spec).spec.executor.batch_rows == 1000
    result = CliRunner().invoke(app, ["build", str(spec), "--executor", "rayy"])
    assert result.exit_code == 2
    assert "--executor: expected local or ray" in result.output


def test_unreachable_address_fails_fast_with_the_address() -> None:
    with pytest.raises(ExecutorError, match=r"cannot reach Ray at 127\.0\.0\.1:9"):
        RayExecutor(ExecutorSettings(kind="ray", address="127.0.0.1:9"))


def test_missing_ray_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` sees when not installed
    with pytest.raises(MissingDependencyError) as caught:
        import_ray()
    assert "pip install 'curate[ray]'" in str(caught.value)


# --- a worker killed mid-stage -------------------------------------------------------------


class DieParams(Params):
    marker: str = Field(description="file created by the first task, which then dies")
    always: bool = Field(False, description="every task dies")


class DieOnce(Operator[DieParams]):
    """Keeps every row; the first task to run (every task, with `always`) kills its own worker
    process with SIGKILL, as the OOM killer or a lost node would."""

    name: ClassVar[str] = "die_once"
    version: ClassVar[str] = "1"
    scope: ClassVar[Scope] = Scope.BATCH
    params_model: ClassVar[type[Params]] = DieParams

    def apply(self, frame: pl.DataFrame) -> OpResult:
        marker = Path(self.params.marker)
        if self.params.always or not marker.exists():
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return OpResult.keep_all(frame)


def with_die_step(spec: Path, marker: Path, *, always: bool) -> LoadedSpec:
    loaded = load_spec(spec)
    params = DieParams(marker=str(marker), always=always)
    step = Step(index=1, stage_id="02-die_once", operator=DieOnce, params=params)
    return dataclasses.replace(loaded, steps=(loaded.steps[0], step))


def test_killed_worker_is_retried_or_fails_clearly_and_the_rerun_reuses(
    tmp_path: Path, cluster: None
) -> None:
    spec = dedup_pool(tmp_path)
    marker = tmp_path / "died"
    settings = ExecutorSettings(kind="ray", batch_rows=1000, task_retries=1)
    with pytest.raises(ExecutorError, match=r"step '02-die_once' \(die_once\) failed on Ray"):
        Build(with_die_step(spec, marker, always=True), executor=make_executor(settings)).run()
    assert marker.exists()
    stages = tmp_path / "runs" / "dedup-pool" / "stages"
    assert sorted(p.name for p in stages.iterdir()) == ["00-input", "01-dedup"]  # no leftovers
    marker.unlink()
    manifest = Build(
        with_die_step(spec, marker, always=False), executor=make_executor(settings)
    ).run()
    assert marker.exists()  # a worker died, and its task ran again
    assert [s["status"] for s in manifest["stages"]] == ["reused", "reused", "ran"]
    died = manifest["stages"][2]["stats"]
    assert died["rows_in"] == died["rows_out"] == manifest["stages"][1]["stats"]["rows_out"]


def test_components_on_ray_equal_the_local_union_find(cluster: None) -> None:
    rng = np.random.default_rng(0)
    n = 3000
    i, j = rng.integers(0, n, 1500), rng.integers(0, n, 1500)
    path = rng.permutation(n)[:400]  # a long path: the worst case for label propagation
    i, j = np.concatenate([i, path[:-1]]), np.concatenate([j, path[1:]])
    got = components_on_ray(ray, n, i, j, partitions=3, options={"num_cpus": 1})
    assert np.array_equal(got, connected_components(n, i, j))
    assert np.array_equal(
        components_on_ray(ray, 5, i[:0], j[:0], partitions=2, options={}), np.arange(5)
    )


@pytest.mark.parametrize(
    ("method", "keep"), [("minhash", "shortest"), ("minhash", "best_score"), ("exact", "longest")]
)
def test_staged_dedup_picks_the_local_representatives(
    tmp_path: Path, cluster: None, method: str, keep: str
) -> None:
    """Every `keep` rule, chosen per cluster on Ray, gives the local operator's clusters,
    representatives and details: scores with ties and nulls, texts of equal length."""
    from curate.executors.local import LocalExecutor
    from curate.filters.dedup import Dedup, DedupParams
    from curate.operators import StageContext
    from curate.progress import SilentReporter

    pairs = pl.read_parquet(GSM_HARD)
    original = pairs["original"]
    # Copies that normalize to the same text: upper-cased (same length), spaces doubled (longer).
    copies = [*original[:40].str.to_uppercase(), *original[40:80].str.replace_all(" ", "  ")]
    texts = [*original, *pairs["perturbed"], *copies]
    rng = np.random.default_rng(3)
    scores = rng.choice([0.0, 0.5, 1.0, np.nan], len(texts))
    source = tmp_path / "source"
    source.mkdir()
    pl.DataFrame(
        {
            "problem_id": [f"p{k % 700}" for k in range(len(texts))],
            "trace_id": [f"t{k}" for k in range(len(texts))],
            "completion": texts,
            "score": pl.Series(scores).fill_nan(None),
        }
    ).write_parquet(source / "part-00000.parquet", row_group_size=500)
    threshold = {"threshold": 0.5} if method == "minhash" else {}
    params = DedupParams(method=method, on="completion", keep=keep, **threshold)
    results = []
    for name, executor in (
        ("local", LocalExecutor(batch_rows=BATCH_ROWS)),
        ("ray", ray_executor()),
    ):
        out = tmp_path / name
        out.mkdir()
        operator = Dedup(params, context=StageContext(stage_id="01-dedup"))
        run = executor.run_stage(
            operator, source=source, out=out, metadata={}, reporter=SilentReporter()
        )
        kept = pl.read_parquet(sorted(out.glob("part-*.parquet")))
        results.append((run.stats, kept, pl.concat(run.dropped).sort("trace_id")))
    (stats_a, kept_a, dropped_a), (stats_b, kept_b, dropped_b) = results
    assert stats_a.dropped_by_reason == stats_b.dropped_by_reason
    assert stats_a.dropped_by_reason["duplicate"] > 300
    assert_frame_equal(kept_a, kept_b)
    assert_frame_equal(dropped_a, dropped_b)
