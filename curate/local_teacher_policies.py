"""What the local teacher answers: scripted policies that map a chat request to completions.

A policy turns one `ChatRequest` and a choice index into a `Completion` (content, optional
separate reasoning, finish_reason). Every policy is deterministic: the same model, messages,
sampling parameters, seed and choice index give the same completion, so reruns reproduce.

Policies (the `POLICIES` table maps a name to its class):

- `reference`: looks the user prompt up in a table of reference answers and writes a short
  worked answer ending in `\\boxed{answer}` (or `#### answer`), wrong with a set probability
  (numbers: answer + 1; anything else: `answer + 1`). Per-model overrides make one model a
  weak student and another a strong teacher.
- `replay`: answers with completions recorded in a trace file, cycling over those recorded
  for the prompt by seed + choice index.
- `fixed` (alias `echo`): one constant completion (about 200 tokens by default), for
  throughput benchmarks.
- `rules`: a scripted rule-distillation (ReDis) teacher over a task file of problems with
  demonstrations. Asked a problem's prompt, it proposes a "rule" that fits a drawn subset of the
  demonstrations and says so in a marker (`[[rule P fits 1,3 of 4]]`); asked to apply a rule (a
  prompt that holds such a marker), it answers `Output i: ...` for every demonstration, the
  right output for those the rule fits and a wrong one for the others. So a rule's score under
  `verify: {method: demonstrations}` is the size of its subset, known in advance.

Tokens are approximated as whitespace-separated words (`len(text.split())`), for prompts and
completions alike; a prompt counts the words of every message's text. `truncate_words` cuts a
text to its first k such tokens, keeping the original spacing between them.

Prompt lookup (reference and replay): the text of the last user message, stripped, must equal
a table prompt (stripped); failing that, the longest table prompt contained in it is used
(so a prompt rendered into a template still finds its row). A prompt that matches neither
raises `PromptNotFound` (the server answers 400) unless the policy has a `fallback_answer`.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, model_validator

from curate.errors import InputError

_TOKEN = re.compile(r"\S+\s*")
_HASH_ANSWER = re.compile(r"\n####\s*(.+?)\s*$")


# --- requests and completions ------------------------------------------------------------


@dataclass(frozen=True)
class ChatRequest:
    """The fields of a chat-completions request that a policy may read."""

    model: str
    messages: list[dict[str, Any]]
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    seed: int | None = None
    n: int = 1
    stop: tuple[str, ...] = ()

    @property
    def prompt(self) -> str:
        """The text of the last user message (the problem, usually)."""
        for message in reversed(self.messages):
            if message.get("role") == "user":
                return message_text(message)
        return ""

    def key(self, index: int) -> bytes:
        """Bytes that identify this request's choice `index`, for deterministic draws."""
        parts = (self.model, self.prompt, self.seed, self.temperature, self.top_p, index)
        return "\x1f".join(map(str, parts)).encode()


@dataclass
class Completion:
    """One choice: the answer text, the reasoning when sent separately, and why it stopped."""

    content: str
    reasoning: str | None = None
    finish_reason: str = "stop"


