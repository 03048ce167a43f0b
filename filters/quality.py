"""The `quality` operator: checks on each trace, each switchable and reported by name.

Checks run in this order; a dropped row carries the first one it fails (its reason code is the
check's name) and a `drop_detail` with what was measured against which bound. With
`action: flag` no row is dropped: every row keeps going and `quality_flags` lists the names of
all the checks it fails, comma-separated (null when it passes them all).

=================  ==============================  =============================================
reason             default                         when
=================  ==============================  =============================================
truncated          on (if the pool has             `finish_reason` is ``length`` or
                   finish_reason)                  ``max_tokens`` (any case: OpenAI, vLLM,
                                                   Anthropic, Gemini); a null finish_reason is
                                                   not evidence of truncation
missing_answer     on                              the completion is null or blank, or it has
                                                   more ``<think>`` than ``</think>`` tags (the
                                                   trace ended inside its reasoning), or nothing
                                                   but whitespace follows its last ``</think>``
missing_reasoning  off (`require_reasoning`)       the `reasoning` column is null or blank (or
                                                   absent) and the completion has no text before
                                                   a ``</think>``
no_final_answer    off                             no final answer: when `verify` has run, its
                                                   `extracted_answer` is null; before that, the
                                                   extraction `verify` uses by default (the last
                                                   ``\\boxed{}``, else the last "answer is X" /
                                                   "Answer: X" line; curate.verifiers.extract)
                                                   finds nothing in the completion
length             off                             a character or token count of the completion,
                                                   the reasoning or the whole trace is outside
                                                   its window
repetition         on: n = 20, max_repeats = 20    some n-gram of n tokens starts at more than
                   (DeepDistill's values)          max_repeats places of the text (tokens as
                                                   ``str.split()`` makes them; overlapping
                                                   places count; curate.filters.repetition)
script             off                             the fraction of the text's letters (Unicode
                                                   category L) that are in the listed Unicode
                                                   scripts is outside its window; a text with no
                                                   letters passes (curate.filters.scripts)
=================  ==============================  =============================================

Think tags follow the SFT export (curate.export.messages): a separate reasoning part lives in
the `reasoning` column; a completion may also carry it inline as ``<think>…</think>answer``, or
as ``…</think>answer`` when the chat template opened the tag in the prompt (R1). A completion
cut off inside reasoning whose opening tag was in the prompt has no tag to show it; `truncated`
and `no_final_answer` are the checks that catch it.
The text a check reads (`on`): `completion`, `reasoning`, or `trace`, which is the reasoning and
the completion joined by a newline (just the completion when the pool has no reasoning column).

Before `verify` has run, `no_final_answer` can only know the formats that extraction knows
(`\\boxed{}`, "answer is", "Answer:", a "# Answer" heading line); a trace that ends in another
one counts as having no answer. Check a sample first, or run `verify` (with `extract: regex` for
such a format) before `quality`, so that its extracted_answer decides.

`truncated` with its default value is skipped on a pool without a `finish_reason` column (traces
imported without one); writing `truncated: true` in the spec makes that an error instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import polars as pl
from pydantic import Field, field_validator, model_validator

from curate.errors import OperatorError
from curate.filters.common import Check, FloatWindow, IntWindow, first_failure, number_text
from curate.filters.repetition import find_repetitions
from curate.filters.scripts import check_scripts, letter_counts
from curate.operators import DROP_DETAIL, DROP_REASON, Filter, Params, Scope
from curate.tokens import APPROXIMATE, load_counter, tokenizer_file
from curate.verifiers.extract import extract_answer

Part = Literal["trace", "completion", "reasoning"]
FLAGS = "quality_flags"
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
TRUNCATION_REASONS = ("length", "max_tokens")
QUOTE_CHARS = 80  # longest n-gram quoted in a repetition detail

_REPEATED = "__quality_repeated"
_LETTERS = "__quality_letters"
_IN_SCRIPTS = "__quality_in_scripts"


class RepetitionCheck(Params):
    """An n-gram of `n` whitespace tokens may start at no more than `max_repeats` places."""

    n: int = Field(20, ge=1, description="tokens per n-gram (whitespace-separated, as str.split)")
    max_repeats: int = Field(
        20, ge=1, description="a row fails when some n-gram occurs more than this many times"
    )
    on: Part = Field("trace", description="text to read: trace, completion or reasoning")


class LengthBounds(Params):
    """Windows on lengths; a null text counts 0. `trace` is reasoning plus completion."""

    completion_chars: IntWindow | None = Field(None, description="characters of the completion")
    completion_tokens: IntWindow | None = Field(None, description="tokens of the completion")
    reasoning_chars: IntWindow | None = Field(None, description="characters of the reasoning")
    reasoning_tokens: IntWindow | None = Field(None, description="tokens of the reasoning")
    trace_chars: IntWindow | None = Field(None, description="characters of reasoning + completion")
    trace_tokens: IntWindow | None = Field(None, description="tokens of reasoning + completion")
    tokenizer: str = Field(
        APPROXIMATE,
        description="for *_tokens: 'approximate' (ceil(chars/4)) or a path to a tokenizer.json",
    )

    def bounds(self) -> list[tuple[str, IntWindow]]:
        """The windows given, in a fixed order (the first one a row fails is reported)."""
        names = [
            "completion_chars",
            "completion_tokens",
            "reasoning_chars",
            "reasoning_tokens",
            "trace_chars",
            "trace_tokens",
        ]
        return [(name, w) for name in names if (w := getattr(self, name)) is not None]

    @model_validator(mode="after")
    def _some_bound(self) -> LengthBounds:
        if not self.bounds():
            raise ValueError(
                "length: give at least one window, e.g. {completion_chars: {ge: 20}}, or leave "
                "`length` out"
            )
        return self


class ScriptBound(Params):
    """A window on the fraction of a text's letters that are in the listed Unicode scripts."""

    scripts: list[str] = Field(description="Unicode script names, e.g. [Latin, Greek] or [Han]")
    fraction: FloatWindow = Field(
        description=(
            "bounds on letters in `scripts` / all letters, e.g. {ge: 0.99} for 'mostly these "
            "scripts' or {le: 0.0} for 'none of these'"
        )
    )
    on: Part = Field("trace", description="text to read: trace, completion or reasoning")

    @field_validator("scripts")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        check_scripts(value)
        return value

    @field_validator("fraction")
    @classmethod
    def _within_unit(cls, value: FloatWindow) -> FloatWindow:
        bounds = [b for b in (value.gt, value.ge, value.lt, value.le) if b is not None]
        if any(not 0.0 <= b <= 1.0 for b in bounds):
            raise ValueError(f"fraction: bounds must lie in [0, 1], got {value.describe('x')}")
        return value


