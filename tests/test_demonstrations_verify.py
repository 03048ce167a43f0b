"""verify (method: demonstrations): rule applications scored against real ReDis demonstrations
(1D-ARC, List Functions, ACRE, MiniSCAN; tests/data/redis_tasks). Every completion below is a
hand-written application of a stated rule to the problem's demonstration inputs, and every
expected score was worked out by hand from the rule and the demonstrations (noted beside it)."""

from __future__ import annotations

import json
from typing import Any

import polars as pl
import pytest
from pydantic import ValidationError

from curate.operators import StageContext
from curate.verifiers.demonstrations import find_applications, parse_literal, reproduces
from curate.verify import Verify, VerifyParams
from tests.conftest import REPO

DATA = REPO / "tests" / "data" / "redis_tasks"


def problems(task: str) -> dict[int, dict[str, Any]]:
    rows = [json.loads(line) for line in (DATA / f"{task}.jsonl").read_text().splitlines()]
    return {row["idx"]: row for row in rows}


def meta(row: dict[str, Any]) -> str:
    """problem_meta as `input.columns.meta: [train, test]` writes it."""
    return json.dumps({"train": row["train"], "test": row["test"]})


def verify(rows: list[tuple[str | None, str | None]], **params: Any) -> pl.DataFrame:
    frame = pl.DataFrame(
        {
            "problem_id": [f"p{i}" for i in range(len(rows))],
            "completion": [c for c, _ in rows],
            "reference_answer": [None] * len(rows),
            "problem_meta": [m for _, m in rows],
        },
        schema={
            "problem_id": pl.String,
            "completion": pl.String,
            "reference_answer": pl.String,
            "problem_meta": pl.String,
        },
    )
    context = StageContext(stage_id="03-verify")
    params = {"method": "demonstrations", **params}
    result = Verify(VerifyParams.model_validate(params), context=context).run(frame)
    assert result.dropped.height == 0
    assert result.kept["verifier"].unique().to_list() == ["demonstrations"]
    return result.kept


def scores(kept: pl.DataFrame) -> list[tuple[bool | None, float | None]]:
    return list(zip(kept["verdict"].to_list(), kept["score"].to_list(), strict=True))


def lines(*outputs: str, label: str = "Output {k}: ") -> str:
    return "\n".join(label.format(k=k) + out for k, out in enumerate(outputs, 1))


# 1D-ARC 791: runs of 6 are recoloured by length (1 -> 3, 2 -> 1, 3 -> 4).
ARC_791 = [
    "[0, 0, 0, 1, 1, 0, 3, 0, 4, 4, 4, 0, 0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]",
    "[0, 0, 0, 3, 0, 0, 0, 1, 1, 0, 0, 0, 4, 4, 4, 0, 0, 1, 1, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0]",
    "[0, 0, 0, 3, 0, 0, 0, 4, 4, 4, 0, 0, 1, 1, 0, 0, 0, 1, 1, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]",
]
# The rule "every 6 becomes 1" applied to the three inputs.
ARC_791_ALL_ONES = [
    "[0, 0, 0, 1, 1, 0, 1, 0, 1, 1, 1, 0, 0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]",
    "[0, 0, 0, 1, 0, 0, 0, 1, 1, 0, 0, 0, 1, 1, 1, 0, 0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]",
    "[0, 0, 0, 1, 0, 0, 0, 1, 1, 1, 0, 0, 1, 1, 0, 0, 0, 1, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]",
]
# 1D-ARC 794: runs of 3 are recoloured by length (1 -> 4, 2 -> 2, 3 -> 9); written without spaces.
ARC_794 = [
    "[0,0,0,9,9,9,0,0,4,0,2,2,0,9,9,9,0,0,0,2,2,0,0,0,0,0,0,0,0,0,0]",
    "[0,0,0,4,0,0,0,9,9,9,0,0,0,2,2,0,0,9,9,9,0,0,0,2,2,0,0,0,0,0,0]",
    "[0,0,0,2,2,0,0,4,0,0,0,9,9,9,0,0,2,2,0,9,9,9,0,0,0,0,0,0,0,0,0]",
]


