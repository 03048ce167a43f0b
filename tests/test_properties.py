"""Property tests: pass-rate and CV math, the DeepDistill CV/pass-rate equivalence, difficulty
band assignment and validation, and the guarantees of prune's selection."""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Sequence

import polars as pl
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from curate.filters.common import band_contains, band_expr, band_of
from curate.filters.grade import Grade, GradeParams
from curate.filters.prune import Prune, PruneParams
from curate.filters.select import Select, SelectParams
from curate.operators import StageContext

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

verdict_lists = st.lists(st.one_of(st.none(), st.booleans()), min_size=1, max_size=12)
problems = st.lists(verdict_lists, min_size=1, max_size=6)


def pool(verdicts: Sequence[Sequence[bool | None]]) -> pl.DataFrame:
    rows = [
        {"problem_id": f"p{i}", "sample_index": j, "verdict": v}
        for i, vs in enumerate(verdicts)
        for j, v in enumerate(vs)
    ]
    return pl.DataFrame(
        rows, schema={"problem_id": pl.String, "sample_index": pl.Int64, "verdict": pl.Boolean}
    )


def grade(frame: pl.DataFrame) -> pl.DataFrame:
    return Grade(GradeParams(), context=StageContext(stage_id="g")).run(frame).kept


@SETTINGS
@given(problems)
def test_pass_rate_and_cv_match_reference(verdicts: list[list[bool | None]]) -> None:
    out = grade(pool(verdicts))
    by_problem = {r["problem_id"]: r for r in out.unique("problem_id").iter_rows(named=True)}
    for i, vs in enumerate(verdicts):
        row = by_problem[f"p{i}"]
        scores = [1.0 if v else 0.0 for v in vs if v is not None]
        assert row["n_samples"] == len(vs)
        assert row["n_judged"] == len(scores)
        assert row["n_correct"] == sum(scores)
        if not scores:
            assert row["pass_rate"] is None
            assert row["cv_population"] is None and row["cv_sample"] is None
            assert row["difficulty"] is None
            continue
        mean = statistics.fmean(scores)
        assert row["pass_rate"] == pytest.approx(mean)
        if mean == 0:
            assert row["cv_population"] is None and row["cv_sample"] is None
            continue
        assert row["cv_population"] == pytest.approx(statistics.pstdev(scores) / mean, abs=1e-12)
        if len(scores) >= 2:
            assert row["cv_sample"] == pytest.approx(statistics.stdev(scores) / mean, abs=1e-12)
        else:
            assert row["cv_sample"] is None
        # The 0/1 identity.
        p = row["pass_rate"]
        assert row["cv_population"] == pytest.approx(math.sqrt((1 - p) / p), abs=1e-12)


@SETTINGS
@given(
    st.lists(
        st.tuples(st.integers(1, 40), st.integers(0, 40)).map(lambda t: (t[0], min(t[0], t[1]))),
        min_size=1,
        max_size=8,
    ),
    st.floats(min_value=0.0, max_value=10.0, allow_nan=False),
)
def test_deepdistill_cv_threshold_is_a_pass_rate_threshold(
    counts: list[tuple[int, int]], t: float
) -> None:
    """cv_population > t  iff  pass_rate < 1 / (1 + t²), for 0 < p <= 1."""
    verdicts: list[list[bool]] = [
        [True] * max(correct, 1) + [False] * (judged - max(correct, 1))
        for judged, correct in counts
    ]
    threshold = 1 / (1 + t * t)
    rates = [sum(1 for v in vs if v) / len(vs) for vs in verdicts]
    assume(all(abs(p - threshold) > 1e-9 for p in rates))  # float ties at the edge
    frame = grade(pool(verdicts))
    ctx = StageContext(stage_id="s")
    by_cv = Select(SelectParams(where=f"cv_population > {t!r}"), context=ctx).run(frame)
    by_p = Select(SelectParams.model_validate({"pass_rate": {"lt": threshold}}), context=ctx).run(
        frame
    )
    assert by_cv.kept["problem_id"].to_list() == by_p.kept["problem_id"].to_list()
    for row in frame.iter_rows(named=True):
        assert (row["cv_population"] > t) == (row["pass_rate"] < threshold)


@st.composite
def partitions(draw: st.DrawFn) -> dict[str, tuple[float, float]]:
    """Bands that cover [0, 1] exactly: consecutive cuts 0 = c0 < c1 < ... < cn = 1."""
    inner = draw(st.lists(st.floats(0.0, 1.0, exclude_min=True, exclude_max=True), max_size=5))
    cuts = [0.0, *sorted(set(inner)), 1.0]
    return {f"b{i}": (lo, hi) for i, (lo, hi) in enumerate(itertools.pairwise(cuts))}


rates = st.lists(st.floats(0.0, 1.0, allow_nan=False), min_size=1, max_size=30)


