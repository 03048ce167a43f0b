"""Token counting: the approximate counter, tokenizer.json files, and the errors for bad paths."""

from __future__ import annotations

import hashlib
from pathlib import Path

import polars as pl
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from curate.errors import OperatorError
from curate.tokens import APPROX_LABEL, ApproximateCounter, load_counter


def write_tokenizer(path: Path) -> Path:
    """A word-level tokenizer: one token per whitespace/punctuation-separated word."""
    vocab = {"[UNK]": 0, "the": 1, "cat": 2, "sat": 3}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(path))
    return path


def test_approximate_is_ceil_chars_over_4() -> None:
    counter = load_counter("approximate", base_dir=Path("."))
    assert isinstance(counter, ApproximateCounter)
    assert counter.label == APPROX_LABEL == "approx:chars/4"
    texts = pl.Series("completion", ["", "a", "abcd", "abcde", "x" * 4096, None, "éééé"])
    counts = counter.count(texts)
    assert counts.dtype == pl.Int64
    assert counts.name == "completion"
    assert counts.to_list() == [0, 1, 1, 2, 1024, None, 1]  # characters, not bytes


def test_approximate_all_null_series() -> None:
    counter = load_counter("approximate", base_dir=Path("."))
    counts = counter.count(pl.Series("r", [None, None]))
    assert counts.dtype == pl.Int64
    assert counts.to_list() == [None, None]


def test_count_one() -> None:
    assert load_counter("approximate", base_dir=Path(".")).count_one("abcdefghi") == 3


def test_tokenizer_file_counts_and_label(tmp_path: Path) -> None:
    path = write_tokenizer(tmp_path / "tokenizer.json")
    counter = load_counter("tokenizer.json", base_dir=tmp_path)  # relative to base_dir
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    assert counter.label == f"tokenizer.json:{digest}"
    texts = pl.Series("t", ["the cat sat", None, "", "the cat, the dog!", "the cat sat"])
    counts = counter.count(texts)
    assert counts.dtype == pl.Int64
    # "the cat , the dog !" is 6 words under the Whitespace pre-tokenizer; unknown words count 1.
    assert counts.to_list() == [3, None, 0, 6, 3]


def test_tokenizer_file_absolute_path(tmp_path: Path) -> None:
    path = write_tokenizer(tmp_path / "tok.json")
    counter = load_counter(str(path), base_dir=Path("/nonexistent"))
    assert counter.label.startswith("tok.json:")
    assert counter.count_one("the cat") == 2


def test_missing_tokenizer_names_path(tmp_path: Path) -> None:
    with pytest.raises(OperatorError) as info:
        load_counter("models/tokenizer.json", base_dir=tmp_path)
    message = str(info.value)
    assert str(tmp_path / "models" / "tokenizer.json") in message
    assert "does not exist" in message
    assert "approximate" in message


def test_directory_is_not_a_tokenizer(tmp_path: Path) -> None:
    with pytest.raises(OperatorError, match="is not a file"):
        load_counter(str(tmp_path), base_dir=tmp_path)


def test_invalid_tokenizer_file(tmp_path: Path) -> None:
    bad = tmp_path / "tokenizer.json"
    bad.write_text('{"not": "a tokenizer"}')
    with pytest.raises(OperatorError) as info:
        load_counter("tokenizer.json", base_dir=tmp_path)
    assert str(bad) in str(info.value)


def test_changed_file_is_reloaded(tmp_path: Path) -> None:
    path = write_tokenizer(tmp_path / "tokenizer.json")
    first = load_counter(str(path), base_dir=tmp_path).label
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.add_tokens(["dog"])
    tokenizer.save(str(path))
    assert load_counter(str(path), base_dir=tmp_path).label != first


def test_non_text_column_is_an_error() -> None:
    with pytest.raises(OperatorError, match="cannot count tokens"):
        load_counter("approximate", base_dir=Path(".")).count(pl.Series("n", [1, 2]))
