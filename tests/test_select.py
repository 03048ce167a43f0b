"""The select operator: band, pass-rate and correct-count windows, `where`, correct_only, k, and
s1-style selection (solved_by reference models, a stratified length-weighted sample)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import duckdb
import polars as pl
import pytest
from pydantic import ValidationError

from curate.errors import OperatorError
from curate.filters.grade import Grade, GradeParams
from curate.filters.select import SAMPLE_COLUMNS, Select, SelectParams
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
    added = [c for c in SAMPLE_COLUMNS if c not in frame.columns] if "sample" in params else []
    assert result.kept.columns == frame.columns + added  # `sample` adds its audit columns
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


# --- s1-style selection: solved_by reference models, then a stratified length-weighted draw ---


def s1_pool(rows: list[tuple[str, str, bool | None, int]], **extra: list[object]) -> pl.DataFrame:
    """(problem_id, model, verdict, completion length in characters) per row."""
    frame = pl.DataFrame(
        {
            "problem_id": [r[0] for r in rows],
            "model": [r[1] for r in rows],
            "verdict": [r[2] for r in rows],
            "completion": ["x" * r[3] for r in rows],
        },
        schema_overrides={"verdict": pl.Boolean},
    )
    return frame.with_columns(
        pl.int_range(pl.len()).over("problem_id").cast(pl.Int64).alias("sample_index"),
        *(pl.Series(k, v) for k, v in extra.items()),
    )


REFERENCE_ROWS = [
    ("p1", "qwen-7b", True, 10),
    ("p1", "gemini", True, 50),
    ("p2", "qwen-7b", False, 10),
    ("p2", "qwen-32b", True, 10),
    ("p2", "gemini", True, 50),
    ("p3", "qwen-7b", False, 10),
    ("p3", "qwen-32b", False, 10),
    ("p3", "gemini", True, 50),
    ("p4", "gemini", False, 50),  # no reference trace: nothing says it is easy
    ("p5", "qwen-7b", None, 10),  # could not be judged: not solved
    ("p5", "gemini", True, 50),
    ("p6", "qwen-32b", True, 10),
    ("p6", "qwen-7b", True, 10),
    ("p6", "gemini", True, 50),
]


def test_solved_by_drops_solved_problems_and_reference_traces() -> None:
    frame = s1_pool(REFERENCE_ROWS)
    result = select(frame, solved_by=["qwen-7b", "qwen-32b"])
    assert kept_ids(result) == [("p3", 2), ("p4", 0), ("p5", 1)]
    got = reasons(result)
    assert got[("p1", 1)] == ("solved_by_reference", "solved by reference model(s): qwen-7b")
    assert got[("p2", 0)] == ("solved_by_reference", "solved by reference model(s): qwen-32b")
    assert got[("p6", 2)] == (
        "solved_by_reference",
        "solved by reference model(s): qwen-32b, qwen-7b",
    )
    assert got[("p3", 0)] == ("reference_trace", "a trace of reference model qwen-7b")
    assert got[("p5", 0)] == ("reference_trace", "a trace of reference model qwen-7b")
    assert len(got) == 11
    kept_refs = select(frame, solved_by=["qwen-7b", "qwen-32b"], keep_reference_traces=True)
    assert kept_ids(kept_refs) == [("p3", 0), ("p3", 1), ("p3", 2), ("p4", 0), ("p5", 0), ("p5", 1)]
    only_small = select(frame, solved_by=["qwen-7b"])
    assert {pid for pid, _ in kept_ids(only_small)} == {"p2", "p3", "p4", "p5"}


def test_solved_by_names_models_missing_from_the_pool() -> None:
    with pytest.raises(
        OperatorError, match=r"qwen-72b with no trace in the pool; models present: gemini"
    ):
        select(s1_pool(REFERENCE_ROWS), solved_by=["qwen-7b", "qwen-72b"])
    with pytest.raises(OperatorError, match=r"needs column\(s\) model for `solved_by`"):
        select(s1_pool(REFERENCE_ROWS).drop("model"), solved_by=["qwen-7b"])


def one_trace_per_problem(strata: dict[str, list[int]]) -> pl.DataFrame:
    """Problems `<stratum>-<i>` with one trace of the given length each, in that order."""
    rows = [
        (f"{name}-{i}", "gemini", True, length)
        for name, lengths in strata.items()
        for i, length in enumerate(lengths)
    ]
    return s1_pool(rows, domain=[r[0].rsplit("-", 1)[0] for r in rows])


def drawn(result: OpResult) -> list[str]:
    return result.kept.sort("draw_order")["problem_id"].to_list()


def test_proportional_strata_get_largest_remainder_shares() -> None:
    frame = one_trace_per_problem({"a": [60, 50, 40, 30, 20, 10], "b": [30, 20, 10], "c": [5]})
    # size 5 of 10: a 3.0, b 1.5, c 0.5 -> 3, 1, 0 and the last one to the larger of b and c.
    result = select(frame, sample={"size": 5, "strata": "proportional"})
    per_domain = result.kept.group_by("domain").len().sort("domain").rows()
    assert per_domain == [("a", 3), ("b", 2)]
    assert sorted(result.kept["draw_order"].to_list()) == [1, 2, 3, 4, 5]
    detail = reasons(result)[("c-0", 0)]
    assert detail == (
        "not_sampled",
        "not drawn: domain=c had 1 problem(s), 0 drawn (proportional strata, size 5); "
        "length 5.0 ranks 0 (weight 2^-0)",
    )
    assert select(frame, sample={"size": 100}).dropped.height == 0  # fewer problems than size


def test_uniform_strata_use_up_small_strata() -> None:
    frame = one_trace_per_problem({"big": list(range(100, 0, -1)), "small": list(range(10, 0, -1))})
    for seed in range(5):
        result = select(frame, sample={"size": 40, "seed": seed})
        # Each draw picks a stratum with problems left at random: the small one runs out.
        assert result.kept.group_by("domain").len().sort("domain").rows() == [
            ("big", 30),
            ("small", 10),
        ]
    even = one_trace_per_problem({"x": [1] * 50, "y": [1] * 50})
    small = [
        select(even, sample={"size": 10, "seed": s}).kept["domain"].eq("y").sum()
        for s in range(300)
    ]
    assert abs(sum(small) / 300 - 5.0) < 0.3  # Binomial(10, 1/2) per run: sd of the mean 0.09


def test_length_weighting_is_two_to_the_minus_rank() -> None:
    domains = 3000
    frame = one_trace_per_problem({f"d{i}": [10, 40, 20, 30] for i in range(domains)})
    # One problem per domain: rank r (0 = longest) should come up with p = 2^-r / (15/8).
    for prefer, rank_of_length in (
        ("longer", {40: 0, 30: 1, 20: 2, 10: 3}),
        ("shorter", {10: 0, 20: 1, 30: 2, 40: 3}),
    ):
        result = select(frame, sample={"size": domains, "strata": "proportional", "prefer": prefer})
        assert result.kept.height == domains
        ranks = result.kept["length_rank"].to_list()
        assert ranks == [rank_of_length[len(c)] for c in result.kept["completion"]]
        for rank in range(4):
            p = 2.0**-rank / (15 / 8)
            sd = (domains * p * (1 - p)) ** 0.5
            assert abs(ranks.count(rank) - domains * p) < 4 * sd, (prefer, rank, ranks.count(rank))
    flat = select(frame, sample={"size": domains, "strata": "proportional", "prefer": "none"})
    assert flat.kept["length_rank"].is_null().all()
    sizes = flat.kept["completion"].str.len_chars().value_counts()["count"].to_list()
    assert all(abs(n - domains / 4) < 4 * (domains * 0.25 * 0.75) ** 0.5 for n in sizes)


def test_same_seed_same_draw_whatever_the_row_order() -> None:
    frame = one_trace_per_problem({"a": list(range(30, 0, -1)), "b": list(range(20, 0, -1))})
    first = drawn(select(frame, sample={"size": 12, "seed": 4}))
    shuffled = frame.sample(fraction=1.0, shuffle=True, seed=9)
    assert drawn(select(shuffled, sample={"size": 12, "seed": 4})) == first
    assert drawn(select(frame, sample={"size": 12, "seed": 5})) != first
    # The spec's seed (the context's) is the default.
    ctx = StageContext(stage_id="03-select", seed=4)
    by_spec = Select(SelectParams.model_validate({"sample": {"size": 12}}), context=ctx).run(frame)
    assert drawn(by_spec) == first


def test_sample_ranks_problems_by_their_remaining_traces() -> None:
    rows = [
        ("p", "gemini", False, 90),  # long but wrong: gone before the draw
        ("p", "gemini", True, 20),
        ("q", "gemini", True, 50),
        ("r", "gemini", True, 30),
    ]
    frame = s1_pool(rows, domain=["x"] * 4)
    result = select(frame, correct_only=True, sample={"size": 3})
    ranks = dict(result.kept.select("problem_id", "length_rank").iter_rows())
    assert ranks == {"p": 2, "q": 0, "r": 1}
    assert reasons(result)[("p", 0)][0] == "not_correct"
    # The audit columns are on every row of a problem in the draw, dropped ones too.
    assert result.dropped["length_rank"].to_list() == [2]
    tokens = frame.with_columns(
        pl.Series("completion_tokens", [1, 9, 5, 3]), pl.Series("reasoning_tokens", [None, 0, 0, 0])
    )
    by_tokens = select(tokens, sample={"size": 3})
    assert dict(by_tokens.kept.select("problem_id", "length_rank").unique().iter_rows()) == {
        "p": 0,
        "q": 1,
        "r": 2,
    }
    expression = select(frame, sample={"size": 3, "length": "-length(completion)"})
    assert dict(expression.kept.select("problem_id", "length_rank").unique().iter_rows()) == {
        "p": 0,  # a problem's length is its largest: p max(-90, -20), q -50, r -30
        "q": 2,
        "r": 1,
    }


def test_sample_then_k_and_reason_order() -> None:
    rows = [(f"p{i}", "gemini", True, 10 * (i + 1)) for i in range(4) for _ in range(3)]
    frame = s1_pool(rows, domain=["x"] * 12)
    result = select(frame, where="sample_index < 2", sample={"size": 2, "seed": 1}, k=1)
    got = reasons(result)
    assert {r for (_, i), (r, _) in got.items() if i == 2} == {"where_false"}
    assert result.kept.height == 2 and result.kept["sample_index"].to_list() == [0, 0]
    picked = set(result.kept["problem_id"])
    for pid in {"p0", "p1", "p2", "p3"} - picked:
        assert got[(pid, 0)][0] == "not_sampled"
    for pid in picked:
        assert got[(pid, 1)][0] == "beyond_k"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"solved_by": []}, "at least one model name"),
        ({"keep_reference_traces": True}, "only applies with solved_by"),
        ({"sample": {"size": 0}}, "greater than or equal to 1"),
        ({"sample": {"size": 5, "strata": "even"}}, "'uniform' or 'proportional'"),
        ({"sample": {"size": 5, "length": "length(("}}, "length: cannot parse"),
        ({"sample": {"size": 5, "weights": "2^-rank"}}, "Extra inputs"),
    ],
)
def test_bad_s1_params(params: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        SelectParams.model_validate(params)


def test_sample_length_must_be_a_number() -> None:
    with pytest.raises(OperatorError, match="must be a number"):
        select(one_trace_per_problem({"a": [1, 2]}), sample={"size": 1, "length": "completion"})


GSM8K_GPT3 = Path(__file__).parent / "data" / "gsm8k_gpt3_solutions" / "solutions.parquet"
GPT3_MODELS = ("6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification")


def gsm8k_gpt3_pool() -> pl.DataFrame:
    """1,319 GSM8K test problems x 4 labelled GPT-3 solutions; `domain` is the number of steps
    of the reference solution (GSM8K has no subject labels): 2, 3, 4, 5 or 6+."""
    raw = pl.read_parquet(GSM8K_GPT3)
    steps = raw["ground_truth"].str.count_matches("\n")
    problems = raw.select(
        pl.format("gsm8k-{}", pl.col("line")).alias("problem_id"),
        pl.col("question").alias("prompt"),
        pl.when(steps >= 6)
        .then(pl.lit("6+ steps"))
        .otherwise(pl.format("{} steps", steps))
        .alias("domain"),
    )
    traces = [
        pl.concat(
            [
                problems,
                raw.select(
                    pl.col(f"{m}_solution").alias("completion"),
                    pl.col(f"{m}_is_correct").alias("verdict"),
                ),
            ],
            how="horizontal",
        ).with_columns(
            pl.lit(f"gpt3-{m}").alias("model"), pl.lit(i, dtype=pl.Int64).alias("sample_index")
        )
        for i, m in enumerate(GPT3_MODELS)
    ]
    return pl.concat(traces).sort("problem_id", "sample_index")


def test_s1_selection_on_real_traces_matches_duckdb() -> None:
    frame = gsm8k_gpt3_pool()
    reference = ["gpt3-6b_finetuning", "gpt3-6b_verification"]
    size = 150
    result = select(
        frame,
        solved_by=reference,
        correct_only=True,
        sample={"size": size, "strata": "proportional", "seed": 11},
    )
    con = duckdb.connect()
    con.register("pool", frame.to_arrow())
    # Problems neither 6B model solved, with a correct 175B trace; length = the longest one.
    candidates = con.sql(
        """
        WITH unsolved AS (
          SELECT problem_id FROM pool GROUP BY problem_id
          HAVING NOT bool_or(model IN ('gpt3-6b_finetuning', 'gpt3-6b_verification') AND verdict)
        )
        SELECT problem_id, any_value(domain) AS domain, max(length(completion)) AS len,
               row_number() OVER (PARTITION BY any_value(domain)
                                  ORDER BY max(length(completion)) DESC, problem_id) - 1 AS rank
        FROM pool JOIN unsolved USING (problem_id)
        WHERE model NOT IN ('gpt3-6b_finetuning', 'gpt3-6b_verification') AND verdict
        GROUP BY problem_id
        """
    ).to_arrow_table()
    candidates = pl.DataFrame(pl.from_arrow(candidates))
    assert candidates.height == 308  # of 1,319: 740 unsolved by 6B, 308 of them by 175B
    entered = result.kept.vstack(result.dropped.drop("drop_reason", "drop_detail")).filter(
        pl.col("length_rank").is_not_null()
    )
    ranks = dict(entered.select("problem_id", "length_rank").unique().iter_rows())
    assert ranks == dict(candidates.select("problem_id", "rank").iter_rows())
    # Proportional shares by largest remainder, computed here from DuckDB's counts.
    counts = dict(candidates.group_by("domain").len().iter_rows())
    total = sum(counts.values())
    exact = {d: size * n / total for d, n in counts.items()}
    quota = {d: int(x) for d, x in exact.items()}
    for d in sorted(counts, key=lambda d: (-(exact[d] - quota[d]), -counts[d]))[
        : size - sum(quota.values())
    ]:
        quota[d] += 1
    kept_problems = result.kept.unique("problem_id")
    assert dict(kept_problems.group_by("domain").len().iter_rows()) == {
        d: q for d, q in quota.items() if q
    }
    assert kept_problems.height == size
    # What stays: the correct 175B traces of the drawn problems, nothing else.
    assert set(result.kept["model"]) <= {"gpt3-175b_finetuning", "gpt3-175b_verification"}
    assert result.kept["verdict"].all()
    drawn_ids = set(kept_problems["problem_id"])
    expected_rows = frame.filter(
        pl.col("problem_id").is_in(list(drawn_ids))
        & pl.col("verdict")
        & pl.col("model").str.starts_with("gpt3-175b")
    )
    assert result.kept.height == expected_rows.height
    # Longer first: the drawn problems sit near the top of their strata.
    mean_rank = {d: (n - 1) / 2 for d, n in counts.items()}
    for d, q in quota.items():
        drawn_ranks = kept_problems.filter(pl.col("domain") == d)["length_rank"]
        assert drawn_ranks.mean() < min(2 * q, mean_rank[d]), d  # type: ignore[operator]
    reasons_seen = set(result.dropped["drop_reason"])
    assert reasons_seen == {"solved_by_reference", "reference_trace", "not_correct", "not_sampled"}
    # Same seed, same set; the uniform allocation draws the same size.
    again = select(
        frame,
        solved_by=reference,
        correct_only=True,
        sample={"size": size, "strata": "proportional", "seed": 11},
    )
    assert set(again.kept["problem_id"]) == drawn_ids
    uniform = select(
        frame, solved_by=reference, correct_only=True, sample={"size": size, "seed": 11}
    )
    assert uniform.kept["problem_id"].n_unique() == size