@SETTINGS
@given(partitions(), rates)
def test_covering_bands_assign_exactly_one(
    bands: dict[str, tuple[float, float]], ps: list[float]
) -> None:
    GradeParams(bands=bands)  # valid
    edge_values = [v for lo, hi in bands.values() for v in (lo, hi)]
    series = pl.Series("p", [*ps, *edge_values], dtype=pl.Float64)
    frame = pl.DataFrame({"p": series})
    hits = frame.select(
        pl.sum_horizontal(
            [band_contains(lo, hi, pl.col("p")).cast(pl.Int64) for lo, hi in bands.values()]
        ).alias("hits"),
        band_expr(bands, pl.col("p")).alias("band"),
    )
    assert hits["hits"].to_list() == [1] * series.len()
    assert hits["band"].to_list() == [band_of(p, bands) for p in series.to_list()]


intervals = st.tuples(st.floats(0.0, 1.0), st.floats(0.0, 1.0)).filter(lambda t: t[0] < t[1])


@SETTINGS
@given(st.lists(intervals, min_size=1, max_size=5), rates)
def test_bands_validate_iff_disjoint_and_then_assign_at_most_one(
    spans: list[tuple[float, float]], ps: list[float]
) -> None:
    bands = {f"b{i}": span for i, span in enumerate(spans)}
    overlapping = any(
        max(a[0], b[0]) < min(a[1], b[1]) for i, a in enumerate(spans) for b in spans[i + 1 :]
    )
    if overlapping:
        with pytest.raises(ValidationError, match="overlap"):
            GradeParams(bands=bands)
        return
    GradeParams(bands=bands)
    frame = pl.DataFrame({"p": pl.Series(ps, dtype=pl.Float64)})
    hits = frame.select(
        pl.sum_horizontal(
            [band_contains(lo, hi, pl.col("p")).cast(pl.Int64) for lo, hi in spans]
        ).alias("hits")
    )["hits"]
    assert hits.max() <= 1  # type: ignore[operator]
    assigned = frame.select(band_expr(bands, pl.col("p")).alias("band"))["band"].to_list()
    assert [a is not None for a in assigned] == [h == 1 for h in hits.to_list()]


trace = st.tuples(
    st.sampled_from(["a", "b", "c"]),  # problem
    st.integers(0, 60),  # completion length in approx tokens
    st.one_of(st.none(), st.integers(0, 30)),  # reasoning length (None: no reasoning)
    st.one_of(st.none(), st.booleans()),  # verdict
)
BUDGETS = {"a": "easy", "b": "hard", "c": "medium"}


@SETTINGS
@given(
    st.lists(trace, min_size=1, max_size=25),
    st.sampled_from(["shortest_correct", "shortest"]),
    st.integers(1, 4),
    st.one_of(
        st.integers(1, 80),
        st.fixed_dictionaries(
            {"easy": st.integers(1, 80), "hard": st.integers(1, 80)},
            optional={"medium": st.integers(1, 80)},
        ),
    ),
)
def test_prune_selection(
    rows: list[tuple[str, int, int | None, bool | None]],
    keep: str,
    k: int,
    max_tokens: int | dict[str, int],
) -> None:
    frame = pl.DataFrame(
        {
            "problem_id": [r[0] for r in rows],
            "sample_index": list(range(len(rows))),
            "prompt": ["q"] * len(rows),
            "completion": ["x" * (4 * r[1]) for r in rows],
            "reasoning": [None if r[2] is None else "y" * (4 * r[2]) for r in rows],
            "verdict": [r[3] for r in rows],
            "difficulty": [BUDGETS[r[0]] for r in rows],
        },
        schema_overrides={"verdict": pl.Boolean, "reasoning": pl.String},
    )
    params = PruneParams.model_validate({"keep": keep, "per_problem": k, "max_tokens": max_tokens})
    result = Prune(params, context=StageContext(stage_id="p")).run(frame)
    kept, dropped = result.kept, result.dropped
    assert kept.height + dropped.height == frame.height

    def budget(difficulty: str) -> int | None:
        if isinstance(max_tokens, int):
            return max_tokens
        return max_tokens.get(difficulty)

    def length(row: dict[str, object]) -> int:
        return int(row["completion_tokens"]) + int(row["reasoning_tokens"] or 0)  # type: ignore[call-overload]

    def eligible(row: dict[str, object]) -> bool:
        cap = budget(str(row["difficulty"]))
        correct_enough = keep == "shortest" or row["verdict"] is True
        return correct_enough and cap is not None and length(row) <= cap

    kept_rows = list(kept.iter_rows(named=True))
    for row in kept_rows:
        assert eligible(row)  # within budget, correct when shortest_correct
    assert all(n <= k for n in kept["problem_id"].value_counts()["count"].to_list())
    for row in dropped.iter_rows(named=True):
        if eligible(row):
            assert row["drop_reason"] == "beyond_per_problem"
            same = [r for r in kept_rows if r["problem_id"] == row["problem_id"]]
            assert len(same) == k
            assert all(length(r) <= length(row) for r in same)
        else:
            assert row["drop_reason"] in {"not_correct", "over_budget", "no_budget_for_difficulty"}
