"""The SFT set: one chat-format row per trace (`messages`), with ids, difficulty and sizes."""

from __future__ import annotations

import polars as pl

from curate.export.messages import assistant_message, assistant_text, prompt_messages
from curate.schemas.exports import SFT_SCHEMA
from curate.schemas.spec import SFTOutput


def sft_rows(pool: pl.DataFrame, config: SFTOutput) -> pl.DataFrame:
    """SFT rows from a pool; traces with no completion are never exported."""
    frame = pool.filter(pl.col("completion").is_not_null())
    if config.only_correct:
        if "verdict" not in frame.columns:
            raise ValueError("outputs.sft.only_correct needs a `verify` step before export")
        frame = frame.filter(pl.col("verdict").fill_null(False))
    columns = frame.columns
    messages = pl.concat_list(
        prompt_messages(columns), assistant_message(assistant_text(config.reasoning, columns))
    ).alias("messages")
    rest = [
        pl.col(f.name) if f.name in columns else pl.lit(None).alias(f.name)
        for f in SFT_SCHEMA
        if f.name != "messages"
    ]
    return frame.sort("problem_id", "sample_index", nulls_last=True).select(messages, *rest)
