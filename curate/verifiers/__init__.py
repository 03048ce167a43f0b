"""Answer verifiers: extract a final answer from a completion and judge it against a reference.

`extract` pulls the answer out (last box, "answer is" line, or a user regex); `simple` holds the
exact / numeric / multiple-choice checks; `math` runs math-verify in bounded worker processes.
The `verify` operator (curate.verify) wires them to the pool's columns.
"""

from __future__ import annotations

from curate.verifiers.extract import (
    EXTRACT_MODES,
    ExtractMode,
    extract_answer,
    last_answer_is,
    last_boxed,
    last_regex,
)
from curate.verifiers.result import Judgement
from curate.verifiers.simple import (
    choice_check,
    exact_check,
    extract_choice,
    normalize_exact,
    numeric_check,
    parse_number,
)

__all__ = [
    "EXTRACT_MODES",
    "ExtractMode",
    "Judgement",
    "choice_check",
    "exact_check",
    "extract_answer",
    "extract_choice",
    "last_answer_is",
    "last_boxed",
    "last_regex",
    "normalize_exact",
    "numeric_check",
    "parse_number",
]