class QualityParams(Params):
    action: Literal["drop", "flag"] = Field(
        "drop",
        description=(
            "drop: failing rows go to the dropped table with the first failing check; flag: keep "
            "every row and write the failing checks' names to `quality_flags`"
        ),
    )
    truncated: bool = Field(
        True, description="fail traces whose finish_reason is length / max_tokens"
    )
    missing_answer: bool = Field(
        True,
        description="fail a null or blank completion, an unclosed <think>, nothing after </think>",
    )
    require_reasoning: bool = Field(
        False, description="fail traces with no reasoning (column or <think> part)"
    )
    no_final_answer: bool = Field(
        False,
        description=(
            "fail traces with no final answer (extracted_answer null after verify; before it, "
            "no \\boxed{} or 'answer is' line)"
        ),
    )
    length: LengthBounds | None = Field(
        None, description="character / token windows, e.g. {completion_chars: {ge: 20}}"
    )
    repetition: RepetitionCheck | None = Field(
        default_factory=RepetitionCheck,
        description="repeated n-gram check (default n=20, max_repeats=20); null turns it off",
    )
    script: ScriptBound | None = Field(
        None,
        description="letters-in-scripts window, e.g. {scripts: [Han], fraction: {le: 0.0}}",
    )


class Quality(Filter[QualityParams]):
    """Drop (or flag) truncated, unfinished, repetitive, mis-sized or language-mixed traces.

    Checks, in order: truncated, missing_answer, missing_reasoning, no_final_answer, length,
    repetition, script. Each is named in the reason code and explained in drop_detail."""

    name: ClassVar[str] = "quality"
    version: ClassVar[str] = "1"
    scope: ClassVar[Scope] = Scope.BATCH
    params_model: ClassVar[type[Params]] = QualityParams
    requires: ClassVar[tuple[str, ...]] = ("completion",)

    def input_files(self) -> list[Path]:
        """The tokenizer.json of token length bounds, when one is named."""
        bounds = self.params.length
        if bounds is None or not any(name.endswith("_tokens") for name, _ in bounds.bounds()):
            return []
        path = tokenizer_file(bounds.tokenizer, base_dir=self.context.base_dir)
        return [] if path is None else [path]

    def decide(self, frame: pl.DataFrame) -> pl.DataFrame:
        params = self.params
        checks: list[tuple[str, Check]] = []
        extra: list[pl.Series] = []
        has_reasoning = "reasoning" in frame.columns

        if params.truncated and self._has_finish_reason(frame):
            checks.append(("truncated", _truncated()))
        if params.missing_answer:
            checks.append(("missing_answer", _missing_answer()))
        if params.require_reasoning:
            checks.append(("missing_reasoning", _missing_reasoning(has_reasoning)))
        if params.no_final_answer:
            checks.append(("no_final_answer", self._no_final_answer(frame, extra)))
        if params.length is not None:
            checks.append(("length", self._length(frame, params.length, extra)))
        if params.repetition is not None:
            checks.append(("repetition", self._repetition(frame, params.repetition, extra)))
        if params.script is not None:
            checks.append(("script", self._script(frame, params.script, extra)))

        work = frame.with_columns(extra) if extra else frame
        temporary = [s.name for s in extra]
        if params.action == "flag":
            names = [
                pl.when(fails).then(pl.lit(code)).otherwise(pl.lit(None, dtype=pl.String))
                for code, (fails, _, _) in checks
            ]
            flags: pl.Expr = (
                pl.concat_str(names, separator=",", ignore_nulls=True) if names else pl.lit("")
            )
            flags = pl.when(flags == "").then(pl.lit(None, dtype=pl.String)).otherwise(flags)
            return work.with_columns(
                flags.cast(pl.String).alias(FLAGS),
                pl.lit(None, dtype=pl.String).alias(DROP_REASON),
                pl.lit(None, dtype=pl.String).alias(DROP_DETAIL),
            ).drop(temporary)
        reason, detail = first_failure([check for _, check in checks])
        return work.with_columns(reason.alias(DROP_REASON), detail.alias(DROP_DETAIL)).drop(
            temporary
        )

    # ----------------------------------------------------------------------- column checks

    def _error(self, message: str) -> OperatorError:
        return OperatorError(f"step '{self.context.stage_id}' ({self.name}): {message}")

    def _has_finish_reason(self, frame: pl.DataFrame) -> bool:
        if "finish_reason" in frame.columns:
            return True
        if "truncated" in self.params.model_fields_set:
            raise self._error(
                "`truncated: true` needs a finish_reason column, which this pool lacks (map one "
                f"with input.columns.finish_reason); columns present: {', '.join(frame.columns)}"
            )
        return False

    def _text(self, frame: pl.DataFrame, part: Part, check: str) -> pl.Series:
        """The text a check reads, as a Series (null where there is none)."""
        if part == "completion":
            return frame.get_column("completion").cast(pl.String)
        if "reasoning" not in frame.columns:
            if part == "reasoning":
                raise self._error(
                    f"`{check}.on: reasoning` needs a reasoning column, which this pool lacks; "
                    f"columns present: {', '.join(frame.columns)}"
                )
            return frame.get_column("completion").cast(pl.String)
        if part == "reasoning":
            return frame.get_column("reasoning").cast(pl.String)
        return frame.select(
            pl.concat_str(
                [pl.col("reasoning").cast(pl.String), pl.col("completion").cast(pl.String)],
                separator="\n",
                ignore_nulls=True,
            ).alias("trace")
        ).to_series()

    def _no_final_answer(self, frame: pl.DataFrame, extra: list[pl.Series]) -> Check:
        if "extracted_answer" in frame.columns:
            return (
                pl.col("extracted_answer").is_null(),
                "no_final_answer",
                pl.lit("extracted_answer is null: verify found no final answer"),
            )
        found = [
            extract_answer(text) is not None
            for text in frame.get_column("completion").cast(pl.String).to_list()
        ]
        extra.append(pl.Series("__quality_answer", found, dtype=pl.Boolean))
        return (
            ~pl.col("__quality_answer"),
            "no_final_answer",
            pl.lit("no \\boxed{} and no 'answer is' / 'Answer:' line in the completion"),
        )

    def _length(self, frame: pl.DataFrame, bounds: LengthBounds, extra: list[pl.Series]) -> Check:
        windows = bounds.bounds()
        needs_tokens = any(name.endswith("_tokens") for name, _ in windows)
        counter = load_counter(
            bounds.tokenizer if needs_tokens else APPROXIMATE, base_dir=self.context.base_dir
        )
        empty = pl.Series("", [None] * frame.height, dtype=pl.String)
        parts = {
            "completion": frame.get_column("completion").cast(pl.String),
            "reasoning": (
                frame.get_column("reasoning").cast(pl.String)
                if "reasoning" in frame.columns
                else empty
            ),
        }
        values: dict[str, pl.Series] = {}
        for part, text in parts.items():
            values[f"{part}_chars"] = text.str.len_chars().fill_null(0).cast(pl.Int64)
            if needs_tokens:
                values[f"{part}_tokens"] = counter.count(text).fill_null(0).cast(pl.Int64)
        values["trace_chars"] = values["completion_chars"] + values["reasoning_chars"]
        if needs_tokens:
            values["trace_tokens"] = values["completion_tokens"] + values["reasoning_tokens"]
        inner: list[Check] = []
        for name, window in windows:
            column = f"__quality_{name}"
            extra.append(values[name].alias(column))
            unit = f" ({counter.label})" if name.endswith("_tokens") else ""
            inner.append(
                (
                    ~window.expr(pl.col(column)),
                    "length",
                    pl.format(
                        "{}={} outside {}{}",
                        pl.lit(name),
                        pl.col(column),
                        pl.lit(window.describe(name)),
                        pl.lit(unit),
                    ),
                )
            )
        reason, detail = first_failure(inner)
        return reason.is_not_null(), "length", detail

    def _repetition(
        self, frame: pl.DataFrame, check: RepetitionCheck, extra: list[pl.Series]
    ) -> Check:
        text = self._text(frame, check.on, "repetition")
        details: list[str | None] = [None] * frame.height
        for found in find_repetitions(text, n=check.n, max_repeats=check.max_repeats):
            quoted = found.ngram
            if len(quoted) > QUOTE_CHARS:
                quoted = quoted[: QUOTE_CHARS - 1] + "…"
            details[found.row] = (
                f"{check.n}-gram '{quoted}' repeated {found.count} times > {check.max_repeats}"
            )
        extra.append(pl.Series(_REPEATED, details, dtype=pl.String))
        return pl.col(_REPEATED).is_not_null(), "repetition", pl.col(_REPEATED)

    def _script(self, frame: pl.DataFrame, bound: ScriptBound, extra: list[pl.Series]) -> Check:
        text = self._text(frame, bound.on, "script")
        letters, inside = letter_counts(text, bound.scripts)
        extra.append(pl.Series(_LETTERS, letters, dtype=pl.Int64))
        extra.append(pl.Series(_IN_SCRIPTS, inside, dtype=pl.Int64))
        fraction = pl.col(_IN_SCRIPTS) / pl.col(_LETTERS)  # null-free; 0/0 is NaN
        has_letters = pl.col(_LETTERS) > 0
        listed = ", ".join(bound.scripts)
        return (
            has_letters & ~bound.fraction.expr(fraction),
            "script",
            pl.format(
                "letters in [{}]: {} of {} = {} outside {}",
                pl.lit(listed),
                pl.col(_IN_SCRIPTS),
                pl.col(_LETTERS),
                number_text(fraction),
                pl.lit(bound.fraction.describe("fraction")),
            ),
        )


