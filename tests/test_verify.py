"""The verify operator: each method, null verdicts, bounded math checks, and agreement with the
correctness flags shipped with the quickstart's 800 real traces."""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

import polars as pl
import pyarrow as pa
import pytest
from pydantic import ValidationError

from curate.errors import OperatorError
from curate.operators import StageContext
from curate.registry import get_operator
from curate.verifiers.math import MATH_VERIFIER, check_math, run_math_checks
from curate.verifiers.result import Judgement
from curate.verifiers.simple import extract_choice, parse_number
from curate.verify import Verify, VerifyParams
from schemas.pool import VERDICT_COLUMNS
from tests.conftest import QUICKSTART_DATA

VERDICT_NAMES = [f.name for f in VERDICT_COLUMNS]
TOWER = r"9^{9^{9^{9^{9}}}}"  # sympy tries to evaluate it; without a bound it runs for minutes


def frame_of(pairs: list[tuple[str | None, str | None]]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "problem_id": [f"p{i}" for i in range(len(pairs))],
            "completion": [c for c, _ in pairs],
            "reference_answer": [r for _, r in pairs],
        },
        schema={"problem_id": pl.String, "completion": pl.String, "reference_answer": pl.String},
    )


def run_verify(frame: pl.DataFrame, **params: object) -> pl.DataFrame:
    context = StageContext(stage_id="01-verify", workers=2)
    result = Verify(VerifyParams.model_validate(params), context=context).run(frame)
    assert result.dropped.height == 0  # verify never drops
    assert result.kept.height == frame.height
    expected = pl.DataFrame(pa.schema(VERDICT_COLUMNS).empty_table()).schema
    assert {c: result.kept.schema[c] for c in VERDICT_NAMES} == dict(expected)
    return result.kept


def verdicts(kept: pl.DataFrame) -> list[tuple[bool | None, str]]:
    return list(zip(kept["verdict"].to_list(), kept["verify_detail"].to_list(), strict=True))


def test_registered_under_its_name() -> None:
    assert get_operator("verify") is Verify
    assert Verify.describe()
    for name, info in VerifyParams.model_fields.items():
        assert info.description, f"VerifyParams.{name} has no description"


def test_math_method_in_a_worker_thread_with_a_bounded_pathological_answer() -> None:
    """Equivalences math-verify knows, null verdicts and their details, and a tower of powers
    that sympy would evaluate for minutes: it comes back null with detail "timeout" in about
    `timeout_s`. The operator is called from a non-main thread, as an engine might: the
    SIGALRM-based bounds still work because the checks run in worker processes."""
    pairs: list[tuple[str | None, str | None]] = [
        (r"so the answer is $\boxed{\frac{1}{2}}$.", "0.5"),
        (r"\boxed{\dfrac{\sqrt{3}}{2}}", r"\frac{\sqrt3}{2}"),
        (r"\boxed{10000}", r"10{,}000"),
        (r"\boxed{(-\infty, 3]}", r"(-\infty,3]"),
        (r"\boxed{100}", r"100\text{ square units}"),
        (r"\boxed{4:30 \text{ p.m.}}", r"\text{4:30 p.m.}"),
        ("The answer is 7.", "8"),
        (r"\boxed{4}", "4t"),  # math-verify alone calls these equal (it strips "t" as a unit)
        ("I could not solve it.", "3"),
        (None, "3"),
        (r"\boxed{3}", "x+"),
        (r"\boxed{3}", None),
        (rf"\boxed{{{TOWER}}}", "1"),
    ]
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=1) as pool:
        kept = pool.submit(run_verify, frame_of(pairs), method="math", timeout_s=1).result()
    elapsed = time.monotonic() - started
    assert verdicts(kept) == [
        (True, "match"),
        (True, "match"),
        (True, "match"),
        (True, "match"),
        (True, "match"),
        (True, "match"),
        (False, "mismatch"),
        (False, "mismatch"),
        (None, "no answer extracted"),
        (None, "no answer extracted"),
        (None, "reference unparseable: math-verify cannot parse 'x+'"),
        (None, "reference unparseable: no reference answer"),
        (None, "timeout"),
    ]
    assert kept["score"].to_list() == [1.0] * 6 + [0.0, 0.0] + [None] * 5
    assert kept["extracted_answer"].to_list()[:3] == [
        r"\frac{1}{2}",
        r"\dfrac{\sqrt{3}}{2}",
        "10000",
    ]
    assert kept["extracted_answer"][8] is None
    assert kept["extracted_answer"][12] == TOWER
    assert set(kept["verifier"].to_list()) == {MATH_VERIFIER}
    assert MATH_VERIFIER.startswith("math-verify ")
    assert elapsed < 20, f"a check bounded at 1 s held the batch for {elapsed:.1f} s"