def test_1d_arc() -> None:
    arc = problems("1d_arc")
    m791, m794 = meta(arc[791]), meta(arc[794])
    wrong_second = ARC_791.copy()
    wrong_second[1] = wrong_second[1].replace("4, 4, 4", "4, 4, 1")
    kept = verify(
        [
            (lines(*ARC_791), m791),  # the true rule: 3/3
            (lines(*ARC_791_ALL_ONES), m791),  # every demo has a run of 1 or 3: 0/3
            ("[" + ", ".join(wrong_second) + "]", m791),  # one JSON list, demo 2 wrong: 2/3
            ("\n".join(ARC_794), m794),  # one per line, no spaces: 3/3
            ("```\n" + "\n".join(ARC_794[:2]) + "\n```", m794),  # only two lines: none placed
        ]
    )
    assert scores(kept) == [(True, 3.0), (False, 0.0), (False, 2.0), (True, 3.0), (False, 0.0)]
    details = kept["verify_detail"].to_list()
    assert details[0] == "reproduced 3/3"
    assert details[2].startswith("reproduced 2/3; first miss: output 2 expected ")
    assert details[4] == "reproduced 0/3; no applications found"


def test_list_functions() -> None:
    lf = problems("list_func")
    m107, m11 = meta(lf[107]), meta(lf[11])
    # 107, rule "the sum of the list": demos give [30] [44] [58] [69] [62] [64] [31] [81].
    sums_with_two_slips = lines("[30]", "[44]", "[57]", "[69]", "[62]", "64", "[31]", "[81]")
    # 107, rule "the largest element": [14] [22] [53] [61] [62] [64] [24] [73]; 5 and 6 agree.
    maxima = lines("[14]", "[22]", "[53]", "[61]", "[62]", "[64]", "[24]", "[73]")
    # 11, rule "elements 2 to 4" (x[1:4]), numbered labels out of order, one in bold.
    slices = "\n".join(
        [
            "Output 8: [9, 1, 7]",
            "Output 1: [9, 4, 7]",
            "Output 2: [2, 9, 6]",
            "Output 3: [3, 5, 0]",
            "Output 4: [5, 4]",
            "Output 5: [9, 3, 8]",
            "Output 6: [6, 3, 8]",
            "**Output 7:** []",
        ]
    )
    # 11, rule "drop the first element": right only where the list has at most 4 items (#4, #7).
    tails = lines(
        "[9, 4, 7, 6, 3]",
        "[2, 9, 6, 4, 8, 5, 1]",
        "[3, 5, 0, 2]",
        "[5, 4]",
        "[9, 3, 8, 4]",
        "[6, 3, 8, 5, 9, 0, 4, 1]",
        "[]",
        "[9, 1, 7, 5, 4, 2]",
    )
    kept = verify([(sums_with_two_slips, m107), (maxima, m107), (slices, m11), (tails, m11)])
    assert scores(kept) == [(False, 6.0), (False, 2.0), (True, 8.0), (False, 2.0)]
    assert kept["verify_detail"][0] == (
        "reproduced 6/8; first miss: output 3 expected '[58]' got '[57]'"
    )


def test_acre() -> None:
    acre = problems("acre")
    # 35, rule "the blue metal cylinder, green metal cube or cyan rubber cylinder turns it on":
    # on on off on off off, all six; written with varied case, quotes and full stops.
    loose = "On.\nOn\noff\n'on'\nOFF\noff"
    # 62, rule "any rubber object turns it on": on on off on off on against on on off off on
    # off, so demos 1-3 agree: 3.
    rubber = '["on", "on", "off", "on", "off", "on"]'
    kept = verify([(loose, meta(acre[35])), (rubber, meta(acre[62]))])
    assert scores(kept) == [(True, 6.0), (False, 3.0)]
    assert kept["extracted_answer"][1] == rubber


def test_miniscan() -> None:
    scan = problems("scan")
    # 35, the right primitives but "x sliart y" read as "x y" (no swap): demos 1-8 right, the
    # six with sliart (9-14) wrong: 8 of 14. Lower case: text is compared case-folded.
    no_swap = lines(
        "red",
        "blue",
        "green",
        "yellow",
        "blue blue blue",
        "red red red",
        "blue green blue",
        "green red green",
        "blue green",
        "red blue",
        "blue blue blue green",
        "green red blue red",
        "blue green green green",
        "green red green blue",
    )
    # 62, the full rule with one slip (demo 5 written with two BLUEs instead of three): 13.
    expected = [d["output"] for d in scan[62]["train"]]
    slip = expected.copy()
    slip[4] = "BLUE BLUE"
    unnumbered = lines(*slip, label="Output: ")
    kept = verify([(no_swap, meta(scan[35])), (unnumbered, meta(scan[62]))])
    assert scores(kept) == [(False, 8.0), (False, 13.0)]
    assert kept["verify_detail"][1] == (
        "reproduced 13/14; first miss: output 5 expected 'BLUE BLUE BLUE' got 'BLUE BLUE'"
    )


