"""Reading the input file: formats, column mapping, trace pools, and bad input named precisely
(file:line and what was expected) whether the spec fails on bad rows or skips them."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate import ids
from curate.errors import InputError
from curate.inputs import InputResult, read_input
from curate.schemas.pool import POOL_SCHEMA, order_columns
from curate.schemas.spec import InputSpec
from tests.conftest import QUICKSTART_DATA

DATA = Path(__file__).resolve().parent / "data"

REPO = Path(__file__).resolve().parents[1]


def spec(path: str, columns: dict[str, Any] | None = None, **fields: Any) -> InputSpec:
    return InputSpec.model_validate(
        {"path": path, "columns": columns or {"prompt": "question"}, **fields}
    )


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    """Rows are dicts (dumped) or str (written as they are, a line each)."""
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.write_text("".join(line + "\n" for line in lines))
    return path


def read(tmp_path: Path, path: str, columns: dict[str, Any] | None = None, **f: Any) -> InputResult:
    return read_input(spec(path, columns, **f), base_dir=tmp_path)


def fails(tmp_path: Path, path: str, columns: dict[str, Any] | None = None, **f: Any) -> str:
    with pytest.raises(InputError) as info:
        read(tmp_path, path, columns, **f)
    return str(info.value)


def assert_pool_types(frame: pl.DataFrame) -> None:
    assert frame.columns == order_columns(frame.columns)
    for name, dtype in frame.schema.items():
        declared = pl.from_arrow(pa.table({name: pa.array([], POOL_SCHEMA.field(name).type)}))
        assert isinstance(declared, pl.DataFrame)
        assert dtype == declared.schema[name], name


# -- problem files -------------------------------------------------------------------------------


def test_jsonl_problems_with_mapping(tmp_path: Path) -> None:
    write_jsonl(
        tmp_path / "problems.jsonl",
        [
            {"q": "What is 6 * 7?", "a": 42, "topic": "math", "level": 2, "tags": ["x"]},
            {"q": "Half of 3?", "a": 1.5, "topic": "math", "level": None},
            {"q": "Name the capital of France.", "a": "Paris", "sys": "Be brief."},
            {"q": "Twice 21?", "a": 42.0, "a2": "ignored"},
        ],
    )
    columns = {
        "prompt": "q",
        "answer": "a",
        "domain": "topic",
        "system_prompt": "sys",
        "meta": ["level", "tags"],
    }
    result = read(tmp_path, "problems.jsonl", columns)
    frame = result.frame
    assert frame["reference_answer"].to_list() == ["42", "1.5", "Paris", "42"]
    assert frame["problem_id"][0] == ids.problem_id("What is 6 * 7?")
    assert frame["source"].unique().to_list() == ["problems"]
    assert frame["source_row"].to_list() == [1, 2, 3, 4]
    assert frame["domain"].to_list() == ["math", "math", None, None]
    assert frame["system_prompt"].to_list() == [None, None, "Be brief.", None]
    assert json.loads(frame["problem_meta"][0]) == {"level": 2, "tags": ["x"]}
    assert json.loads(frame["problem_meta"][3]) == {"level": None, "tags": None}
    assert result.rejects.height == 0
    assert result.path == (tmp_path / "problems.jsonl").resolve()
    assert len(result.sha256) == 64
    assert "completion" not in frame.columns
    assert_pool_types(frame)


def test_id_column_source_name_blank_lines_and_limit(tmp_path: Path) -> None:
    write_jsonl(
        tmp_path / "p.ndjson",
        [
            {"id": 7, "question": "a?"},
            "",
            "   ",
            {"id": "x-2", "question": "b?"},
            {"id": 9.0, "question": "c?"},
        ],
    )
    result = read(tmp_path, "p.ndjson", {"prompt": "question", "id": "id"}, source="mine")
    assert result.frame["problem_id"].to_list() == ["7", "x-2", "9"]
    assert result.frame["source_row"].to_list() == [1, 4, 5]  # blank lines skipped, still counted
    assert result.frame["source"].unique().to_list() == ["mine"]
    limited = read(tmp_path, "p.ndjson", {"prompt": "question"}, limit=2)
    assert limited.frame["prompt"].to_list() == ["a?", "b?"]


def test_csv_with_mapping_and_multiline_fields(tmp_path: Path) -> None:
    with (tmp_path / "problems.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Problem", "Answer", "Subject", "Level"])
        writer.writerow(["What is\n2 + 2?", "4", "algebra", "1"])  # spans lines 2-3
        writer.writerow(["What is 3 + 3?", "", "algebra", "2"])
    columns = {"prompt": "Problem", "answer": "Answer", "domain": "Subject", "meta": ["Level"]}
    frame = read(tmp_path, "problems.csv", columns).frame
    assert frame["prompt"].to_list() == ["What is\n2 + 2?", "What is 3 + 3?"]
    assert frame["reference_answer"].to_list() == ["4", None]  # an empty cell is null
    assert frame["source_row"].to_list() == [2, 4]  # the line each record starts on
    assert json.loads(frame["problem_meta"][1]) == {"Level": "2"}
    assert_pool_types(frame)


def test_parquet_with_mapping(tmp_path: Path) -> None:
    table = pa.table(
        {
            "problem": ["one?", None, "three?", "four?"],
            "solution": [1.0, 2.0, None, 2.5],
            "uid": [10, 11, 12, 13],
        }
    )
    pq.write_table(table, tmp_path / "problems.parquet")
    columns = {"prompt": "problem", "answer": "solution", "id": "uid"}
    message = fails(tmp_path, "problems.parquet", columns)
    assert "problems.parquet row 2: 'problem' (columns.prompt) is null or empty" in message
    result = read(tmp_path, "problems.parquet", columns, on_bad_rows="skip")
    frame = result.frame
    assert frame["problem_id"].to_list() == ["10", "12", "13"]
    assert frame["reference_answer"].to_list() == ["1", None, "2.5"]
    assert frame["source_row"].to_list() == [1, 3, 4]
    assert result.rejects["line"].to_list() == [2]
    assert json.loads(result.rejects["raw"][0])["uid"] == 11
    assert_pool_types(frame)


# -- trace pools ---------------------------------------------------------------------------------


def test_one_row_per_trace_pool(tmp_path: Path) -> None:
    write_jsonl(
        tmp_path / "traces.jsonl",
        [
            {"q": "A?", "out": "a1", "ok": True},
            {"q": "B?", "out": "b1", "ok": 0},
            {"q": "A?", "out": "a2", "ok": "false", "why": "stop"},
            {"q": "A?", "out": "a3", "ok": None},
        ],
    )
    columns = {"prompt": "q", "completion": "out", "label": "ok", "finish_reason": "why"}
    frame = read(tmp_path, "traces.jsonl", columns, model="teacher-x").frame
    a = ids.problem_id("A?")
    assert frame["problem_id"].to_list() == [a, ids.problem_id("B?"), a, a]
    assert frame["sample_index"].to_list() == [0, 0, 1, 2]  # running count per problem
    assert frame["source_label"].to_list() == [True, False, False, None]
    assert frame["finish_reason"].to_list() == [None, None, "stop", None]
    assert frame["model"].unique().to_list() == ["teacher-x"]
    assert frame["round"].unique().to_list() == [0]
    assert frame["role"].unique().to_list() == ["teacher"]
    assert frame["trace_id"][2] == ids.trace_id(a, "teacher-x", 0, 1)
    assert frame["trace_id"].n_unique() == 4
    assert "reasoning" not in frame.columns
    assert_pool_types(frame)


def test_list_columns_explode_with_scalars_broadcast(tmp_path: Path) -> None:
    write_jsonl(
        tmp_path / "pool.jsonl",
        [
            {"q": "A?", "outs": ["x", "y"], "ok": [1, 0], "m": "m1", "tid": ["t1", "t2"]},
            {"q": "B?", "outs": ["z"], "ok": ["TRUE"], "m": ["m2"], "tid": ["t3"]},
        ],
    )
    columns = {"prompt": "q", "completion": "outs", "label": "ok", "model": "m", "trace_id": "tid"}
    frame = read(tmp_path, "pool.jsonl", columns).frame
    assert frame["completion"].to_list() == ["x", "y", "z"]
    assert frame["sample_index"].to_list() == [0, 1, 0]
    assert frame["source_label"].to_list() == [True, False, True]
    assert frame["model"].to_list() == ["m1", "m1", "m2"]
    assert frame["trace_id"].to_list() == ["t1", "t2", "t3"]
    assert frame["source_row"].to_list() == [1, 1, 2]
    assert frame["prompt"].to_list() == ["A?", "A?", "B?"]


def test_trace_pool_bad_rows(tmp_path: Path) -> None:
    write_jsonl(
        tmp_path / "pool.jsonl",
        [
            {"q": "A?", "outs": ["x", "y"], "ok": [True, False]},
            {"q": "B?", "outs": ["x", "y", "z"], "ok": [True, False]},
            {"q": "C?", "outs": ["x"], "ok": ["maybe"]},
            {"q": "D?", "outs": "just text", "ok": True},
            {"q": "E?", "outs": ["x", 3], "ok": [True, True]},
            {"q": "F?", "outs": [], "ok": []},
        ],
    )
    columns = {"prompt": "q", "completion": "outs", "label": "ok"}
    message = fails(tmp_path, "pool.jsonl", columns)
    assert (
        "pool.jsonl:2: 'ok' (columns.label) has 2 items but 'outs' (columns.completion) has 3"
        in message
    )
    assert "5 bad rows in all" in message
    result = read(tmp_path, "pool.jsonl", columns, on_bad_rows="skip")
    assert result.frame.height == 2
    reasons = dict(zip(result.rejects["line"], result.rejects["reason"], strict=True))
    assert sorted(reasons) == [2, 3, 4, 5, 6]
    assert "'ok' (columns.label)[0] is 'maybe' — expected a label" in reasons[3]
    assert "'outs' (columns.completion) is a string here but a list at row/line 1" in reasons[4]
    assert "'outs' (columns.completion)[1] is a number — expected a string" in reasons[5]
    assert "is an empty list" in reasons[6]


def test_real_trace_pool_math100() -> None:
    path = QUICKSTART_DATA  # shipped in the repo, so this test cannot skip
    columns = {
        "id": "idx",
        "prompt": "question",
        "answer": "answer",
        "completion": "response",
        "label": "score",
        "system_prompt": "system",
        "meta": ["level"],
    }
    result = read_input(spec(path.name, columns), base_dir=path.parent)
    frame = result.frame
    assert frame.height == 800
    assert frame["problem_id"].n_unique() == 100
    assert frame["sample_index"].unique().sort().to_list() == list(range(8))
    assert frame.group_by("problem_id").len()["len"].unique().to_list() == [8]
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert frame["source_label"].sum() == sum(sum(r["score"]) for r in rows) == 728
    assert frame["source_label"].mean() == pytest.approx(0.910)
    first = frame.filter(pl.col("problem_id") == "0")
    assert json.loads(first["problem_meta"][0]) == {"level": rows[0]["level"]}
    assert first["reference_answer"][0] == rows[0]["answer"]
    assert first["completion"].to_list() == rows[0]["response"]
    assert first["system_prompt"][0] == rows[0]["system"]
    assert frame["trace_id"].n_unique() == 800
    assert result.sha256.startswith("5b9128525733336c")
    assert_pool_types(frame)


# -- bad input -----------------------------------------------------------------------------------


def test_malformed_jsonl_line_names_file_and_line(tmp_path: Path) -> None:
    write_jsonl(
        tmp_path / "problems.jsonl",
        [{"question": "ok?"}, "", '{"question": "a" "answer": 1}', "[1, 2]"],
    )
    message = fails(tmp_path, "problems.jsonl")
    assert (
        "problems.jsonl:3: invalid JSON (Expecting ',' delimiter: column 18) — "
        "expected one JSON object per line"
    ) in message
    assert "2 bad rows in all" in message
    assert "on_bad_rows: skip" in message


def test_json_value_that_is_not_an_object(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "problems.jsonl", [{"question": "ok?"}, "[1, 2]"])
    message = fails(tmp_path, "problems.jsonl")
    assert "problems.jsonl:2: a JSON list, not an object — expected one JSON object per line" in (
        message
    )


def test_non_utf8_bytes_name_line_and_offset(tmp_path: Path) -> None:
    path = tmp_path / "problems.jsonl"
    path.write_bytes(b'{"question": "fine"}\n{"question": "caf\xe9"}\n')
    message = fails(tmp_path, "problems.jsonl")
    assert (
        "problems.jsonl:2: not valid UTF-8: byte(s) 0xe9 at byte offset 17 of the line "
        "(offset 38 in the file)"
    ) in message
    result = read(tmp_path, "problems.jsonl", on_bad_rows="skip")
    assert result.rejects["raw"].to_list() == ['{"question": "caf\\xe9"}']


def test_missing_mapped_column_suggests_the_closest(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "problems.jsonl", [{"question": "q?", "answer": "1", "idx": 0}])
    message = fails(tmp_path, "problems.jsonl", {"prompt": "question", "answer": "anwser"})
    assert "problems.jsonl: column 'anwser' (columns.answer) is not in the file" in message
    assert "did you mean 'answer'?" in message
    assert "Columns in the file: 'question', 'answer', 'idx'" in message
    # the same check for a meta column, in CSV and Parquet
    (tmp_path / "p.csv").write_text("question,Level\nq?,1\n")
    message = fails(tmp_path, "p.csv", {"prompt": "question", "meta": ["level"]})
    assert "column 'level' (columns.meta[0]) is not in the file; did you mean 'Level'?" in message
    pq.write_table(pa.table({"question": ["q?"]}), tmp_path / "p.parquet")
    message = fails(tmp_path, "p.parquet", {"prompt": "problem"})
    assert "p.parquet: column 'problem' (columns.prompt) is not in the file" in message
    assert "Columns in the file: 'question'" in message


def test_misnamed_prompt_is_a_file_error_not_a_bad_row(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "problems.jsonl", [{"problem": "a?"}, {"problem": "b?"}])
    message = fails(tmp_path, "problems.jsonl", on_bad_rows="skip")
    assert "column 'question' (columns.prompt) is not in the file" in message


def test_empty_files(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_bytes(b"")
    assert "empty.jsonl: the file has no rows" in fails(tmp_path, "empty.jsonl")
    (tmp_path / "blank.jsonl").write_text("\n  \n\n")
    assert "blank.jsonl: the file has no rows" in fails(tmp_path, "blank.jsonl")
    (tmp_path / "header.csv").write_text("question,answer\n")
    assert "header.csv: the file has no rows" in fails(tmp_path, "header.csv")
    (tmp_path / "nothing.csv").write_text("")
    assert "nothing.csv: the file has no rows" in fails(tmp_path, "nothing.csv")
    pq.write_table(pa.table({"question": pa.array([], pa.string())}), tmp_path / "e.parquet")
    assert "e.parquet: the file has no rows" in fails(tmp_path, "e.parquet")


def test_missing_file_and_unknown_format(tmp_path: Path) -> None:
    message = fails(tmp_path, "data/nope.jsonl")
    assert f"input file not found: {tmp_path.resolve() / 'data' / 'nope.jsonl'}" in message
    (tmp_path / "problems.txt").write_text('{"question": "q?"}\n')
    message = fails(tmp_path, "problems.txt")
    assert "cannot tell the format from the extension '.txt'" in message
    assert "set input.format" in message
    assert read(tmp_path, "problems.txt", format="jsonl").frame.height == 1


def test_skip_mode_collects_rejects_and_keeps_good_rows() -> None:
    # tests/data/bad_rows.jsonl: 9 rows (and 2 blank lines), 3 good; one kind of trouble per line
    result = read_input(
        spec(
            "bad_rows.jsonl",
            {"prompt": "question", "answer": "answer", "domain": "domain"},
            on_bad_rows="skip",
        ),
        base_dir=DATA,
    )
    assert result.frame["prompt"].to_list() == ["What is 1 + 1?", "What is 2 + 2?", "Last one?"]
    assert result.frame["source_row"].to_list() == [1, 5, 11]
    rejects = result.rejects
    assert rejects.columns == ["source", "line", "reason", "raw"]
    assert rejects.height == 6
    assert rejects["source"].unique().to_list() == [str((DATA / "bad_rows.jsonl").resolve())]
    reasons = dict(zip(rejects["line"], rejects["reason"], strict=True))
    assert reasons == {
        2: "invalid JSON (Expecting ',' delimiter: column 23) — expected one JSON object per line",
        3: "no 'question' (columns.prompt) field — expected the problem text",
        4: "'question' (columns.prompt) is null or empty — expected the problem text",
        6: "'question' (columns.prompt) is empty — expected the problem text",
        8: "'question' (columns.prompt) is a number — expected the problem text (string)",
        10: "'domain' (columns.domain) is a list — expected text",
    }
    assert rejects["raw"][0] == '{"question": "Broken" "answer": 3}'


def test_fail_mode_reports_the_first_bad_row() -> None:
    with pytest.raises(InputError) as info:
        read_input(spec("bad_rows.jsonl"), base_dir=DATA)
    message = str(info.value)
    assert message.startswith(
        "bad_rows.jsonl:2: invalid JSON (Expecting ',' delimiter: column 23) — "
        "expected one JSON object per line"
    )
    assert "5 bad rows in all" in message  # domain is unmapped here, so line 10 is good


def test_all_rows_bad_is_an_error_even_when_skipping(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "problems.jsonl", [{"question": ""}, {"question": None}])
    message = fails(tmp_path, "problems.jsonl", on_bad_rows="skip")
    assert "no usable rows — all 2 rows are bad" in message
    assert "problems.jsonl:1: 'question' (columns.prompt) is empty" in message


def test_csv_bad_rows(tmp_path: Path) -> None:
    path = tmp_path / "problems.csv"
    path.write_bytes(b"question,answer\nok?,1\ntoo,many,fields\n\ncaf\xe9?,2\nfine?,3\n")
    message = fails(tmp_path, "problems.csv", {"prompt": "question", "answer": "answer"})
    assert (
        "problems.csv:3: 3 field(s) where the header has 2 — expected one value per column"
        in message
    )
    result = read(tmp_path, "problems.csv", {"prompt": "question"}, on_bad_rows="skip")
    assert result.frame["prompt"].to_list() == ["ok?", "fine?"]
    assert result.frame["source_row"].to_list() == [2, 6]
    assert result.rejects["line"].to_list() == [3, 5]
    assert result.rejects["reason"][1] == (
        "not valid UTF-8: byte 0xe9 in column 'question' at character 3 of the value — "
        "expected UTF-8 text"
    )
    assert result.rejects["raw"].to_list() == ["too,many,fields", "caf\\xe9?,2"]


def test_lone_surrogate_escape_is_a_bad_row(tmp_path: Path) -> None:
    write_jsonl(
        tmp_path / "p.jsonl",
        [
            '{"question": "emoji \\ud83d\\ude00 pair", "tags": [], "other": "\\udc00"}',
            '{"question": "ok", "tags": ["x", "bad \\ud800 half"]}',
        ],
    )
    columns = {"prompt": "question", "meta": ["tags"]}
    message = fails(tmp_path, "p.jsonl", columns)
    assert "p.jsonl:2: not valid Unicode: a lone surrogate escape \\ud800 in 'tags'[1]" in message
    frame = read(tmp_path, "p.jsonl", columns, on_bad_rows="skip").frame
    assert frame["prompt"].to_list() == ["emoji \U0001f600 pair"]  # unread columns don't count