def message_text(message: Mapping[str, Any]) -> str:
    """A message's text: its content string, or the text parts of a content list joined."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def count_tokens(text: str | None) -> int:
    """Approximate tokens: whitespace-separated words."""
    return len(text.split()) if text else 0


def truncate_words(text: str, k: int) -> str:
    """The first `k` whitespace-separated words of `text`, original spacing kept between them."""
    if k <= 0:
        return ""
    pieces = []
    for i, match in enumerate(_TOKEN.finditer(text.lstrip())):
        if i >= k:
            break
        pieces.append(match.group())
    return "".join(pieces).rstrip()


def cut_tokens(completion: Completion, max_tokens: int) -> Completion:
    """`completion` cut to `max_tokens` tokens in all (reasoning first, then content), marked
    finish_reason "length"; returned unchanged when it already fits."""
    reasoning_tokens = count_tokens(completion.reasoning)
    if reasoning_tokens + count_tokens(completion.content) <= max_tokens:
        return completion
    if completion.reasoning is not None and reasoning_tokens >= max_tokens:
        return Completion("", truncate_words(completion.reasoning, max_tokens), "length")
    content = truncate_words(completion.content, max_tokens - reasoning_tokens)
    return Completion(content, completion.reasoning, "length")


def apply_stop(completion: Completion, stop: Iterable[str]) -> Completion:
    """Cut the content at the first stop sequence (the sequence itself is not returned)."""
    cut = min((i for s in stop if s and (i := completion.content.find(s)) >= 0), default=-1)
    if cut < 0:
        return completion
    return Completion(completion.content[:cut], completion.reasoning, "stop")


def draw(key: bytes, salt: bytes = b"") -> float:
    """A uniform number in [0, 1) determined by `key` (and `salt`)."""
    digest = hashlib.blake2b(key, digest_size=8, person=salt[:16]).digest()
    return int.from_bytes(digest, "big") / 2**64


class PromptNotFound(LookupError):
    """The request's prompt is in none of the policy's table rows."""


# --- prompt tables -------------------------------------------------------------------------


class PromptTable:
    """Rows keyed by prompt text: exact lookup after strip, then the longest contained prompt."""

    def __init__(self, rows: Mapping[str, Any]) -> None:
        self.rows = {k.strip(): v for k, v in rows.items()}
        self._by_length = sorted(self.rows, key=len, reverse=True)
        self._contained: dict[str, str | None] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def match(self, prompt: str) -> str:
        """The table prompt that `prompt` matches; PromptNotFound when there is none."""
        text = prompt.strip()
        if text in self.rows:
            return text
        if text not in self._contained:
            if len(self._contained) > 100_000:
                self._contained.clear()
            self._contained[text] = next((k for k in self._by_length if k and k in text), None)
        key = self._contained[text]
        if key is None:
            raise PromptNotFound(f"prompt not in the table: {text[:120]!r}")
        return key

    def find(self, prompt: str) -> Any:
        """The row of the table prompt that `prompt` matches."""
        return self.rows[self.match(prompt)]


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a JSONL, JSON, CSV or Parquet file as dicts (via Polars)."""
    import polars as pl

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix in (".jsonl", ".ndjson"):
            frame = pl.read_ndjson(path, infer_schema_length=None)
        elif suffix == ".json":
            frame = pl.read_json(path)
        elif suffix == ".csv":
            frame = pl.read_csv(path)
        elif suffix == ".parquet" or path.is_dir():
            frame = pl.read_parquet(path if suffix else path / "**" / "*.parquet")
        else:
            raise InputError(f"{path}: expected .jsonl, .json, .csv or .parquet")
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{path}: cannot read: {exc}") from exc
    return frame.to_dicts()


def _column(rows: list[dict[str, Any]], path: str | Path, name: str) -> None:
    if rows and name not in rows[0]:
        raise InputError(f"{path}: no column '{name}' (columns: {', '.join(rows[0])})")


def load_answers(
    path: str | Path, *, prompt_column: str = "prompt", answer_column: str = "answer"
) -> dict[str, str]:
    """{prompt: reference answer} from a file. A GSM8K-style solution (text ending in
    `#### X`) is reduced to X; numbers are written as text."""
    rows = read_rows(path)
    _column(rows, path, prompt_column)
    _column(rows, path, answer_column)
    table: dict[str, str] = {}
    for i, row in enumerate(rows):
        prompt, answer = row[prompt_column], row[answer_column]
        if not isinstance(prompt, str) or answer is None:
            raise InputError(
                f"{path}: row {i}: '{prompt_column}' must be text and '{answer_column}' present"
            )
        text = str(answer)
        match = _HASH_ANSWER.search(text)
        table[prompt] = match.group(1).replace(",", "") if match else text.strip()
    return table


def load_traces(
    path: str | Path,
    *,
    prompt_column: str = "prompt",
    completion_column: str = "completion",
    reasoning_column: str | None = None,
) -> dict[str, list[tuple[str, str | None]]]:
    """{prompt: [(completion, reasoning), ...]} in file order. A completion cell may hold one
    text or a list of texts (as the quickstart's `response` column does)."""
    rows = read_rows(path)
    for name in (prompt_column, completion_column, reasoning_column):
        if name:
            _column(rows, path, name)
    table: dict[str, list[tuple[str, str | None]]] = {}
    for i, row in enumerate(rows):
        prompt, cell = row[prompt_column], row[completion_column]
        texts = cell if isinstance(cell, list) else [cell]
        reasons = row[reasoning_column] if reasoning_column else None
        reasons = reasons if isinstance(reasons, list) else [reasons] * len(texts)
        if not isinstance(prompt, str) or not all(isinstance(t, str) for t in texts):
            raise InputError(
                f"{path}: row {i}: '{prompt_column}' and '{completion_column}' "
                "must be text (or a list of texts)"
            )
        table.setdefault(prompt, []).extend(zip(texts, reasons, strict=False))
    return table


# --- policies ------------------------------------------------------------------------------


class Policy(Protocol):
    """Answers a request's choice `index`; may raise PromptNotFound."""

    name: ClassVar[str]

    def complete(self, request: ChatRequest, index: int) -> Completion: ...

    def model_names(self) -> list[str]: ...


ReasoningMode = Literal["none", "think", "field"]