def test_rows_that_cannot_be_judged_and_request_failures() -> None:
    arc = problems("1d_arc")
    kept = verify(
        [
            ("", meta(arc[791])),
            (lines(*ARC_791), json.dumps({"test": arc[791]["test"]})),
            (lines(*ARC_791), None),
            (lines(*ARC_791), json.dumps({"train": [{"input": "[1]"}]})),
        ]
    )
    assert scores(kept) == [(False, 0.0), (None, None), (None, None), (None, None)]
    assert kept["verify_detail"][1] == (
        "reference unparseable: no demonstrations in problem_meta (looked for 'demonstrations', "
        "'train', 'examples')"
    )
    # a failed teacher request is not judged, whatever its completion
    frame = pl.DataFrame(
        {
            "problem_id": ["p0", "p1"],
            "completion": [None, lines(*ARC_791)],
            "reference_answer": [None, None],
            "problem_meta": [meta(arc[791])] * 2,
            "error": ["HTTP 500", None],
        },
        schema_overrides={"completion": pl.String, "reference_answer": pl.String},
    )
    params = VerifyParams.model_validate({"method": "demonstrations"})
    result = Verify(params, context=StageContext(stage_id="03-verify")).run(frame).kept
    assert scores(result) == [(None, None), (True, 3.0)]
    assert result["verify_detail"][0] == "request failed: HTTP 500"
    # the field can be named; here the held-out pairs serve as demonstrations
    test_outputs = [pair["output"] for pair in arc[791]["test"]]
    kept = verify([(lines(*test_outputs), meta(arc[791]))], demonstrations_field="test")
    assert scores(kept) == [(True, 1.0)]
    with pytest.raises(ValidationError, match="demonstrations takes only extract: auto"):
        VerifyParams.model_validate(
            {"method": "demonstrations", "extract": "regex", "pattern": "(x)"}
        )


@pytest.mark.parametrize(
    ("application", "expected", "ok"),
    [
        ("[1, 2]", "[1, 2]", True),
        ("The output is [1, 2].", "[1, 2]", True),
        ("[1, 2.0]", "[1, 2]", False),
        ("[True]", "[1]", False),
        ("[[1], [2]]", "[[1], [2]]", True),
        ("(1, 2)", "[1, 2]", True),
        ("1, 2", "[1, 2]", False),
        ("RED  red", "RED RED", True),
        ("**on**", "on", True),
        ("on, off", "on", False),
        (None, "on", False),
    ],
)
def test_reproduces(application: str | None, expected: str, ok: bool) -> None:
    assert reproduces(application, expected) is ok


def test_parsing_helpers() -> None:
    assert parse_literal("so [1, [2, 3]] it is") == (True, [1, [2, 3]])
    assert parse_literal("no list") == (False, None)
    text = "Input 1: [1]\nOutput 1:\n[2,\n 3]\nInput 2: [4]\nOutput 2: [5]"
    assert find_applications(text, ["[2, 3]", "[5]"]) == ["[2,\n 3]", "[5]"]
    assert find_applications("only this", ["x"]) == ["only this"]


def test_the_copied_rows_are_the_shared_files_first_rows() -> None:
    shared = REPO.parent / "shared" / "data" / "redis_tasks"
    if not shared.exists():  # a clone without the shared data: the fixture stands alone
        return
    sources = {
        "1d_arc": "1d_arc/1D_arc_test.jsonl",
        "list_func": "list_func/list_function_test.jsonl",
        "acre": "acre/acre_test.jsonl",
        "scan": "scan/scan_test.jsonl",
    }
    for name, source in sources.items():
        first = (shared / source).read_text().splitlines()[:2]
        assert (DATA / f"{name}.jsonl").read_text().splitlines() == first
