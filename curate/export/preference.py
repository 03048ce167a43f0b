"""Preference pairs as chat messages (`prompt`, `chosen`, `rejected`), with both trace ids.

Two sources of pairs (`pairs` in the output config), one pairing rule (curate.pairing):

- `first_correct` (default), REDI's rule: per problem, the first correct trace (chosen) against
  the first incorrect one (rejected), by sample order. Traces the verifier could not judge take
  no part. Length caps apply before pairing: a prompt over `max_prompt_tokens` removes its
  problem, and a response over `max_response_tokens` is not a candidate (the next correct or
  incorrect one is).
- `pair_step`: the pairs a `pair` step marked in the exported stage (a row's `beats` lists the
  trace_ids it was chosen over). Both sides must still be in that stage, so export from the
  pair step itself when a later step drops rejected traces. Length caps drop whole pairs.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from curate.export.messages import assistant_message, assistant_text, prompt_messages
from curate.pairing import PairRule, pairs_of
from curate.schemas.exports import PREFERENCE_SCHEMA
from curate.schemas.spec import PreferenceOutput
from curate.tokens import load_counter

# REDI: by verdict, per problem, one pair: the first correct against the first incorrect.
REDI_RULE = PairRule(
    by="verdict", group=("problem_id",), item=("__row",), per_group=1, pick="first"
)
_ROW = "__row"


def preference_rows(
    pool: pl.DataFrame, config: PreferenceOutput, *, base_dir: Path
) -> pl.DataFrame:
    if config.pairs == "pair_step":
        return _pair_step_rows(pool, config, base_dir=base_dir)
    if "verdict" not in pool.columns:
        raise ValueError("outputs.preference needs a `verify` step before export")
    frame = _with_texts(
        pool.filter(pl.col("verdict").is_not_null() & pl.col("completion").is_not_null()),
        config,
        base_dir=base_dir,
    )
    if config.max_prompt_tokens is not None:
        frame = frame.filter(pl.col("_prompt_tokens") <= config.max_prompt_tokens)
    if config.max_response_tokens is not None:
        frame = frame.filter(pl.col("_response_tokens") <= config.max_response_tokens)
    frame = frame.with_row_index(_ROW).with_columns(pl.col(_ROW).cast(pl.String))
    pairs = pairs_of(frame, REDI_RULE)
    return _assemble(frame.drop(_ROW), pairs.sort("problem_id", maintain_order=True))


def _with_texts(frame: pl.DataFrame, config: PreferenceOutput, *, base_dir: Path) -> pl.DataFrame:
    """`frame` plus the response text, the prompt messages and both token counts."""
    columns = frame.columns
    frame = frame.with_columns(
        assistant_text(config.reasoning, columns).alias("_response"),
        prompt_messages(columns).alias("_prompt_messages"),
    )
    counter = load_counter(config.tokenizer, base_dir=base_dir)
    return frame.with_columns(
        counter.count(frame["_response"]).alias("_response_tokens"),
        counter.count(frame["prompt"]).alias("_prompt_tokens"),
    )


def _pair_step_rows(
    pool: pl.DataFrame, config: PreferenceOutput, *, base_dir: Path
) -> pl.DataFrame:
    if "beats" not in pool.columns:
        raise ValueError(
            "pairs: pair_step reads the pairs a `pair` step made, but the exported stage has no "
            "`beats` column; add a `pair` step, or set `from:` to it"
        )
    index = pool.select("trace_id").with_row_index("rejected_row")
    if index["trace_id"].n_unique() < index.height:
        duplicated = index.filter(pl.col("trace_id").is_duplicated())["trace_id"].unique()
        raise ValueError(
            f"pairs: pair_step finds traces by trace_id, but {duplicated.len()} trace_id(s) "
            f"occur on more than one row, e.g. {duplicated[0]!r}"
        )
    chosen = (
        pool.select("beats")
        .with_row_index("chosen_row")
        .filter(pl.col("beats").list.len() > 0)
        .explode("beats")
    )
    pairs = chosen.join(
        index, left_on="beats", right_on="trace_id", how="left", maintain_order="left"
    )
    lost = pairs.filter(pl.col("rejected_row").is_null())
    if lost.height:
        raise ValueError(
            f"pairs: pair_step: the rejected side of {lost.height} pair(s) is not in the "
            f"exported stage ({lost['beats'].n_unique()} trace(s), e.g. {lost['beats'][0]!r}); "
            "a later step dropped them, so export `from:` the pair step"
        )
    # Texts and token counts only for the rows in a pair; rows are renumbered within them.
    involved = pl.concat([pairs["chosen_row"], pairs["rejected_row"]]).unique().sort()
    frame = _with_texts(pool.select(pl.all().gather(involved)), config, base_dir=base_dir)
    scores = (
        frame["pair_score"].cast(pl.Float64)
        if "pair_score" in frame.columns
        else pl.Series([None] * frame.height, dtype=pl.Float64)
    )
    pairs = pairs.select(
        involved.search_sorted(pairs["chosen_row"]).alias("chosen_row"),
        involved.search_sorted(pairs["rejected_row"]).alias("rejected_row"),
    )
    pairs = pairs.with_columns(
        scores.gather(pairs["chosen_row"]).alias("chosen_score"),
        scores.gather(pairs["rejected_row"]).alias("rejected_score"),
    )
    rows = _assemble(frame, pairs)
    if config.max_prompt_tokens is not None:
        rows = rows.filter(pl.col("prompt_tokens") <= config.max_prompt_tokens)
    if config.max_response_tokens is not None:
        longest = pl.max_horizontal("chosen_tokens", "rejected_tokens")
        rows = rows.filter(longest <= config.max_response_tokens)
    return rows


def _assemble(frame: pl.DataFrame, pairs: pl.DataFrame) -> pl.DataFrame:
    """Export rows from `pairs` (chosen_row / rejected_row index `frame`, which has the columns
    `_with_texts` adds), in the order of `pairs`."""
    chosen = frame.select(pl.all().gather(pairs["chosen_row"]))
    rejected = frame.select(pl.all().gather(pairs["rejected_row"]))
    optional = [
        chosen[name] if name in chosen.columns else pl.Series(name, [None] * chosen.height)
        for name in ("difficulty", "pass_rate")
    ]
    columns = pl.concat(
        [
            chosen.select(
                pl.col("_prompt_messages").alias("prompt"),
                assistant_message(pl.col("_response")).alias("chosen"),
                pl.col("problem_id"),
                pl.col("trace_id").alias("chosen_trace_id"),
                pl.col("_response_tokens").alias("chosen_tokens"),
                pl.col("_prompt_tokens").alias("prompt_tokens"),
            ),
            rejected.select(
                assistant_message(pl.col("_response")).alias("rejected"),
                pl.col("trace_id").alias("rejected_trace_id"),
                pl.col("_response_tokens").alias("rejected_tokens"),
            ),
            pl.DataFrame(optional),
            pairs.select(pl.col("chosen_score", "rejected_score").cast(pl.Float64)),
        ],
        how="horizontal",
    )
    return columns.select([f.name for f in PREFERENCE_SCHEMA])
