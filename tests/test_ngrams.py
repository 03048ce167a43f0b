"""Hashed word n-grams: the Polars tokenizer equals the word tokens of curate.text.words, and
windows hash equal exactly when their words are equal."""

from __future__ import annotations

import re
import sys
import unicodedata

import numpy as np
import polars as pl

from curate.benchmarks import load_builtin
from curate.ngrams import WORD_PATTERN, ngram_hashes, token_counts, word_tokens


def test_word_pattern_is_pythons_word_class_for_every_known_character() -> None:
    chars = [
        chr(c)
        for c in range(sys.maxunicode + 1)
        if unicodedata.category(chr(c)) not in ("Cn", "Cs")
    ]
    python = [re.fullmatch(r"\w", c) is not None for c in chars]
    polars = pl.Series(chars).str.contains(f"^{WORD_PATTERN}$").to_list()
    differ = [c for c, a, b in zip(chars, python, polars, strict=True) if a != b]
    assert differ == []


def test_token_counts_match_word_tokens() -> None:
    texts = [
        *load_builtin("math500").items["text"].to_list()[:100],
        "Ünïcödé 数学 problem: ２＋２ = ?",
        "",
        None,
        "$\\frac{1}{2}$ m_1",
    ]
    hashes, lengths = token_counts(texts)
    assert lengths.tolist() == [len(word_tokens(t)) for t in texts]
    assert hashes.shape == (lengths.sum(),)
    assert word_tokens("$\\frac{1}{2}$ m_1") == ["frac", "1", "2", "m_1"]


def test_windows_hash_equal_when_words_are_equal() -> None:
    owner, h = ngram_hashes(["a b c d", "x a b c", "A, B: c!", "a b", "", None, "b c"], 3)
    assert owner.tolist() == [0, 0, 1, 1, 2, 3, 6]
    abc, bcd, xab, abc1, abc2, ab, bc = h.tolist()
    assert abc == abc1 == abc2  # "a b c" in three texts, punctuation and case aside
    assert len({abc, bcd, xab, ab, bc}) == 5  # short texts differ from each other and from 3-grams
    again = ngram_hashes(["b c"], 3)[1]
    assert again.tolist() == [bc] and again.dtype == np.uint64
