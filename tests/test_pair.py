"""The pair operator and the preference export's `pairs: pair_step` mode: exact pairs on tiny
hand-made pools (margins, per-task margins, verdicts, roles, rounds, parent links, caps,
candidates made of several rows), and pair counts on real traces checked against DuckDB."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import polars as pl
import pytest
from pydantic import ValidationError

from curate.engine import Build
from curate.errors import OperatorError
from curate.export.preference import preference_rows
from curate.filters.pair import Pair, PairParams
from curate.filters.select import Select, SelectParams
from curate.operators import StageContext
from curate.registry import get_operator
from curate.schemas.pool import POOL_SCHEMA
from curate.schemas.spec import PreferenceOutput
from curate.spec import load_spec
from tests.conftest import QUICKSTART_DATA, QUICKSTART_INPUT
from tests.test_grade import load_math100

CTX = StageContext(stage_id="05-pair", seed=3)


def traces(rows: list[dict[str, object]]) -> pl.DataFrame:
    """Trace rows; sample_index counts within each problem in the order given."""
    frame = pl.DataFrame(rows, infer_schema_length=None)
    if "sample_index" not in frame.columns:
        frame = frame.with_columns(
            pl.int_range(pl.len()).over("problem_id").cast(pl.Int64).alias("sample_index")
        )
    return frame


def run_pair(frame: pl.DataFrame, **params: object) -> pl.DataFrame:
    result = Pair(PairParams.model_validate(params), context=CTX).run(frame)
    assert result.dropped.height == 0
    assert result.kept.height == frame.height
    return result.kept


def pairs(kept: pl.DataFrame) -> list[tuple[str, str]]:
    """(chosen trace_id, rejected trace_id) in the order the step lists them."""
    return [
        (row["trace_id"], rejected)
        for row in kept.filter(pl.col("beats").list.len() > 0).iter_rows(named=True)
        for rejected in row["beats"]
    ]


def counts(kept: pl.DataFrame) -> dict[str, tuple[int | None, int | None]]:
    return {r["trace_id"]: (r["won_pairs"], r["lost_pairs"]) for r in kept.iter_rows(named=True)}


def scored(
    problem: str, scores: dict[str, float | None], **extra: object
) -> list[dict[str, object]]:
    return [
        {"problem_id": problem, "trace_id": tid, "score": s, "completion": f"text {tid}", **extra}
        for tid, s in scores.items()
    ]


def test_registered_and_documented() -> None:
    assert get_operator("pair") is Pair
    assert Pair.describe().startswith("Preference pairs within each problem")


def test_score_margin_pairs_by_hand() -> None:
    frame = traces(
        scored("p", {"a": 3, "b": 1, "c": 0, "d": 3, "e": 2})
        + scored("q", {"f": 2, "g": None, "h": 0})
    )
    # margin 1: x over y when x > y + 1.
    kept = run_pair(frame, margin=1)
    assert pairs(kept) == [("a", "b"), ("a", "c"), ("d", "b"), ("d", "c"), ("e", "c"), ("f", "h")]
    assert counts(kept) == {
        "a": (2, 0),
        "b": (0, 2),
        "c": (0, 3),
        "d": (2, 0),
        "e": (1, 0),
        "f": (1, 0),
        "g": (None, None),  # no score: took no part
        "h": (0, 1),
    }
    assert kept.filter(pl.col("trace_id") == "g")["pair_item"].to_list() == [None]
    assert kept["pair_score"].to_list() == [3.0, 1.0, 0.0, 3.0, 2.0, 2.0, None, 0.0]
    # margin 0 (the default): every strictly better trace.
    assert len(pairs(run_pair(frame))) == 9 + 1
    # Ties never pair, whatever the margin.
    tie = traces(scored("t", {"x": 1, "y": 1}))
    assert pairs(run_pair(tie)) == []


def test_output_columns_have_the_pool_schema_types() -> None:
    kept = run_pair(traces(scored("p", {"a": 1, "b": 0})))
    for name in ("pair_item", "pair_score", "won_pairs", "lost_pairs", "beats"):
        assert kept[name].dtype == pl.from_arrow(POOL_SCHEMA.empty_table()).schema[name], name
    assert kept["beats"].to_list() == [["b"], []]


def test_redis_margins_per_task() -> None:
    # ReDis: margin 1, 2, 3, 4 for 1D-ARC, ACRE, List Functions, MiniSCAN. Every task has the
    # scores 5, 3, 2, 0; the gaps are 2, 3, 5, 1, 3, 2.
    tasks = {"1d_arc": 1, "acre": 2, "list_func": 3, "scan": 4}
    rows: list[dict[str, object]] = []
    for task in tasks:
        rows += scored(
            task, {f"{task}-5": 5, f"{task}-3": 3, f"{task}-2": 2, f"{task}-0": 0}, source=task
        )
    kept = run_pair(traces(rows), margin={"column": "source", "values": tasks})
    got = pairs(kept)
    by_task = {task: [p for p in got if p[0].startswith(task)] for task in tasks}
    assert by_task["1d_arc"] == [
        ("1d_arc-5", "1d_arc-3"),
        ("1d_arc-5", "1d_arc-2"),
        ("1d_arc-5", "1d_arc-0"),
        ("1d_arc-3", "1d_arc-0"),
        ("1d_arc-2", "1d_arc-0"),
    ]
    assert by_task["acre"] == [("acre-5", "acre-2"), ("acre-5", "acre-0"), ("acre-3", "acre-0")]
    assert by_task["list_func"] == [("list_func-5", "list_func-0")]
    assert by_task["scan"] == [("scan-5", "scan-0")]


def test_unlisted_margin_value_is_an_error_unless_a_default_is_given() -> None:
    frame = traces(scored("p", {"a": 3, "b": 0}, source="mystery"))
    with pytest.raises(OperatorError, match=r"'mystery'.*add them or give a `default`"):
        run_pair(frame, margin={"column": "source", "values": {"acre": 2}})
    kept = run_pair(frame, margin={"column": "source", "values": {"acre": 2}, "default": 2.5})
    assert pairs(kept) == [("a", "b")]
    kept = run_pair(frame, margin={"column": "source", "values": {"acre": 2}, "default": 3})
    assert pairs(kept) == []


def student_teacher_rounds() -> pl.DataFrame:
    """Tailored Learning: students answer, the teacher corrects each wrong answer."""
    rows = [
        # round 1: two wrong student traces, one right; the teacher corrects both wrong ones
        ("s1", 1, "student", False, None),
        ("s2", 1, "student", True, None),
        ("s3", 1, "student", False, None),
        ("t1", 1, "teacher", True, "s1"),
        ("t3", 1, "teacher", True, "s3"),
        ("t4", 1, "teacher", False, "s1"),  # a wrong correction
        # round 2: one wrong student trace and its correction
        ("s4", 2, "student", False, None),
        ("t5", 2, "teacher", True, "s4"),
        ("s5", 2, "student", None, None),  # could not be judged
    ]
    return traces(
        [
            {
                "problem_id": "q",
                "trace_id": tid,
                "round": rnd,
                "role": role,
                "verdict": verdict,
                "parent_trace_id": parent,
                "completion": f"text {tid}",
            }
            for tid, rnd, role, verdict, parent in rows
        ]
    )


def test_teacher_over_student_per_round() -> None:
    frame = student_teacher_rounds()
    common = {
        "by": "verdict",
        "group": ["problem_id", "round"],
        "chosen_role": "teacher",
        "rejected_role": ["student"],
    }
    kept = run_pair(frame, **common)
    assert pairs(kept) == [("t1", "s1"), ("t1", "s3"), ("t3", "s1"), ("t3", "s3"), ("t5", "s4")]
    linked = run_pair(frame, **common, link="parent")
    assert pairs(linked) == [("t1", "s1"), ("t3", "s3"), ("t5", "s4")]
    assert counts(linked) == {
        "s1": (0, 1),
        "s2": (0, 0),  # a correct student trace is never rejected
        "s3": (0, 1),
        "t1": (1, 0),
        "t3": (1, 0),
        "t4": (0, 0),
        "s4": (0, 1),
        "t5": (1, 0),
        "s5": (None, None),
    }
    # Without the round in the group, round 2's correction also beats round 1's students.
    assert ("t5", "s1") in pairs(run_pair(frame, by="verdict", chosen_role="teacher"))


def test_a_role_on_neither_side_takes_no_part() -> None:
    frame = student_teacher_rounds().with_columns(
        pl.when(pl.col("trace_id") == "t4")
        .then(pl.lit("rewriter"))
        .otherwise(pl.col("role"))
        .alias("role")
    )
    kept = run_pair(frame, by="verdict", chosen_role="teacher", rejected_role="student")
    row = kept.filter(pl.col("trace_id") == "t4").row(0, named=True)
    assert (row["pair_item"], row["won_pairs"], row["beats"]) == (None, None, None)


def three_by_three() -> pl.DataFrame:
    verdicts = [True, False, True, False, True, False]  # correct: c0 c2 c4; wrong: w1 w3 w5
    return traces(
        [
            {"problem_id": "p", "trace_id": f"{'c' if v else 'w'}{i}", "verdict": v}
            for i, v in enumerate(verdicts)
        ]
        + [{"problem_id": "solo", "trace_id": "only", "verdict": True}]
    )


def test_cap_first_keeps_pairs_in_sample_order() -> None:
    kept = run_pair(three_by_three(), by="verdict", per_group=4, pick="first")
    assert pairs(kept) == [("c0", "w1"), ("c0", "w3"), ("c0", "w5"), ("c2", "w1")]
    redi = run_pair(three_by_three(), by="verdict", per_group=1, pick="first")
    assert pairs(redi) == [("c0", "w1")]  # REDI: first correct against first incorrect


def test_cap_random_is_a_seeded_subset_independent_of_row_order() -> None:
    frame = three_by_three()
    every = set(pairs(run_pair(frame, by="verdict")))
    assert len(every) == 9
    samples = {}
    for seed in range(6):
        got = pairs(run_pair(frame, by="verdict", per_group=4, seed=seed))
        assert len(got) == 4 and set(got) <= every
        shuffled = frame.sample(fraction=1.0, shuffle=True, seed=seed + 100)
        assert set(pairs(run_pair(shuffled, by="verdict", per_group=4, seed=seed))) == set(got)
        samples[seed] = frozenset(got)
    assert len(set(samples.values())) > 1  # different seeds, different samples
    # Without `seed`, the spec's seed (the context's) is used.
    assert frozenset(pairs(run_pair(frame, by="verdict", per_group=4))) == samples[3]


def test_cap_random_is_uniform_over_pairs() -> None:
    frame = three_by_three()
    hits: dict[tuple[str, str], int] = {}
    trials = 300
    for seed in range(trials):
        for pair in pairs(run_pair(frame, by="verdict", per_group=3, seed=seed)):
            hits[pair] = hits.get(pair, 0) + 1
    assert len(hits) == 9
    # Each pair is kept with probability 3/9; 300 trials: mean 100, sd ~8.2.
    assert all(100 - 30 < n < 100 + 30 for n in hits.values()), hits


def redis_rules() -> pl.DataFrame:
    """Three rules (rows of their own, no score) and two applications of each, scored 1/0 by
    whether the application reproduced the demonstration's output."""
    rules = [
        {
            "problem_id": "r",
            "trace_id": f"R{i}",
            "parent_trace_id": None,
            "score": None,
            "completion": f"rule {i}",
            "role": "teacher",
        }
        for i in (1, 2, 3)
    ]
    hits = {"R1": [1.0, 1.0], "R2": [1.0, 0.0], "R3": [0.0, 0.0]}
    applications = [
        {
            "problem_id": "r",
            "trace_id": f"A{rule[1]}{k}",
            "parent_trace_id": rule,
            "score": s,
            "completion": f"output {rule}/{k}",
            "role": "teacher",
        }
        for rule, scores in hits.items()
        for k, s in enumerate(scores, start=1)
    ]
    return traces(rules + applications)