def hang_or_crash(answer: str, reference: str, timeout_s: int) -> Judgement:
    """A worker check for the watchdog test: "crash" kills the worker process outright; anything
    else is checked with math-verify and no time bound at all (timeout_s is 0)."""
    if answer == "crash":
        os._exit(3)
    return check_math(answer, reference, timeout_s)


def test_watchdog_kills_a_stuck_worker_and_only_its_pair_is_lost() -> None:
    """With math-verify's own bound switched off the tower really hangs; the outer per-pair limit
    kills that worker, the pair comes back "timeout", a dead worker's pair "worker crashed", and
    the other pairs of the same chunk are still judged by a fresh worker."""
    pairs = [(TOWER, "1"), ("crash", "1"), (r"\frac{1}{2}", "0.5"), ("2", "3"), (TOWER, "1")]
    started = time.monotonic()
    results = run_math_checks(
        pairs, workers=1, timeout_s=0, chunk_size=4, row_limit_s=1.5, check=hang_or_crash
    )
    elapsed = time.monotonic() - started
    assert results == [
        Judgement(None, "timeout"),
        Judgement(None, "worker crashed"),
        Judgement(True, "match"),
        Judgement(False, "mismatch"),
        Judgement(None, "timeout"),  # the same pair is checked once
    ]
    assert elapsed < 25


def test_exact_method() -> None:
    kept = run_verify(
        frame_of(
            [
                ("Answer: $  Blue   Whale$.", "blue whale"),
                ("The answer is Ｂｌｕｅ.", "blue"),  # NFKC folds full-width letters
                (r"\boxed{red}", "blue"),
                (r"\boxed{x}", "  "),
            ]
        ),
        method="exact",
    )
    assert verdicts(kept) == [
        (True, "match"),
        (True, "match"),
        (False, "mismatch"),
        (None, "reference unparseable: no reference answer"),
    ]
    assert set(kept["verifier"].to_list()) == {"exact"}


def test_numeric_method() -> None:
    kept = run_verify(
        frame_of(
            [
                ("The answer is 1,234.", "1234"),
                (r"\boxed{\frac{3}{4}}", "0.75"),
                (r"\boxed{3/4}", "0.75"),
                (r"\boxed{25\%}", "25"),
                (r"\boxed{\$1{,}000}", "1000"),
                (r"\boxed{0.3333}", "1/3"),
                (r"\boxed{12 \text{ cm}}", "12"),
                (r"\boxed{x}", "12"),
                (r"\boxed{5}", "about five"),
            ]
        ),
        method="numeric",
        rel_tol=1e-3,
    )
    assert verdicts(kept) == [
        (True, "match"),
        (True, "match"),
        (True, "match"),
        (True, "match"),
        (True, "match"),
        (True, "match"),  # within rel_tol 1e-3
        (True, "match"),
        (False, "mismatch: answer is not a number"),
        (None, "reference unparseable: not a number: 'about five'"),
    ]
    strict = run_verify(frame_of([(r"\boxed{0.3333}", "1/3")]), method="numeric")
    assert verdicts(strict) == [(False, "mismatch")]


def test_number_parsing() -> None:
    assert parse_number("900,\\!000,\\!000") == 900_000_000
    assert parse_number("1 1/2") == parse_number("1\\frac{1}{2}") == 1.5
    assert parse_number("-\\dfrac{40}{153}") * 153 == -40  # type: ignore[operator]
    assert parse_number("2.5 \\times 10^{3}") == 2500
    assert parse_number("x = -3") == -3
    assert parse_number("48^\\circ") == parse_number("48°") == 48
    for not_a_number in ["1,2", "2x", "1_000", "\\frac{1}{0}", "4t", ""]:
        assert parse_number(not_a_number) is None, not_a_number


