"""Chat messages from pool columns, as Polars expressions: one definition used by every export."""

from __future__ import annotations

from typing import Literal

import polars as pl

ReasoningFormat = Literal["think_tags", "omit"]


def _message(role: str, content: pl.Expr) -> pl.Expr:
    return pl.struct(pl.lit(role).alias("role"), content.alias("content"))


def assistant_text(reasoning: ReasoningFormat, columns: list[str]) -> pl.Expr:
    """The assistant turn: the completion, with a separate reasoning part in <think> tags."""
    completion = pl.col("completion").fill_null("")
    if reasoning == "omit" or "reasoning" not in columns:
        return completion
    return (
        pl.when(pl.col("reasoning").is_not_null())
        .then(pl.format("<think>\n{}\n</think>\n\n{}", pl.col("reasoning"), completion))
        .otherwise(completion)
    )


def prompt_messages(columns: list[str]) -> pl.Expr:
    """[system (when the row has one), user] as a list of role/content structs."""
    user = pl.concat_list(_message("user", pl.col("prompt")))
    if "system_prompt" not in columns:
        return user
    with_system = pl.concat_list(
        _message("system", pl.col("system_prompt")), _message("user", pl.col("prompt"))
    )
    return pl.when(pl.col("system_prompt").is_not_null()).then(with_system).otherwise(user)


def assistant_message(text: pl.Expr) -> pl.Expr:
    return pl.concat_list(_message("assistant", text))
