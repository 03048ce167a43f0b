"""The `verify` operator: judge each trace's final answer against the problem's reference.

For every row it extracts an answer from `completion` and adds the verdict columns
(`extracted_answer`, `verdict`, `score`, `verifier`, `verify_detail`). It never drops a row: a
trace that cannot be judged (no answer, unusable reference, timeout) gets a null verdict and a
`verify_detail` saying why, and later steps decide what to do with it.

Methods: `math` (math-verify equivalence, in worker processes, each check bounded in time),
`exact` (normalized string), `numeric` (numbers within a tolerance), `choice` (option letters).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import ClassVar, Literal

import polars as pl
from pydantic import Field, model_validator

from curate.operators import Operator, OpResult, Params, Scope
from curate.verifiers.extract import ExtractMode, extract_answer
from curate.verifiers.result import Judgement, no_answer, unparseable_reference
from curate.verifiers.simple import choice_check, exact_check, extract_choice, numeric_check

Method = Literal["math", "exact", "numeric", "choice"]

COMPLETION = "completion"
REFERENCE = "reference_answer"


class VerifyParams(Params):
    """How to extract the answer and how to compare it with the reference."""

    method: Method = Field(
        default="math",
        description=(
            "math: math-verify equivalence (fractions, radicals, intervals, ...); "
            "exact: normalized string equality; numeric: numbers within rel_tol/abs_tol; "
            "choice: multiple-choice letters"
        ),
    )
    extract: ExtractMode = Field(
        default="auto",
        description=(
            "where the answer is: boxed (last \\boxed{}), answer_is (last 'answer is X' / "
            "'Answer: X'), regex (group 1 of the last match of `pattern`); auto: boxed, "
            "then answer_is"
        ),
    )
    pattern: str | None = Field(
        default=None, description="regex with one capture group, for extract: regex"
    )
    timeout_s: int = Field(
        default=5,
        ge=1,
        le=600,
        description=(
            "math: seconds allowed for each parse and comparison (whole seconds: math-verify "
            "uses SIGALRM); a check past that gets a null verdict, detail 'timeout'"
        ),
    )
    rel_tol: float = Field(default=1e-9, ge=0.0, description="numeric: relative tolerance")
    abs_tol: float = Field(default=1e-12, ge=0.0, description="numeric: absolute tolerance")
    choices: str = Field(
        default="ABCDE",
        pattern=r"^[A-Z]+$",
        description="choice: the option letters, upper case",
    )

    @model_validator(mode="after")
    def _pattern_matches_mode(self) -> VerifyParams:
        if self.extract == "regex":
            if not self.pattern:
                raise ValueError("extract: regex needs a `pattern` with one capture group")
            try:
                compiled = re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"pattern is not a valid regex: {exc}") from None
            if compiled.groups != 1:
                raise ValueError(
                    f"pattern must have exactly one capture group, it has {compiled.groups}"
                )
        elif self.pattern is not None:
            raise ValueError("`pattern` is used only with extract: regex")
        return self


class Verify(Operator[VerifyParams]):
    """Judge each trace's final answer against the reference; adds verdict columns, drops none."""

    name: ClassVar[str] = "verify"
    version: ClassVar[str] = "1"
    scope: ClassVar[Scope] = Scope.BATCH
    params_model: ClassVar[type[Params]] = VerifyParams
    requires: ClassVar[tuple[str, ...]] = (COMPLETION, REFERENCE)

    def verifier_name(self) -> str:
        """What goes in the `verifier` column: the method, and for math the library version."""
        if self.params.method == "math":
            from curate.verifiers.math import MATH_VERIFIER

            return MATH_VERIFIER
        return self.params.method

    def extract(self, completion: str | None) -> str | None:
        """The answer this operator reads from one completion (None: nothing found)."""
        answer = extract_answer(completion, self.params.extract, self.params.pattern)
        if answer is None and self.params.method == "choice" and completion:
            # A completion that is nothing but an option letter ("B", "(B)").
            stripped = completion.strip()
            if extract_choice(stripped, self.params.choices) is not None and len(stripped) <= 8:
                answer = stripped
        return answer

    def apply(self, frame: pl.DataFrame) -> OpResult:
        completions = frame.get_column(COMPLETION).cast(pl.String).to_list()
        references = frame.get_column(REFERENCE).cast(pl.String).to_list()
        answers = [self.extract(text) for text in completions]
        judgements = self.judge(answers, references)
        columns = [
            pl.Series("extracted_answer", answers, dtype=pl.String),
            pl.Series("verdict", [j.verdict for j in judgements], dtype=pl.Boolean),
            pl.Series("score", [j.score for j in judgements], dtype=pl.Float64),
            pl.repeat(self.verifier_name(), frame.height, dtype=pl.String, eager=True).alias(
                "verifier"
            ),
            pl.Series("verify_detail", [j.detail for j in judgements], dtype=pl.String),
        ]
        return OpResult.keep_all(frame.with_columns(columns))

    def judge(self, answers: list[str | None], references: list[str | None]) -> list[Judgement]:
        """One judgement per row. Rows without a reference or an answer are settled here; the
        rest go to the method's check (math: in worker processes, once per distinct pair)."""
        out: list[Judgement | None] = [None] * len(answers)
        todo: list[int] = []
        for i, (answer, reference) in enumerate(zip(answers, references, strict=True)):
            if reference is None or not reference.strip():
                out[i] = unparseable_reference("no reference answer")
            elif answer is None:
                out[i] = no_answer()
            else:
                todo.append(i)
        pairs = [(answers[i] or "", references[i] or "") for i in todo]
        for i, judgement in zip(todo, self._check(pairs), strict=True):
            out[i] = judgement
        return [j if j is not None else no_answer() for j in out]

    def _check(self, pairs: list[tuple[str, str]]) -> list[Judgement]:
        params = self.params
        if not pairs:
            return []
        if params.method == "math":
            from curate.verifiers.math import run_math_checks

            return run_math_checks(
                pairs, workers=max(1, self.context.workers), timeout_s=params.timeout_s
            )
        check: Callable[[str, str], Judgement]
        if params.method == "exact":
            check = exact_check
        elif params.method == "numeric":

            def check(answer: str, reference: str) -> Judgement:
                return numeric_check(
                    answer, reference, rel_tol=params.rel_tol, abs_tol=params.abs_tol
                )

        else:

            def check(answer: str, reference: str) -> Judgement:
                return choice_check(answer, reference, choices=params.choices)

        cache: dict[tuple[str, str], Judgement] = {}
        results = []
        for pair in pairs:
            if pair not in cache:
                cache[pair] = check(*pair)
            results.append(cache[pair])
        return results