def test_rules_and_their_applications_are_one_candidate() -> None:
    frame = redis_rules()
    kept = run_pair(frame, item=["parent_trace_id", "trace_id"], aggregate="sum")
    # Rule scores: R1 2, R2 1, R3 0. The rule's own row represents it and holds `beats`.
    assert pairs(kept) == [("R1", "R2"), ("R1", "R3"), ("R2", "R3")]
    assert counts(kept) == {
        "R1": (2, 0),
        "R2": (1, 1),
        "R3": (0, 2),
        "A11": (2, 0),
        "A12": (2, 0),
        "A21": (1, 1),
        "A22": (1, 1),
        "A31": (0, 2),
        "A32": (0, 2),
    }
    assert kept.filter(pl.col("beats").is_not_null())["trace_id"].to_list() == ["R1", "R2", "R3"]
    assert kept["pair_item"].to_list() == ["R1", "R2", "R3", "R1", "R1", "R2", "R2", "R3", "R3"]
    # ReDis's SFT set: applications of rules that won at least one pair.
    sft = Select(
        SelectParams(where="won_pairs > 0 AND parent_trace_id IS NOT NULL"),
        context=StageContext(stage_id="06-select"),
    ).run(kept)
    assert sft.kept["trace_id"].to_list() == ["A11", "A12", "A21", "A22"]
    # Margin 1: only R1 (2) over R3 (0).
    assert pairs(
        run_pair(frame, item=["parent_trace_id", "trace_id"], aggregate="sum", margin=1)
    ) == [("R1", "R3")]


