"""`curate teacher-server`: the local OpenAI-compatible teacher (curate.local_teacher) as a
process, so the sampling examples run without an API key and benchmarks get a server that
does not share the client's CPU. The first line on stdout is the base URL once listening."""

from __future__ import annotations

import os
import sys
from enum import Enum
from pathlib import Path

import typer
from pydantic import ValidationError

from curate.cli.common import err, handle_errors


class PolicyName(str, Enum):
    reference = "reference"
    replay = "replay"
    fixed = "fixed"
    rules = "rules"


class Reasoning(str, Enum):
    none = "none"
    think = "think"
    field = "field"


class AnswerFormat(str, Enum):
    boxed = "boxed"
    hash = "hash"


def _pair(text: str, option: str) -> tuple[float, float]:
    try:
        low, _, high = text.partition(",")
        return float(low), float(high or low)
    except ValueError:
        raise typer.BadParameter(
            f"expected a number or LOW,HIGH, got {text!r}", param_hint=option
        ) from None


@handle_errors
def teacher_server(
    policy: PolicyName = typer.Option(
        PolicyName.fixed, "--policy", help="how requests are answered"
    ),
    answers: Path = typer.Option(
        None, "--answers", help="reference policy: JSONL/JSON/CSV/Parquet of prompts and answers"
    ),
    traces: Path = typer.Option(
        None, "--traces", help="replay policy: JSONL/JSON/CSV/Parquet of prompts and completions"
    ),
    tasks: Path = typer.Option(
        None,
        "--tasks",
        help="rules policy: JSONL/JSON/CSV/Parquet of problems (id, prompt, train demonstrations)",
    ),
    prompt_column: str = typer.Option(
        "prompt", help="column of --answers/--traces/--tasks with the prompt"
    ),
    answer_column: str = typer.Option("answer", help="column of --answers with the answer"),
    completion_column: str = typer.Option(
        "completion", help="column of --traces with a completion or a list of them"
    ),
    reasoning_column: str = typer.Option(
        None, help="column of --traces with reasoning sent as reasoning_content"
    ),
    error_rate: float = typer.Option(0.0, help="reference: share of wrong answers"),
    spread: float = typer.Option(
        0.0, help="reference: 0 = errors per sample, 1 = per problem (all right or all wrong)"
    ),
    model_error: list[str] = typer.Option(
        [], "--model-error", help="reference: NAME=RATE, another error rate for one model"
    ),
    verbosity: str = typer.Option("30,120", help="reference: LOW,HIGH words of reasoning"),
    reasoning: Reasoning = typer.Option(
        Reasoning.none, help="reference: reasoning inline, in <think>, or in reasoning_content"
    ),
    answer_format: AnswerFormat = typer.Option(
        AnswerFormat.boxed, help="reference: end with \\boxed{X} or #### X"
    ),
    fallback_answer: str = typer.Option(
        None, help="reference: answer unknown prompts with this instead of a 400"
    ),
    words: int = typer.Option(200, help="fixed: words in the constant completion"),
    models: str = typer.Option(
        None, help="comma-separated model names to serve (others get 404; default: any)"
    ),
    host: str = typer.Option("127.0.0.1", help="address to listen on"),
    port: int = typer.Option(8000, help="port to listen on (0: any free port)"),
    api_key_env: str = typer.Option(
        None, help="require 'Authorization: Bearer $VAR' where VAR is this environment variable"
    ),
    latency: str = typer.Option("0", help="seconds before every answer, or LOW,HIGH"),
    rate_429: float = typer.Option(0.0, "--rate-429", help="share of requests answered 429"),
    retry_after: float = typer.Option(1.0, help="Retry-After seconds on a 429"),
    rate_500: float = typer.Option(0.0, "--rate-500", help="share of requests answered 500"),
    rate_timeout: float = typer.Option(0.0, help="share of requests that hang for --hang"),
    hang: float = typer.Option(600.0, help="seconds a timeout fault hangs"),
    rate_drop: float = typer.Option(0.0, help="share of connections closed unanswered"),
    rate_truncate: float = typer.Option(0.0, help="share of 200s cut short (finish 'length')"),
    rate_content_filter: float = typer.Option(
        0.0, help="share of 200s stopped by the content filter"
    ),
    fail_next: int = typer.Option(0, help="fail the first K requests with a 500"),
    die_after: int = typer.Option(
        None, help="exit (code 3) after N successful requests, for crash tests"
    ),
    fault_seed: int = typer.Option(0, help="seed of the fault and latency draws"),
) -> None:
    """Serve a local OpenAI-compatible teacher that answers from a script and fails on demand."""
    from curate.local_teacher import Faults, TeacherServer, serve
    from curate.local_teacher_policies import (
        FixedPolicy,
        Policy,
        ReferencePolicy,
        ReplayPolicy,
        RulesPolicy,
        Style,
    )

    api_key = None
    if api_key_env:
        api_key = os.environ.get(api_key_env)
        if not api_key:
            raise typer.BadParameter(f"${api_key_env} is not set", param_hint="--api-key-env")
    low, high = _pair(latency, "--latency")
    try:
        faults = Faults(
            latency_s=(low, high) if high != low else low,
            rate_429=rate_429,
            retry_after=retry_after,
            rate_500=rate_500,
            rate_timeout=rate_timeout,
            hang_s=hang,
            rate_drop=rate_drop,
            rate_truncate=rate_truncate,
            rate_content_filter=rate_content_filter,
            fail_next=fail_next,
            die_after=die_after,
            seed=fault_seed,
        )
        if policy is PolicyName.reference:
            if answers is None:
                raise typer.BadParameter(
                    "the reference policy needs --answers", param_hint="--answers"
                )
            words_low, words_high = _pair(verbosity, "--verbosity")
            style = Style(
                error_rate=error_rate,
                spread=spread,
                verbosity=(int(words_low), int(words_high)),
                reasoning=reasoning.value,
                answer_format=answer_format.value,
            )
            overrides = {}
            for item in model_error:
                name, sep, rate = item.partition("=")
                if not sep:
                    raise typer.BadParameter(
                        f"expected NAME=RATE, got {item!r}", param_hint="--model-error"
                    )
                overrides[name] = Style.model_validate(
                    {**style.model_dump(), "error_rate": float(rate)}
                )
            chosen: Policy = ReferencePolicy.from_file(
                answers,
                prompt_column=prompt_column,
                answer_column=answer_column,
                style=style,
                models=overrides,
                fallback_answer=fallback_answer,
            )
        elif policy is PolicyName.replay:
            if traces is None:
                raise typer.BadParameter("the replay policy needs --traces", param_hint="--traces")
            chosen = ReplayPolicy.from_file(
                traces,
                prompt_column=prompt_column,
                completion_column=completion_column,
                reasoning_column=reasoning_column,
            )
        elif policy is PolicyName.rules:
            if tasks is None:
                raise typer.BadParameter("the rules policy needs --tasks", param_hint="--tasks")
            chosen = RulesPolicy.from_file(tasks, prompt_column=prompt_column)
        else:
            chosen = FixedPolicy(words=words)
    except (ValidationError, ValueError) as exc:
        raise typer.BadParameter(str(exc)) from None
    server = TeacherServer(
        policy=chosen,
        faults=faults,
        api_key=api_key,
        models=[m.strip() for m in models.split(",")] if models else None,
    )

    def announce(base_url: str) -> None:
        print(base_url, flush=True)
        err.print(
            f"local teacher ({policy.value}) serving at {base_url}; Ctrl-C stops it",
            highlight=False,
        )

    code = serve(server, host=host, port=port, announce=announce)
    if code:
        err.print(f"died on purpose after {die_after} successful requests (--die-after)")
    sys.exit(code)
