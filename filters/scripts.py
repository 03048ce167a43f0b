"""How much of a text's letters are in given Unicode scripts: the measure behind the `quality`
operator's `script` check (language mixing, e.g. Chinese inside an English reasoning trace).

A letter is a character of Unicode general category L (Lu, Ll, Lt, Lm, Lo): digits, punctuation,
math symbols, marks and spaces do not count. A letter's script is its Unicode Script property
(``sc``), as the Rust regex engine inside Polars knows it: names such as Latin, Greek, Cyrillic,
Han, Hiragana, Katakana, Hangul, Arabic, Hebrew, Devanagari, Thai; case-insensitive, and the
four-letter codes (Latn, Hani, ...) work too. No dependency beyond Polars is needed.

Cost: ASCII letters (all of them Latin) are counted from the UTF-8 bytes with NumPy; only rows
that hold non-ASCII characters go through two regex counts, whose matches are the (rare)
non-ASCII letters. Counting every letter with a regex would cost a match per letter.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import polars as pl

from curate.filters.utf8 import CHUNK_BYTES, as_text, chunk_rows, utf8_buffers

_NAME = re.compile(r"^[A-Za-z][A-Za-z_ ]*$")
_ASCII_LETTER = np.zeros(256, dtype=np.uint8)
_ASCII_LETTER[ord("A") : ord("Z") + 1] = 1
_ASCII_LETTER[ord("a") : ord("z") + 1] = 1
_NON_ASCII_LETTER = r"[\p{L}--[\x00-\x7F]]"


def script_class(scripts: Sequence[str]) -> str:
    """The regex class of the non-ASCII letters in `scripts` (ASCII letters are counted apart)."""
    union = "".join(rf"\p{{sc={name.strip()}}}" for name in scripts)
    return rf"[[\p{{L}}&&[{union}]]--[\x00-\x7F]]"


def check_scripts(scripts: Sequence[str]) -> None:
    """Raise ValueError naming the first entry that is not a Unicode script name."""
    if not scripts:
        raise ValueError("scripts: name at least one Unicode script, e.g. [Latin] or [Han]")
    for name in scripts:
        if not _NAME.match(name.strip()):
            raise ValueError(f"scripts: {name!r} is not a script name (letters only, e.g. Han)")
        try:
            pl.select(pl.lit("").str.contains(rf"\p{{sc={name.strip()}}}"))
        except pl.exceptions.PolarsError:
            raise ValueError(
                f"scripts: {name!r} is not a Unicode script; use names such as Latin, Greek, "
                "Cyrillic, Han, Hiragana, Katakana, Hangul, Arabic, Hebrew, Devanagari"
            ) from None


def is_latin(name: str) -> bool:
    return name.strip().casefold() in ("latin", "latn")


def letter_counts(
    texts: pl.Series, scripts: Sequence[str], *, chunk_bytes: int = CHUNK_BYTES
) -> tuple[np.ndarray, np.ndarray]:
    """Per text: the number of letters, and the number of those in `scripts` (int64 arrays).
    A null text has no letters."""
    texts = as_text(texts)
    letters = np.zeros(texts.len(), dtype=np.int64)
    for start, stop in chunk_rows(texts.str.len_bytes().to_numpy(), chunk_bytes):
        offsets, data = utf8_buffers(texts.slice(start, stop - start))
        nonempty = np.flatnonzero(np.diff(offsets) > 0)
        if nonempty.size:
            letters[start + nonempty] = np.add.reduceat(
                _ASCII_LETTER[data], offsets[nonempty], dtype=np.int64
            )
    inside = letters.copy() if any(is_latin(s) for s in scripts) else np.zeros_like(letters)
    wide = np.flatnonzero((texts.str.len_bytes() != texts.str.len_chars()).to_numpy())
    if wide.size:
        some = texts.gather(wide)
        letters[wide] += some.str.count_matches(_NON_ASCII_LETTER).to_numpy().astype(np.int64)
        inside[wide] += some.str.count_matches(script_class(scripts)).to_numpy().astype(np.int64)
    return letters, inside
