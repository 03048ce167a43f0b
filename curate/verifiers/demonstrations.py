"""Demonstration scoring for rule distillation (ReDis): how many demonstration outputs a rule's
applications reproduce exactly.

Row shape. A problem's demonstrations are in its `problem_meta` JSON under `field` (default: the
first of "demonstrations", "train", "examples" present): a list of `{"input": ..., "output":
...}` objects (or `[input, output]` pairs), as in the ReDis task files (1D-ARC, List Functions,
ACRE, MiniSCAN: `input.columns.meta: [train]`). The row being verified is an *application*
trace: a `sample` with `input: trace` showed the teacher a candidate rule and every demonstration
input, and its `completion` holds the rule's output for each of them, in order.

Finding the N applications in one completion (fence lines such as ```` ``` ```` are ignored):
1. labelled lines: `Output 1: ...`, `Output 2: ...` (also `**Output 1:**`, `- Output #1 =`,
   any case). Numbered labels go to that demonstration; unnumbered ones (`Output: ...`) are
   taken in order, the last N when there are more. A label with nothing after it takes the
   lines that follow, up to the next `Output`/`Input` label;
2. otherwise the whole completion as one Python/JSON list of N items (`[[0, 1], [2]]`,
   `["on", "off"]`) whose items have the demonstrations' kind (lists for list outputs);
3. otherwise N non-empty lines, one output each (leading `1.` / `1)` / `-` removed);
4. otherwise, when N is 1, the whole completion.
What cannot be found counts as not reproduced.

Comparing one application with its demonstration output. When the expected output is a list (or
a string holding a Python list, tuple, dict or set literal, as in 1D-ARC and List Functions),
the application is parsed with `ast.literal_eval` (the whole text, else the first bracketed
span that parses, as the ReDis code takes the first `[...]`) and compared structurally: equal
lengths, items of the same types and values (`True` is not `1`, `3.0` is not `3`). Otherwise
both are compared as text after normalizing: surrounding whitespace, quotes, backticks and
`*`/`_` emphasis removed, one final period dropped, runs of whitespace made one space, case
folded (ACRE's `On.` is `on`; MiniSCAN's `red  RED` is `RED RED`).

Score: the NUMBER of demonstrations reproduced (not a fraction), because ReDis pairs rules by a
margin counted in demonstrations (1, 2, 3, 4 for 1D-ARC, ACRE, List Functions, MiniSCAN).
Verdict: all reproduced. `verify_detail`: `reproduced k/N`, then the first miss; the total N
is there and in the problem's own demonstrations. A problem without usable demonstrations gets a
null verdict and score.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Sequence
from typing import Any

from curate.verifiers.meta import meta_field
from curate.verifiers.result import REFERENCE_UNPARSEABLE
from curate.verifiers.scored import Scored

DEFAULT_FIELDS = ("demonstrations", "train", "examples")
REPRODUCED = "reproduced"
SHOWN_CHARS = 60

_FENCE_LINE = re.compile(r"^[ \t]*(?:`{3,}|~{3,})[^\n]*$", re.M)
_LABEL = re.compile(
    r"^[ \t]*(?:[-*>#][ \t]*)*(?:\*\*|__)?[ \t]*(?P<word>output|input)[ \t]*"
    r"(?:#|no\.)?[ \t]*(?P<number>\d+)?[ \t]*(?:\*\*|__)?[ \t]*[:=][ \t]*(?:\*\*|__)?"
    r"(?P<rest>.*)$",
    re.I,
)
_ITEM_PREFIX = re.compile(r"^[ \t]*(?:\d+[.)]|[-*])[ \t]+")
_EDGES = "\"'`*_ \t"

Demonstrations = list[Any]  # the expected outputs, in order


def demonstrations(meta: str | None, field: str | None) -> Demonstrations | str:
    """The expected outputs from a row's problem_meta JSON, or why there are none."""
    found = meta_field(
        meta,
        (field,) if field else DEFAULT_FIELDS,
        what="demonstrations",
        usable=lambda value: isinstance(value, list) and bool(value),
    )
    if isinstance(found, str):
        return found
    data, name = found
    outputs: Demonstrations = []
    for i, item in enumerate(data[name]):
        if isinstance(item, dict) and "output" in item:
            outputs.append(item["output"])
        elif isinstance(item, list) and len(item) == 2:
            outputs.append(item[1])
        else:
            return (
                f"problem_meta[{name!r}][{i}] is not an {{input, output}} object or an "
                "[input, output] pair"
            )
    return outputs


# ------------------------------------------------------------------------ parsing outputs
def parse_literal(text: str) -> tuple[bool, Any]:
    """(True, value) when `text` (if it starts with a bracket), or failing that its first
    bracketed span, is a Python literal; (False, None) otherwise. `1, 2` is not `[1, 2]`."""
    stripped = text.strip().strip("`").strip()
    if stripped[:1] in ("[", "(", "{"):
        try:
            return True, ast.literal_eval(stripped)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            pass
    for start, char in enumerate(stripped):
        if char not in "[({":
            continue
        end = _matching(stripped, start)
        if end is None:
            continue
        try:
            return True, ast.literal_eval(stripped[start : end + 1])
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
    return False, None


def _matching(text: str, start: int) -> int | None:
    pairs = {"[": "]", "(": ")", "{": "}"}
    stack = []
    quote: str | None = None
    for i in range(start, len(text)):
        char = text[i]
        if quote:
            if char == quote and text[i - 1] != "\\":
                quote = None
        elif char in "'\"":
            quote = char
        elif char in pairs:
            stack.append(pairs[char])
        elif stack and char == stack[-1]:
            stack.pop()
            if not stack:
                return i
        elif char in ")]}":
            return None
    return None


