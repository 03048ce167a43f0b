"""The `decontaminate` operator: find pool rows whose text (by default the prompt) leaks a
benchmark item, record the item in `contaminated_with`, and drop (or only flag) those rows.

Benchmarks are the built-in sets (`math500`, `aime24`, `aime25`, `amc23`, `gsm8k`; see
curate/benchmarks/data/README.md) or files: `{path: FILE, text: COLUMN, id: COLUMN, name: NAME}`
(JSONL, CSV or Parquet; the path is relative to the spec file; without `id` an item's id is its
0-based row; `name` defaults to the file's stem).

Methods (each distinct text of the `on` column is checked once, whatever the number of traces
that repeat it; null and blank texts are never contaminated):

- `exact`: equal after `curate.text.match_key` (NFKC, case folded, whitespace collapsed).
- `ngram`: word n-grams (n = `ngram`, default 13) over the word tokens of `curate.text.words`
  (punctuation and LaTeX symbols skipped; see curate/ngrams.py). Contaminated when the
  text shares at least one n-gram with a benchmark item, or, with `fraction` set, when the
  share of the text's distinct n-grams found in one item is at least `fraction`. A text shorter
  than n words is one gram of its whole word sequence, so it matches only an item with exactly
  the same words, and a benchmark item shorter than n words matches only a text with exactly its
  words (a long text that merely contains a short item is not flagged: use `exact` or a smaller
  n for sets with very short items). On competition math, "any shared 13-gram" also fires on
  stock phrasing ("... where m and n are relatively prime positive integers. Find m+n."):
  AIME 1983-2023 against MATH-500 flags 116 of 975 problems that way, 6 with `fraction: 0.5`
  (3 are verbatim copies).
- `semantic`: cosine similarity of sentence embeddings (`model`, default all-MiniLM-L6-v2,
  loaded offline) at least `threshold` (default 0.85: on GPT-4 rephrasings of GSM8K test it
  catches 91% with 0.16% false positives on GSM8K train; bench/decontam_recall.py).
  Embeddings are cached by content hash in the stage's cache folder, so re-running with
  another threshold embeds nothing again.

When a text matches several items, the one reported is the best: highest cosine (semantic) or
most shared n-grams (ngram); ties go to the benchmark listed first in `against`, then to the
earliest item of that benchmark's file.

Columns: `contaminated_with` on every kept row, `<benchmark>:<item id>` or null when clean (a
value set by an earlier decontaminate step is kept where this step finds nothing).

=============  ==========================================================================
reason         when
=============  ==========================================================================
contaminated   `action: drop` (the default) and the text matches a benchmark item; the
               detail names the method, the item and the score (shared n-gram count and
               fraction, or cosine). With `action: flag` nothing is dropped.
=============  ==========================================================================
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import polars as pl
from pydantic import Field, field_validator, model_validator

from curate.benchmarks import BUILTIN, Benchmark, load_builtin, load_file, unknown_builtin
from curate.embeddings import DEFAULT_MODEL, embed_texts
from curate.errors import OperatorError
from curate.filters.common import require_columns
from curate.ngrams import ngram_hashes, word_tokens
from curate.operators import DROP_DETAIL, DROP_REASON, Filter, Params, Scope
from curate.similarity import best_matches
from curate.text import match_key

REASON = "contaminated"
COLUMN = "contaminated_with"
NGRAM_CHUNK = 50_000  # distinct texts per n-gram pass, so memory stays bounded

SEMANTIC_ONLY = ("threshold", "model", "batch_size")
NGRAM_ONLY = ("ngram", "fraction")


class FileBenchmark(Params):
    """A benchmark read from a JSONL, CSV or Parquet file."""

    path: str = Field(description="the file, relative to the spec file")
    text: str = Field("text", description="the column holding each item's text")
    id: str | None = Field(
        None, description="the column holding each item's id (default: the 0-based row number)"
    )
    name: str | None = Field(
        None, description="the benchmark's name in contaminated_with (default: the file's stem)"
    )

    def label(self) -> str:
        return self.name or self.path.replace("\\", "/").rsplit("/", 1)[-1].rsplit(".", 1)[0]


class DecontaminateParams(Params):
    against: list[str | FileBenchmark] = Field(
        min_length=1,
        description=(
            "benchmarks to check against: built-in names (math500, aime24, aime25, amc23, "
            "gsm8k) or {path, text, id, name} for a file"
        ),
    )
    method: Literal["exact", "ngram", "semantic"] = Field(
        "ngram", description="exact (normalized text), ngram (shared word n-grams) or semantic"
    )
    on: str = Field("prompt", description="the text column to check")
    ngram: int = Field(13, ge=1, le=64, description="n of the word n-grams (8 and 13 are usual)")
    fraction: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description=(
            "ngram: contaminated when at least this share of the text's n-grams is in one "
            "benchmark item (default: any shared n-gram)"
        ),
    )
    threshold: float = Field(
        0.85,
        gt=0.0,
        le=1.0,
        description=(
            "semantic: contaminated at cosine >= threshold (0.85 suits all-MiniLM-L6-v2: "
            "see bench/README.md)"
        ),
    )
    model: str = Field(
        DEFAULT_MODEL,
        description="semantic: sentence-transformers model (local folder or cached hub name)",
    )
    batch_size: int = Field(64, ge=1, description="semantic: texts per encoding batch")
    action: Literal["drop", "flag"] = Field(
        "drop", description="drop contaminated rows, or keep them and only set contaminated_with"
    )

    @field_validator("against")
    @classmethod
    def _known(cls, value: list[str | FileBenchmark]) -> list[str | FileBenchmark]:
        names: list[str] = []
        for item in value:
            if isinstance(item, str) and item not in BUILTIN:
                raise ValueError(unknown_builtin(item))
            names.append(item if isinstance(item, str) else item.label())
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(
                f"benchmark name(s) {', '.join(repeated)} given more than once; give each "
                "file a distinct `name`"
            )
        return value

    @model_validator(mode="after")
    def _method_options(self) -> DecontaminateParams:
        misplaced = {
            "semantic": [f for f in NGRAM_ONLY if f in self.model_fields_set],
            "ngram": [f for f in SEMANTIC_ONLY if f in self.model_fields_set],
            "exact": [f for f in NGRAM_ONLY + SEMANTIC_ONLY if f in self.model_fields_set],
        }[self.method]
        if misplaced:
            raise ValueError(
                f"{', '.join(misplaced)} do(es) not apply to method: {self.method} "
                f"(ngram takes ngram, fraction; semantic takes threshold, model, batch_size)"
            )
        return self


class Decontaminate(Filter[DecontaminateParams]):
    """Drop (or flag) rows whose text matches a benchmark item: exact, n-gram or semantic.

    Writes contaminated_with (`benchmark:item_id`, null when clean) on every row; each distinct
    text is checked once."""

    name: ClassVar[str] = "decontaminate"
    version: ClassVar[str] = "1"
    scope: ClassVar[Scope] = Scope.GLOBAL
    params_model: ClassVar[type[Params]] = DecontaminateParams

    def decide(self, frame: pl.DataFrame) -> pl.DataFrame:
        params = self.params
        require_columns(
            frame,
            [params.on],
            step=self.context.stage_id,
            operator=self.name,
            why="(set `on:` to the text column to check)",
        )
        dtype = frame.schema[params.on]
        if dtype not in (pl.String, pl.Null):
            raise OperatorError(
                f"step '{self.context.stage_id}' (decontaminate): column '{params.on}' is "
                f"{dtype}, expected text"
            )
        texts = (
            frame.select(pl.col(params.on).cast(pl.String))
            .unique(maintain_order=True)
            .filter(pl.col(params.on).is_not_null() & (pl.col(params.on).str.strip_chars() != ""))
            .to_series()
            .to_list()
        )
        benchmarks = self.benchmarks()
        reference = pl.concat(
            [b.items.with_columns(pl.lit(b.name).alias("benchmark")) for b in benchmarks]
        ).with_row_index("ref", offset=0)
        hits = self.find(texts, reference)  # columns: text, ref, detail (one row per hit text)
        found = hits.join(
            reference.select("ref", (pl.col("benchmark") + ":" + pl.col("id")).alias("item")),
            on="ref",
            how="left",
        ).select(
            pl.col("text").alias("__text"),
            pl.col("item").alias("__item"),
            pl.format("{} {}", pl.col("detail"), pl.col("item")).alias("__detail"),
        )
        if dtype == pl.Null:  # every text is null: nothing to match
            decided = frame.with_columns(
                pl.lit(None, dtype=pl.String).alias("__item"),
                pl.lit(None, dtype=pl.String).alias("__detail"),
            )
        else:
            decided = frame.join(
                found, left_on=params.on, right_on="__text", how="left", maintain_order="left"
            )
        previous = pl.col(COLUMN) if COLUMN in frame.columns else pl.lit(None, dtype=pl.String)
        hit = pl.col("__item").is_not_null()
        dropping = hit if params.action == "drop" else pl.lit(False)
        null = pl.lit(None, dtype=pl.String)
        return decided.with_columns(
            pl.coalesce(pl.col("__item"), previous).alias(COLUMN),
            pl.when(dropping).then(pl.lit(REASON)).otherwise(null).alias(DROP_REASON),
            pl.when(dropping).then(pl.col("__detail")).otherwise(null).alias(DROP_DETAIL),
        ).drop("__item", "__detail")

    def input_files(self) -> list[Path]:
        """Benchmark files named in `against`: their content is part of the stage fingerprint."""
        return [
            self.context.resolve(item.path)
            for item in self.params.against
            if not isinstance(item, str)
        ]

    def benchmarks(self) -> list[Benchmark]:
        """The benchmarks named in `against`, loaded (files resolved against the spec folder)."""
        loaded: list[Benchmark] = []
        for item in self.params.against:
            if isinstance(item, str):
                loaded.append(load_builtin(item))
            else:
                loaded.append(
                    load_file(
                        self.context.resolve(item.path),
                        text_column=item.text,
                        id_column=item.id,
                        name=item.label(),
                    )
                )
        return loaded

    def find(self, texts: list[str], reference: pl.DataFrame) -> pl.DataFrame:
        """One row per contaminated text: text, ref (row of `reference`), detail."""
        empty = pl.DataFrame(schema={"text": pl.String, "ref": pl.UInt32, "detail": pl.String})
        if not texts or reference.height == 0:
            return empty
        method = self.params.method
        if method == "exact":
            return exact_hits(texts, reference["text"].to_list())
        if method == "ngram":
            return ngram_hits(
                texts,
                reference["text"].to_list(),
                n=self.params.ngram,
                fraction=self.params.fraction,
            )
        return self.semantic_hits(texts, reference["text"].to_list())

    def semantic_hits(self, texts: list[str], reference: list[str]) -> pl.DataFrame:
        params = self.params
        ref_emb, emb = (
            embed_texts(
                batch,
                model=params.model,
                batch_size=params.batch_size,
                cache_dir=self.context.cache_dir,
                base_dir=self.context.base_dir,
            )[0]
            for batch in (reference, texts)
        )
        query, ref, sim = best_matches(emb, ref_emb, params.threshold)
        return pl.DataFrame(
            {
                "text": [texts[i] for i in query],
                "ref": ref.astype(np.uint32),
                "detail": [
                    f"semantic: cosine {s:.4f} >= {params.threshold} ({params.model}) with"
                    for s in sim.tolist()
                ],
            },
            schema={"text": pl.String, "ref": pl.UInt32, "detail": pl.String},
        )


def exact_hits(texts: list[str], reference: list[str]) -> pl.DataFrame:
    """Texts whose match_key equals an item's; the earliest such item is reported."""
    first: dict[str, int] = {}
    for ref, text in enumerate(reference):
        first.setdefault(match_key(text), ref)
    rows = [(t, first[k]) for t in texts if (k := match_key(t)) in first]
    return pl.DataFrame(
        {
            "text": [t for t, _ in rows],
            "ref": [r for _, r in rows],
            "detail": ["exact: normalized text equals"] * len(rows),
        },
        schema={"text": pl.String, "ref": pl.UInt32, "detail": pl.String},
    )