def test_choice_method() -> None:
    kept = run_verify(
        frame_of(
            [
                (r"so the answer is \boxed{B}", "B"),
                ("The answer is (c).", "C"),
                ("Answer: D) 42", "(D)"),
                (r"\boxed{\text{(A)}}", "A"),
                ("B", "B"),  # a completion that is only the letter
                (r"\boxed{A}", "B"),
                (r"\boxed{42}", "B"),
                ("The answer is a prime number.", "A"),
                (r"\boxed{B}", "42"),
            ]
        ),
        method="choice",
    )
    assert verdicts(kept) == [
        (True, "match"),
        (True, "match"),
        (True, "match"),
        (True, "match"),
        (True, "match"),
        (False, "mismatch"),
        (False, "mismatch: no option letter in answer"),
        (False, "mismatch: no option letter in answer"),
        (None, "reference unparseable: no option letter (ABCDE) in '42'"),
    ]
    assert extract_choice("F") is None
    assert extract_choice("F", choices="ABCDEF") == "F"


def test_regex_extraction_param() -> None:
    kept = run_verify(
        frame_of([("#### 12\nno, #### 13", "13"), ("no marker", "13")]),
        method="exact",
        extract="regex",
        pattern=r"####\s*(\d+)",
    )
    assert verdicts(kept) == [(True, "match"), (None, "no answer extracted")]
    assert kept["extracted_answer"].to_list() == ["13", None]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"extract": "regex"}, "needs a `pattern`"),
        ({"extract": "regex", "pattern": "(a)(b)"}, "exactly one capture group"),
        ({"extract": "regex", "pattern": "(a"}, "not a valid regex"),
        ({"pattern": "(a)"}, "only with extract: regex"),
        ({"method": "fuzzy"}, "method"),
        ({"timeout_s": 0}, "timeout_s"),
    ],
)
def test_bad_params_are_rejected(params: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        VerifyParams.model_validate(params)


def test_missing_columns_are_named() -> None:
    frame = pl.DataFrame({"completion": ["\\boxed{1}"]})
    with pytest.raises(OperatorError, match="reference_answer"):
        Verify(VerifyParams(), context=StageContext(stage_id="01-verify")).run(frame)


def test_empty_batch() -> None:
    kept = run_verify(frame_of([]), method="math")
    assert kept.height == 0


def test_real_traces_agree_with_the_shipped_flags() -> None:
    """All 800 quickstart traces: our math verdicts vs Qwen's shipped correctness flags (the
    numbers in examples/quickstart/README.md). The 9 disagreements are all shipped false
    negatives: "4:30 \\text{ p.m.}" vs "\\text{4:30 p.m.}" (problem 3) and 10000 vs 10{,}000
    (problem 72, sample 7)."""
    rows = [json.loads(line) for line in QUICKSTART_DATA.read_text().splitlines()]
    frame = pl.DataFrame(
        [
            {
                "idx": row["idx"],
                "sample": i,
                "completion": completion,
                "reference_answer": row["answer"],
                "shipped": flag,
            }
            for row in rows
            for i, (completion, flag) in enumerate(zip(row["response"], row["score"], strict=True))
        ]
    )
    kept = (
        Verify(VerifyParams(method="math"), context=StageContext(stage_id="01-verify", workers=2))
        .run(frame)
        .kept
    )
    counts = {
        (ours, shipped): n
        for ours, shipped, n in kept.group_by("verdict", "shipped").len().iter_rows()
    }
    assert counts == {(True, True): 728, (False, False): 63, (True, False): 9}
    disagree = kept.filter(pl.col("verdict") != pl.col("shipped"))
    assert sorted(set(disagree["idx"].to_list())) == [3, 72]
    assert disagree.filter(pl.col("idx") == 72)["sample"].to_list() == [7]
