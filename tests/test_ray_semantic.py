"""Semantic dedup on the Ray executor: embeddings computed by a pool of actors (one model load per
actor, into the step's embedding cache) and a partitioned cosine search give the same stage as
the local executor, on GSM8K questions and their GPT-4 paraphrases. Runs on a local Ray with 2
CPUs (the `cluster` fixture of tests/test_ray_executor.py)."""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from curate.engine import Build
from curate.executors import ExecutorSettings, make_executor, ray_semantic
from curate.executors.ray import RayExecutor, fragments
from curate.executors.ray_semantic import query_blocks, search_block
from curate.spec import load_spec
from tests.test_ray_executor import assert_same_runs, stage_tables
from tests.test_ray_executor import cluster as cluster  # the module's local Ray (a fixture)

PAIRS = Path(__file__).parent / "data" / "gsm8k_rephrase_pairs" / "pairs.jsonl"
BATCH_ROWS = 60  # 240 rows: 4 slices for 2 actors, every paraphrase in another slice


def executor() -> RayExecutor:
    made = make_executor(ExecutorSettings(kind="ray", batch_rows=BATCH_ROWS))
    assert isinstance(made, RayExecutor)
    return made


def pairs() -> list[dict[str, str]]:
    return [json.loads(line) for line in PAIRS.read_text().splitlines()]


ROUND_1 = '  - dedup: {"on": completion, method: semantic, threshold: 0.85}\n'
ROUND_2 = (
    '  - dedup: {"on": completion, method: semantic, threshold: 0.75, keep: longest}\n'
    '  - dedup: {"on": prompt, method: semantic, threshold: 0.65}\n'
)


def paraphrase_pool(root: Path, steps: str) -> Path:
    """120 GSM8K test questions, then their paraphrases in the same order (120 rows later,
    so in another slice); each row a problem with one trace whose text is the question."""
    rows = [{"id": f"gsm8k-{p['pair_id']}", "question": p["original"]} for p in pairs()]
    rows += [{"id": f"rephrased-{p['pair_id']}", "question": p["rephrased"]} for p in pairs()]
    (root / "data").mkdir(parents=True, exist_ok=True)
    with open(root / "data" / "pool.jsonl", "w") as handle:
        for row in rows:
            handle.write(json.dumps({**row, "trace": row["question"]}) + "\n")
    spec = root / "spec.yaml"
    spec.write_text(
        "name: semantic\n"
        "input:\n  path: data/pool.jsonl\n"
        "  columns: {id: id, prompt: question, completion: trace}\n"
        "steps:\n" + steps
    )
    return spec


def build_both(root: Path, steps: str, ray: RayExecutor) -> tuple[dict, dict]:
    local = Build(load_spec(paraphrase_pool(root / "local", steps))).run()
    return local, Build(load_spec(paraphrase_pool(root / "ray", steps)), executor=ray).run()


