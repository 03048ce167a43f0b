"""The recipe examples run end to end and give what their teachers make checkable:

- examples/redis-rules (ReDis) against the local teacher's `rules` policy: every rule's score is
  the number of demonstrations its marker says it fits, and the pairs, winners and SFT rows equal
  those computed here independently (in Python from the rule texts, and in DuckDB);
- examples/s1-selection on real GSM8K GPT-3 traces: size, strata, no problem solved by a
  reference model, and the same draw for the same seed;
- examples/code-verification against recorded completions (`replay`): each trace's verdict and
  reason, hostile code included, and the SFT set holds exactly the passing traces."""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import polars as pl
import pytest

from curate.engine import Build
from curate.local_teacher import LocalTeacher
from curate.local_teacher_policies import RULE_MARKER, Policy, ReplayPolicy, RulesPolicy
from curate.parquet_io import read_parts
from curate.spec import load_spec
from tests.conftest import REPO

EXAMPLES = REPO / "examples"
URL = "http://127.0.0.1:8000/v1"
CURATE = str(Path(sys.executable).with_name("curate"))
MARGINS = {"1d_arc": 1, "acre": 2, "list_func": 3, "scan": 4}


def copy_example(name: str, root: Path) -> Path:
    shutil.copytree(EXAMPLES / name, root, ignore=shutil.ignore_patterns("runs", "out"))
    return root


def run_demo(root: Path, policy: Policy) -> str:
    """Run the example's demo.sh against an in-process local teacher; its stdout."""
    with LocalTeacher(policy=policy) as server:
        spec = root / "spec.yaml"
        text = spec.read_text()
        assert URL in text
        spec.write_text(text.replace(URL, server.base_url))
        env = dict(os.environ, TEACHER_RUNNING="1", CURATE=CURATE, COLUMNS="160")
        env["OPENAI_API_KEY"] = "sk-example-canary"  # the sandbox must not see it
        done = subprocess.run(
            ["bash", str(root / "demo.sh")], env=env, capture_output=True, text=True, timeout=120
        )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


# --- ReDis ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_redis_rules_pairs_equal_the_pairs_computed_by_hand(tmp_path: Path) -> None:
    root = copy_example("redis-rules", tmp_path / "redis")
    printed = run_demo(root, RulesPolicy.from_file(root / "data" / "tasks.jsonl"))
    stages = root / "runs" / "redis-rules" / "stages"
    sampled = read_parts(stages / "01-sample")
    deduped = read_parts(stages / "02-dedup")
    paired = read_parts(stages / "05-pair")
    assert sampled.height == 20 * 50  # 50 rules per problem, as in the paper

    # Dedup: one row per distinct rule text of a problem.
    assert deduped.height == sampled.select("problem_id", "completion").n_unique() < 1000

    # Each rule's score, by hand: the demonstrations its marker says it fits.
    rules = paired.filter(pl.col("parent_trace_id").is_null())
    fits = {}
    for trace_id, problem_id, text in rules.select("trace_id", "problem_id", "completion").rows():
        marker = RULE_MARKER.search(text)
        assert marker is not None and marker.group("problem") == problem_id
        fits[trace_id] = len([f for f in marker.group("fits").split(",") if f])
    apps = paired.filter(pl.col("parent_trace_id").is_not_null())
    assert apps.height == rules.height  # one application per rule
    assert {p: s for p, s in apps.select("parent_trace_id", "score").rows()} == fits
    assert rules["score"].eq(0).all()  # a rule text reproduces nothing itself

    # Pairs by hand, per problem: x over y when fits_x > fits_y + the task's margin.
    task_of = dict(rules.select("trace_id", "domain").rows())
    by_problem: dict[str, list[str]] = {}
    for trace_id, problem_id in rules.select("trace_id", "problem_id").rows():
        by_problem.setdefault(problem_id, []).append(trace_id)
    by_hand = {
        (x, y)
        for members in by_problem.values()
        for x, y in itertools.permutations(members, 2)
        if fits[x] > fits[y] + MARGINS[task_of[x]]
    }
    exported = pl.read_parquet(root / "out" / "preference" / "*.parquet")
    assert set(exported.select("chosen_trace_id", "rejected_trace_id").rows()) == by_hand
    assert exported.height == len(by_hand) > 1000
    # The same pairs from an independent DuckDB query over the verify stage.
    con = duckdb.connect()
    con.register("v", read_parts(stages / "04-verify").to_arrow())
    in_sql = con.execute(
        """WITH r AS (SELECT a.parent_trace_id AS rule, a.problem_id, a.domain, a.score
                      FROM v a WHERE a.parent_trace_id IS NOT NULL)
           SELECT x.rule, y.rule FROM r x JOIN r y ON x.problem_id = y.problem_id
           AND x.score > y.score + CASE x.domain WHEN '1d_arc' THEN 1 WHEN 'acre' THEN 2
                                   WHEN 'list_func' THEN 3 WHEN 'scan' THEN 4 END"""
    ).fetchall()
    assert set(in_sql) == by_hand

    # A handful of problems worked through in full: 1d_arc-0 and scan-0.
    for problem in ("1d_arc-0", "scan-0"):
        mine = {p for p in by_hand if p[0] in by_problem[problem]}
        theirs = exported.filter(pl.col("problem_id") == problem)
        assert set(theirs.select("chosen_trace_id", "rejected_trace_id").rows()) == mine
        assert (theirs["chosen_score"] - theirs["rejected_score"]).min() > MARGINS[
            problem.split("-")[0]
        ]

    # SFT: the applications of rules that won at least one pair, any score.
    winners = {x for x, _ in by_hand}
    sft = pl.read_parquet(root / "out" / "sft" / "*.parquet")
    expected_sft = set(apps.filter(pl.col("parent_trace_id").is_in(list(winners)))["trace_id"])
    assert set(sft["trace_id"]) == expected_sft

    # The demo prints pairs per task and the score histograms.
    for task, margin in MARGINS.items():
        task_rules = [t for t in fits if task_of[t] == task]
        pairs = sum(1 for x, _ in by_hand if task_of[x] == task)
        won = len(winners & set(task_rules))
        cells = [task, margin, 5, len(task_rules), pairs, won, won]
        row = "".join(rf"│ {c}\s*" for c in cells) + "│"
        assert re.search(row, printed), (row, printed)
    assert "Score histograms" in printed and "chosen" in printed and "rejected" in printed


