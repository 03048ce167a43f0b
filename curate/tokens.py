"""Token counting, one way for the whole project: `prune` and the preference export both call it.

A tokenizer spec is either the string ``"approximate"`` (``ceil(characters / 4)``, labelled
``approx:chars/4``) or a path to a local Hugging Face ``tokenizer.json`` (loaded with the
``tokenizers`` package, labelled ``<file name>:<sha256[:12] of the file>``). Counts are of the text
alone: no special tokens and no chat template are added.

    counter = load_counter(spec, base_dir=context.base_dir)
    frame.with_columns(counter.count(frame["completion"]).alias("completion_tokens"))
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from functools import lru_cache
from pathlib import Path
from typing import Any

import polars as pl

from curate.errors import OperatorError

APPROXIMATE = "approximate"
APPROX_LABEL = "approx:chars/4"
CHARS_PER_TOKEN = 4
ENCODE_CHUNK = 8192  # texts per encode_batch call: bounds the memory held by Encoding objects


class TokenCounter(ABC):
    """Counts tokens of texts. `label` names the tokenizer and goes into the `tokenizer` column."""

    label: str

    @abstractmethod
    def count(self, texts: pl.Series) -> pl.Series:
        """Token count of each text, as Int64, with the input's name; a null text counts null."""

    def count_one(self, text: str) -> int:
        """Token count of a single text."""
        value = self.count(pl.Series("text", [text], dtype=pl.String))[0]
        return int(value)


class ApproximateCounter(TokenCounter):
    """``ceil(characters / 4)``: a tokenizer-free estimate, near BPE counts for English prose."""

    label = APPROX_LABEL

    def count(self, texts: pl.Series) -> pl.Series:
        chars = _as_text(texts).str.len_chars().cast(pl.Int64)
        return ((chars + (CHARS_PER_TOKEN - 1)) // CHARS_PER_TOKEN).alias(texts.name)


class TokenizerFileCounter(TokenCounter):
    """Exact counts from a ``tokenizer.json``; each distinct text is encoded once."""

    def __init__(self, path: Path, tokenizer: Any, digest: str) -> None:
        self.path = path
        self.tokenizer = tokenizer
        self.label = f"{path.name}:{digest[:12]}"

    def count(self, texts: pl.Series) -> pl.Series:
        texts = _as_text(texts)
        distinct = texts.drop_nulls().unique()
        values = distinct.to_list()
        encode = getattr(self.tokenizer, "encode_batch_fast", None) or self.tokenizer.encode_batch
        lengths: list[int] = []
        for start in range(0, len(values), ENCODE_CHUNK):
            chunk = values[start : start + ENCODE_CHUNK]
            lengths.extend(len(e.ids) for e in encode(chunk, add_special_tokens=False))
        table = pl.DataFrame(
            {"text": distinct, "n": pl.Series(lengths, dtype=pl.Int64)},
            schema={"text": pl.String, "n": pl.Int64},
        )
        joined = pl.DataFrame({"text": texts}).join(
            table, on="text", how="left", maintain_order="left"
        )
        return joined["n"].alias(texts.name)


def _as_text(texts: pl.Series) -> pl.Series:
    if texts.dtype == pl.String:
        return texts
    if texts.dtype == pl.Null:
        return texts.cast(pl.String)
    raise OperatorError(f"cannot count tokens of column '{texts.name}' of type {texts.dtype}")


def tokenizer_file(spec: str, *, base_dir: Path) -> Path | None:
    """The tokenizer.json a spec names, resolved against `base_dir`; None for approximate."""
    if spec.strip() == APPROXIMATE:
        return None
    candidate = Path(spec).expanduser()
    return (candidate if candidate.is_absolute() else base_dir / candidate).resolve()


def load_counter(spec: str, *, base_dir: Path) -> TokenCounter:
    """The counter a spec names: ``"approximate"`` or a path to a ``tokenizer.json``.

    A relative path resolves against `base_dir` (the spec file's folder). Raises OperatorError,
    naming the resolved path, when the file is missing or is not a tokenizer the `tokenizers`
    package can load."""
    path = tokenizer_file(spec, base_dir=base_dir)
    if path is None:
        return ApproximateCounter()
    if not path.is_file():
        where = "does not exist" if not path.exists() else "is not a file"
        raise OperatorError(
            f"tokenizer '{spec}': {path} {where}; give 'approximate' or the path of a "
            f"tokenizer.json (relative paths resolve from {base_dir})"
        )
    return _load_file(path, path.stat().st_mtime_ns, path.stat().st_size)


@lru_cache(maxsize=8)
def _load_file(path: Path, mtime_ns: int, size: int) -> TokenizerFileCounter:
    """Load and hash a tokenizer file; cached per (path, mtime, size) so a changed file reloads."""
    from tokenizers import Tokenizer

    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    try:
        tokenizer = Tokenizer.from_str(data.decode("utf-8"))
    except Exception as exc:  # tokenizers raises a bare Exception on malformed files
        raise OperatorError(
            f"tokenizer file {path} could not be loaded as a Hugging Face tokenizer.json: {exc}"
        ) from exc
    return TokenizerFileCounter(path, tokenizer, digest)
