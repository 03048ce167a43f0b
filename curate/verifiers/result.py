"""The outcome of one answer check, and the fixed wording of `verify_detail`.

Every verifier returns a `Judgement`: `verdict` is True/False, or None when the trace could not
be judged (no answer, unusable reference, timeout). `detail` starts with one of the constants
below, so a consumer can group rows by `verify_detail` prefix."""

from __future__ import annotations

from typing import NamedTuple

MATCH = "match"
MISMATCH = "mismatch"  # may be followed by ": why", e.g. "mismatch: answer is not a number"
NO_ANSWER = "no answer extracted"
REFERENCE_UNPARSEABLE = "reference unparseable"  # always followed by ": why"
TIMEOUT = "timeout"
WORKER_CRASHED = "worker crashed"


class Judgement(NamedTuple):
    """One check's outcome: the verdict (None: not judged) and why."""

    verdict: bool | None
    detail: str

    @property
    def score(self) -> float | None:
        """1.0 / 0.0 for a true / false verdict, None when not judged."""
        return None if self.verdict is None else float(self.verdict)


def matched(ok: bool, why: str | None = None) -> Judgement:
    """A true/false judgement; `why` qualifies a mismatch."""
    if ok:
        return Judgement(True, MATCH)
    return Judgement(False, f"{MISMATCH}: {why}" if why else MISMATCH)


def unparseable_reference(why: str) -> Judgement:
    return Judgement(None, f"{REFERENCE_UNPARSEABLE}: {why}")


def no_answer() -> Judgement:
    return Judgement(None, NO_ANSWER)
