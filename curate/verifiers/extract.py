"""Answer extraction: pull the final answer out of a completion string.

Three strategies, each returning None when it finds nothing:

- `last_boxed`: the content of the last `\\boxed{...}` / `\\fbox{...}`, braces matched properly
  (so `\\boxed{\\frac{1}{2}}` gives `\\frac{1}{2}`; `\\{` and `\\}` are literal braces).
- `last_answer_is`: what follows the last "answer is X" / "Answer: X" marker on its line.
- `last_regex`: group 1 of the last match of a user pattern.

`extract_answer` picks among them by mode; mode "auto" tries boxed, then answer-is.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Literal

ExtractMode = Literal["auto", "boxed", "answer_is", "regex"]
EXTRACT_MODES: tuple[str, ...] = ("auto", "boxed", "answer_is", "regex")

# `\boxed{`, `\boxed {`, `\fbox{`; not `\boxedx{`.
_BOX_OPEN = re.compile(r"\\(?:boxed|fbox)\s*\{")
# `\boxed 5`: TeX takes the next token as the argument.
_BOX_BARE = re.compile(r"\\boxed[ \t]+([^\s${}\\]+)")

# "the answer is X", "answer is: X", "Answer: X", "**Answer:** X", "**Answer**: X", "answer = X".
_ANSWER_MARKER = re.compile(r"\banswer\b(?:\*\*)?[ \t]*(?:is\b[ \t]*:?|[:=])(?:\*\*)?", re.I)
_ANSWER_WORD = re.compile("answer", re.I)
# "# Answer", "## Final Answer", "### **Answer**": a heading line whose next line is the answer.
_ANSWER_HEADING = re.compile(r"answer\b(?:\*\*)?[ \t]*:?[ \t]*(?=\n|\Z)", re.I)
_HEADING_PREFIX = re.compile(r"[ \t]*#{1,6}[ \t]*(?:\*\*)?[ \t]*(?:final[ \t]+)?", re.I)
_MARKDOWN_EDGES = re.compile(r"^(?:\*\*|__|\*)+|(?:\*\*|__|\*)+$")
_SENTENCE_END = re.compile(r"\.\s")  # "5. Because ..." ends the answer; "3.5" does not


def matching_brace(text: str, open_index: int) -> int | None:
    """Index of the `}` closing the `{` at `open_index`, or None if it is never closed.

    A backslash escapes the next character, so `\\{` and `\\}` do not count."""
    depth = 0
    i = open_index
    n = len(text)
    while i < n:
        char = text[i]
        if char == "\\":
            i += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def boxed_contents(text: str) -> list[str]:
    """Contents of the complete boxes in `text`, in order, outermost only (a box inside another
    box is part of that box's content). Unterminated boxes (a truncated completion) are skipped."""
    spans: list[tuple[int, int, str]] = []
    for match in _BOX_OPEN.finditer(text):
        open_index = match.end() - 1
        close_index = matching_brace(text, open_index)
        if close_index is not None:
            spans.append((match.start(), close_index + 1, text[open_index + 1 : close_index]))
    for match in _BOX_BARE.finditer(text):
        spans.append((match.start(), match.end(), match.group(1)))
    spans.sort(key=lambda span: span[0])
    contents: list[str] = []
    outer_end = -1
    for start, end, content in spans:
        if start < outer_end:  # nested in the previous outer box
            continue
        outer_end = end
        contents.append(content)
    return contents


def _unwrap_box(value: str) -> str:
    """`\\boxed{\\boxed{5}}` holds `\\boxed{5}`: take the inner box when it is all there is."""
    value = value.strip()
    while True:
        inner = boxed_contents(value)
        match = _BOX_OPEN.match(value)
        if len(inner) != 1 or match is None:
            return value
        close_index = matching_brace(value, match.end() - 1)
        if close_index != len(value) - 1:
            return value
        value = inner[0].strip()


def last_boxed(text: str) -> str | None:
    """Content of the last non-empty box, stripped; None when there is none."""
    for content in reversed(boxed_contents(text)):
        value = _unwrap_box(content)
        if value:
            return value
    return None


def strip_math_delimiters(value: str) -> str:
    """Remove one layer of `$...$`, `$$...$$`, `\\(...\\)` or `\\[...\\]` around the whole value."""
    value = value.strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if (
            len(value) >= len(left) + len(right)
            and value.startswith(left)
            and value.endswith(right)
        ):
            inner = value[len(left) : len(value) - len(right)].strip()
            if left == "$" and "$" in inner:  # `$a$ and $b$` is not one math span
                continue
            return inner
    return value


def _clean_marker_rest(rest: str) -> str | None:
    """Tidy what follows an answer marker: unwrap a box, cut at the sentence's end, drop
    markdown emphasis, math delimiters and a final period."""
    boxed = last_boxed(rest)
    if boxed is not None:
        return boxed
    value = rest.strip()
    end = _SENTENCE_END.search(value)
    if end is not None:
        value = value[: end.start()]
    for _ in range(2):  # `**$5$**.` needs two rounds
        value = _MARKDOWN_EDGES.sub("", value.strip())
        value = strip_math_delimiters(value)
        value = value.rstrip(" .").strip()
    return value or None


def _answer_word_starts(text: str, *, fast: bool = True) -> Iterator[int]:
    """Where the word "answer" (any case) starts, from the last to the first. `str.rfind` on
    the lowercased text is about 30x faster than a regex over the whole completion; the regex
    is the fallback when lowercasing changes the text's length (indices would shift)."""
    lowered = text.lower()
    if fast and len(lowered) == len(text):
        end = len(lowered)
        while (start := lowered.rfind("answer", 0, end)) >= 0:
            yield start
            end = start
        return
    yield from reversed([match.start() for match in _ANSWER_WORD.finditer(text)])


def _marker_at(text: str, start: int) -> re.Match[str] | None:
    """An answer marker beginning at `start`: "answer is", "Answer:", or a Markdown heading
    line "# Answer" / "## Final Answer" (PRM800K and QwQ put the answer on the next line)."""
    match = _ANSWER_MARKER.match(text, start)
    if match is not None:
        return match
    heading = _ANSWER_HEADING.match(text, start)
    if heading is None:
        return None
    line_start = text.rfind("\n", 0, start) + 1
    return heading if _HEADING_PREFIX.fullmatch(text, line_start, start) else None


def answer_markers_from_last(text: str, *, fast: bool = True) -> Iterator[re.Match[str]]:
    """The answer markers in `text`, from the last to the first."""
    for start in _answer_word_starts(text, fast=fast):
        match = _marker_at(text, start)
        if match is not None:
            yield match


def last_answer_is(text: str) -> str | None:
    """The answer after the last "answer is" / "Answer:" marker. When the marker ends its line
    ("**Final Answer:**" then the answer on its own line), the next non-empty line is taken."""
    for match in answer_markers_from_last(text):
        line_end = text.find("\n", match.end())
        line_end = len(text) if line_end < 0 else line_end
        rest = text[match.end() : line_end]
        if not rest.strip():
            following = [line for line in text[line_end:].split("\n") if line.strip()]
            rest = following[0] if following else ""
        value = _clean_marker_rest(rest)
        if value is not None:
            return value
    return None


def last_regex(text: str, pattern: str | re.Pattern[str]) -> str | None:
    """Group 1 (the whole match when the pattern has no group) of the last match, stripped."""
    compiled = re.compile(pattern) if isinstance(pattern, str) else pattern
    matches = list(compiled.finditer(text))
    if not matches:
        return None
    value = matches[-1].group(1) if compiled.groups else matches[-1].group(0)
    if value is None:
        return None
    return value.strip() or None


def extract_answer(
    text: str | None,
    mode: ExtractMode = "auto",
    pattern: str | re.Pattern[str] | None = None,
) -> str | None:
    """The final answer in `text` by `mode`; None when nothing can be extracted.

    auto: the last box, else the last answer-is line. regex: needs `pattern`."""
    if not text:
        return None
    if mode == "boxed":
        return last_boxed(text)
    if mode == "answer_is":
        return last_answer_is(text)
    if mode == "regex":
        if pattern is None:
            raise ValueError("extract mode 'regex' needs a pattern")
        return last_regex(text, pattern)
    if mode == "auto":
        boxed = last_boxed(text)
        return boxed if boxed is not None else last_answer_is(text)
    raise ValueError(f"unknown extract mode {mode!r}; expected one of {', '.join(EXTRACT_MODES)}")
