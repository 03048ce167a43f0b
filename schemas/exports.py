"""Arrow schemas of the exported training sets: SFT and preference pairs."""

from __future__ import annotations

import pyarrow as pa

from curate.schemas.pool import MESSAGES

SFT_SCHEMA = pa.schema(
    [
        pa.field("messages", MESSAGES, nullable=False),
        pa.field("problem_id", pa.string(), nullable=False),
        pa.field("trace_id", pa.string(), nullable=False),
        pa.field("difficulty", pa.string()),
        pa.field("pass_rate", pa.float64()),
        pa.field("prompt_tokens", pa.int64()),
        pa.field("reasoning_tokens", pa.int64()),
        pa.field("completion_tokens", pa.int64()),
        pa.field("tokenizer", pa.string()),
        pa.field("model", pa.string()),
        pa.field("verdict", pa.bool_()),
    ]
)

PREFERENCE_SCHEMA = pa.schema(
    [
        pa.field("prompt", MESSAGES, nullable=False),
        pa.field("chosen", MESSAGES, nullable=False),
        pa.field("rejected", MESSAGES, nullable=False),
        pa.field("problem_id", pa.string(), nullable=False),
        pa.field("chosen_trace_id", pa.string(), nullable=False),
        pa.field("rejected_trace_id", pa.string(), nullable=False),
        pa.field("difficulty", pa.string()),
        pa.field("pass_rate", pa.float64()),
        pa.field("chosen_tokens", pa.int64()),
        pa.field("rejected_tokens", pa.int64()),
        pa.field("prompt_tokens", pa.int64()),
        # The values the pairing compared: the verdicts as 1.0 / 0.0 (REDI's rule), or the
        # pair step's pair_score (a score, e.g. demonstrations a rule reproduces).
        pa.field("chosen_score", pa.float64()),
        pa.field("rejected_score", pa.float64()),
    ]
)

EXPORT_SCHEMAS: dict[str, pa.Schema] = {"sft": SFT_SCHEMA, "preference": PREFERENCE_SCHEMA}
