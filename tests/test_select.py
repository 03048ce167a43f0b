"""The select operator: band, pass-rate and correct-count windows, `where`, correct_only and k."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import polars as pl
import pytest
from pydantic import ValidationError

from curate.errors import OperatorError
from curate.filters.grade import Grade, GradeParams
from curate.filters.select import Select, SelectParams
from curate.operators import OpResult, StageContext
from curate.registry import get_operator
from tests.test_grade import load_math100

CTX = StageContext(stage_id="03-select")


def graded(verdicts: Mapping[str, Sequence[bool | None]], **extra: list[object]) -> pl.DataFrame:
    rows = [
        {"problem_id": pid, "sample_index": i, "verdict": v}
        for pid, vs in verdicts.items()
        for i, v in enumerate(vs)
    ]
    frame = pl.DataFrame(
        rows, schema={"problem_id": pl.String, "sample_index": pl.Int64, "verdict": pl.Boolean}
    )
    frame = frame.with_columns(*(pl.Series(name, values) for name, values in extra.items()))
    return Grade(GradeParams(), context=StageContext(stage_id="02-grade")).run(frame).kept


def select(frame: pl.DataFrame, **params: object) -> OpResult:
    result = Select(SelectParams.model_validate(params), context=CTX).run(frame)
    assert result.kept.height + result.dropped.height == frame.height
    assert result.kept.columns == frame.columns
    return result


def reasons(result: OpResult) -> dict[tuple[str, int], tuple[str, str]]:
    return {
        (r["problem_id"], r["sample_index"]): (r["drop_reason"], r["drop_detail"])
        for r in result.dropped.iter_rows(named=True)
    }


def kept_ids(result: OpResult) -> list[tuple[str, int]]:
    return list(result.kept.select("problem_id", "sample_index").iter_rows())


# pass rates: easy 1.0, mid 0.5, quarter 0.25, zero 0.0, none null
FIVE: dict[str, list[bool | None]] = {
    "easy": [True, True, True, True],
    "mid": [True, False, True, False],
    "quarter": [False, False, True, False],  # 0.25: the lower edge of medium
    "zero": [False, False, False, False],
    "none": [None, None, None, None],
}


def test_registered_under_select() -> None:
    assert get_operator("select") is Select
    assert Select.describe().startswith("Keep problems by difficulty")


def test_no_params_keeps_everything() -> None:
    frame = graded(FIVE)
    result = select(frame)
    assert result.dropped.height == 0
    assert result.kept.equals(frame)


def test_difficulty() -> None:
    result = select(graded(FIVE), difficulty=["medium", "hard"])
    assert {pid for pid, _ in kept_ids(result)} == {"mid", "quarter", "zero"}
    got = reasons(result)
    assert got[("easy", 0)] == ("difficulty_not_selected", "difficulty=easy not in [medium, hard]")
    assert got[("none", 3)] == ("difficulty_not_selected", "difficulty=null not in [medium, hard]")
    assert len(got) == 8


def test_open_r1_pass_rate_window_is_strict() -> None:
    frame = graded(
        {
            "p10": [True] + [False] * 9,  # 0.1: excluded by gt
            "p20": [True] + [False] * 4,
            "p50": [True, False],
            "p60": [True] * 3 + [False] * 2,  # 0.6: excluded by lt
            "none": [None],
        }
    )
    result = select(frame, pass_rate={"gt": 0.1, "lt": 0.6})
    assert {pid for pid, _ in kept_ids(result)} == {"p20", "p50"}
    got = reasons(result)
    assert got[("p10", 0)] == (
        "pass_rate_outside_window",
        "pass_rate=0.1 outside 0.1 < pass_rate < 0.6",
    )
    assert got[("p60", 4)] == (
        "pass_rate_outside_window",
        "pass_rate=0.6 outside 0.1 < pass_rate < 0.6",
    )
    assert got[("none", 0)] == (
        "no_pass_rate",
        "pass_rate is null: no trace of the problem was judged",
    )


def test_inclusive_pass_rate_bounds() -> None:
    frame = graded({"p10": [True] + [False] * 9, "p60": [True] * 3 + [False] * 2})
    result = select(frame, pass_rate={"ge": 0.1, "le": 0.6})
    assert result.dropped.height == 0
    one_sided = select(frame, pass_rate={"ge": 0.5})
    assert {pid for pid, _ in kept_ids(one_sided)} == {"p60"}
    assert reasons(one_sided)[("p10", 0)][1] == "pass_rate=0.1 outside pass_rate >= 0.5"


def test_limo_correct_count_window() -> None:
    frame = graded(
        {
            "c0": [False] * 6,
            "c1": [True] + [False] * 5,
            "c3": [True] * 3 + [False] * 3,
            "c4": [True] * 4 + [False] * 2,
        }
    )
    result = select(frame, n_correct={"ge": 1, "le": 3})
    assert {pid for pid, _ in kept_ids(result)} == {"c1", "c3"}
    got = reasons(result)
    assert got[("c0", 0)] == ("n_correct_outside_window", "n_correct=0 outside 1 <= n_correct <= 3")
    assert got[("c4", 5)] == ("n_correct_outside_window", "n_correct=4 outside 1 <= n_correct <= 3")


def test_where() -> None:
    frame = graded(FIVE, domain=["algebra"] * 8 + ["geometry"] * 4 + [None] * 8)
    result = select(frame, where="domain = 'algebra' AND sample_index < 2")
    assert kept_ids(result) == [("easy", 0), ("easy", 1), ("mid", 0), ("mid", 1)]
    got = reasons(result)
    assert got[("quarter", 0)] == (
        "where_false",
        "where is not true: domain = 'algebra' AND sample_index < 2",
    )
    assert got[("none", 0)][0] == "where_false"  # null domain: null counts as false
    assert len(got) == 16


def test_where_on_grade_columns() -> None:
    result = select(graded(FIVE), where="cv_population > 0.9")  # p < 1/(1+0.81) ~ 0.552
    assert {pid for pid, _ in kept_ids(result)} == {"mid", "quarter"}


def test_where_is_checked_at_params_time() -> None:
    with pytest.raises(ValidationError, match="cannot parse"):
        SelectParams.model_validate({"where": "pass_rate >>> 3"})
    with pytest.raises(ValidationError, match="empty"):
        SelectParams.model_validate({"where": "  "})


def test_where_unknown_column_fails_at_run() -> None:
    with pytest.raises(OperatorError, match=r"needs column\(s\) nope named in `where"):
        select(graded(FIVE), where="nope > 3")


def test_where_must_be_boolean() -> None:
    with pytest.raises(OperatorError, match="must be a boolean condition"):
        select(graded(FIVE), where="sample_index + 1")


def test_k_uses_sample_index_not_row_order() -> None:
    frame = graded({"a": [True, False, True, True]}).reverse()  # rows arrive 3, 2, 1, 0
    result = select(frame, k=2)
    assert sorted(kept_ids(result)) == [("a", 0), ("a", 1)]
    assert reasons(result) == {
        ("a", 3): ("beyond_k", "#4 among the problem's remaining traces by sample_index; k=2"),
        ("a", 2): ("beyond_k", "#3 among the problem's remaining traces by sample_index; k=2"),
    }
    assert result.kept["sample_index"].to_list() == [1, 0]  # input order is kept


def test_k_without_sample_index_uses_row_order() -> None:
    frame = pl.DataFrame({"problem_id": ["a", "a", "b"], "completion": ["x", "y", "z"]})
    result = select(frame, k=1)
    assert result.kept["completion"].to_list() == ["x", "z"]
    assert result.dropped["drop_detail"].to_list() == [
        "#2 among the problem's remaining traces by row order; k=1"
    ]


def test_redi_first_correct_trace() -> None:
    result = select(graded(FIVE), correct_only=True, k=1)
    assert kept_ids(result) == [("easy", 0), ("mid", 0), ("quarter", 2)]
    got = reasons(result)
    assert got[("mid", 1)] == ("not_correct", "verdict=false")
    assert got[("mid", 2)] == (
        "beyond_k",
        "#2 among the problem's remaining traces by sample_index; k=1",
    )
    assert got[("none", 0)] == ("not_correct", "verdict=null")


def test_first_failing_check_wins() -> None:
    result = select(
        graded(FIVE),
        difficulty=["medium"],
        pass_rate={"gt": 0.3},
        where="sample_index = 0",
        k=1,
    )
    got = reasons(result)
    assert got[("easy", 0)][0] == "difficulty_not_selected"
    assert got[("zero", 0)][0] == "difficulty_not_selected"
    assert got[("quarter", 0)] == (
        "pass_rate_outside_window",
        "pass_rate=0.25 outside pass_rate > 0.3",
    )
    assert got[("none", 0)][0] == "no_pass_rate"
    assert got[("mid", 1)][0] == "where_false"
    assert kept_ids(result) == [("mid", 0)]


def test_missing_grade_columns() -> None:
    frame = pl.DataFrame({"problem_id": ["a"], "verdict": [True]})
    with pytest.raises(OperatorError, match=r"difficulty for `difficulty` \(run a `grade`"):
        select(frame, difficulty=["hard"])
    with pytest.raises(OperatorError, match="pass_rate"):
        select(frame, pass_rate={"lt": 0.5})
    with pytest.raises(OperatorError, match="n_correct"):
        select(frame, n_correct={"ge": 1})


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"pass_rate": {"gt": 0.1, "ge": 0.2}}, "at most one lower bound"),
        ({"pass_rate": {"lt": 0.1, "le": 0.2}}, "at most one upper bound"),
        ({"pass_rate": {}}, "at least one bound"),
        ({"pass_rate": {"gt": 0.5, "lt": 0.5}}, "window is empty"),
        ({"n_correct": {"ge": 4, "le": 3}}, "window is empty"),
        ({"pass_rate": {"between": 0.5}}, "Extra inputs"),
        ({"difficulty": []}, "at least one band name"),
        ({"k": 0}, "greater than or equal to 1"),
    ],
)
def test_bad_params(params: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        SelectParams.model_validate(params)


def test_params_round_trip_as_spec_json() -> None:
    spec = {"pass_rate": {"gt": 0.1, "lt": 0.6}, "n_correct": {"ge": 1, "le": 3}, "k": 2}
    params = SelectParams.model_validate(spec)
    dumped = params.model_dump(mode="json", exclude_none=True)
    assert dumped == {
        "pass_rate": {"gt": 0.1, "lt": 0.6},
        "n_correct": {"ge": 1, "le": 3},
        "correct_only": False,
        "k": 2,
    }


def test_real_data_window() -> None:
    frame = Grade(GradeParams(), context=StageContext(stage_id="g")).run(load_math100()).kept
    # README: pass rate 0: 4, (0, 0.5): 4, [0.5, 1): 6, 1: 86.
    unsolved = select(frame, pass_rate={"gt": 0.0, "lt": 1.0})
    assert unsolved.kept["problem_id"].n_unique() == 10
    assert unsolved.kept.height == 80
    assert unsolved.dropped.height == 720
    limo = select(frame, pass_rate={"ge": 0.5, "lt": 1.0}, correct_only=True, k=1)
    assert limo.kept.height == 6
