"""A judgement with its own score, for methods whose score is more than 1/0.

`verify` writes `verdict`, `score` and `verify_detail` from it, as it does from a `Judgement`
(whose score is always 1.0 / 0.0 / None). The code method scores the fraction of tests passed;
the demonstrations method scores the number of demonstrations reproduced."""

from __future__ import annotations

from typing import NamedTuple


class Scored(NamedTuple):
    """One row's verdict (None: not judged), its score (None when not judged) and why."""

    verdict: bool | None
    detail: str
    score: float | None
