"""The grade operator: counts, pass rate, CV, difficulty bands, per-teacher columns, real data."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest
from pydantic import ValidationError

from curate.errors import OperatorError
from curate.filters.grade import TEACHER_COLUMNS, Grade, GradeParams
from curate.operators import StageContext
from curate.registry import get_operator
from curate.schemas.pool import pool_field
from tests.conftest import QUICKSTART_DATA

GRADE_COLUMNS = [
    "n_samples",
    "n_judged",
    "n_correct",
    "pass_rate",
    "cv_population",
    "cv_sample",
    "difficulty",
]

REPO = Path(__file__).resolve().parents[1]


def grade(frame: pl.DataFrame, **params: object) -> pl.DataFrame:
    op = Grade(GradeParams.model_validate(params), context=StageContext(stage_id="02-grade"))
    result = op.run(frame)
    assert result.dropped.height == 0
    return result.kept


def pool(verdicts: Mapping[str, Sequence[bool | None]]) -> pl.DataFrame:
    rows = [
        {"problem_id": pid, "sample_index": i, "verdict": v}
        for pid, vs in verdicts.items()
        for i, v in enumerate(vs)
    ]
    return pl.DataFrame(
        rows, schema={"problem_id": pl.String, "sample_index": pl.Int64, "verdict": pl.Boolean}
    )


def per_problem(frame: pl.DataFrame) -> dict[str, dict[str, object]]:
    rows = frame.select("problem_id", *GRADE_COLUMNS).unique("problem_id").to_dicts()
    return {str(r.pop("problem_id")): r for r in rows}


def load_math100() -> pl.DataFrame:
    """math_cot_100.jsonl exploded to one row per trace, verdict = the shipped score."""
    path = QUICKSTART_DATA  # shipped in the repo, so this test cannot skip
    raw = pl.read_ndjson(path).select("idx", "question", "answer", "response", "score")
    return (
        raw.explode("response", "score")
        .with_columns(
            pl.col("idx").cast(pl.String).alias("problem_id"),
            pl.int_range(pl.len()).over("idx").cast(pl.Int64).alias("sample_index"),
        )
        .rename({"question": "prompt", "response": "completion", "score": "verdict"})
        .drop("idx")
    )


def test_registered_under_grade() -> None:
    assert get_operator("grade") is Grade
    assert Grade.describe().startswith("Per-problem pass rate")
    assert Grade.requires == ("problem_id", "verdict")


def test_counts_and_pass_rate_leave_null_verdicts_out() -> None:
    frame = pool(
        {
            "a": [True, False, True, None],  # 2 of 3 judged
            "b": [True, True, True],
            "c": [None, None],  # nothing judged
            "d": [False, False],
        }
    )
    out = grade(frame)
    assert out.height == frame.height
    assert out.columns[:3] == ["problem_id", "sample_index", "verdict"]
    got = per_problem(out)
    assert got["a"]["n_samples"] == 4
    assert got["a"]["n_judged"] == 3
    assert got["a"]["n_correct"] == 2
    assert got["a"]["pass_rate"] == pytest.approx(2 / 3)
    assert got["a"]["difficulty"] == "medium"
    assert got["b"] == {
        "n_samples": 3,
        "n_judged": 3,
        "n_correct": 3,
        "pass_rate": 1.0,
        "cv_population": 0.0,
        "cv_sample": 0.0,
        "difficulty": "easy",
    }
    assert got["c"] == {
        "n_samples": 2,
        "n_judged": 0,
        "n_correct": 0,
        "pass_rate": None,
        "cv_population": None,
        "cv_sample": None,
        "difficulty": None,
    }
    assert got["d"]["pass_rate"] == 0.0
    assert got["d"]["cv_population"] is None  # mean 0: CV undefined
    assert got["d"]["cv_sample"] is None
    assert got["d"]["difficulty"] == "hard"


def test_cv_values() -> None:
    out = per_problem(grade(pool({"a": [True, False, False, False], "one": [True]})))
    # p = 1/4: population std = sqrt(3/16), mean 1/4 -> sqrt(3); sample: sqrt(3 * 4/3) = 2.
    assert out["a"]["cv_population"] == pytest.approx(math.sqrt(3))
    assert out["a"]["cv_sample"] == pytest.approx(2.0)
    assert out["one"]["cv_population"] == 0.0
    assert out["one"]["cv_sample"] is None  # n - 1 = 0


def pool_dtype(name: str) -> pl.DataType:
    """The Polars dtype of a pool column as schemas/pool.py declares it."""
    frame = pl.from_arrow(pa.table({name: pa.array([], type=pool_field(name).type)}))
    assert isinstance(frame, pl.DataFrame)
    return frame.schema[name]


def test_dtypes_match_pool_schema() -> None:
    frame = pool({"a": [True, None], "b": [None]}).with_columns(model=pl.lit("m"))
    out = grade(frame, per_teacher=True)
    for name in [*GRADE_COLUMNS, *TEACHER_COLUMNS]:
        assert out.schema[name] == pool_dtype(name), name


def test_all_null_verdict_column() -> None:
    frame = pl.DataFrame({"problem_id": ["a", "a"], "verdict": [None, None]})
    assert frame.schema["verdict"] == pl.Null
    out = per_problem(grade(frame))
    assert out["a"]["n_judged"] == 0
    assert out["a"]["pass_rate"] is None


def test_non_boolean_verdict_is_an_error() -> None:
    with pytest.raises(OperatorError, match="boolean 'verdict'"):
        grade(pl.DataFrame({"problem_id": ["a"], "verdict": ["yes"]}))


@pytest.mark.parametrize(
    ("verdicts", "band"),
    [
        ([False] * 4, "hard"),  # 0.0
        ([True] + [False] * 4, "hard"),  # 0.2
        ([True] + [False] * 3, "medium"),  # 0.25 -> lower edge belongs to the upper band
        ([True, False], "medium"),  # 0.5
        ([True] * 3 + [False], "easy"),  # 0.75
        ([True] * 4, "easy"),  # 1.0: the band ending at 1.0 is closed
    ],
)
def test_default_band_edges(verdicts: list[bool], band: str) -> None:
    assert grade(pool({"x": verdicts}))["difficulty"][0] == band


def test_custom_bands_with_gap_leave_difficulty_null() -> None:
    out = per_problem(
        grade(
            pool({"lo": [False, False], "mid": [True, False], "top": [True, True]}),
            bands={"hard": [0.0, 0.4], "solved": [0.9, 1.0]},
        )
    )
    assert out["lo"]["difficulty"] == "hard"
    assert out["mid"]["difficulty"] is None
    assert out["top"]["difficulty"] == "solved"


@pytest.mark.parametrize(
    ("bands", "message"),
    [
        ({"a": [0.0, 0.6], "b": [0.5, 1.0]}, "overlap"),
        ({"a": [-0.1, 0.5]}, "within [0, 1]"),
        ({"a": [0.5, 1.5]}, "within [0, 1]"),
        ({"a": [0.5, 0.5]}, "lo < hi"),
        ({"a": [0.6, 0.4]}, "lo < hi"),
        ({}, "at least one band"),
    ],
)
def test_bad_bands_are_rejected(bands: dict[str, list[float]], message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        GradeParams.model_validate({"bands": bands})


def test_adjacent_bands_are_fine_and_params_round_trip() -> None:
    params = GradeParams.model_validate({"bands": {"x": [0.0, 0.5], "y": [0.5, 1.0]}})
    dumped = params.model_dump(mode="json")
    assert dumped == {"bands": {"x": [0.0, 0.5], "y": [0.5, 1.0]}, "per_teacher": False}
    with pytest.raises(ValidationError, match="Extra inputs"):
        GradeParams.model_validate({"cv": "sample"})


def test_per_teacher() -> None:
    frame = pool({"a": [True, False, True, None, False]}).with_columns(
        pl.Series("model", ["m1", "m2", "m1", "m2", "m2"])
    )
    out = grade(frame, per_teacher=True)
    assert out["pass_rate"][0] == pytest.approx(0.5)
    m1 = out.filter(pl.col("model") == "m1").row(0, named=True)
    m2 = out.filter(pl.col("model") == "m2").row(0, named=True)
    assert (m1["teacher_n_judged"], m1["teacher_n_correct"], m1["teacher_pass_rate"]) == (
        2,
        2,
        1.0,
    )
    assert (m2["teacher_n_judged"], m2["teacher_n_correct"], m2["teacher_pass_rate"]) == (
        2,
        0,
        0.0,
    )
    assert out.schema["teacher_n_judged"] == pl.Int64
    assert out.schema["teacher_pass_rate"] == pl.Float64
    assert "teacher_pass_rate" not in grade(frame).columns


def test_per_teacher_needs_model() -> None:
    with pytest.raises(OperatorError, match="no 'model' column"):
        grade(pool({"a": [True]}), per_teacher=True)


def test_missing_verdict_is_a_clear_error() -> None:
    frame = pl.DataFrame({"problem_id": ["a"], "prompt": ["q"]})
    with pytest.raises(OperatorError, match="needs column\\(s\\) verdict"):
        grade(frame)


def test_regrading_overwrites() -> None:
    once = grade(pool({"a": [True, False]}))
    twice = grade(once.filter(pl.col("verdict")))
    assert twice["pass_rate"].to_list() == [1.0]
    assert twice["n_samples"].to_list() == [1]


def test_real_data_pass_rates_match_published_distribution() -> None:
    frame = load_math100()
    assert frame.height == 800
    out = grade(frame)
    problems = out.unique("problem_id")
    assert problems.height == 100
    assert problems["n_samples"].unique().to_list() == [8]
    assert problems["n_judged"].unique().to_list() == [8]
    p = problems["pass_rate"]
    assert (p == 0).sum() == 4
    assert ((p > 0) & (p < 0.5)).sum() == 4
    assert ((p >= 0.5) & (p < 1)).sum() == 6
    assert (p == 1).sum() == 86
    assert out["verdict"].mean() == pytest.approx(0.910, abs=5e-4)
    assert problems["pass_rate"].mean() == pytest.approx(0.910, abs=5e-4)  # 8 traces each
    counts = dict(problems.group_by("difficulty").len().iter_rows())
    assert sum(counts.values()) == 100
    assert counts["easy"] >= 86
    # CV identity holds on real data.
    solved = problems.filter(pl.col("pass_rate") > 0)
    expected = ((1 - solved["pass_rate"]) / solved["pass_rate"]).sqrt()
    assert float((solved["cv_population"] - expected).abs().max()) < 1e-12