def structured(expected: Any) -> tuple[bool, Any]:
    """(True, value) when the expected output is a container to compare structurally."""
    if isinstance(expected, (list, tuple, dict)):
        return True, expected
    if isinstance(expected, str):
        ok, value = (
            parse_literal(expected) if expected.strip()[:1] in ("[", "(", "{") else (False, None)
        )
        if ok and isinstance(value, (list, tuple, dict, set)):
            return True, value
    return False, None


def same(a: Any, b: Any) -> bool:
    """Structural equality: lists and tuples compare alike, item types must match (`True` is
    not `1`, `3.0` is not `3`)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return type(a) is type(b) and bool(a == b)  # 3 is not 3.0: exact reproduction


def normalize_text(value: Any) -> str:
    text = value if isinstance(value, str) else str(value)
    text = " ".join(text.split()).strip(_EDGES)
    if text.endswith(".") and not text.endswith(".."):
        text = text[:-1].strip(_EDGES)
    return text.casefold()


def reproduces(application: Any, expected: Any) -> bool:
    """Does one application reproduce one demonstration output?"""
    if application is None:
        return False
    is_structured, want = structured(expected)
    if is_structured:
        if isinstance(application, str):
            ok, got = parse_literal(application)
            if not ok:
                return False
        else:
            got = application
        return same(got, want)
    return normalize_text(application) == normalize_text(expected)


# --------------------------------------------------------------- finding the applications
def find_applications(completion: str | None, expected: Demonstrations) -> list[Any]:
    """One application per demonstration (None where none was found); see the module doc."""
    n = len(expected)
    missing: list[Any] = [None] * n
    if not completion or not completion.strip():
        return missing
    text = _FENCE_LINE.sub("", completion.replace("\r\n", "\n"))
    labelled = _labelled(text, n)
    if labelled is not None:
        return labelled
    whole = _literal_list(text, expected)
    if whole is not None:
        return whole
    lines = [_ITEM_PREFIX.sub("", line).strip() for line in text.split("\n") if line.strip()]
    if len(lines) == n:
        return lines
    if n == 1:
        return [text.strip()]
    return missing


def _labelled(text: str, n: int) -> list[Any] | None:
    outputs: list[tuple[int | None, str]] = []  # (number, value) per Output label
    collecting = False  # the last Output label had nothing after it: take the next lines
    for line in text.split("\n"):
        match = _LABEL.match(line)
        if match is not None:
            collecting = False
            if match.group("word").lower() == "output":
                number = match.group("number")
                rest = match.group("rest").strip()
                outputs.append((int(number) if number else None, rest))
                collecting = not rest
            continue
        if collecting and line.strip():
            number, value = outputs[-1]
            outputs[-1] = (number, f"{value}\n{line}" if value else line.strip())
    if not outputs:
        return None
    found: list[Any] = [None] * n
    if all(number is not None for number, _ in outputs):
        for number, value in outputs:
            if number is not None and 1 <= number <= n and value.strip():
                found[number - 1] = value.strip()
        return found
    values = [value.strip() or None for _, value in outputs][-n:]
    return values + [None] * (n - len(values))


def _literal_list(text: str, expected: Demonstrations) -> list[Any] | None:
    ok, value = parse_literal(text) if text.strip()[:1] in ("[", "(") else (False, None)
    if not ok or not isinstance(value, (list, tuple)) or len(value) != len(expected):
        return None
    for item, want in zip(value, expected, strict=True):
        is_structured, _ = structured(want)
        if is_structured != isinstance(item, (list, tuple, dict, set)):
            return None
    return list(value)


# ------------------------------------------------------------------------------- judging
def score_row(completion: str | None, expected: Demonstrations) -> tuple[str | None, Scored]:
    """(the applications found, as JSON; the judgement) for one row."""
    applications = find_applications(completion, expected)
    hits = [reproduces(a, e) for a, e in zip(applications, expected, strict=True)]
    k, n = sum(hits), len(expected)
    detail = f"{REPRODUCED} {k}/{n}"
    if all(a is None for a in applications):
        detail += "; no applications found"
    elif k < n:
        i = hits.index(False)
        detail += (
            f"; first miss: output {i + 1} expected {_shown(expected[i])} "
            f"got {_shown(applications[i])}"
        )
    shown = [a if a is None or isinstance(a, str) else repr(a) for a in applications]
    return json.dumps(shown, ensure_ascii=False), Scored(k == n, detail, float(k))


def _shown(value: Any) -> str:
    text = "nothing" if value is None else repr(value)
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 1] + "…"


def judge_demonstrations(
    completions: Sequence[str | None], metas: Sequence[str | None], *, field: str | None
) -> tuple[list[str | None], list[Scored]]:
    """The applications found in each row (JSON) and its judgement, in row order."""
    answers: list[str | None] = []
    judgements: list[Scored] = []
    cache: dict[str | None, Demonstrations | str] = {}
    for completion, meta in zip(completions, metas, strict=True):
        if meta not in cache:
            cache[meta] = demonstrations(meta, field)
        expected = cache[meta]
        if isinstance(expected, str):
            answers.append(None)
            judgements.append(Scored(None, f"{REFERENCE_UNPARSEABLE}: {expected}", None))
            continue
        answer, judgement = score_row(completion, expected)
        answers.append(answer)
        judgements.append(judgement)
    return answers, judgements
