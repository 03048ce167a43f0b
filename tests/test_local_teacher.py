"""The local teacher server: OpenAI shape (read back through the `openai` package), the
policies on real GSM8K problems and the quickstart's recorded traces, every fault kind
injected and counted, auth, determinism, and the `curate teacher-server` process."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletion

from curate.local_teacher import Faults, LocalTeacher
from curate.local_teacher_policies import (
    FixedPolicy,
    ReferencePolicy,
    ReplayPolicy,
    Style,
    count_tokens,
    load_answers,
)
from curate.verifiers.extract import last_boxed

REPO = Path(__file__).resolve().parents[1]
GSM8K = REPO / "tests" / "data" / "gsm8k_sample" / "test_50.jsonl"
QUICKSTART = REPO / "examples" / "quickstart" / "data" / "math_cot_100.jsonl"


def gsm8k_rows() -> list[tuple[str, str]]:
    """(question, final answer) read straight from the file: the text after '#### '."""
    rows = [json.loads(line) for line in GSM8K.read_text().splitlines()]
    return [(r["question"], r["answer"].rsplit("#### ", 1)[1].strip()) for r in rows]


def client(server: LocalTeacher, key: str = "sk-local", **kwargs: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0, **kwargs)


def ask(c: openai.OpenAI, prompt: str, **params: Any) -> ChatCompletion:
    params.setdefault("model", "teacher")
    return c.chat.completions.create(messages=[{"role": "user", "content": prompt}], **params)


def post(url: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    """POST JSON with urllib: (status, headers, decoded body); HTTP errors are returned too."""
    data = json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST")
    request.add_header("Content-Type", "application/json")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, json.loads(exc.read())


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


CHAT = {"model": "teacher", "messages": [{"role": "user", "content": "What is 2+2?"}]}


@pytest.fixture
def gsm8k_policy() -> ReferencePolicy:
    return ReferencePolicy.from_file(GSM8K, prompt_column="question")


# --- shape -------------------------------------------------------------------------------


def test_response_parses_as_openai_chat_completion(gsm8k_policy: ReferencePolicy) -> None:
    question, answer = gsm8k_rows()[0]
    with LocalTeacher(policy=gsm8k_policy) as server:
        reply = ask(client(server), question, temperature=0.7, top_p=0.95, seed=3)
        raw = post(
            f"{server.base_url}/chat/completions",
            {
                **CHAT,
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": question},
                ],
            },
        )
    assert isinstance(reply, ChatCompletion)
    assert reply.object == "chat.completion" and reply.model == "teacher"
    assert reply.id.startswith("chatcmpl-") and reply.created > 1_600_000_000
    (choice,) = reply.choices
    assert choice.index == 0 and choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    assert last_boxed(choice.message.content or "") == answer
    usage = reply.usage
    assert usage is not None
    assert usage.prompt_tokens == len(question.split())
    assert usage.completion_tokens == count_tokens(choice.message.content)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    status, _, body = raw
    assert status == 200
    assert body["usage"]["prompt_tokens"] == 2 + len(question.split())  # every message counts
    assert set(body["choices"][0]["message"]) == {"role", "content"}  # no reasoning_content


def test_n_choices_in_one_response(gsm8k_policy: ReferencePolicy) -> None:
    question, _ = gsm8k_rows()[1]
    with LocalTeacher(policy=gsm8k_policy) as server:
        reply = ask(client(server), question, n=5, seed=0)
        stats = server.stats()
    assert [c.index for c in reply.choices] == [0, 1, 2, 3, 4]
    texts = [c.message.content or "" for c in reply.choices]
    assert len(set(texts)) == 5  # each choice is its own sample
    assert reply.usage is not None
    assert reply.usage.completion_tokens == sum(count_tokens(t) for t in texts)
    assert stats["requests"] == 1 and stats["completions"] == 5
    assert stats["completion_tokens"] == reply.usage.completion_tokens


def test_max_tokens_truncates_and_a_larger_budget_gives_the_whole_answer(
    gsm8k_policy: ReferencePolicy,
) -> None:
    question, answer = gsm8k_rows()[2]
    with LocalTeacher(policy=gsm8k_policy) as server:
        c = client(server)
        short = ask(c, question, seed=1, max_tokens=7).choices[0]
        full = ask(c, question, seed=1, max_tokens=4096).choices[0]
        new_name = ask(c, question, seed=1, max_completion_tokens=7).choices[0]
    assert short.finish_reason == "length"
    assert count_tokens(short.message.content) == 7
    assert last_boxed(short.message.content or "") is None
    assert full.finish_reason == "stop" and last_boxed(full.message.content or "") == answer
    assert (full.message.content or "").startswith(short.message.content or "")
    assert new_name.message.content == short.message.content


def test_stop_sequence_cuts_the_content() -> None:
    policy = FixedPolicy(text="one two three STOP four five")
    with LocalTeacher(policy=policy) as server:
        choice = ask(client(server), "anything", stop=["STOP"]).choices[0]
    assert choice.message.content == "one two three " and choice.finish_reason == "stop"


# --- the reference policy on real problems ---------------------------------------------------


def test_reference_policy_answers_real_gsm8k_problems_correctly(
    gsm8k_policy: ReferencePolicy,
) -> None:
    rows = gsm8k_rows()
    assert len(rows) == 50
    with LocalTeacher(policy=gsm8k_policy) as server:
        c = client(server)
        got = [last_boxed(ask(c, q, seed=7).choices[0].message.content or "") for q, _ in rows]
    assert got == [a for _, a in rows]


def test_error_rate_errs_about_that_often_with_answer_plus_one() -> None:
    rows = gsm8k_rows()
    policy = ReferencePolicy.from_file(GSM8K, prompt_column="question", style=Style(error_rate=0.3))
    wrong = total = 0
    with LocalTeacher(policy=policy) as server:
        c = client(server)
        for question, answer in rows:
            for choice in ask(c, question, n=8, temperature=1.0).choices:
                got = last_boxed(choice.message.content or "")
                total += 1
                if got != answer:
                    wrong += 1
                    assert Decimal(got or "nan") == Decimal(answer) + 1
    assert total == 400
    assert 0.23 <= wrong / total <= 0.37  # binomial sd at 400 samples: 0.023


def test_per_model_error_rates_and_per_problem_spread() -> None:
    rows = gsm8k_rows()
    policy = ReferencePolicy.from_file(
        GSM8K,
        prompt_column="question",
        models={"student": Style(error_rate=0.6), "teacher": Style(error_rate=0.05)},
        style=Style(error_rate=0.5, spread=1.0),
    )
    wrong: Counter[str] = Counter()
    all_or_nothing = 0
    with LocalTeacher(policy=policy) as server:
        c = client(server)
        for question, answer in rows:
            for model in ("student", "teacher"):
                for choice in ask(c, question, model=model, n=8).choices:
                    wrong[model] += last_boxed(choice.message.content or "") != answer
            spread = {
                last_boxed(ch.message.content or "") == answer
                for ch in ask(c, question, model="other", n=8).choices
            }
            all_or_nothing += len(spread) == 1
        models = c.models.list()
    assert 0.5 <= wrong["student"] / 400 <= 0.7
    assert wrong["teacher"] / 400 <= 0.1
    assert all_or_nothing == 50  # spread 1: a problem is all right or all wrong
    assert sorted(m.id for m in models) == ["student", "teacher"]


def test_reasoning_in_a_separate_field_or_in_think_tags() -> None:
    question, answer = gsm8k_rows()[3]
    answers = {question: answer}
    field = ReferencePolicy(answers=answers, style=Style(reasoning="field", verbosity=(40, 40)))
    think = ReferencePolicy(answers=answers, style=Style(reasoning="think", verbosity=(40, 40)))
    with LocalTeacher(policy=field) as server:
        reply = ask(client(server), question)
        cut = ask(client(server), question, max_tokens=10).choices[0]
    message = reply.choices[0].message
    reasoning = getattr(message, "reasoning_content", None)
    assert isinstance(reasoning, str) and count_tokens(reasoning) == 40
    assert "\\boxed" not in reasoning and last_boxed(message.content or "") == answer
    assert reply.usage is not None and reply.usage.completion_tokens == 40 + count_tokens(
        message.content
    )
    assert cut.finish_reason == "length" and cut.message.content == ""  # still thinking
    with LocalTeacher(policy=think) as server:
        status, _, body = post(
            f"{server.base_url}/chat/completions",
            {**CHAT, "messages": [{"role": "user", "content": question}]},
        )
    assert status == 200
    message_json = body["choices"][0]["message"]
    assert "reasoning_content" not in message_json
    content = message_json["content"]
    assert content.startswith("<think>\n") and "\n</think>\n\n" in content
    assert last_boxed(content.split("</think>")[1]) == answer


def test_same_request_same_answer_other_seed_other_answer(
    gsm8k_policy: ReferencePolicy,
) -> None:
    question, _ = gsm8k_rows()[4]
    with LocalTeacher(policy=gsm8k_policy) as first, LocalTeacher(policy=gsm8k_policy) as second:
        a = ask(client(first), question, seed=11, temperature=0.8).choices[0].message.content
        b = ask(client(second), question, seed=11, temperature=0.8).choices[0].message.content
        c = ask(client(first), question, seed=12, temperature=0.8).choices[0].message.content
        d = ask(client(first), question, seed=11, temperature=0.6).choices[0].message.content
    assert a == b
    assert c != a and d != a


def test_templated_prompt_finds_its_row_and_unknown_prompt_is_a_400(
    gsm8k_policy: ReferencePolicy,
) -> None:
    question, answer = gsm8k_rows()[5]
    templated = f"Solve the problem below.\n\n{question}\n\nPut the final answer in \\boxed{{}}."
    with LocalTeacher(policy=gsm8k_policy) as server:
        c = client(server)
        found = ask(c, templated).choices[0].message.content or ""
        with pytest.raises(openai.BadRequestError, match="prompt not in the table"):
            ask(c, "What is the airspeed of an unladen swallow?")
        fallback = ReferencePolicy(answers={question: answer}, fallback_answer="0")
    assert last_boxed(found) == answer
    with LocalTeacher(policy=fallback) as server:
        other = ask(client(server), "Unknown problem").choices[0].message.content or ""
    assert last_boxed(other) == "0"


def test_replay_policy_cycles_over_the_recorded_completions() -> None:
    row = json.loads(QUICKSTART.read_text().splitlines()[0])
    policy = ReplayPolicy.from_file(
        QUICKSTART, prompt_column="question", completion_column="response"
    )
    with LocalTeacher(policy=policy) as server:
        reply = ask(client(server), row["question"], n=3, seed=6)
    recorded = row["response"]
    assert len(recorded) == 8
    assert [c.message.content for c in reply.choices] == [recorded[6], recorded[7], recorded[0]]


def test_fixed_policy_is_about_200_tokens() -> None:
    with LocalTeacher(policy=FixedPolicy()) as server:
        reply = ask(client(server), "anything at all")
    assert reply.usage is not None and reply.usage.completion_tokens == 200
    assert last_boxed(reply.choices[0].message.content or "") == "42"


# --- faults ----------------------------------------------------------------------------------


def test_429_carries_retry_after_and_500_is_a_server_error() -> None:
    with LocalTeacher(faults=Faults(rate_429=1.0, retry_after=7)) as server:
        url = f"{server.base_url}/chat/completions"
        status, headers, body = post(url, CHAT)
        with pytest.raises(openai.RateLimitError):
            ask(client(server), "x")
        server.set_faults(rate_429=0, rate_500=1.0)
        with pytest.raises(openai.InternalServerError):
            ask(client(server), "x")
        stats = server.stats()
    assert status == 429 and headers["Retry-After"] == "7"
    assert body["error"]["code"] == "rate_limit_exceeded"
    assert stats["faults"] == {"429": 2, "500": 1}
    assert stats["by_status"] == {"429": 2, "500": 1}
    assert stats["requests"] == 3 and stats["succeeded"] == 0


def test_drop_closes_the_connection_without_a_response() -> None:
    with LocalTeacher(faults={"rate_drop": 1.0}) as server:
        with pytest.raises(openai.APIConnectionError) as caught:
            ask(client(server), "x")
        assert not isinstance(caught.value, openai.APITimeoutError)
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        connection.request(
            "POST", "/v1/chat/completions", json.dumps(CHAT), {"Content-Type": "application/json"}
        )
        with pytest.raises((http.client.RemoteDisconnected, ConnectionResetError)):
            connection.getresponse()
        stats = server.stats()
    assert stats["faults"] == {"drop": 2} and stats["by_status"] == {}


def test_timeout_hangs_past_the_client_timeout() -> None:
    with LocalTeacher(faults=Faults(rate_timeout=1.0, hang_s=30)) as server:
        start = time.monotonic()
        with pytest.raises(openai.APITimeoutError):
            ask(client(server, timeout=0.5), "x")
        assert time.monotonic() - start < 5
        assert server.stats()["faults"] == {"timeout": 1}


def test_truncate_and_content_filter_are_200s_cut_short() -> None:
    with LocalTeacher(policy=FixedPolicy(), faults=Faults(rate_truncate=1.0)) as server:
        cut = ask(client(server), "x", n=2)
        server.set_faults(rate_truncate=0.0, rate_content_filter=1.0)
        filtered = ask(client(server), "x").choices[0]
        stats = server.stats()
    assert [c.finish_reason for c in cut.choices] == ["length", "length"]
    assert all(count_tokens(c.message.content) == 100 for c in cut.choices)
    assert (
        filtered.finish_reason == "content_filter" and count_tokens(filtered.message.content) == 100
    )
    assert stats["faults"] == {"content_filter": 1, "truncate": 1}
    assert stats["succeeded"] == 2 and stats["completions"] == 3


def test_mixed_rates_are_drawn_reproducibly_and_counted() -> None:
    faults = Faults(rate_429=0.1, rate_500=0.1, rate_truncate=0.1, rate_content_filter=0.1, seed=5)
    outcomes = []
    with LocalTeacher(policy=FixedPolicy(words=20), faults=faults) as server:
        url = f"{server.base_url}/chat/completions"
        for _ in range(2):
            results = []
            for _ in range(300):
                status, _, body = post(url, CHAT)
                results.append(body["choices"][0]["finish_reason"] if status == 200 else status)
            outcomes.append(results)
            stats = server.stats()
            server.reset()  # re-seeds the draws
    assert outcomes[0] == outcomes[1]
    counts = Counter(outcomes[0])
    for kind in (429, 500, "length", "content_filter"):
        assert 15 <= counts[kind] <= 50, counts
    assert stats["faults"] == {
        "429": counts[429],
        "500": counts[500],
        "truncate": counts["length"],
        "content_filter": counts["content_filter"],
    }
    assert stats["requests"] == 300 and stats["succeeded"] == stats["by_status"]["200"]
    assert stats["by_status"]["200"] == counts["stop"] + counts["length"] + counts["content_filter"]


def test_latency_is_applied() -> None:
    with LocalTeacher(faults=Faults(latency_s=(0.2, 0.3))) as server:
        start = time.monotonic()
        ask(client(server), "x")
        assert 0.2 <= time.monotonic() - start < 2


def test_fail_next_and_die_after() -> None:
    with LocalTeacher(faults=Faults(fail_next=2, fail_status=503, die_after=3)) as server:
        url = f"{server.base_url}/chat/completions"
        statuses = [post(url, CHAT)[0] for _ in range(5)]
        with pytest.raises(openai.APIConnectionError):
            ask(client(server), "x")
        stats = server.stats()
        server.reset()
        revived = post(url, CHAT)[0]
    assert statuses == [503, 503, 200, 200, 200]
    assert stats["faults"] == {"dead": 1, "fail_next": 2} and stats["succeeded"] == 3
    assert revived == 503  # reset re-arms fail_next too


def test_faults_and_stats_over_http() -> None:
    with LocalTeacher() as server:
        status, _, faults = post(f"{server.url}/faults", {"rate_500": 1.0, "seed": 3})
        assert status == 200 and faults["rate_500"] == 1.0 and faults["seed"] == 3
        assert post(f"{server.base_url}/chat/completions", CHAT)[0] == 500
        assert get(f"{server.url}/stats")["faults"] == {"500": 1}
        status, _, body = post(f"{server.url}/faults", {"rate_500": 0.8, "rate_429": 0.5})
        assert status == 400 and "more than 1" in body["error"]["message"]
        status, _, body = post(f"{server.url}/faults", {"rate_lunch": 0.1})
        assert status == 400 and "rate_lunch" in body["error"]["message"]
        assert post(f"{server.url}/stats/reset", {})[2]["requests"] == 0
        assert get(f"{server.url}/faults")["rate_500"] == 1.0


def test_bad_requests_name_the_field() -> None:
    with LocalTeacher() as server:
        url = f"{server.base_url}/chat/completions"
        status, _, body = post(url, {"model": "m", "messages": []})
        assert status == 400 and body["error"]["param"] == "messages"
        status, _, body = post(url, {**CHAT, "max_tokens": 0})
        assert status == 400 and body["error"]["param"] == "max_tokens"
        status, _, body = post(url, {**CHAT, "n": "3"})
        assert status == 400 and body["error"]["param"] == "n"
    with LocalTeacher(models=["teacher"]) as server, pytest.raises(openai.NotFoundError):
        ask(client(server), "x", model="gpt-5")


# --- auth ------------------------------------------------------------------------------------


def test_api_key_is_required_when_set() -> None:
    with LocalTeacher(api_key="sk-secret") as server:
        url = f"{server.base_url}/chat/completions"
        assert post(url, CHAT)[0] == 401
        assert post(url, CHAT, {"Authorization": "Bearer sk-wrong"})[0] == 401
        with pytest.raises(openai.AuthenticationError):
            ask(client(server, key="sk-wrong"), "x")
        assert ask(client(server, key="sk-secret"), "x").choices[0].finish_reason == "stop"
        assert server.stats()["by_status"] == {"200": 1, "401": 3}


# --- the CLI process -------------------------------------------------------------------------


def start_cli(*args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "curate.cli.main", "teacher-server", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    assert process.stdout is not None
    base_url = process.stdout.readline().strip()
    assert base_url.startswith("http://127.0.0.1:"), process.stderr.read() if process.stderr else ""
    return process, base_url


@pytest.mark.slow
def test_cli_serves_reference_answers_with_a_key_and_stops_on_sigterm() -> None:
    question, answer = gsm8k_rows()[0]
    process, base_url = start_cli(
        "--policy",
        "reference",
        "--answers",
        str(GSM8K),
        "--prompt-column",
        "question",
        "--model-error",
        "student=1.0",
        "--api-key-env",
        "LOCAL_TEACHER_KEY",
        env={"LOCAL_TEACHER_KEY": "sk-cli"},
    )
    try:
        c = openai.OpenAI(base_url=base_url, api_key="sk-cli", max_retries=0)
        assert last_boxed(ask(c, question).choices[0].message.content or "") == answer
        wrong = last_boxed(ask(c, question, model="student").choices[0].message.content or "")
        assert wrong == str(int(answer) + 1)
        assert post(f"{base_url}/chat/completions", CHAT)[0] == 401
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=10)
        process.communicate()
    assert code == 0


@pytest.mark.slow
def test_cli_dies_after_n_successes() -> None:
    process, base_url = start_cli("--die-after", "1")
    try:
        assert post(f"{base_url}/chat/completions", CHAT)[0] == 200
        assert process.wait(timeout=10) == 3
    finally:
        if process.poll() is None:
            process.kill()
        _, stderr = process.communicate()
    assert "died on purpose" in stderr


def test_load_answers_reduces_gsm8k_solutions() -> None:
    answers = load_answers(GSM8K, prompt_column="question")
    assert len(answers) == 50 and list(answers.values())[:3] == ["18", "3", "70000"]
