"""The quality operator: each check on real traces (tests/data/quality, one positive and one
negative case each), hand-checkable edge cases, check order, flag mode, and a build.

Edits made to copies of the real rows are marked `edit:` where they happen."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from pydantic import ValidationError

from curate.engine import Build
from curate.errors import OperatorError
from curate.filters.quality import Quality, QualityParams
from curate.operators import OpResult, StageContext
from curate.registry import get_operator
from curate.spec import load_spec
from curate.verify import Verify, VerifyParams

DATA = Path(__file__).parent / "data" / "quality" / "traces.jsonl"
CTX = StageContext(stage_id="04-quality")
SCHEMA = {
    "id": pl.String,
    "prompt": pl.String,
    "reference_answer": pl.String,
    "completion": pl.String,
    "reasoning": pl.String,
    "finish_reason": pl.String,
}
NONE: dict[str, Any] = {"truncated": False, "missing_answer": False, "repetition": None}


@pytest.fixture(scope="module")
def real() -> dict[str, dict[str, Any]]:
    rows = [json.loads(line) for line in DATA.read_text().splitlines()]
    return {row["id"]: row for row in rows}


def pool(*rows: dict[str, Any], columns: list[str] | None = None) -> pl.DataFrame:
    """A pool of rows with the SCHEMA columns (or only `columns`)."""
    names = columns or list(SCHEMA)
    data = [{name: row.get(name) for name in names} for row in rows]
    return pl.DataFrame(data, schema={name: SCHEMA[name] for name in names})


def run(frame: pl.DataFrame, **params: Any) -> OpResult:
    result = Quality(QualityParams.model_validate(params), context=CTX).run(frame)
    if params.get("action") == "flag":
        assert result.dropped.height == 0 and result.kept.height == frame.height
    else:
        assert result.kept.height + result.dropped.height == frame.height
        assert result.kept.columns == frame.columns  # no helper column leaks
    return result


def only(frame: pl.DataFrame, **params: Any) -> OpResult:
    """Run with just the checks named in `params` (the default-on checks turned off)."""
    return run(frame, **{**NONE, **params})


def reasons(result: OpResult) -> dict[str, tuple[str, str]]:
    return {r["id"]: (r["drop_reason"], r["drop_detail"]) for r in result.dropped.to_dicts()}


def kept(result: OpResult) -> list[str]:
    return result.kept["id"].to_list()


def test_registered_under_quality() -> None:
    assert get_operator("quality") is Quality
    assert Quality.describe().startswith("Drop (or flag) truncated")


# ------------------------------------------------------------------------ real traces


def test_truncated(real: dict[str, dict[str, Any]]) -> None:
    # edit: the sources record no finish_reason. qwq_cut_off really stops mid-equation, so it
    # gets "length"; qwq_complete ends with its boxed answer, so it gets "stop".
    cut = {**real["qwq_cut_off"], "finish_reason": "length"}
    done = {**real["qwq_complete"], "finish_reason": "stop"}
    gemini = {**real["qwen_plain"], "id": "gemini", "finish_reason": "MAX_TOKENS"}
    unknown = {**real["qwen_plain"], "finish_reason": None}
    result = only(pool(cut, done, gemini, unknown), truncated=True)
    assert reasons(result) == {
        "qwq_cut_off": ("truncated", "finish_reason=length"),
        "gemini": ("truncated", "finish_reason=MAX_TOKENS"),
    }
    assert kept(result) == ["qwq_complete", "qwen_plain"]  # null finish_reason: no evidence


def test_truncated_without_finish_reason_column(real: dict[str, dict[str, Any]]) -> None:
    frame = pool(real["qwq_cut_off"], columns=["id", "completion"])
    assert run(frame).dropped.height == 0  # the default skips a pool that cannot tell
    with pytest.raises(OperatorError, match="`truncated: true` needs a finish_reason column"):
        run(frame, truncated=True)


def test_missing_answer(real: dict[str, dict[str, Any]]) -> None:
    s1k = real["s1k_long"]
    # edit: the thinking and the answer joined as the SFT export writes them.
    inline = {**s1k, "id": "inline", "reasoning": None}
    inline["completion"] = f"<think>\n{s1k['reasoning']}\n</think>\n\n{s1k['completion']}"
    # edit: a thinking trace whose answer part is empty (separate reasoning column).
    empty = {**s1k, "id": "empty", "completion": ""}
    # edit: the cut-off QwQ trace after an opening <think>, as an R1-style completion would be.
    unclosed = {
        **real["qwq_cut_off"],
        "completion": "<think>\n" + real["qwq_cut_off"]["completion"],
    }
    # edit: the thinking in tags with the answer left out.
    nothing = {**inline, "id": "nothing", "completion": f"<think>\n{s1k['reasoning']}\n</think>\n"}
    null = {**real["qwen_plain"], "id": "null", "completion": None}
    result = only(pool(s1k, inline, empty, unclosed, nothing, null), missing_answer=True)
    assert reasons(result) == {
        "empty": ("missing_answer", "completion is empty"),
        "qwq_cut_off": (
            "missing_answer",
            "<think> is never closed: the trace ended inside its reasoning",
        ),
        "nothing": ("missing_answer", "nothing after </think>: the completion has no answer part"),
        "null": ("missing_answer", "completion is null"),
    }
    assert kept(result) == ["s1k_long", "inline"]


def test_missing_reasoning(real: dict[str, dict[str, Any]]) -> None:
    s1k = real["s1k_long"]
    inline = {**s1k, "id": "inline", "reasoning": None}
    inline["completion"] = f"<think>\n{s1k['reasoning']}\n</think>\n\n{s1k['completion']}"
    blank = {**real["s1k_short"], "reasoning": "  \n"}  # edit: the thinking blanked
    result = only(pool(s1k, inline, real["qwen_plain"], blank), require_reasoning=True)
    detail = "reasoning is null or empty and the completion has no text before </think>"
    assert reasons(result) == {
        "qwen_plain": ("missing_reasoning", detail),
        "s1k_short": ("missing_reasoning", detail),
    }
    assert kept(result) == ["s1k_long", "inline"]
    no_column = pool(inline, real["qwen_plain"], columns=["id", "completion"])
    got = reasons(only(no_column, require_reasoning=True))
    assert got == {
        "qwen_plain": (
            "missing_reasoning",
            "no reasoning column and the completion has no text before </think>",
        )
    }


def test_no_final_answer_by_extraction(real: dict[str, dict[str, Any]]) -> None:
    rows = [real[k] for k in ("qwq_cut_off", "champ_gpt4_loop", "qwen_plain", "qwq_complete")]
    result = only(pool(*rows), no_final_answer=True)
    detail = "no \\boxed{} and no 'answer is' / 'Answer:' line in the completion"
    assert reasons(result) == {
        "qwq_cut_off": ("no_final_answer", detail),
        "champ_gpt4_loop": ("no_final_answer", detail),
    }
    assert kept(result) == ["qwen_plain", "qwq_complete"]


def test_no_final_answer_after_verify(real: dict[str, dict[str, Any]]) -> None:
    frame = pool(real["qwq_cut_off"], real["qwen_plain"])
    verified = Verify(VerifyParams(method="exact"), context=StageContext(stage_id="v")).run(frame)
    assert verified.kept["extracted_answer"].to_list() == [None, "420"]
    result = only(verified.kept, no_final_answer=True)
    assert reasons(result) == {
        "qwq_cut_off": (
            "no_final_answer",
            "extracted_answer is null: verify found no final answer",
        )
    }


def test_length_in_characters(real: dict[str, dict[str, Any]]) -> None:
    frame = pool(real["gsm_short"], real["qwen_plain"])  # 299 and 690 characters
    result = only(frame, length={"completion_chars": {"ge": 300}})
    assert reasons(result) == {
        "gsm_short": ("length", "completion_chars=299 outside completion_chars >= 300")
    }
    assert only(frame, length={"completion_chars": {"ge": 299}}).dropped.height == 0
    # trace = reasoning + completion: s1k_long has 11,162 + 2,082 characters.
    trace = only(pool(real["s1k_long"]), length={"trace_chars": {"lt": 13244}})
    assert reasons(trace) == {
        "s1k_long": ("length", "trace_chars=13244 outside trace_chars < 13244")
    }


def test_length_in_tokens(real: dict[str, dict[str, Any]]) -> None:
    frame = pool(real["s1k_short"], real["s1k_long"])  # reasoning: 5,520 and 11,162 characters
    # approximate tokens: ceil(5520 / 4) = 1380 and ceil(11162 / 4) = 2791
    ok = only(frame, length={"reasoning_tokens": {"le": 2791}})
    assert ok.dropped.height == 0
    result = only(frame, length={"reasoning_tokens": {"le": 1380}})
    assert reasons(result) == {
        "s1k_long": (
            "length",
            "reasoning_tokens=2791 outside reasoning_tokens <= 1380 (approx:chars/4)",
        )
    }
    # the first window a row fails is reported, in the documented order
    both = only(frame, length={"completion_chars": {"le": 2082}, "reasoning_tokens": {"le": 1380}})
    assert reasons(both)["s1k_short"][1] == "completion_chars=2415 outside completion_chars <= 2082"


def test_repetition_defaults_catch_real_loops(real: dict[str, dict[str, Any]]) -> None:
    names = ["champ_gpt4_loop", "champ_gpt4turbo_loop", "champ_palm_stars"]
    clean = ["champ_gpt4_near_loop", "qwen_plain", "qwq_complete", "s1k_long"]
    result = run(pool(*(real[k] for k in names + clean)))  # all defaults
    got = reasons(result)
    assert set(got) == set(names) and {r for r, _ in got.values()} == {"repetition"}
    assert got["champ_palm_stars"][1] == (
        "20-gram '* * * * * * * * * * * * * * * * * * * *' repeated 837 times > 20"
    )
    assert got["champ_gpt4turbo_loop"][1].endswith("' repeated 34 times > 20")
    assert got["champ_gpt4_loop"][1] == (
        "20-gram '(x^2-xy+z^2-zx+y^2-yz+kxz) = (x^2-xy+z^2-zx+y^2-yz+kxz) = (x^2-xy+z^2-zx+y^2-yz…'"
        " repeated 136 times > 20"
    )
    assert kept(result) == clean


def test_repetition_bound_on_a_real_near_loop(real: dict[str, dict[str, Any]]) -> None:
    # GPT-4 says "greater than 1, which is not possible for a probability. There must be a
    # mistake in the calculation." (a 20-gram of it) 14 times.
    frame = pool(real["champ_gpt4_near_loop"])
    assert only(frame, repetition={"max_repeats": 14}).dropped.height == 0
    detail = reasons(only(frame, repetition={"max_repeats": 13}))["champ_gpt4_near_loop"]
    assert detail[1].endswith("repeated 14 times > 13")


def test_script_catches_language_mixing(real: dict[str, dict[str, Any]]) -> None:
    frame = pool(real["qwq_language_mixing"], real["champ_greek"], real["qwen_plain"])
    result = only(frame, script={"scripts": ["Han"], "fraction": {"le": 0.0}})
    assert reasons(result) == {
        "qwq_language_mixing": (
            "script",
            "letters in [Han]: 2 of 2328 = 0.0009 outside fraction <= 0.0",
        )
    }
    assert kept(result) == ["champ_greek", "qwen_plain"]


def test_script_allowed_set(real: dict[str, dict[str, Any]]) -> None:
    greek = real["champ_greek"]["completion"]
    non_latin = sum(1 for c in greek if c.isalpha() and not c.isascii())
    assert non_latin == 80 and set(c for c in greek if c.isalpha() and not c.isascii()) <= {
        "ω",
        "π",
    }
    frame = pool(real["qwen_garbage_tail"], real["champ_greek"], real["qwen_plain"])
    allowed = {"scripts": ["Latin", "Greek"], "fraction": {"ge": 0.95}}
    result = only(frame, script=allowed)
    assert reasons(result) == {
        "qwen_garbage_tail": (
            "script",
            "letters in [Latin, Greek]: 7290 of 8248 = 0.8839 outside fraction >= 0.95",
        )
    }
    latin_only = only(frame, script={"scripts": ["Latin"], "fraction": {"ge": 0.95}})
    assert reasons(latin_only)["champ_greek"] == (
        "script",
        "letters in [Latin]: 750 of 830 = 0.9036 outside fraction >= 0.95",
    )


# ------------------------------------------------------------------------ hand-checkable


def test_empty_pool_every_check() -> None:
    params: dict[str, Any] = {
        "require_reasoning": True,
        "no_final_answer": True,
        "length": {"completion_tokens": {"le": 10}},
        "script": {"scripts": ["Latin"], "fraction": {"ge": 0.5}},
    }
    frame = pool()
    assert run(frame, **params).kept.height == 0
    flagged = run(frame, action="flag", **params)
    assert flagged.kept.columns == [*frame.columns, "quality_flags"]


def test_single_clean_row_passes_every_check() -> None:
    row = {"id": "r", "completion": "We add: 2 + 2 = 4. The answer is 4.", "finish_reason": "stop"}
    params: dict[str, Any] = {
        "no_final_answer": True,
        "length": {"completion_chars": {"ge": 10}},
        "script": {"scripts": ["Latin"], "fraction": {"ge": 1.0}},
    }
    assert run(pool(row), **params).dropped.height == 0


def test_first_failing_check_is_reported_and_flags_list_all() -> None:
    loop = "Wait, let me check that again. " * 8  # 6 tokens a copy: "Wait," starts 8 times
    rows = [
        {"id": "all", "completion": loop + "它", "finish_reason": "length"},
        {"id": "loop", "completion": loop, "finish_reason": "stop"},
        {"id": "han", "completion": "答案是 4", "finish_reason": "stop"},
        {"id": "ok", "completion": "The answer is 4.", "finish_reason": "stop"},
    ]
    params: dict[str, Any] = {
        "repetition": {"n": 6, "max_repeats": 7},
        "script": {"scripts": ["Han"], "fraction": {"le": 0.0}},
    }
    result = run(pool(*rows), **params)
    assert {k: r for k, (r, _) in reasons(result).items()} == {
        "all": "truncated",
        "loop": "repetition",
        "han": "script",
    }
    assert reasons(result)["loop"][1] == (
        "6-gram 'Wait, let me check that again.' repeated 8 times > 7"
    )
    flagged = run(pool(*rows), action="flag", **params)
    assert flagged.kept.select("id", "quality_flags").rows() == [
        ("all", "truncated,repetition,script"),
        ("loop", "repetition"),
        ("han", "script"),
        ("ok", None),
    ]


def test_non_ascii_text() -> None:
    cyrillic = {"id": "ru", "completion": "Ответ: 42. Проверим ещё раз."}
    cjk_loop = {"id": "zh", "completion": "我们再检查一遍。\u3000" * 21}
    script = {"scripts": ["Cyrillic"], "fraction": {"ge": 0.9}}
    result = only(pool(cyrillic, cjk_loop), repetition={"n": 1, "max_repeats": 20}, script=script)
    assert reasons(result) == {
        "zh": ("repetition", "1-gram '我们再检查一遍。' repeated 21 times > 20")
    }
    latin = only(pool(cyrillic), script={"scripts": ["Latin"], "fraction": {"gt": 0.0}})
    assert reasons(latin) == {
        "ru": ("script", "letters in [Latin]: 0 of 19 = 0.0 outside fraction > 0.0")
    }


def test_text_without_letters_passes_the_script_check() -> None:
    rows = [{"id": "digits", "completion": "2 + 2 = 4"}, {"id": "null", "completion": None}]
    script = {"scripts": ["Latin"], "fraction": {"ge": 1.0}}
    assert only(pool(*rows), script=script).dropped.height == 0


def test_on_reasoning_and_on_completion() -> None:
    loop = "x " * 21
    row = {"id": "r", "completion": "The answer is 1.", "reasoning": loop}
    only_completion = {"n": 1, "max_repeats": 20, "on": "completion"}
    assert only(pool(row), repetition=only_completion).dropped.height == 0
    on_reasoning = {"n": 1, "max_repeats": 20, "on": "reasoning"}
    assert reasons(only(pool(row), repetition=on_reasoning))["r"][0] == "repetition"
    with pytest.raises(
        OperatorError, match=r"`repetition\.on: reasoning` needs a reasoning column"
    ):
        only(pool(row, columns=["id", "completion"]), repetition=on_reasoning)


def test_params_are_validated() -> None:
    with pytest.raises(ValidationError, match="'Klingon' is not a Unicode script"):
        QualityParams.model_validate({"script": {"scripts": ["Klingon"], "fraction": {"ge": 1}}})
    with pytest.raises(ValidationError, match="give at least one bound"):
        QualityParams.model_validate({"script": {"scripts": ["Han"], "fraction": {}}})
    with pytest.raises(ValidationError, match=r"bounds must lie in \[0, 1\], got x >= 2"):
        QualityParams.model_validate({"script": {"scripts": ["Han"], "fraction": {"ge": 2}}})
    with pytest.raises(ValidationError, match="length: give at least one window"):
        QualityParams.model_validate({"length": {"tokenizer": "approximate"}})
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        QualityParams.model_validate({"repetition": {"n": 0}})
    with pytest.raises(ValidationError, match="extra"):
        QualityParams.model_validate({"repetitions": None})
    assert QualityParams.model_validate({"repetition": None}).repetition is None
    assert QualityParams().repetition is not None and QualityParams().repetition.n == 20


def test_build_writes_quality_flags_and_dropped_reasons(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "traces.jsonl").write_text(DATA.read_text())
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "name: quality-check\n"
        "input:\n"
        "  path: data/traces.jsonl\n"
        "  columns: {id: id, prompt: prompt, answer: reference_answer, completion: completion,\n"
        "            reasoning: reasoning}\n"
        "steps:\n"
        "  - quality: {action: flag, script: {scripts: [Han], fraction: {le: 0.0}}}\n"
        "  - quality: {}\n"
    )
    Build(load_spec(spec)).run()
    stages = tmp_path / "runs" / "quality-check" / "stages"
    flagged = pl.read_parquet(stages / "01-quality" / "*.parquet")
    flags = dict(zip(flagged["problem_id"], flagged["quality_flags"], strict=True))
    assert flags["champ_palm_stars"] == "repetition"
    assert flags["qwen_garbage_tail"] == "script"
    assert flags["qwq_language_mixing"] == "script"
    assert flags["qwen_plain"] is None
    dropped = pl.read_parquet(stages / "02-quality" / "dropped.parquet")
    assert sorted(dropped["problem_id"]) == [
        "champ_gpt4_loop",
        "champ_gpt4turbo_loop",
        "champ_palm_stars",
    ]
    assert set(dropped["drop_reason"]) == {"repetition"}


def test_think_tag_forms() -> None:
    rows = [
        {"id": "r1", "completion": "Let me see: 2 + 2 = 4.\n</think>\n\nThe answer is 4."},
        {"id": "reopened", "completion": "<think>a</think>b <think>c"},
        {"id": "empty_block", "completion": "<think>\n</think>\n\nThe answer is 4."},
        {"id": "closed_twice", "completion": "<think>a</think>b<think>c</think>The answer is 4."},
    ]
    answer = only(pool(*rows), missing_answer=True)
    assert {k: r for k, (r, _) in reasons(answer).items()} == {"reopened": "missing_answer"}
    reasoning = only(pool(*rows), require_reasoning=True)
    # R1-style "…</think>answer" (the opening tag was in the prompt) has reasoning; an empty
    # <think></think> block does not
    assert set(reasons(reasoning)) == {"empty_block"}