@pytest.mark.slow  # about 35 s on 2 shared cores: three model loads, three actor pools
def test_semantic_dedup_on_ray_equals_local(
    tmp_path: Path, cluster: None, caplog: pytest.LogCaptureFixture
) -> None:
    remote_executor = executor()
    with caplog.at_level(logging.INFO, logger="curate"):
        local, remote = build_both(tmp_path, ROUND_1, remote_executor)
    local_run = tmp_path / "local" / "runs" / "semantic"
    remote_run = tmp_path / "ray" / "runs" / "semantic"
    assert len(fragments(remote_run / "stages" / "00-input", BATCH_ROWS)) == 4
    assert remote["stages"][1]["executor"] == "ray"
    assert_same_runs(local, remote, local_run, remote_run)
    found = remote["stages"][1]["stats"]["dropped_by_reason"]["duplicate"]
    assert found > 90  # most of the 120 paraphrases (cosine >= 0.85); MinHash finds few

    # A paraphrase 120 rows (two slices) after its original: found, with the local detail.
    pool, _ = stage_tables(remote_run, "00-input")
    trace_of = dict(zip(pool["problem_id"], pool["trace_id"], strict=True))
    _, dropped = stage_tables(remote_run, "01-dedup")
    assert dropped is not None
    planted = dropped.filter(pl.col("problem_id") == "rephrased-0").row(0, named=True)
    assert planted["dup_of"] == planted["dup_cluster"] == trace_of["gsm8k-0"]
    assert planted["drop_reason"] == "duplicate"
    assert planted["drop_detail"].startswith(
        f"semantic duplicate of {trace_of['gsm8k-0']} on completion: cosine 0.9"
    )

    # One model load per actor: 2 actors (2 CPUs) for 4 slices, each loaded once and embedded
    # two slices, in its own process; the driver embedded nothing; the embeddings went to the
    # step's cache.
    reports = remote_executor.last_actors
    assert len(reports) == 2
    assert len({r["pid"] for r in reports}) == 2
    assert [r["loads"] for r in reports] == [1, 1]
    assert [r["slices"] for r in reports] == [2, 2]
    assert sum(r["embedded"] for r in reports) == 240
    messages = [r.getMessage() for r in caplog.records]
    assert "by 2 actors (1 CPU each): model loaded 2 times; 240 texts embedded" in "\n".join(
        messages
    )
    assert "staged on Ray over 4 slices" in "\n".join(messages)
    # (the local run's driver-side embedding logs this; the Ray run's driver must not)
    assert sum("(dedup): embeddings of 240 distinct texts" in m for m in messages) == 1
    cache = sorted((remote_run / "cache" / "dedup").rglob("part-*"))
    assert len(cache) == 4  # one file per slice, written by the actors

    # Round 2: a new threshold and keep rule re-run the step, its embeddings from the cache
    # (no actor loads the model); then problems (`on: prompt`) are compared: the actors look
    # their texts up in the cache and the search and clustering run on Ray too.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="curate"):
        local, remote = build_both(tmp_path, ROUND_2, remote_executor)
    assert [s["status"] for s in remote["stages"]] == ["reused", "ran", "ran"]
    assert [s.get("executor") for s in remote["stages"][1:]] == ["ray", "ray"]
    assert_same_runs(local, remote, local_run, remote_run)
    assert remote["stages"][1]["stats"]["dropped_by_reason"]["duplicate"] > found
    problems = remote["stages"][2]["stats"]
    assert problems["dropped_by_reason"]["duplicate"] > 0
    messages = [r.getMessage() for r in caplog.records]
    text = "\n".join(messages)
    assert "model loaded 0 times; 0 texts embedded, 240 read from the cache" in text
    remaining = problems["rows_in"]
    assert f"model loaded 0 times; 0 texts embedded, {remaining} read from the cache" in text
    assert "step '02-dedup' (dedup on prompt): staged on Ray over" in text
    # (the local run's driver embeds and clusters the problems; the Ray run's driver does not)
    assert sum("step '02-dedup' (dedup): embeddings of" in m for m in messages) == 1
    assert {"units", "embed", "search", "representatives"} <= set(remote_executor.last_timings)
    reports = remote_executor.last_actors  # the problem step's
    assert [r["loads"] for r in reports] == [0, 0]
    assert sum(r["rows"] for r in reports) == remaining
    assert sorted((remote_run / "cache" / "dedup").rglob("part-*")) == cache


def test_query_blocks_cover_the_triangle_evenly() -> None:
    n = 1000
    blocks = query_blocks(n, 4)
    assert blocks[0][0] == 0 and blocks[-1][1] == n
    assert all(a[1] == b[0] for a, b in itertools.pairwise(blocks))
    work = [sum(n - 1 - r for r in range(a, b)) for a, b in blocks]
    assert max(work) - min(work) < n  # within one row's share
    assert blocks[0][1] - blocks[0][0] < blocks[-1][1] - blocks[-1][0]  # early rows cost more
    assert query_blocks(1, 4) == [] and query_blocks(3, 8) == [(0, 1), (1, 3)]
    many = query_blocks(50, 50)
    assert 1 < len(many) <= 49 and all(a < b for a, b in many)


def test_search_blocks_find_the_local_pairs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Query blocks, each cut again into small products, find exactly the local search's pairs
    and similarities (the matrix products differ in their last bits; the pair-by-pair cosine
    does not)."""
    from curate.embeddings import normalize_rows
    from curate.filters.dedup import CANDIDATE_SLACK, cosine_pairs
    from curate.similarity import self_pairs

    rng = np.random.default_rng(7)
    base = rng.normal(size=(300, 64)).astype(np.float32)
    near = base[rng.integers(0, 300, 300)] + rng.normal(scale=0.4, size=(300, 64))
    emb = normalize_rows(np.concatenate([base, near.astype(np.float32)]))
    units = np.arange(emb.shape[0], dtype=np.int64) * 3 + 5  # row numbers, not positions
    i, j, _ = self_pairs(emb, 0.8 - CANDIDATE_SLACK)
    want_i, want_j, want_sim = cosine_pairs(emb, i, j, 0.8)
    assert want_i.size > 200
    monkeypatch.setattr(ray_semantic, "BLOCK_BYTES", 4 * emb.shape[0] * 7)  # 7-row products
    got = [search_block((units, emb), a, b, 0.8) for a, b in query_blocks(emb.shape[0], 5)]
    assert np.array_equal(np.concatenate([g[0] for g in got]), units[want_i])
    assert np.array_equal(np.concatenate([g[1] for g in got]), units[want_j])
    assert np.array_equal(np.concatenate([g[2] for g in got]), want_sim)
