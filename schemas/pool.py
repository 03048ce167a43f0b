"""The pool: one row per trace (one row per problem before sampling). The single source of truth
for its columns and their Arrow types. Columns grow by stage; a pool at any stage holds a subset
of these columns, in this order, with these types."""

from __future__ import annotations

import pyarrow as pa

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
MESSAGES = pa.list_(MESSAGE)

PROBLEM_COLUMNS: list[pa.Field] = [
    pa.field("problem_id", pa.string(), nullable=False),
    pa.field("source", pa.string()),
    pa.field("source_row", pa.int64()),
    pa.field("domain", pa.string()),
    pa.field("system_prompt", pa.string()),
    pa.field("prompt", pa.string(), nullable=False),
    pa.field("reference_answer", pa.string()),
    pa.field("problem_meta", pa.string()),  # JSON object: tests, demonstrations, extra fields
]

TRACE_COLUMNS: list[pa.Field] = [
    pa.field("trace_id", pa.string()),
    pa.field("sample_index", pa.int64()),
    pa.field("round", pa.int64()),
    pa.field("role", pa.string()),  # teacher, student, rewriter
    pa.field("model", pa.string()),
    pa.field("provider", pa.string()),
    pa.field("template_id", pa.string()),
    pa.field("temperature", pa.float64()),
    pa.field("top_p", pa.float64()),
    pa.field("max_tokens", pa.int64()),
    pa.field("seed", pa.int64()),
    pa.field("parent_trace_id", pa.string()),
    pa.field("completion", pa.string()),
    pa.field("reasoning", pa.string()),
    pa.field("finish_reason", pa.string()),
    pa.field("usage_prompt_tokens", pa.int64()),
    pa.field("usage_completion_tokens", pa.int64()),
    pa.field("cost_usd", pa.float64()),
    pa.field("error", pa.string()),
    pa.field("source_label", pa.bool_()),  # correctness flag shipped with imported traces
]

VERDICT_COLUMNS: list[pa.Field] = [
    pa.field("extracted_answer", pa.string()),
    pa.field("verdict", pa.bool_()),  # null: could not be judged
    pa.field("score", pa.float64()),
    pa.field("verifier", pa.string()),
    pa.field("verify_detail", pa.string()),
]

GRADE_COLUMNS: list[pa.Field] = [
    pa.field("n_samples", pa.int64()),  # traces of the problem
    pa.field("n_judged", pa.int64()),  # traces with a non-null verdict
    pa.field("n_correct", pa.int64()),
    pa.field("pass_rate", pa.float64()),  # n_correct / n_judged; null when n_judged == 0
    pa.field("cv_population", pa.float64()),
    pa.field("cv_sample", pa.float64()),
    pa.field("difficulty", pa.string()),
    pa.field("teacher_n_judged", pa.int64()),
    pa.field("teacher_n_correct", pa.int64()),
    pa.field("teacher_pass_rate", pa.float64()),
]

SIZE_COLUMNS: list[pa.Field] = [
    pa.field("prompt_tokens", pa.int64()),
    pa.field("reasoning_tokens", pa.int64()),
    pa.field("completion_tokens", pa.int64()),
    pa.field("tokenizer", pa.string()),  # "approx:chars/4" when approximate
]

HYGIENE_COLUMNS: list[pa.Field] = [
    pa.field("dup_cluster", pa.string()),
    pa.field("dup_of", pa.string()),
    pa.field("contaminated_with", pa.string()),
    pa.field("quality_flags", pa.string()),  # quality with action: flag; comma-separated
]

# Written by `pair` (filters/pair.py; the rule is in curate/pairing.py). A candidate is a trace,
# or the rows sharing the step's `item` column (a rule and its applications).
PAIR_COLUMNS: list[pa.Field] = [
    pa.field("pair_item", pa.string()),  # the row's candidate; null when it took no part
    pa.field("pair_score", pa.float64()),  # the candidate's compared value (score, or verdict 1/0)
    pa.field("won_pairs", pa.int64()),  # pairs the candidate was chosen in
    pa.field("lost_pairs", pa.int64()),  # pairs the candidate was rejected in
    # On a candidate's representative row only: the trace_ids (of the representative rows) of
    # the candidates it was chosen over; null on every other row.
    pa.field("beats", pa.list_(pa.string())),
]

# Written by `select` with `sample` (s1-style selection), on the rows of every problem that
# entered the draw, kept or dropped as not_sampled, so the choice can be audited.
SELECTION_COLUMNS: list[pa.Field] = [
    pa.field("length_rank", pa.int64()),  # the problem's rank by length in its stratum, 0 first
    pa.field("draw_order", pa.int64()),  # 1-based position in the draw; null when not drawn
]

POOL_SCHEMA = pa.schema(
    PROBLEM_COLUMNS
    + TRACE_COLUMNS
    + VERDICT_COLUMNS
    + GRADE_COLUMNS
    + SIZE_COLUMNS
    + HYGIENE_COLUMNS
    + PAIR_COLUMNS
    + SELECTION_COLUMNS
)

# Columns that describe a problem (repeated on each of its trace rows).
PROBLEM_LEVEL = [f.name for f in PROBLEM_COLUMNS] + [
    "n_samples",
    "n_judged",
    "n_correct",
    "pass_rate",
    "cv_population",
    "cv_sample",
    "difficulty",
]

# The side table of rows an operator dropped: the pool columns at that stage plus these.
DROP_COLUMNS: list[pa.Field] = [
    pa.field("drop_stage", pa.string(), nullable=False),
    pa.field("drop_reason", pa.string(), nullable=False),
]


def pool_field(name: str) -> pa.Field:
    """The declared field for a pool column; KeyError names the column if it is not declared."""
    index = POOL_SCHEMA.get_field_index(name)
    if index < 0:
        raise KeyError(f"'{name}' is not a pool column (see curate/schemas/pool.py)")
    return POOL_SCHEMA.field(index)


def order_columns(names: list[str]) -> list[str]:
    """Pool columns first in declared order, then any extra columns in the order given."""
    declared = [f.name for f in POOL_SCHEMA if f.name in names]
    extra = [n for n in names if POOL_SCHEMA.get_field_index(n) < 0]
    return declared + extra