# ------------------------------------------------------------------------- expression checks


def _truncated() -> Check:
    finish = pl.col("finish_reason").cast(pl.String)
    return (
        finish.str.to_lowercase().is_in(list(TRUNCATION_REASONS)).fill_null(False),
        "truncated",
        pl.format("finish_reason={}", finish),
    )


def _missing_answer() -> Check:
    completion = pl.col("completion").cast(pl.String)
    blank = ~completion.str.contains(r"\S")
    opened = completion.str.count_matches(THINK_OPEN, literal=True)
    closed = completion.str.count_matches(THINK_CLOSE, literal=True)
    unclosed = opened > closed  # some <think> has no </think> after it
    nothing_after = completion.str.contains(r"</think>\s*$")  # only space after the last one
    detail: Any = (
        pl.when(completion.is_null())
        .then(pl.lit("completion is null"))
        .when(blank)
        .then(pl.lit("completion is empty"))
        .when(unclosed)
        .then(pl.lit(f"{THINK_OPEN} is never closed: the trace ended inside its reasoning"))
        .otherwise(pl.lit(f"nothing after {THINK_CLOSE}: the completion has no answer part"))
    )
    fails = (blank | unclosed | nothing_after).fill_null(True)  # null: a null completion
    return fails, "missing_answer", detail


def _missing_reasoning(has_reasoning_column: bool) -> Check:
    completion = pl.col("completion").cast(pl.String)
    # inline reasoning: a </think> with something before it other than an opening tag
    empty_block = completion.str.contains(r"^\s*(?:<think>\s*)?</think>")
    has_inline = (completion.str.contains(THINK_CLOSE, literal=True) & ~empty_block).fill_null(
        False
    )
    if has_reasoning_column:
        has_column = pl.col("reasoning").cast(pl.String).str.contains(r"\S").fill_null(False)
        text = f"reasoning is null or empty and the completion has no text before {THINK_CLOSE}"
    else:
        has_column = pl.lit(False)
        text = f"no reasoning column and the completion has no text before {THINK_CLOSE}"
    return ~(has_column | has_inline), "missing_reasoning", pl.lit(text)
