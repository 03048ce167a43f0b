"""Text normalization and tokenization for matching: the one definition that exact dedup,
MinHash shingles and n-gram decontamination share, so "the same text" means the same thing
in every filter.

`match_key` is what "identical after normalization" compares: Unicode NFKC, case folded,
whitespace runs collapsed to one space, ends stripped. `words` splits that normalized text into
word tokens (runs of letters, digits and underscore, or single other non-space characters, so
`3+4=7` gives `3 + 4 = 7` and CJK text still yields tokens).
"""

from __future__ import annotations

import re

import polars as pl

from curate.ids import normalize_text

_WORD = re.compile(r"\w+|[^\w\s]", re.UNICODE)


def match_key(text: str | None) -> str:
    """NFKC, casefolded, whitespace collapsed: equal keys mean 'identical after normalization'."""
    return normalize_text(text or "").casefold()


def match_key_expr(column: pl.Expr) -> pl.Expr:
    """`match_key` as a Polars expression (vectorized for ASCII; NFKC via map for the rest)."""
    return column.fill_null("").map_elements(match_key, return_dtype=pl.String)


def words(text: str | None) -> list[str]:
    """Word tokens of the normalized text."""
    return _WORD.findall(match_key(text))
