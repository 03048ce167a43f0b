"""The `verify` operator: judge each trace's final answer against the problem's reference.

For every row it extracts an answer from `completion` and adds the verdict columns
(`extracted_answer`, `verdict`, `score`, `verifier`, `verify_detail`). It never drops a row: a
trace that cannot be judged (no answer, unusable reference, timeout) gets a null verdict and a
`verify_detail` saying why, and later steps decide what to do with it. A row whose teacher
request failed (`error` set, see `sample`) is not judged: null verdict, detail "request failed".

Methods: `math` (math-verify equivalence, in worker processes, each check bounded in time),
`exact` (normalized string), `numeric` (numbers within a tolerance), `choice` (option letters),
and two that read the problem's `problem_meta` instead of its reference answer: `code` (run the
trace's code against the problem's tests in a sandbox, curate.verifiers.code) and
`demonstrations` (count the demonstration outputs a rule's applications reproduce, for ReDis;
curate.verifiers.demonstrations). Their `score` is more than 1/0: the fraction of tests passed,
the number of demonstrations reproduced.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import ClassVar, Literal

import polars as pl
from pydantic import Field, model_validator

from curate.errors import OperatorError
from curate.operators import Operator, OpResult, Params, Scope
from curate.verifiers.extract import ExtractMode, extract_answer
from curate.verifiers.result import Judgement, no_answer, unparseable_reference
from curate.verifiers.scored import Scored
from curate.verifiers.simple import choice_check, exact_check, extract_choice, numeric_check

Method = Literal["math", "exact", "numeric", "choice", "code", "demonstrations"]
ROW_METHODS = ("code", "demonstrations")  # judged from problem_meta, not reference_answer

COMPLETION = "completion"
REFERENCE = "reference_answer"
ERROR = "error"
META = "problem_meta"
PROMPT = "prompt"
REQUEST_FAILED = "request failed"


class VerifyParams(Params):
    """How to extract the answer and how to compare it with the reference."""

    method: Method = Field(
        default="math",
        description=(
            "math: math-verify equivalence (fractions, radicals, intervals, ...); "
            "exact: normalized string equality; numeric: numbers within rel_tol/abs_tol; "
            "choice: multiple-choice letters; code: run the trace's last ```python block "
            "against problem_meta's tests in a sandbox; demonstrations: count the "
            "demonstration outputs (problem_meta) the completion's applications reproduce"
        ),
    )
    extract: ExtractMode = Field(
        default="auto",
        description=(
            "where the answer is: boxed (last \\boxed{}), answer_is (last 'answer is X' / "
            "'Answer: X'), regex (group 1 of the last match of `pattern`); auto: boxed, "
            "then answer_is. code: auto is the last ```python block, regex the pattern's "
            "group 1; demonstrations: auto only"
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
            "uses SIGALRM); a check past that gets a null verdict, detail 'timeout'. code: "
            "wall-clock seconds for one trace's run (start-up and all tests); past that the "
            "process group is killed and the verdict is false, detail 'timeout: ...'"
        ),
    )
    memory_mb: int = Field(
        default=1024,
        ge=64,
        le=65536,
        description="code: address-space limit of the sandboxed process, in MiB",
    )
    tests_field: str | None = Field(
        default=None,
        description=(
            "code: the problem_meta key holding the tests (a string of Python, or a list of "
            "strings, one test each); default: the first of tests, test, test_list present"
        ),
    )
    entry_point_field: str = Field(
        default="entry_point",
        description=(
            "code: the problem_meta key naming the function that HumanEval-style "
            "check(candidate) tests call; when absent, the last `def` in the prompt"
        ),
    )
    demonstrations_field: str | None = Field(
        default=None,
        description=(
            "demonstrations: the problem_meta key holding the {input, output} "
            "demonstrations; default: the first of demonstrations, train, examples present"
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
        if self.method == "code" and self.extract not in ("auto", "regex"):
            raise ValueError("method: code takes extract: auto (last ```python block) or regex")
        if self.method == "demonstrations" and self.extract != "auto":
            raise ValueError("method: demonstrations takes only extract: auto")
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
        if self.params.method == "code":
            from curate.verifiers.code import code_verifier_name

            return code_verifier_name()
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
        errors = (
            frame.get_column(ERROR).cast(pl.String).to_list()
            if ERROR in frame.columns
            else [None] * frame.height
        )
        judged: list[Judgement] | list[Scored]
        if self.params.method in ROW_METHODS:
            usable = [c if e is None else None for c, e in zip(completions, errors, strict=True)]
            found, judged = self.judge_rows(frame, usable)
            answers = [a if e is None else None for a, e in zip(found, errors, strict=True)]
        else:
            answers = [
                self.extract(text) if error is None else None
                for text, error in zip(completions, errors, strict=True)
            ]
            judged = self.judge(answers, references)
        judgements: list[Judgement | Scored] = list(judged)
        for i, error in enumerate(errors):
            if error is not None:
                judgements[i] = Judgement(None, f"{REQUEST_FAILED}: {error}")
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

    def judge_rows(
        self, frame: pl.DataFrame, completions: list[str | None]
    ) -> tuple[list[str | None], list[Scored]]:
        """code / demonstrations: (what was found in each completion, judgement) per row, from
        the tests or demonstrations in problem_meta."""
        params = self.params
        if META not in frame.columns:
            raise OperatorError(
                f"step '{self.context.stage_id}' (verify, method: {params.method}) reads the "
                f"{'tests' if params.method == 'code' else 'demonstrations'} from column "
                f"'{META}', which the pool does not have; map them with input.columns.meta"
            )
        metas = frame.get_column(META).cast(pl.String).to_list()
        if params.method == "code":
            from curate.verifiers.code import judge_code
            from curate.verifiers.sandbox import Limits

            prompts = (
                frame.get_column(PROMPT).cast(pl.String).to_list()
                if PROMPT in frame.columns
                else [None] * frame.height
            )
            return judge_code(
                completions,
                metas,
                prompts,
                pattern=params.pattern,
                tests_field=params.tests_field,
                entry_point_field=params.entry_point_field,
                limits=Limits(wall_s=float(params.timeout_s), memory_mb=params.memory_mb),
                workers=max(1, self.context.workers),
            )
        from curate.verifiers.demonstrations import judge_demonstrations

        return judge_demonstrations(completions, metas, field=params.demonstrations_field)

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