class Style(BaseModel):
    """How the `reference` policy answers for one model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    error_rate: float = Field(
        0.0, ge=0.0, le=1.0, description="share of answers that are wrong (answer + 1)"
    )
    spread: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description=(
            "how much of the error rate is per problem: 0 draws every sample independently; "
            "1 makes each problem all right or all wrong (a share error_rate of problems wrong); "
            "in between mixes the two, the mean staying error_rate"
        ),
    )
    verbosity: tuple[int, int] = Field(
        (30, 120), description="words of reasoning, drawn uniformly in [low, high] per sample"
    )
    reasoning: ReasoningMode = Field(
        "none",
        description=(
            "none: reasoning in the content; think: content starts with <think>…</think>; "
            "field: reasoning in message.reasoning_content, content holds the final line"
        ),
    )
    answer_format: Literal["boxed", "hash"] = Field(
        "boxed", description="final line: 'The answer is \\boxed{X}.' or '#### X'"
    )

    @model_validator(mode="after")
    def _range(self) -> Style:
        low, high = self.verbosity
        if not 0 <= low <= high:
            raise ValueError(
                f"verbosity must be [low, high] with 0 <= low <= high, got {low, high}"
            )
        return self


_FILLER = (
    "first we note that the given quantity is split into parts so each part is computed "
    "separately then we add the results together and check the units carefully since the "
    "problem asks for a total we multiply the count by the rate and subtract what was used "
    "this leaves the remaining amount which we compare with the condition stated above"
)
_WORDS = _FILLER.split()


def wrong_answer(answer: str) -> str:
    """A deterministic wrong answer: numbers plus one, anything else `answer + 1`."""
    try:
        value = Decimal(answer.replace(",", "").strip())
    except InvalidOperation:
        return f"{answer} + 1"
    return str(value + 1) if value.is_finite() else f"{answer} + 1"


def filler(rng: random.Random, n_words: int) -> str:
    """Exactly `n_words` whitespace-separated words of plausible-looking reasoning: sentences
    of filler words, each ending in a small sum."""
    out: list[str] = []
    while len(out) < n_words:
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        words = rng.choices(_WORDS, k=rng.randint(6, 12))
        out.extend([words[0].capitalize(), *words[1:], str(a), "+", str(b), "=", f"{a + b}."])
    return " ".join(out[:n_words])


@dataclass
class ReferencePolicy:
    """Worked answers from a reference table, right or wrong by a deterministic draw."""

    name: ClassVar[str] = "reference"
    answers: Mapping[str, str]
    style: Style = field(default_factory=Style)
    models: Mapping[str, Style] = field(default_factory=dict)
    fallback_answer: str | None = None

    def __post_init__(self) -> None:
        self.table = PromptTable(self.answers)

    @classmethod
    def from_file(
        cls,
        path: str | Path,
        *,
        prompt_column: str = "prompt",
        answer_column: str = "answer",
        **kwargs: Any,
    ) -> ReferencePolicy:
        answers = load_answers(path, prompt_column=prompt_column, answer_column=answer_column)
        return cls(answers=answers, **kwargs)

    def model_names(self) -> list[str]:
        return list(self.models)

    def is_wrong(self, request: ChatRequest, index: int, problem: str) -> bool:
        """The draw that makes choice `index` of `request` wrong (see Style.spread); `problem`
        is the table prompt, so a problem is equally hard in every template and model."""
        style = self.models.get(request.model, self.style)
        problem_wrong = draw(problem.encode(), b"problem") < style.error_rate
        if draw(request.key(index), b"spread") < style.spread:
            return problem_wrong
        return draw(request.key(index), b"error") < style.error_rate

    def complete(self, request: ChatRequest, index: int) -> Completion:
        style = self.models.get(request.model, self.style)
        try:
            problem = self.table.match(request.prompt)
            answer = str(self.table.rows[problem])
        except PromptNotFound:
            if self.fallback_answer is None:
                raise
            problem, answer = request.prompt.strip(), self.fallback_answer
        if self.is_wrong(request, index, problem):
            answer = wrong_answer(answer)
        rng = random.Random(request.key(index))
        reasoning = filler(rng, rng.randint(*style.verbosity))
        if style.answer_format == "boxed":
            final = f"The answer is \\boxed{{{answer}}}."
        else:
            final = f"#### {answer}"
        if style.reasoning == "field":
            return Completion(final, reasoning)
        if style.reasoning == "think":
            return Completion(f"<think>\n{reasoning}\n</think>\n\n{final}")
        return Completion(f"Let me solve this step by step. {reasoning}\n{final}")


@dataclass
class ReplayPolicy:
    """Recorded completions for the prompt, the (seed + index)-th one, cycling."""

    name: ClassVar[str] = "replay"
    traces: Mapping[str, list[tuple[str, str | None]]]

    def __post_init__(self) -> None:
        self.table = PromptTable(self.traces)

    @classmethod
    def from_file(cls, path: str | Path, **columns: Any) -> ReplayPolicy:
        return cls(traces=load_traces(path, **columns))

    def model_names(self) -> list[str]:
        return []

    def complete(self, request: ChatRequest, index: int) -> Completion:
        recorded = self.table.find(request.prompt)
        content, reasoning = recorded[((request.seed or 0) + index) % len(recorded)]
        return Completion(content, reasoning)


@dataclass
class FixedPolicy:
    """The same completion for every request (default: 200 words ending in a boxed 42)."""

    name: ClassVar[str] = "fixed"
    text: str | None = None
    words: int = 200

    def __post_init__(self) -> None:
        if self.text is None:
            body = filler(random.Random(0), max(self.words - 4, 0))
            self.text = f"{body} The answer is \\boxed{{42}}."

    def model_names(self) -> list[str]:
        return []

    def complete(self, request: ChatRequest, index: int) -> Completion:
        return Completion(self.text or "")


RULE_MARKER = re.compile(r"\[\[rule (?P<problem>[^\s\]]+) fits (?P<fits>[\d,]*) of (?P<n>\d+)\]\]")


def rule_marker(problem: str, fits: Iterable[int], n: int) -> str:
    """The marker a `rules` rule carries: which demonstrations (1-based) it reproduces."""
    return f"[[rule {problem} fits {','.join(map(str, sorted(fits)))} of {n}]]"


def wrong_output(value: Any) -> str:
    """A demonstration output changed so that it no longer matches: a list literal with its
    last item changed (or a 0 appended to an empty one), any other text prefixed by `not`."""
    import ast

    text = value if isinstance(value, str) else json.dumps(value)
    try:
        parsed = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        parsed = None
    if isinstance(parsed, list):
        if not parsed:
            return "[0]"
        last = parsed[-1]
        parsed[-1] = last + 1 if isinstance(last, int) and not isinstance(last, bool) else 0
        if parsed[-1] == last:
            parsed.append(0)
        return repr(parsed)
    return f"not {text}"


@dataclass
class RulesPolicy:
    """ReDis, scripted: rules that fit a drawn subset of the demonstrations, and applications
    that reproduce exactly that subset (see the module docstring).

    `problems` maps a problem's prompt to (problem id, demonstration outputs). A rule for a
    problem with N demonstrations fits k of them, k drawn uniformly from 0..N per request and
    choice (the subset uniformly among those of size k), so equal draws give equal rule texts,
    which exact dedup then removes."""

    name: ClassVar[str] = "rules"
    problems: Mapping[str, tuple[str, list[Any]]]

    def __post_init__(self) -> None:
        self.table = PromptTable(self.problems)
        self.by_id = {pid: outputs for pid, outputs in self.problems.values()}

    @classmethod
    def from_file(
        cls,
        path: str | Path,
        *,
        prompt_column: str = "prompt",
        id_column: str = "id",
        demonstrations_column: str = "train",
    ) -> RulesPolicy:
        rows = read_rows(path)
        for name in (prompt_column, id_column, demonstrations_column):
            _column(rows, path, name)
        problems: dict[str, tuple[str, list[Any]]] = {}
        for i, row in enumerate(rows):
            demos = row[demonstrations_column]
            if not isinstance(demos, list) or not all(
                isinstance(d, dict) and "output" in d for d in demos
            ):
                raise InputError(
                    f"{path}: row {i}: '{demonstrations_column}' must be a list of "
                    "{input, output} objects"
                )
            problems[str(row[prompt_column])] = (
                str(row[id_column]),
                [d["output"] for d in demos],
            )
        return cls(problems=problems)

    def model_names(self) -> list[str]:
        return []

    def complete(self, request: ChatRequest, index: int) -> Completion:
        text = request.prompt
        marker = RULE_MARKER.search(text)
        if marker is not None:
            outputs = self.by_id.get(marker.group("problem"))
            if outputs is None:
                raise PromptNotFound(f"rule for an unknown problem: {marker.group()!r}")
            fits = {int(f) for f in marker.group("fits").split(",") if f}
            lines = [
                f"Output {i}: {out if i in fits else wrong_output(out)}"
                for i, out in enumerate(outputs, start=1)
            ]
            return Completion("\n".join(lines))
        problem, outputs = self.table.find(text)
        rng = random.Random(request.key(index))
        n = len(outputs)
        chosen = sorted(rng.sample(range(1, n + 1), rng.randint(0, n)))
        shown = ", ".join(map(str, chosen)) or "none"
        return Completion(
            f"The rule maps each input to its output the way examples {shown} show; it does "
            f"not hold for the other examples. {rule_marker(problem, chosen, n)}"
        )


POLICIES: dict[str, type[Any]] = {
    "reference": ReferencePolicy,
    "replay": ReplayPolicy,
    "fixed": FixedPolicy,
    "echo": FixedPolicy,
    "rules": RulesPolicy,
}
