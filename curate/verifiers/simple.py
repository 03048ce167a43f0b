"""The cheap verifiers, pure functions of (extracted answer, reference):

- `exact_check`: normalized string equality (NFKC, trimmed, whitespace collapsed, case-folded,
  surrounding `$` and a trailing period removed).
- `numeric_check`: both sides read as numbers (thousands commas, fractions `3/4` and
  `\\frac{3}{4}`, mixed numbers, a leading currency sign, an optional `%` or degree sign,
  trailing unit words) and compared within `rel_tol` / `abs_tol`.
- `choice_check`: a multiple-choice letter read from each side ("(B)", "B)", "B.",
  `\\text{B}`, "B: text") and compared case-insensitively.
"""

from __future__ import annotations

import math
import re
import unicodedata
from fractions import Fraction

from curate.verifiers.extract import strip_math_delimiters
from curate.verifiers.result import Judgement, matched, unparseable_reference

# ---------------------------------------------------------------------------------------- exact

_WHITESPACE = re.compile(r"\s+")


def normalize_exact(text: str) -> str:
    """The form `exact` compares: NFKC, trimmed, without surrounding `$` (or `\\(..\\)`) and a
    trailing period, whitespace runs collapsed to one space, case-folded."""
    value = unicodedata.normalize("NFKC", text).strip()
    value = strip_math_delimiters(value)
    value = value.rstrip().rstrip(".").rstrip()
    value = strip_math_delimiters(value)
    return _WHITESPACE.sub(" ", value).casefold().strip()


def exact_check(answer: str, reference: str) -> Judgement:
    """Normalized string equality; an empty normalized reference cannot be judged."""
    gold = normalize_exact(reference)
    if not gold:
        return unparseable_reference("empty after normalization")
    return matched(normalize_exact(answer) == gold)


# -------------------------------------------------------------------------------------- numeric

_DECIMAL = r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_THOUSANDS = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?"
_UNSIGNED = rf"(?:{_THOUSANDS}|{_DECIMAL})"
_PLAIN = re.compile(rf"([+-]?)({_UNSIGNED})")
_SLASH = re.compile(rf"([+-]?)({_UNSIGNED})\s*/\s*({_UNSIGNED})")
_MIXED = re.compile(r"([+-]?)(\d+)\s+(\d+)\s*/\s*(\d+)")
_LATEX_FRAC = re.compile(
    rf"([+-]?)(\d+)?\s*\\frac\s*\{{\s*({_UNSIGNED})\s*\}}\s*\{{\s*({_UNSIGNED})\s*\}}"
)
_SCIENTIFIC = re.compile(
    rf"([+-]?{_UNSIGNED})\s*(?:\\times|\\cdot|x|\*)\s*10\s*\^\s*\{{?\s*([+-]?\d+)\s*\}}?"
)
# "x = 5", "n=5": a single variable name before the value.
_ASSIGNMENT = re.compile(r"^[A-Za-z](?:_\{?\w+\}?)?\s*=\s*(.+)$")
# A value followed by unit words: "5 apples", "12 \text{ cm}", "100 square units".
_TRAILING_WORDS = re.compile(
    r"^(.*?[\d}])(?:\s*\\(?:text|mathrm|mbox|textrm)\s*\{\s*[A-Za-z][A-Za-z ]*\}"
    r"|\s+[A-Za-z]{2,}(?:\s+[A-Za-z]+)*)\s*$"
)
_LATEX_SPACES = re.compile(r"\\[!,;: ]|\\q?quad")
_DEGREES = re.compile(r"(?:\^\s*\{?\s*\\circ\s*\}?|°|\\degree)$")
_CURRENCY = re.compile(r"^(?:\\\$|\$|€|£|¥|USD\s*|Rs\.?\s*)")


def _clean_number_text(text: str) -> str:
    value = unicodedata.normalize("NFKC", text).strip().replace("\u2212", "-")
    value = strip_math_delimiters(value)
    value = value.replace("{,}", ",")
    value = _LATEX_SPACES.sub("", value)
    value = re.sub(r"\\[dt]frac", r"\\frac", value)
    value = value.replace("\\left", "").replace("\\right", "")
    value = value.rstrip().rstrip(".").strip()
    sign = ""
    if value[:1] in "+-":  # "-$5" keeps its sign in front of the currency
        sign, value = value[:1], value[1:].lstrip()
    value = _CURRENCY.sub("", value).strip()
    if value.endswith("\\%"):
        value = value[:-2].rstrip()
    elif value.endswith("%"):
        value = value[:-1].rstrip()
    value = _DEGREES.sub("", value).rstrip()
    return sign + value


def _number(sign: str, digits: str) -> Fraction:
    magnitude = Fraction(digits.replace(",", ""))
    return -magnitude if sign == "-" else magnitude