def ngram_hits(
    texts: list[str], reference: list[str], *, n: int, fraction: float | None
) -> pl.DataFrame:
    """Texts sharing word n-grams with an item (at least `fraction` of the text's distinct
    n-grams with one item, when given); the item sharing most n-grams is reported."""
    owner, hashes = ngram_hashes(reference, n)
    index = pl.DataFrame({"h": hashes, "ref": owner.astype(np.uint32)}).unique()
    parts = []
    for start in range(0, len(texts), NGRAM_CHUNK):
        chunk = texts[start : start + NGRAM_CHUNK]
        owner, hashes = ngram_hashes(chunk, n)
        grams = pl.DataFrame({"q": owner + start, "h": hashes})
        # Join first: few grams hit the benchmark, so only those are made distinct, and the
        # distinct-gram totals are counted only for texts with a hit.
        shared = (
            grams.join(index, on="h", how="inner")
            .unique()
            .group_by("q", "ref")
            .agg(pl.len().alias("shared"))
        )
        if shared.height == 0:
            continue
        totals = (
            grams.filter(pl.col("q").is_in(shared["q"].unique().implode()))
            .group_by("q")
            .agg(pl.col("h").n_unique().alias("total"))
        )
        shared = shared.join(totals, on="q", how="left").with_columns(
            (pl.col("shared") / pl.col("total")).alias("frac")
        )
        if fraction is not None:
            shared = shared.filter(pl.col("frac") >= fraction - 1e-12)
        parts.append(
            shared.sort(["q", "shared", "ref"], descending=[False, True, False]).unique(
                "q", keep="first", maintain_order=True
            )
        )
    best = pl.concat(parts) if parts else pl.DataFrame()
    if best.height == 0:
        return pl.DataFrame(schema={"text": pl.String, "ref": pl.UInt32, "detail": pl.String})
    rule = f"fraction >= {fraction}" if fraction is not None else "any shared"
    hit_texts = [texts[q] for q in best["q"].to_list()]
    short = [len(word_tokens(t)) < n for t in hit_texts]
    return best.select(
        pl.Series("text", hit_texts, dtype=pl.String),
        pl.col("ref").cast(pl.UInt32),
        pl.when(pl.Series(short))
        .then(pl.lit(f"ngram n={n}: whole text (shorter than {n} words) equals"))
        .otherwise(
            pl.format(
                "ngram n={}: {} of the text's {} distinct {}-grams ({}; {}) shared with",
                pl.lit(n),
                pl.col("shared"),
                pl.col("total"),
                pl.lit(n),
                pl.col("frac").round(4),
                pl.lit(rule),
            )
        )
        .alias("detail"),
    )