def test_candidate_rows_must_agree_with_aggregate_same() -> None:
    with pytest.raises(
        OperatorError, match=r"candidate 'R1' have different score values \[0.0, 1.0\]"
    ):
        run_pair(
            redis_rules().with_columns(
                pl.when(pl.col("trace_id") == "A12")
                .then(0.0)
                .otherwise(pl.col("score"))
                .alias("score")
            ),
            item="parent_trace_id",
        )
    # With the rule score repeated on each application, `same` is the natural choice.
    repeated = redis_rules().with_columns(
        pl.col("score").sum().over("parent_trace_id").alias("score")
    )
    kept = run_pair(
        repeated.filter(pl.col("parent_trace_id").is_not_null()), item="parent_trace_id"
    )
    # No rule rows: the first application represents each rule.
    assert pairs(kept) == [("A11", "A21"), ("A11", "A31"), ("A21", "A31")]


def test_a_second_pair_step_replaces_the_columns() -> None:
    frame = traces(scored("p", {"a": 3, "b": 1, "c": 0}))
    once = run_pair(frame, margin=1.5)
    twice = run_pair(once)
    assert pairs(twice) == [("a", "b"), ("a", "c"), ("b", "c")]
    assert twice.columns == once.columns


def test_missing_columns_are_named() -> None:
    frame = traces(scored("p", {"a": 1}))
    with pytest.raises(OperatorError, match=r"needs column\(s\) verdict for pairing by verdict"):
        run_pair(frame, by="verdict")
    with pytest.raises(OperatorError, match=r"needs column\(s\) role"):
        run_pair(frame, chosen_role="teacher")
    with pytest.raises(OperatorError, match=r"needs column\(s\) round"):
        run_pair(frame, group=["problem_id", "round"])


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"by": "verdict", "margin": 1}, "a correct trace beats an incorrect one"),
        ({"by": "verdict", "aggregate": "sum"}, "aggregate: sum is for scores"),
        ({"margin": -1}, "margin must be >= 0"),
        ({"margin": {"column": "source", "values": {}}}, "at least one value"),
        ({"margin": {"column": "source", "values": {"a": -2}}}, "margins must be >= 0"),
        ({"group": []}, "at least one column"),
        ({"item": []}, "at least one"),
        ({"chosen_role": []}, "chosen_role: give at least one role"),
        ({"per_group": 0}, "greater than or equal to 1"),
        ({"pick": "best"}, "Input should be 'random' or 'first'"),
        ({"threshold": 1}, "Extra inputs"),
    ],
)
def test_bad_params(params: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        PairParams.model_validate(params)


# --- the preference export's pair_step mode --------------------------------------------------


def export(pool: pl.DataFrame, **config: object) -> pl.DataFrame:
    settings = PreferenceOutput.model_validate({"path": "out", "pairs": "pair_step", **config})
    return preference_rows(pool, settings, base_dir=Path.cwd())


def test_export_writes_the_marked_pairs() -> None:
    frame = redis_rules().with_columns(pl.lit("demonstrations").alias("prompt"))
    kept = run_pair(frame, item=["parent_trace_id", "trace_id"], aggregate="sum")
    rows = export(kept)
    assert rows.select(
        "chosen_trace_id", "rejected_trace_id", "chosen_score", "rejected_score"
    ).rows() == [
        ("R1", "R2", 2.0, 1.0),
        ("R1", "R3", 2.0, 0.0),
        ("R2", "R3", 1.0, 0.0),
    ]
    first = rows.row(0, named=True)
    assert first["prompt"] == [{"role": "user", "content": "demonstrations"}]
    assert first["chosen"] == [{"role": "assistant", "content": "rule 1"}]
    assert first["rejected"] == [{"role": "assistant", "content": "rule 2"}]
    # Caps drop whole pairs: each rule is 2 approximate tokens, the prompt 4 (14 characters).
    assert export(kept, max_response_tokens=2).height == 3
    assert export(kept, max_response_tokens=1).height == 0
    assert export(kept, max_prompt_tokens=4).height == 3
    assert export(kept, max_prompt_tokens=3).height == 0


def test_export_needs_both_sides_and_a_pair_step() -> None:
    frame = redis_rules().with_columns(pl.lit("demonstrations").alias("prompt"))
    kept = run_pair(frame, item=["parent_trace_id", "trace_id"], aggregate="sum")
    with pytest.raises(ValueError, match=r"2 pair\(s\) .*\(1 trace\(s\), e.g. 'R3'\).*`from:` the"):
        export(kept.filter(pl.col("trace_id") != "R3"))
    with pytest.raises(ValueError, match="no `beats` column"):
        export(frame)


# --- real traces --------------------------------------------------------------------------


def math100_with_reward_scores() -> pl.DataFrame:
    """The quickstart's 800 Qwen2.5-Math traces: verdict = the shipped correctness flag, score =
    the shipped reward-model score of each trace."""
    frame = load_math100()
    rewards = (
        pl.read_ndjson(QUICKSTART_DATA)
        .select("idx", "pred_score")
        .explode("pred_score")
        .select(pl.col("pred_score").list.first().alias("score"))
    )
    return frame.with_columns(
        rewards["score"],
        pl.format("{}-{}", pl.col("problem_id"), pl.col("sample_index")).alias("trace_id"),
    )


def test_real_traces_pair_counts_match_duckdb() -> None:
    frame = math100_with_reward_scores()
    con = duckdb.connect()
    con.register("traces", frame.to_arrow())
    by_verdict = run_pair(frame, by="verdict")
    expected = dict(
        con.execute(
            """SELECT c.problem_id, count(*) FROM traces c JOIN traces r
               ON c.problem_id = r.problem_id AND c.verdict AND NOT r.verdict
               GROUP BY ALL"""
        ).fetchall()
    )
    assert sum(expected.values()) > 100  # the data has mixed problems: a real test
    got = dict(
        by_verdict.group_by("problem_id")
        .agg(pl.col("won_pairs").sum())
        .filter(pl.col("won_pairs") > 0)
        .rows()
    )
    assert got == expected
    assert len(pairs(by_verdict)) == sum(expected.values())

    margin = 0.25  # the reward scores run from -4.3 to 6.1
    by_score = run_pair(frame, margin=margin)
    rows = con.execute(
        """SELECT c.trace_id, r.trace_id FROM traces c JOIN traces r
           ON c.problem_id = r.problem_id AND c.score > r.score + ?""",
        [margin],
    ).fetchall()
    assert len(rows) > 500  # 878 pairs in 67 problems
    assert sorted(pairs(by_score)) == sorted(rows)

    capped = run_pair(frame, margin=margin, per_group=5)
    expected_capped = con.execute(
        """SELECT sum(least(n, 5)) FROM (
             SELECT c.problem_id, count(*) AS n FROM traces c JOIN traces r
             ON c.problem_id = r.problem_id AND c.score > r.score + ? GROUP BY ALL)""",
        [margin],
    ).fetchone()
    assert expected_capped is not None
    assert len(pairs(capped)) == expected_capped[0]
    assert set(pairs(capped)) <= set(rows)


@pytest.mark.slow
def test_build_pairs_then_selects_winners_and_exports_the_pairs(
    write_spec: object, tmp_path: Path
) -> None:
    spec = write_spec(  # type: ignore[operator]
        "name: pairs\n"
        "seed: 1\n"
        + QUICKSTART_INPUT.replace(
            "  model: qwen2.5-math-instruct\n", "  model: qwen2.5-math-instruct\n  limit: 25\n"
        )
        + """\
steps:
  - verify: {method: math}
  - pair: {by: verdict, per_group: 3}
  - select: {where: "won_pairs > 0"}
outputs:
  sft: {path: out/sft}
  preference: {path: out/preference, from: pair, pairs: pair_step}
"""
    )
    manifest = Build(load_spec(spec)).run()
    run = tmp_path / "runs" / "pairs" / "stages"
    paired = pl.read_parquet(run / "02-pair" / "*.parquet")
    exported = pl.read_parquet(tmp_path / "out" / "preference" / "*.parquet")
    assert exported.height == manifest["outputs"]["preference"]["rows"] == len(pairs(paired)) > 0
    assert sorted(exported.select("chosen_trace_id", "rejected_trace_id").rows()) == sorted(
        pairs(paired)
    )
    assert exported.group_by("problem_id").len()["len"].max() <= 3
    sft = pl.read_parquet(tmp_path / "out" / "sft" / "*.parquet")
    winners = paired.filter(pl.col("won_pairs") > 0)["trace_id"]
    assert sorted(sft["trace_id"]) == sorted(winners)
    stats = json.loads((run / "03-select" / "stage.json").read_text())["stats"]
    assert stats["rows_out"] == winners.len()