def _parse_clean(value: str) -> Fraction | None:
    """A number from a cleaned string that must be nothing but the number."""
    if (m := _PLAIN.fullmatch(value)) is not None:
        return _number(m.group(1), m.group(2))
    if (m := _SLASH.fullmatch(value)) is not None:
        denominator = _number("", m.group(3))
        return None if denominator == 0 else _number(m.group(1), m.group(2)) / denominator
    if (m := _MIXED.fullmatch(value)) is not None:
        if int(m.group(4)) == 0:
            return None
        magnitude = int(m.group(2)) + Fraction(int(m.group(3)), int(m.group(4)))
        return -magnitude if m.group(1) == "-" else magnitude
    if (m := _LATEX_FRAC.fullmatch(value)) is not None:
        denominator = _number("", m.group(4))
        if denominator == 0:
            return None
        magnitude = _number("", m.group(3)) / denominator + int(m.group(2) or 0)
        return -magnitude if m.group(1) == "-" else magnitude
    if (m := _SCIENTIFIC.fullmatch(value)) is not None:
        exponent = int(m.group(2))
        if abs(exponent) > 400:
            return None
        return Fraction(m.group(1).replace(",", "")) * Fraction(10) ** exponent
    return None


def parse_number(text: str | None) -> Fraction | None:
    """The number `text` states, exactly; None when it is not a single number.

    Accepts "1,234.5", "3/4", "-\\frac{3}{4}", "1 1/2", "12\\frac{3}{5}", "2.5e3",
    "2.5 \\times 10^{3}", "$1,000", "25%" (the `%` is dropped: 25), "x = 5", "5 apples",
    "12\\text{ cm}"."""
    if text is None:
        return None
    value = _clean_number_text(text)
    if not value:
        return None
    number = _parse_clean(value)
    if number is not None:
        return number
    if (m := _ASSIGNMENT.match(value)) is not None:
        return parse_number(m.group(1))
    if (m := _TRAILING_WORDS.match(value)) is not None and m.group(1) != value:
        return _parse_clean(_clean_number_text(m.group(1)))
    return None


def numeric_check(answer: str, reference: str, *, rel_tol: float, abs_tol: float) -> Judgement:
    """Numbers equal exactly, or within `rel_tol` (relative) or `abs_tol` (absolute)."""
    gold = parse_number(reference)
    if gold is None:
        return unparseable_reference(f"not a number: {reference[:80]!r}")
    value = parse_number(answer)
    if value is None:
        return matched(False, "answer is not a number")
    if value == gold:
        return matched(True)
    return matched(math.isclose(float(value), float(gold), rel_tol=rel_tol, abs_tol=abs_tol))


# --------------------------------------------------------------------------------------- choice

_TEXT_WRAPPER = re.compile(r"^\\(?:text|textbf|mathrm|mathbf|textrm|mbox)\s*\{(.*)\}$", re.S)
_MARKDOWN = re.compile(r"^(?:\*\*|__|\*)+|(?:\*\*|__|\*)+$")


def _unwrap_choice_text(text: str) -> str:
    value = unicodedata.normalize("NFKC", text).strip()
    for _ in range(4):
        before = value
        value = strip_math_delimiters(value)
        value = _MARKDOWN.sub("", value).strip()
        if (m := _TEXT_WRAPPER.match(value)) is not None:
            value = m.group(1).strip()
        value = value.rstrip(".").strip()
        if value == before:
            break
    return value


def extract_choice(text: str | None, choices: str = "ABCDE") -> str | None:
    """The option letter `text` names, upper-cased; None when it names none.

    A bare letter or a wrapped one ("(b)", "[B]", `\\text{B}`, "**B**") may be any case. A
    letter followed by option text ("B) 42", "(B) 42", "B. 42", "B: 42") must be upper case, so
    that "a prime number" is not read as option A. "Option B" / "choice (B)" are read too."""
    if not text:
        return None
    value = _unwrap_choice_text(text)
    value = re.sub(r"^(?:option|choice)\s+", "", value, flags=re.I)
    allowed = re.escape(choices.upper() + choices.lower())
    bare = re.fullmatch(rf"[(\[]?\s*([{allowed}])\s*[)\]]?", value)
    if bare is not None:
        return bare.group(1).upper()
    upper = re.escape(choices.upper())
    leading = re.match(rf"^(?:\(([{upper}])\)|([{upper}])[).:])\s*\S", value)
    if leading is not None:
        return (leading.group(1) or leading.group(2)).upper()
    return None


def choice_check(answer: str, reference: str, *, choices: str = "ABCDE") -> Judgement:
    """Same option letter on both sides."""
    gold = extract_choice(reference, choices)
    if gold is None:
        return unparseable_reference(f"no option letter ({choices}) in {reference[:80]!r}")
    letter = extract_choice(answer, choices)
    if letter is None:
        return matched(False, "no option letter in answer")
    return matched(letter == gold)
