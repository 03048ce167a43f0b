"""What goes to a teacher and what comes back, in one shape for every provider.

A `Request` is one chat-completions call; it answers one sample, or `len(keys)` samples when
the server's native `n` is used. An `Answer` is what one sample got: the completion and its
reasoning, why it stopped, token usage and cost, or an error. `parse_chat_response` reads an
OpenAI-style response body (JSON bytes) into answers without a pydantic model (it is on the hot
path); `split_reasoning` separates a `<think>…</think>` part from the answer.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from curate.tokens import CHARS_PER_TOKEN

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
MESSAGE_OVERHEAD_TOKENS = 4  # role and separators per message, as chat templates add them


@dataclass(slots=True)
class Request:
    """One call to a teacher. `keys` are the cache keys of the samples it answers (n = len)."""

    teacher: str
    messages: list[dict[str, str]]
    temperature: float | None
    top_p: float | None
    max_tokens: int
    seed: int | None
    keys: list[str]
    prompt_tokens: int  # estimate, for TPM and the cost plan

    @property
    def n(self) -> int:
        return len(self.keys)


@dataclass(slots=True)
class Answer:
    """What one sample got. `billed_*` and `cost_usd` count every attempt that was paid for
    (a retried truncation included); `prompt_tokens`/`completion_tokens` are the final
    answer's usage (None when the server did not say)."""

    completion: str | None = None
    reasoning: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    error: str | None = None
    max_tokens: int = 0
    seed: int | None = None
    attempts: int = 1  # HTTP attempts (transport retries included)
    tries: int = 1  # answers received (finish-reason retries included)
    billed_prompt_tokens: int = 0
    billed_completion_tokens: int = 0
    cost_usd: float = 0.0
    created: float = 0.0  # when it was stored in the cache (tells answers apart)


def estimate_tokens(messages: list[dict[str, str]]) -> int:
    """Prompt tokens, estimated as the project does elsewhere: characters / 4, plus a few per
    message for the chat template."""
    chars = sum(len(m.get("content") or "") for m in messages)
    return -(-chars // CHARS_PER_TOKEN) + MESSAGE_OVERHEAD_TOKENS * len(messages)


def key_prefix(provider: str, model: str, messages: list[dict[str, str]], extra: str) -> Any:
    """A sha256 state over what all samples of one prompt share; `cache_key` finishes it."""
    state = hashlib.sha256()
    head = json.dumps([provider, model, messages], ensure_ascii=False, separators=(",", ":"))
    state.update(head.encode())
    state.update(b"\x00")
    state.update(extra.encode())
    return state


def cache_key(
    prefix: Any, temperature: float | None, top_p: float | None, seed: int | None, index: int
) -> str:
    """The cache key of one sample: provider, model, rendered messages, extra body, sampling
    params except max_tokens, and the sample index (max_tokens is left out so that raising it
    re-asks only the truncated samples; see cache.reusable)."""
    state = prefix.copy()
    state.update(f"\x00{temperature!r}\x00{top_p!r}\x00{seed!r}\x00{index}".encode())
    return str(state.hexdigest())


def split_reasoning(text: str | None) -> tuple[str | None, str | None]:
    """(reasoning, answer) of a completion that may hold a `<think>…</think>` part.

    `<think>R</think>A` gives (R, A); `R</think>A` (the opening tag was in the prompt, as
    DeepSeek-R1's template does) gives (R, A); `<think>R` with no closing tag (cut off) gives
    (R, ""); text with no tags gives (None, text)."""
    if text is None:
        return None, None
    close = text.find(THINK_CLOSE)
    stripped = text.lstrip()
    if stripped.startswith(THINK_OPEN):
        body = stripped[len(THINK_OPEN) :]
        close = body.find(THINK_CLOSE)
        if close < 0:
            return body.strip(), ""
        return body[:close].strip(), body[close + len(THINK_CLOSE) :].strip()
    if close >= 0 and THINK_OPEN not in text[:close]:
        return text[:close].strip(), text[close + len(THINK_CLOSE) :].strip()
    return None, text


def parse_chat_response(body: bytes, n: int) -> tuple[list[Answer], int | None, int | None]:
    """Answers (one per choice, in index order, padded with errors up to `n`) and the usage
    of the whole response (prompt tokens, completion tokens) from a chat-completions body.

    `reasoning` comes from `message.reasoning_content` (vLLM, DeepSeek) or `message.reasoning`
    (OpenRouter, newer vLLM) when the server sends it apart, else from a `<think>` part."""
    data = json.loads(body)
    if not isinstance(data, dict):
        raise ValueError("response is not a JSON object")
    usage = data.get("usage") or {}
    prompt_tokens = usage.get("prompt_tokens")
    completion_tokens = usage.get("completion_tokens")
    choices = data.get("choices") or []
    if len(choices) > 1:
        choices = sorted(choices, key=lambda c: c.get("index", 0))
    answers = []
    for choice in choices[:n]:
        message = choice.get("message") or {}
        content = message.get("content")
        reasoning = message.get("reasoning_content") or message.get("reasoning")
        if reasoning is None:
            reasoning, content = split_reasoning(content)
        answers.append(
            Answer(
                completion=content if content is not None else "",
                reasoning=reasoning,
                finish_reason=choice.get("finish_reason"),
            )
        )
    for _ in range(n - len(answers)):
        answers.append(Answer(error=f"bad response: {len(choices)} choice(s) for n={n}"))
    return answers, prompt_tokens, completion_tokens
