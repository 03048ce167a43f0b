"""Small parts of sampling, exactly: templates and their cycling, temperatures and seeds, cache
keys, think-splitting, the cache's reuse rule, the token bucket, retry delays, and the spec's
teacher checks (keys refused, vLLM without vllm, undeclared teachers)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from curate.cli.main import app
from curate.errors import OperatorError, SpecError
from curate.operators import StageContext
from curate.prompts import Text, load_texts, make_variants, temperature_schedule
from curate.sample import Sample, SampleParams, TemperatureRange
from curate.schemas.spec import OpenAITeacher
from curate.spec import load_spec
from curate.teachers.cache import RequestCache, reusable
from curate.teachers.limits import TokenBucket, parse_retry_after, retry_delay
from curate.teachers.requests import Answer, Request, parse_chat_response, split_reasoning

TEACHERS = {
    "a": OpenAITeacher(provider="openai", model="model-a", base_url="http://127.0.0.1:1/v1"),
    "b": OpenAITeacher(provider="openai", model="model-b", base_url="http://127.0.0.1:1/v1"),
}
PROBLEMS = pl.DataFrame(
    {
        "problem_id": ["p1", "p2"],
        "prompt": ["What is 1 + 1?", "What is 2 + 3?"],
        "reference_answer": ["2", "5"],
        "problem_meta": ['{"level": 1}', None],
    }
)


def sampler(tmp_path: Path, **params: object) -> Sample:
    context = StageContext(
        stage_id="01-sample",
        base_dir=tmp_path,
        teachers=TEACHERS,
        request_cache=tmp_path / "requests.sqlite",
    )
    return Sample(SampleParams.model_validate({"teachers": ["a"], **params}), context=context)


# --- templates, cycling, temperatures, seeds ------------------------------------------------


def test_templates_inline_files_and_ids(tmp_path: Path) -> None:
    (tmp_path / "short.j2").write_text("Briefly: {{ prompt }}")
    texts = load_texts(["{{ prompt }}", "short.j2"], prefix="t", base_dir=tmp_path, what="t")
    assert [(t.id, t.text) for t in texts] == [
        ("t0", "{{ prompt }}"),
        ("short", "Briefly: {{ prompt }}"),
    ]
    named = load_texts({"plain": "Solve: {{ prompt }}"}, prefix="t", base_dir=tmp_path, what="t")
    assert named[0].id == "plain"
    with pytest.raises(OperatorError, match=r"missing\.j2"):
        load_texts(["missing.j2"], prefix="t", base_dir=tmp_path, what="template")


def test_cycle_and_cross() -> None:
    t = [Text("t0", "A"), Text("t1", "B")]
    s = [Text("s0", "x"), Text("s1", "y"), Text("s2", "z")]
    cycle = [v.template_id for v in make_variants(t, s, "cycle")]
    assert cycle == ["t0/s0", "t1/s1", "t0/s2"]
    cross = [v.template_id for v in make_variants(t, s, "cross")]
    assert cross == ["t0/s0", "t0/s1", "t0/s2", "t1/s0", "t1/s1", "t1/s2"]
    assert [v.template_id for v in make_variants([], [], "cycle")] == [None]


def test_temperature_schedules() -> None:
    assert temperature_schedule(0.7, 3) == [0.7, 0.7, 0.7]
    assert temperature_schedule([0.2, 1.0], 5) == [0.2, 1.0, 0.2, 1.0, 0.2]
    spread = temperature_schedule(TemperatureRange(min=0.5, max=1.0), 3)
    assert spread == pytest.approx([0.5, 0.75, 1.0])
    assert temperature_schedule(TemperatureRange(min=0.5, max=1.0), 1) == [0.5]


def test_rendered_messages_seeds_and_keys(tmp_path: Path) -> None:
    op = sampler(
        tmp_path,
        n=4,
        seed=100,
        temperature=[0.5, 1.0],
        templates={"plain": "{{ prompt }}", "meta": "Level {{ meta.level }}: {{ prompt }}"},
        system_prompts=["Be brief."],
    )
    samples = op._plan_samples(PROBLEMS[:1], [(0, "a")], 0)
    assert [s.index for s in samples] == [0, 1, 2, 3]
    assert [s.seed for s in samples] == [100, 101, 102, 103]
    assert [s.temperature for s in samples] == [0.5, 1.0, 0.5, 1.0]
    assert [s.template_id for s in samples] == ["plain/s0", "meta/s0", "plain/s0", "meta/s0"]
    assert samples[1].messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Level 1: What is 1 + 1?"},
    ]
    assert len({s.key for s in samples}) == 4  # the sample index is in the key
    # Keys are stable, leave max_tokens out, and change with the model and the seed.
    again = sampler(
        tmp_path,
        n=4,
        seed=100,
        temperature=[0.5, 1.0],
        max_tokens=99,
        templates={"plain": "{{ prompt }}", "meta": "Level {{ meta.level }}: {{ prompt }}"},
        system_prompts=["Be brief."],
    )._plan_samples(PROBLEMS[:1], [(0, "a")], 0)
    assert [s.key for s in again] == [s.key for s in samples]
    other_model = op._plan_samples(PROBLEMS[:1], [(0, "b")], 0)
    assert not {s.key for s in other_model} & {s.key for s in samples}
    # The second try of until: verified goes on counting: indexes 4..7, seeds 104..107.
    second = op._plan_samples(PROBLEMS[:1], [(0, "a")], 1)
    assert [s.index for s in second] == [4, 5, 6, 7]
    assert [s.seed for s in second] == [104, 105, 106, 107]


def test_row_system_prompt_is_used_when_none_is_given(tmp_path: Path) -> None:
    frame = PROBLEMS.with_columns(pl.Series("system_prompt", ["Think.", None]))
    samples = sampler(tmp_path)._plan_samples(frame, [(0, "a"), (1, "a")], 0)
    assert samples[0].messages[0] == {"role": "system", "content": "Think."}
    assert samples[1].messages == [{"role": "user", "content": "What is 2 + 3?"}]


def test_template_errors_name_the_template_and_columns(tmp_path: Path) -> None:
    op = sampler(tmp_path, templates={"bad": "{{ no_such_column }}"})
    with pytest.raises(OperatorError, match=r"template 'bad'.*no_such_column.*prompt"):
        op._plan_samples(PROBLEMS, [(0, "a")], 0)
    with pytest.raises(OperatorError, match="syntax error"):
        sampler(tmp_path, templates=["{{ prompt "])


def test_native_n_groups_equal_prompts_and_params(tmp_path: Path) -> None:
    teachers = {"a": TEACHERS["a"].model_copy(update={"supports_n": True})}
    context = StageContext(stage_id="01-sample", base_dir=tmp_path, teachers=teachers)
    params = SampleParams(teachers=["a"], n=6, temperature=[0.6, 1.0], seed=0)
    op = Sample(params, context=context)
    requests = op._requests(op._plan_samples(PROBLEMS, [(0, "a"), (1, "a")], 0))
    assert [(r.n, r.temperature, r.seed) for r in requests] == [
        (3, 0.6, 0),
        (3, 1.0, 1),
        (3, 0.6, 0),
        (3, 1.0, 1),
    ]


def test_params_rules() -> None:
    with pytest.raises(ValueError, match="needs a `verify:`"):
        SampleParams(teachers=["a"], until="verified")
    with pytest.raises(ValueError, match="max_tries is used only"):
        SampleParams(teachers=["a"], max_tries=3)
    with pytest.raises(ValueError, match="min"):
        TemperatureRange(min=1.0, max=0.5)


# --- responses and think-splitting ----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<think>\nLet me add.\n</think>\n\nThe answer is 2.", ("Let me add.", "The answer is 2.")),
        ("Let me add.\n</think>\nIt is 2.", ("Let me add.", "It is 2.")),  # R1: <think> in prompt
        ("<think>cut off in the middle", ("cut off in the middle", "")),
        ("Plain answer, no tags.", (None, "Plain answer, no tags.")),
        (None, (None, None)),
    ],
)
def test_split_reasoning(text: str | None, expected: tuple[str | None, str | None]) -> None:
    assert split_reasoning(text) == expected


def test_parse_response_prefers_reasoning_content() -> None:
    body = {
        "choices": [
            {"index": 1, "message": {"content": "<think>b</think>B"}, "finish_reason": "length"},
            {
                "index": 0,
                "message": {"content": "A", "reasoning_content": "a"},
                "finish_reason": "stop",
            },
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 7},
    }
    answers, prompt, completion = parse_chat_response(json.dumps(body).encode(), 3)
    assert [(a.reasoning, a.completion, a.finish_reason) for a in answers[:2]] == [
        ("a", "A", "stop"),
        ("b", "B", "length"),
    ]
    assert answers[2].error is not None and "2 choice(s) for n=3" in answers[2].error
    assert (prompt, completion) == (10, 7)


# --- the cache ------------------------------------------------------------------------------


def answer(**fields: object) -> Answer:
    base: dict[str, object] = {
        "completion": "x",
        "finish_reason": "stop",
        "completion_tokens": 50,
        "max_tokens": 100,
    }
    return Answer(**{**base, **fields})  # type: ignore[arg-type]


def test_reuse_rule() -> None:
    assert reusable(answer(), 100)
    assert reusable(answer(), 60)  # finished in 50 tokens: any limit >= 50 gives the same
    assert not reusable(answer(), 40)  # would have been cut
    assert not reusable(answer(error="http 500: boom"), 100)  # errors are sent again
    cut = answer(finish_reason="length", completion_tokens=100)
    assert reusable(cut, 100)
    assert not reusable(cut, 200)  # raising max_tokens re-asks a truncated answer
    assert not reusable(cut, 80)
    no_usage = answer(completion_tokens=None)
    assert reusable(no_usage, 100) and reusable(no_usage, 150) and not reusable(no_usage, 99)
    # A finish reason the step retries, tried fewer times than it allows, is asked again.
    filtered = answer(finish_reason="content_filter")
    assert reusable(filtered, 100)
    assert not reusable(filtered, 100, retry_reasons=frozenset({"content_filter"}), tries=3)
    tried = answer(finish_reason="content_filter", tries=3)
    assert reusable(tried, 100, retry_reasons=frozenset({"content_filter"}), tries=3)


def test_cache_round_trip_and_overwrite(tmp_path: Path) -> None:
    request = Request("a", [{"role": "user", "content": "q"}], 0.7, None, 100, 3, ["k1"], 5)
    with RequestCache(tmp_path / "c.sqlite") as cache:
        cache.put("k1", request, answer(reasoning="r", cost_usd=0.5, seed=3), model="m")
        assert cache.pending == 1 and cache.lookup(["k1"]) == {}  # not committed yet
        cache.flush()
        got = cache.lookup(["k1", "k2"])
        assert set(got) == {"k1"}
        assert (got["k1"].completion, got["k1"].reasoning, got["k1"].cost_usd) == ("x", "r", 0.5)
        cache.put("k1", request, answer(completion="y"), model="m")
    with RequestCache(tmp_path / "c.sqlite", readonly=True) as cache:
        assert cache.lookup(["k1"])["k1"].completion == "y"
        row = next(cache.rows())
        assert json.loads(row["request"])["messages"] == request.messages
        assert cache.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


# --- limits ----------------------------------------------------------------------------------


def test_token_bucket() -> None:
    now = [0.0]
    bucket = TokenBucket(60, clock=lambda: now[0])  # 1 per second, holds 1
    assert bucket.try_take(1) == 0.0
    assert bucket.try_take(1) == pytest.approx(1.0)
    now[0] = 0.5
    assert bucket.try_take(1) == pytest.approx(0.5)
    now[0] = 1.0
    assert bucket.try_take(1) == 0.0
    tpm = TokenBucket(6000, clock=lambda: now[0])  # 100 tokens per second, holds 100
    assert tpm.try_take(500) == 0.0  # bigger than the bucket: let through when full
    assert tpm.tokens == pytest.approx(-400)
    assert tpm.try_take(10) == pytest.approx(4.1)
    tpm.refund(300)  # the response used 200 of the 500 charged
    assert tpm.try_take(10) == pytest.approx(1.1)


def test_retry_delays() -> None:
    assert retry_delay(0, base_s=1.0, rng=lambda: 1.0) == 1.0
    assert retry_delay(3, base_s=1.0, rng=lambda: 0.5) == 4.0  # half of 2^3
    assert retry_delay(20, base_s=1.0, rng=lambda: 1.0) == 60.0  # capped
    assert retry_delay(0, base_s=1.0, retry_after=7.0, rng=lambda: 0.0) == 7.0
    assert parse_retry_after("2.5") == 2.5
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") is None


# --- the spec -------------------------------------------------------------------------------


def spec_text(teacher: str, steps: str = "  - sample: {teachers: [t]}\n") -> str:
    return (
        "name: s\ninput:\n  path: p.jsonl\n  columns: {prompt: q}\n"
        f"teachers:\n  t: {teacher}\nsteps:\n{steps}"
    )


@pytest.mark.parametrize(
    ("teacher", "message"),
    [
        ("{provider: openai, model: m, api_key_env: sk-abcdefghijklmnopqrstuvwx}", "API key"),
        ("{provider: openai, model: m, api_key_env: 'my key'}", "NAME of an environment"),
        ("{provider: openai, model: m, extra_body: {api_key: x}}", "credentials"),
        ("{provider: openai, model: m, base_url: 'https://u:p@host/v1'}", "credentials"),
        (
            "{provider: openai, model: m, extra_body: {x: hf_abcdefghijklmnopqrstuvwx}}",
            "looks like an API key",
        ),
    ],
)
def test_keys_in_the_spec_are_refused_without_echoing_them(
    tmp_path: Path, teacher: str, message: str
) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(spec_text(teacher))
    with pytest.raises(SpecError, match=message) as caught:
        load_spec(path)
    for secret in ("abcdefghijklmnopqrstuvwx", "u:p@"):
        assert secret not in str(caught.value)


def test_undeclared_teacher_is_named_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(spec_text("{provider: openai, model: m}", "  - sample: {teachers: [tt]}\n"))
    with pytest.raises(
        SpecError,
        match=r"spec.yaml:8:\d+: .*teacher 'tt' is not declared "
        r"\(did you mean 't'\?\)",
    ):
        load_spec(path)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed")
def test_vllm_teacher_without_vllm_fails_validation_with_the_install_command(
    tmp_path: Path,
) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(spec_text("{provider: vllm, model: Qwen/Qwen2.5-0.5B-Instruct}"))
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2, result.output
    assert "pip install 'curate[vllm]'" in " ".join(result.output.split())
