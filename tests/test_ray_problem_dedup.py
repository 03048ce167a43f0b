"""Global dedup of problems (`dedup: {on: prompt}`) on the Ray executor: the units (one per
problem, its first row in pool order) are formed by a shuffle on problem_id, compared and
clustered in Ray tasks, and every row of a losing problem is dropped, exactly as the local
executor drops them. The problems' traces are scattered over slices, so a problem's rows and
its duplicates are held by different tasks. Runs on a local Ray with 2 CPUs (the `cluster`
fixture of tests/test_ray_executor.py)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from curate.engine import Build
from curate.executors.ray import fragments
from curate.spec import load_spec
from tests.test_ray_executor import (
    BATCH_ROWS,
    GSM_HARD,
    assert_same_runs,
    ray_executor,
    stage_tables,
)
from tests.test_ray_executor import cluster as cluster  # the module's local Ray (a fixture)

PROBLEMS = 300  # GSM8K questions, then their GSM-Hard versions: 600 problems
# What the staged path times (RayDedup.decide); a step clustered on the driver records none.
STAGED = {"units", "sign", "identical", "components", "representatives"}


def traces_of(k: int) -> int:
    return 3 - k % 3  # 1 to 3 traces per problem


def problem_pool(root: Path) -> Path:
    """GSM8K test questions, their GSM-Hard versions (byte-identical for some, near
    duplicates for most), and a copy of question 0 planted as a problem of its own; 1 to 3
    traces per problem, dealt in rounds (every problem's first trace, then every second
    trace, ...), so a problem's rows lie hundreds of rows, and several slices, apart."""
    pairs = pl.read_parquet(GSM_HARD).head(PROBLEMS)
    problems = [(f"gsm8k-{k}", q) for k, q in enumerate(pairs["original"])]
    problems += [(f"hard-{k}", q) for k, q in enumerate(pairs["perturbed"])]
    problems.append(("planted", pairs["original"][0]))
    rows = [
        {"id": pid, "question": q, "trace": f"attempt {t} at {pid}: let me think."}
        for t in range(3)
        for k, (pid, q) in enumerate(problems)
        if t < traces_of(k)
    ]
    (root / "data").mkdir(parents=True)
    with open(root / "data" / "pool.jsonl", "w") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    spec = root / "spec.yaml"
    spec.write_text(
        "name: problems\n"
        "input:\n  path: data/pool.jsonl\n"
        "  columns: {id: id, prompt: question, completion: trace}\n"
        "steps:\n"
        '  - dedup: {"on": prompt, method: exact}\n'
        '  - dedup: {"on": prompt, method: minhash, threshold: 0.5, keep: longest}\n'
    )
    return spec