# --- s1 -------------------------------------------------------------------------------------


def build_s1(root: Path, seed: int = 7) -> pl.DataFrame:
    copy_example("s1-selection", root)
    spec = root / "spec.yaml"
    spec.write_text(spec.read_text().replace("        seed: 7", f"        seed: {seed}"))
    Build(load_spec(spec)).run()
    return pl.read_parquet(root / "out" / "sft" / "*.parquet")


def test_s1_selection_size_strata_reference_models_and_seed(tmp_path: Path) -> None:
    sft = build_s1(tmp_path / "a")
    pool = pl.read_ndjson(EXAMPLES / "s1-selection" / "data" / "gsm8k_gpt3_pool.jsonl")
    # The shipped labels, independently of our verifier: problems a reference model solved.
    solved = set(
        pool.filter(pl.col("model").is_in(["6b_finetuning", "175b_finetuning"])).filter(
            pl.col("is_correct")
        )["id"]
    )
    assert len(solved) == 168
    assert sft.height == 100 == sft["problem_id"].n_unique()
    assert not set(sft["problem_id"]) & solved
    assert set(sft["model"]) == {"175b_verification"}  # reference traces are not kept
    steps = dict(pool.select("id", "steps").unique().rows())
    per_domain = pl.Series([steps[p] for p in sft["problem_id"]]).value_counts()
    # uniform strata: every stratum has more than 25 unsolved problems, so each gives 25
    assert sorted(per_domain.rows()) == [("1-2", 25), ("3", 25), ("4", 25), ("5+", 25)]
    # longer traces are preferred: drawn problems' traces are longer than those left out
    length = dict(
        pool.filter(pl.col("model") == "175b_verification")
        .select("id", pl.col("solution").str.len_chars())
        .rows()
    )
    left = [length[p] for p in set(length) - solved - set(sft["problem_id"])]
    drawn = [length[p] for p in sft["problem_id"]]
    assert sum(drawn) / len(drawn) > 1.2 * sum(left) / len(left)
    # seeded: the same seed draws the same problems, another seed others
    assert set(build_s1(tmp_path / "b")["problem_id"]) == set(sft["problem_id"])
    assert set(build_s1(tmp_path / "c", seed=8)["problem_id"]) != set(sft["problem_id"])


# --- code verification ----------------------------------------------------------------------


@pytest.mark.slow
def test_code_verification_verdicts_including_hostile_code(tmp_path: Path) -> None:
    root = copy_example("code-verification", tmp_path / "code")
    policy = ReplayPolicy.from_file(
        root / "data" / "completions.jsonl", completion_column="completions"
    )
    printed = run_demo(root, policy)
    verified = read_parts(root / "runs" / "code-verification" / "stages" / "02-verify")
    got = {
        (p, i): (v, d)
        for p, i, v, d in verified.select(
            "problem_id", "sample_index", "verdict", "verify_detail"
        ).rows()
    }
    assert len(got) == 27
    for problem in {p for p, _ in got}:
        assert got[(problem, 0)][0] is True, got[(problem, 0)]  # canonical solution
        assert got[(problem, 1)][0] is False and got[(problem, 1)][1].startswith("test_failed")
    third = {p: d for (p, i), (v, d) in got.items() if i == 2 and v is False}
    assert third["HumanEval/0"].startswith("blocked: env (/proc/")
    assert third["HumanEval/10"].startswith("blocked: network (socket.")
    assert third["HumanEval/25"] == "timeout: still running after 3s (wall clock); killed"
    assert third["HumanEval/31"] == "blocked: write (/tmp/curate-code-example-escape.txt)"
    assert third["HumanEval/39"].startswith("memory: MemoryError")
    assert third["HumanEval/44"] == "blocked: fork (os.fork)"
    assert third["HumanEval/49"].startswith("no_code")
    assert third["HumanEval/56"] == "runtime_error: ValueError: None"  # the key was scrubbed
    assert got[("HumanEval/55", 2)] == (True, "passed: 3/3 tests")
    assert not Path("/tmp/curate-code-example-escape.txt").exists()
    sft = pl.read_parquet(root / "out" / "sft" / "*.parquet")
    assert sorted(sft["trace_id"]) == sorted(verified.filter(pl.col("verdict"))["trace_id"])
    assert sft.height == 10
    assert "sk-example-canary" not in printed
    assert "blocked: fork (os.fork)" in printed


@pytest.mark.parametrize("name", ["redis-rules", "s1-selection", "code-verification"])
def test_each_readme_names_its_paper_and_the_real_endpoint_change(name: str) -> None:
    text = (EXAMPLES / name / "README.md").read_text()
    assert "## Paper" in text and "## Steps" in text and "## Parameters" in text
    assert (EXAMPLES / name / "data" / "README.md").exists()
