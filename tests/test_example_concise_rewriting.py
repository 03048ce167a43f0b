"""examples/concise-rewriting end to end against two local teachers, scripted as its README
runs `curate teacher-server` (a verbose teacher, a terse rewriter that is sometimes wrong):
each correct trace is rewritten with its band's template, wrong rewrites never survive, and
each problem keeps its shortest correct trace within the band's budget."""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl

from curate.engine import Build
from curate.local_teacher import LocalTeacher
from curate.local_teacher_policies import ReferencePolicy, Style
from curate.parquet_io import read_parts
from curate.spec import load_spec

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "concise-rewriting"
DATA = EXAMPLE / "data" / "gsm8k_test_40.jsonl"
BUDGET = {"easy": 80, "medium": 150, "hard": 250}  # spec.yaml's prune and templates


def server(**style: object) -> LocalTeacher:
    policy = ReferencePolicy.from_file(
        DATA, prompt_column="question", answer_column="answer", style=Style(**style)
    )
    return LocalTeacher(policy=policy)


def test_concise_rewriting(tmp_path: Path) -> None:
    example = tmp_path / "concise-rewriting"
    shutil.copytree(EXAMPLE, example, ignore=shutil.ignore_patterns("runs", "out"))
    spec = example / "spec.yaml"
    # The README's two servers: teacher on :8000, rewriter on :8001.
    with (
        server(error_rate=0.35, spread=0.6, verbosity=(120, 300)) as teacher,
        server(error_rate=0.1, verbosity=(20, 80)) as rewriter,
    ):
        text = spec.read_text().replace("http://127.0.0.1:8000/v1", teacher.base_url)
        spec.write_text(text.replace("http://127.0.0.1:8001/v1", rewriter.base_url))
        Build(load_spec(spec)).run()
    stages = example / "runs" / "concise-rewriting" / "stages"
    judged = read_parts(stages / "06-verify")
    originals = judged.filter(pl.col("role") == "teacher")
    rewrites = judged.filter(pl.col("role") == "rewriter")

    # Only correct traces were rewritten, once each, with the template of their band.
    assert originals["verdict"].all()  # select: correct_only ran before the rewrite
    assert sorted(rewrites["parent_trace_id"]) == sorted(originals["trace_id"])
    assert (rewrites["template_id"] == rewrites["difficulty"]).all()
    assert set(rewrites["difficulty"]) >= {"easy", "medium"}
    assert rewrites["completion"].str.len_chars().mean() < (  # type: ignore[operator]
        originals["completion"].str.len_chars().mean() / 2  # type: ignore[operator]
    )
    wrong = rewrites.filter(~pl.col("verdict"))
    assert wrong.height > 0  # the rewriter errs 10 %: verify catches it

    kept = read_parts(stages / "07-prune")
    dropped = pl.read_parquet(stages / "07-prune" / "dropped.parquet")
    assert kept["verdict"].all() and kept["problem_id"].is_unique().all()
    assert not set(kept["trace_id"]) & set(wrong["trace_id"])
    assert (kept["completion_tokens"] <= kept["difficulty"].replace_strict(BUDGET)).all()
    # Per problem: the shortest correct candidate within the band's budget, original or rewrite.
    candidates = pl.concat([kept, dropped.select(kept.columns)]).filter(
        pl.col("verdict")
        & (pl.col("completion_tokens") <= pl.col("difficulty").replace_strict(BUDGET))
    )
    shortest = candidates.group_by("problem_id").agg(pl.col("completion_tokens").min())
    assert dict(kept.select("problem_id", "completion_tokens").iter_rows()) == dict(
        shortest.iter_rows()
    )
    assert kept.height > 20 and (kept["role"] == "rewriter").all()  # the originals are long
    sft = pl.read_parquet(example / "out" / "sft" / "*.parquet")
    assert sft.height == kept.height