def test_problem_dedup_on_ray_equals_local_and_runs_on_ray(
    tmp_path: Path, cluster: None, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="curate"):
        local = Build(load_spec(problem_pool(tmp_path / "local"))).run()
    local_logs = {r.name for r in caplog.records}
    caplog.clear()
    executor = ray_executor()
    with caplog.at_level(logging.INFO, logger="curate"):
        remote = Build(load_spec(problem_pool(tmp_path / "ray")), executor=executor).run()
    local_run = tmp_path / "local" / "runs" / "problems"
    remote_run = tmp_path / "ray" / "runs" / "problems"
    assert len(fragments(remote_run / "stages" / "00-input", BATCH_ROWS)) == 9  # 1,202 rows
    assert [s.get("executor") for s in remote["stages"][1:]] == ["ray", "ray"]
    assert_same_runs(local, remote, local_run, remote_run)

    # Clustered on Ray: each step logs its staged run, the last one's stages were timed, and
    # the operator's own clustering (which logs its banding on the driver) never ran here.
    messages = [r.getMessage() for r in caplog.records]
    staged = [m for m in messages if "staged on Ray over 9 slices" in m]
    assert [m.split(" (")[0] for m in staged] == ["step '01-dedup'", "step '02-dedup'"]
    assert set(executor.last_timings) >= STAGED
    assert "curate.filters.dedup" in local_logs
    assert not [r for r in caplog.records if r.name == "curate.filters.dedup"]

    # Exact: the 600 problems hold 300 GSM8K questions and their GSM-Hard versions (64
    # byte-identical), plus the planted copy, whose three rows are all dropped.
    pool, _ = stage_tables(remote_run, "00-input")
    trace_count = pool.group_by("problem_id").len()
    _, dropped = stage_tables(remote_run, "01-dedup")
    assert dropped is not None
    lost = dropped["problem_id"].unique()
    identical = int(pl.read_parquet(GSM_HARD).head(PROBLEMS)["identical_text"].sum())
    assert lost.len() == identical + 1
    lost_rows = trace_count.filter(pl.col("problem_id").is_in(lost.implode()))["len"].sum()
    assert dropped.height == lost_rows
    planted = dropped.filter(pl.col("problem_id") == "planted")
    assert planted.height == traces_of(2 * PROBLEMS) == 3
    assert planted["dup_of"].unique().to_list() == ["gsm8k-0"]
    assert planted["dup_cluster"].unique().to_list() == ["gsm8k-0"]
    assert planted["drop_detail"].unique().to_list() == [
        "exact duplicate of gsm8k-0 on prompt: identical after normalization "
        "(cluster of 2 problems)"
    ]
    # The original's rows are in slices 0, 4 and 6, the copy's in 4, 6 and 8: units and
    # decisions crossed slices both ways.
    slice_of = pool.with_row_index("row").select(
        "problem_id", (pl.col("row") // BATCH_ROWS).alias("slice")
    )
    assert slice_of.filter(pl.col("problem_id") == "gsm8k-0")["slice"].to_list() == [0, 4, 6]
    assert slice_of.filter(pl.col("problem_id") == "planted")["slice"].to_list() == [4, 6, 8]
    kept, _ = stage_tables(remote_run, "01-dedup")
    representative = kept.filter(pl.col("problem_id") == "gsm8k-0")
    assert representative.height == 3  # the representative keeps all its traces
    assert representative["dup_cluster"].unique().to_list() == ["gsm8k-0"]
    assert representative["dup_of"].is_null().all()

    # MinHash: near duplicates (numbers changed) lose all their rows; keep: longest.
    near = remote["stages"][2]["stats"]["dropped_by_reason"]["duplicate"]
    assert near > 250
    _, near_dropped = stage_tables(remote_run, "02-dedup")
    assert near_dropped is not None
    assert near_dropped["drop_detail"].str.contains("estimated Jaccard").all()
    assert near_dropped["drop_detail"].str.contains("problems\\)$").all()
    kept, _ = stage_tables(remote_run, "02-dedup")
    assert not set(kept["problem_id"]) & set(near_dropped["problem_id"])  # whole problems


@pytest.mark.parametrize(("method", "keep"), [("exact", "best_score"), ("minhash", "shortest")])
def test_problem_units_pick_the_local_representatives(
    tmp_path: Path, cluster: None, method: str, keep: str
) -> None:
    """A stage whose problems' rows are scattered, with scores (ties, nulls: a problem's
    score is the mean of its rows'), blank and null prompts, and copies that normalize to the
    same text: the same kept and dropped rows as the local operator."""
    from curate.executors.local import LocalExecutor
    from curate.filters.dedup import Dedup, DedupParams
    from curate.operators import StageContext
    from curate.progress import SilentReporter

    pairs = pl.read_parquet(GSM_HARD).head(200)
    original = pairs["original"]
    copies = [*original[:30].str.to_uppercase(), *original[30:60].str.replace_all(" ", "  ")]
    texts: list[str | None] = [*original, *pairs["perturbed"], *copies, "  ", None]
    rng = np.random.default_rng(5)
    per_problem = rng.integers(1, 4, len(texts))
    rows = [(k, t) for t in range(3) for k in range(len(texts)) if t < per_problem[k]]
    order = rng.permutation(len(rows))  # a problem's rows anywhere in the stage
    rows = [rows[r] for r in order]
    source = tmp_path / "source"
    source.mkdir()
    pl.DataFrame(
        {
            "problem_id": [f"p{k}" for k, _ in rows],
            "trace_id": [f"p{k}-t{t}" for k, t in rows],
            "prompt": [texts[k] for k, _ in rows],
            "score": pl.Series(rng.choice([0.0, 0.5, 1.0, np.nan], len(rows))).fill_nan(None),
        }
    ).write_parquet(source / "part-00000.parquet", row_group_size=300)
    threshold = {"threshold": 0.5} if method == "minhash" else {}
    params = DedupParams(method=method, on="prompt", keep=keep, **threshold)
    results = []
    executor = ray_executor()
    for name, runner in (("local", LocalExecutor(batch_rows=BATCH_ROWS)), ("ray", executor)):
        out = tmp_path / name
        out.mkdir()
        operator = Dedup(params, context=StageContext(stage_id="01-dedup"))
        run = runner.run_stage(
            operator, source=source, out=out, metadata={}, reporter=SilentReporter()
        )
        kept = pl.read_parquet(sorted(out.glob("part-*.parquet")))
        results.append((run.stats, kept, pl.concat(run.dropped).sort("trace_id")))
    (stats_a, kept_a, dropped_a), (stats_b, kept_b, dropped_b) = results
    assert set(executor.last_timings) >= STAGED
    assert stats_a.dropped_by_reason == stats_b.dropped_by_reason
    assert stats_a.dropped_by_reason["duplicate"] > 100
    assert_frame_equal(kept_a, kept_b)
    assert_frame_equal(dropped_a, dropped_b)
    # every row of a problem is kept or dropped together
    assert not set(kept_b["problem_id"]) & set(dropped_b["problem_id"])
