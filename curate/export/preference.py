"""Preference pairs by REDI's rule: per problem, the first correct trace (chosen) against the
first incorrect one (rejected), by sample order. Traces the verifier could not judge take no part.
Length caps apply before pairing: a prompt over `max_prompt_tokens` removes its problem, and a
response over `max_response_tokens` is not a candidate (the next correct or incorrect one is)."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from curate.export.messages import assistant_message, assistant_text, prompt_messages
from curate.schemas.exports import PREFERENCE_SCHEMA
from curate.schemas.spec import PreferenceOutput
from curate.tokens import load_counter


def preference_rows(
    pool: pl.DataFrame, config: PreferenceOutput, *, base_dir: Path
) -> pl.DataFrame:
    if "verdict" not in pool.columns:
        raise ValueError("outputs.preference needs a `verify` step before export")
    frame = pool.filter(pl.col("verdict").is_not_null() & pl.col("completion").is_not_null())
    columns = frame.columns
    frame = frame.with_columns(
        assistant_text(config.reasoning, columns).alias("_response"),
        prompt_messages(columns).alias("_prompt_messages"),
    )
    counter = load_counter(config.tokenizer, base_dir=base_dir)
    frame = frame.with_columns(
        counter.count(frame["_response"]).alias("_response_tokens"),
        counter.count(frame["prompt"]).alias("_prompt_tokens"),
    )
    if config.max_prompt_tokens is not None:
        frame = frame.filter(pl.col("_prompt_tokens") <= config.max_prompt_tokens)
    if config.max_response_tokens is not None:
        frame = frame.filter(pl.col("_response_tokens") <= config.max_response_tokens)
    order = ["problem_id", "sample_index"] if "sample_index" in columns else ["problem_id"]
    frame = frame.sort(order, nulls_last=True)
    firsts = frame.group_by("problem_id", "verdict", maintain_order=True).first()
    chosen = firsts.filter(pl.col("verdict"))
    rejected = firsts.filter(~pl.col("verdict")).select(
        "problem_id",
        pl.col("trace_id").alias("rejected_trace_id"),
        assistant_message(pl.col("_response")).alias("rejected"),
        pl.col("_response_tokens").alias("rejected_tokens"),
    )
    pairs = chosen.join(rejected, on="problem_id", how="inner")
    optional = {
        name: pl.col(name) if name in pairs.columns else pl.lit(None).alias(name)
        for name in ("difficulty", "pass_rate")
    }
    return (
        pairs.sort("problem_id")
        .select(
            pl.col("_prompt_messages").alias("prompt"),
            assistant_message(pl.col("_response")).alias("chosen"),
            pl.col("rejected"),
            pl.col("problem_id"),
            pl.col("trace_id").alias("chosen_trace_id"),
            pl.col("rejected_trace_id"),
            optional["difficulty"],
            optional["pass_rate"],
            pl.col("_response_tokens").alias("chosen_tokens"),
            pl.col("rejected_tokens"),
            pl.col("_prompt_tokens").alias("prompt_tokens"),
        )
        .select([f.name for f in PREFERENCE_SCHEMA])
    )
