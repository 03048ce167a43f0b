"""The prune operator: token columns, budgets (single, per difficulty), keep modes, per_problem."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from pydantic import ValidationError

from curate.errors import OperatorError
from curate.filters.grade import Grade, GradeParams
from curate.filters.prune import Prune, PruneParams
from curate.operators import OpResult, StageContext
from curate.registry import get_operator
from tests.test_grade import load_math100
from tests.test_tokens import write_tokenizer


def traces(rows: list[tuple[str, int, int, bool | None]], **extra: list[object]) -> pl.DataFrame:
    """(problem_id, sample_index, completion length in approx tokens, verdict) per row."""
    frame = pl.DataFrame(
        {
            "problem_id": [r[0] for r in rows],
            "prompt": ["q" * 8 for _ in rows],  # 2 approx tokens
            "sample_index": [r[1] for r in rows],
            "completion": ["x" * (4 * r[2]) for r in rows],  # exactly r[2] approx tokens
            "verdict": [r[3] for r in rows],
        },
        schema_overrides={"verdict": pl.Boolean, "sample_index": pl.Int64},
    )
    return frame.with_columns(*(pl.Series(k, v) for k, v in extra.items()))


def prune(frame: pl.DataFrame, base_dir: Path | None = None, **params: object) -> OpResult:
    context = StageContext(stage_id="04-prune", base_dir=base_dir or Path.cwd())
    result = Prune(PruneParams.model_validate(params), context=context).run(frame)
    assert result.kept.height + result.dropped.height == frame.height
    return result


def reasons(result: OpResult) -> dict[tuple[str, int], tuple[str, str]]:
    return {
        (r["problem_id"], r["sample_index"]): (r["drop_reason"], r["drop_detail"])
        for r in result.dropped.iter_rows(named=True)
    }


def kept_ids(result: OpResult) -> list[tuple[str, int]]:
    return list(result.kept.select("problem_id", "sample_index").iter_rows())


def test_registered_under_prune() -> None:
    assert get_operator("prune") is Prune
    assert Prune.describe().startswith("Count tokens and keep the shortest")


def test_token_columns() -> None:
    frame = traces([("a", 0, 5, True), ("a", 1, 3, True)]).with_columns(
        pl.Series("reasoning", ["r" * 9, None])
    )
    result = prune(frame, per_problem=None)
    kept = result.kept
    assert kept["prompt_tokens"].to_list() == [2, 2]
    assert kept["reasoning_tokens"].to_list() == [3, None]
    assert kept["completion_tokens"].to_list() == [5, 3]
    assert kept["tokenizer"].to_list() == ["approx:chars/4"] * 2
    for column in ("prompt_tokens", "reasoning_tokens", "completion_tokens"):
        assert kept.schema[column] == pl.Int64
    assert kept.schema["tokenizer"] == pl.String
    assert not {c for c in kept.columns if c.startswith("__")}


def test_no_reasoning_column_gives_null_reasoning_tokens() -> None:
    result = prune(traces([("a", 0, 5, True)]))
    assert result.kept["reasoning_tokens"].to_list() == [None]
    assert result.kept.schema["reasoning_tokens"] == pl.Int64


def test_shortest_correct_keeps_one_per_problem() -> None:
    frame = traces(
        [
            ("a", 0, 50, True),
            ("a", 1, 10, False),  # shortest, but wrong
            ("a", 2, 20, True),
            ("a", 3, 5, None),
            ("b", 0, 7, False),
        ]
    )
    result = prune(frame)
    assert kept_ids(result) == [("a", 2)]
    assert reasons(result) == {
        ("a", 0): (
            "beyond_per_problem",
            "50 tokens, #2 by length among eligible traces; per_problem=1",
        ),
        ("a", 1): ("not_correct", "verdict=false"),
        ("a", 3): ("not_correct", "verdict=null"),
        ("b", 0): ("not_correct", "verdict=false"),
    }
    # dropped rows carry their counts too
    assert result.dropped.schema["completion_tokens"] == pl.Int64
    assert result.dropped["completion_tokens"].to_list() == [50, 10, 5, 7]


def test_shortest_ignores_verdict() -> None:
    frame = traces([("a", 0, 50, True), ("a", 1, 10, False), ("a", 2, 20, None)])
    result = prune(frame, keep="shortest", per_problem=2)
    assert kept_ids(result) == [("a", 1), ("a", 2)]


def test_shortest_works_without_verdict_column() -> None:
    frame = traces([("a", 0, 5, None), ("a", 1, 3, None)]).drop("verdict")
    assert kept_ids(prune(frame, keep="shortest")) == [("a", 1)]
    with pytest.raises(OperatorError, match="verdict for `keep: shortest_correct`"):
        prune(frame)


def test_single_budget_counts_reasoning_plus_completion() -> None:
    frame = traces([("a", 0, 6, True), ("a", 1, 9, True), ("b", 0, 12, True)]).with_columns(
        pl.Series("reasoning", ["r" * 20, None, None])  # 5 tokens
    )
    result = prune(frame, max_tokens=10)
    assert kept_ids(result) == [("a", 1)]  # a/0 is 6 + 5 = 11 long
    assert reasons(result) == {
        ("a", 0): ("over_budget", "11 > 10 tokens"),
        ("b", 0): ("over_budget", "12 > 10 tokens"),
    }


def test_budget_edge_is_inclusive() -> None:
    result = prune(traces([("a", 0, 10, True)]), max_tokens=10)
    assert kept_ids(result) == [("a", 0)]


def test_per_difficulty_budgets() -> None:
    frame = traces(
        [
            ("e", 0, 3000, True),
            ("e", 1, 2000, True),
            ("h", 0, 5123, True),
            ("u", 0, 1, True),
        ],
        difficulty=["easy", "easy", "hard", "unknown"],
    )
    result = prune(frame, max_tokens={"easy": 2048, "medium": 8192, "hard": 24576})
    assert kept_ids(result) == [("e", 1), ("h", 0)]
    assert reasons(result) == {
        ("e", 0): ("over_budget", "3000 > 2048 tokens (difficulty=easy)"),
        ("u", 0): (
            "no_budget_for_difficulty",
            "difficulty=unknown has no budget (max_tokens has: easy, medium, hard)",
        ),
    }
    tight = prune(frame, max_tokens={"easy": 2048, "hard": 4096})
    assert reasons(tight)[("h", 0)] == ("over_budget", "5123 > 4096 tokens (difficulty=hard)")


def test_default_budget_covers_unlisted_and_null_difficulty() -> None:
    frame = traces(
        [("a", 0, 100, True), ("b", 0, 300, True), ("c", 0, 100, True)],
        difficulty=["easy", None, "odd"],
    )
    result = prune(frame, max_tokens={"easy": 50, "default": 200})
    assert kept_ids(result) == [("c", 0)]
    assert reasons(result) == {
        ("a", 0): ("over_budget", "100 > 50 tokens (difficulty=easy)"),
        ("b", 0): ("over_budget", "300 > 200 tokens (difficulty=null)"),
    }


def test_per_difficulty_budget_needs_difficulty() -> None:
    with pytest.raises(OperatorError, match=r"difficulty for per-difficulty `max_tokens`"):
        prune(traces([("a", 0, 1, True)]), max_tokens={"easy": 10})


def test_ties_break_by_sample_index_then_row_order() -> None:
    frame = traces([("a", 3, 5, True), ("a", 1, 5, True), ("a", 2, 5, True)])
    assert kept_ids(prune(frame)) == [("a", 1)]
    assert kept_ids(prune(frame, per_problem=2)) == [("a", 1), ("a", 2)]
    no_index = frame.drop("sample_index").with_columns(pl.Series("tag", ["x", "y", "z"]))
    context = StageContext(stage_id="p")
    kept = Prune(PruneParams(), context=context).run(no_index).kept
    assert kept["tag"].to_list() == ["x"]


def test_per_problem_null_keeps_all_within_budget() -> None:
    frame = traces([("a", 0, 5, True), ("a", 1, 50, True), ("a", 2, 7, True)])
    result = prune(frame, max_tokens=10, per_problem=None)
    assert kept_ids(result) == [("a", 0), ("a", 2)]


def test_null_completion_is_dropped() -> None:
    frame = traces([("a", 0, 5, True), ("a", 1, 1, True)]).with_columns(
        pl.when(pl.col("sample_index") == 1)
        .then(None)
        .otherwise(pl.col("completion"))
        .alias("completion")
    )
    result = prune(frame, keep="shortest")
    assert kept_ids(result) == [("a", 0)]
    assert reasons(result) == {("a", 1): ("no_completion", "completion is null")}


def test_tokenizer_file(tmp_path: Path) -> None:
    write_tokenizer(tmp_path / "tokenizer.json")
    frame = pl.DataFrame(
        {
            "problem_id": ["a", "a"],
            "prompt": ["the cat", "the cat"],
            "completion": ["the cat sat on the mat", "cat"],
            "verdict": [True, True],
        }
    )
    result = prune(frame, base_dir=tmp_path, tokenizer="tokenizer.json", max_tokens=3)
    assert result.kept["completion"].to_list() == ["cat"]
    assert result.kept["prompt_tokens"].to_list() == [2]
    assert result.kept["tokenizer"][0].startswith("tokenizer.json:")
    assert reasons_by_completion(result) == {"the cat sat on the mat": "6 > 3 tokens"}


def reasons_by_completion(result: OpResult) -> dict[str, str]:
    return dict(result.dropped.select("completion", "drop_detail").iter_rows())


def test_missing_tokenizer_file(tmp_path: Path) -> None:
    with pytest.raises(OperatorError, match=r"tok/tokenizer\.json does not exist"):
        prune(traces([("a", 0, 1, True)]), base_dir=tmp_path, tokenizer="tok/tokenizer.json")


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"max_tokens": 0}, "at least 1 token"),
        ({"max_tokens": {"easy": 0}}, "at least 1 token"),
        ({"max_tokens": {}}, "at least one band budget"),
        ({"per_problem": 0}, "greater than or equal to 1"),
        ({"keep": "longest"}, "shortest_correct"),
        ({"tokenizer": ""}, "approximate"),
    ],
)
def test_bad_params(params: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        PruneParams.model_validate(params)


def test_params_from_spec_json() -> None:
    params = PruneParams.model_validate(
        {"max_tokens": {"easy": 2048, "medium": 8192, "hard": 24576}, "per_problem": 2}
    )
    assert params.model_dump(mode="json") == {
        "tokenizer": "approximate",
        "max_tokens": {"easy": 2048, "medium": 8192, "hard": 24576},
        "keep": "shortest_correct",
        "per_problem": 2,
    }
    assert PruneParams.model_validate({"max_tokens": 4096}).max_tokens == 4096


def test_real_data_shortest_correct() -> None:
    frame = Grade(GradeParams(), context=StageContext(stage_id="g")).run(load_math100()).kept
    result = prune(frame, max_tokens={"easy": 512, "medium": 2048, "hard": 4096})
    kept = result.kept
    assert kept["problem_id"].is_unique().all()
    assert kept["verdict"].all()
    # 96 problems have a correct trace; a few easy ones may have none under 512 tokens.
    assert 80 <= kept.height <= 96
    counts = dict(result.dropped.group_by("drop_reason").len().iter_rows())
    assert counts["not_correct"] == 800 - 728  # 91.0% of 800 traces are correct
    # every kept trace is the shortest correct one of its problem
    shortest = (
        frame.filter(pl.col("verdict"))
        .with_columns(pl.col("completion").str.len_chars().alias("chars"))
        .group_by("problem_id")
        .agg(pl.col("chars").min())
    )
    joined = kept.join(shortest, on="problem_id")
    assert (joined["completion_tokens"] == (joined["chars"] + 3) // 4).all()


def test_empty_pool_through_grade_select_prune() -> None:
    empty = traces([]).with_columns(pl.col("completion").cast(pl.String))
    graded = Grade(GradeParams(), context=StageContext(stage_id="g")).run(empty).kept
    assert graded.schema["pass_rate"] == pl.Float64
    result = prune(graded, max_tokens={"hard": 3})
    assert result.kept.height == 0
    assert result.kept.schema["completion_tokens"] == pl.Int64
