"""The repeated n-gram kernel and the script-share counts behind the `quality` operator, against
plain-Python references: str.split tokens, a dict of n-gram counts, unicodedata letter classes."""

from __future__ import annotations

import sys
import unicodedata

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from curate.filters.repetition import WHITESPACE, Repetition, find_repetitions, most_repeated
from curate.filters.scripts import check_scripts, letter_counts
from curate.filters.utf8 import chunk_rows, utf8_buffers

SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def reference(texts: list[str | None], n: int, m: int) -> dict[int, tuple[str, int]]:
    found = {}
    for row, text in enumerate(texts):
        gram, count = most_repeated(text or "", n)
        if count > m:
            found[row] = (gram, count)
    return found


def fast(texts: list[str | None], n: int, m: int, **kw: int) -> dict[int, tuple[str, int]]:
    series = pl.Series("t", texts, dtype=pl.String)
    return {r.row: (r.ngram, r.count) for r in find_repetitions(series, n=n, max_repeats=m, **kw)}


def test_whitespace_is_what_str_split_splits_on() -> None:
    assert set(WHITESPACE) == {chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace()}


def test_boundary_exactly_m_vs_m_plus_one() -> None:
    # 40 tokens hold 21 overlapping copies of their 20-gram; 39 tokens hold 20.
    texts = ["a " * 40, "a " * 39, "a\n" * 40]
    assert fast(texts, 20, 20) == {0: (" ".join(["a"] * 20), 21), 2: (" ".join(["a"] * 20), 21)}
    assert fast(texts, 20, 21) == {}
    assert fast(texts, 20, 19) == {
        0: (" ".join(["a"] * 20), 21),
        1: (" ".join(["a"] * 20), 20),
        2: (" ".join(["a"] * 20), 21),
    }


def test_empty_null_and_single_row() -> None:
    assert fast([], 20, 20) == {}
    assert fast([None, "", "   \n\t"], 1, 1) == {}
    assert fast(["x y x y x y"], 2, 2) == {0: ("x y", 3)}  # "x y" at 0, 2, 4; "y x" twice


def test_tokens_do_not_run_across_rows() -> None:
    # Row 0 ends in "a a", row 1 starts with "a a": no 3-gram spans the two.
    assert fast(["b a a", "a a c"], 2, 1) == {}
    assert fast(["b a a", "a a c", "a a a a"], 2, 2) == {2: ("a a", 3)}


def test_non_ascii_tokens_and_unicode_spaces() -> None:
    loop = "等一下，\u3000我再算一遍。\u00a0" * 6  # ideographic and no-break spaces split tokens
    emoji = "🙂 ok " * 3
    assert fast([loop, emoji, "naïve café " * 2], 2, 4) == {0: ("等一下， 我再算一遍。", 6)}
    assert fast([loop, emoji], 2, 2)[1] == ("🙂 ok", 3)


def test_ties_go_to_the_n_gram_that_appears_first() -> None:
    # "q r" and "s t" both occur 3 times; "q r" appears first.
    text = "s q r x q r y q r z s t s t s t"
    assert most_repeated(text, 2) == ("q r", 3)
    assert fast([text], 2, 2) == {0: ("q r", 3)}


def test_chunks_cover_every_row_once() -> None:
    lengths = np.array([5, 0, 7, 30, 1, 1, 1], dtype=np.int64)
    ranges = chunk_rows(lengths, 8)
    assert ranges == [(0, 2), (2, 3), (3, 4), (4, 7)]  # a 30-byte row still gets its own chunk
    assert chunk_rows(np.array([], dtype=np.int64), 8) == []


def test_small_chunks_give_the_same_answer() -> None:
    texts = ["a b " * 12, "c " * 30, None, "d e f " * 3, "g " * 25]
    assert fast(texts, 2, 10, chunk_bytes=16) == fast(texts, 2, 10) == reference(texts, 2, 10)


def test_returns_rows_in_order() -> None:
    found = find_repetitions(pl.Series(["z " * 9, "y", "x " * 9]), n=1, max_repeats=8)
    assert found == [Repetition(0, "z", 9), Repetition(2, "x", 9)]


def test_rejects_bad_bounds() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        find_repetitions(pl.Series(["a"]), n=0, max_repeats=1)


tokens = st.sampled_from(["a", "b", "ab", "ä", "明", "\\frac{1}{2}", "x\x00y"])
spaces = st.sampled_from([" ", "  ", "\n", "\t", "\u00a0", "\u2028", "\u3000", "\x1f", "\r\n"])
texts = st.lists(st.tuples(tokens, spaces), max_size=60).map(
    lambda pairs: "".join(t + s for t, s in pairs)
)


@SETTINGS
@given(
    st.lists(st.one_of(st.none(), texts), max_size=6),
    st.integers(1, 4),
    st.integers(1, 8),
)
def test_matches_the_python_reference(rows: list[str | None], n: int, m: int) -> None:
    assert fast(rows, n, m) == reference(rows, n, m)


# ------------------------------------------------------------------------------- scripts


def letters_by_hand(text: str, scripts: set[str]) -> tuple[int, int]:
    """Letters by unicodedata; 'in scripts' by the Unicode character name's first word, which
    is the script for the characters used below (LATIN, GREEK, CYRILLIC, CJK -> Han)."""
    letters = [c for c in text if unicodedata.category(c).startswith("L")]
    words = {"Latin": "LATIN", "Greek": "GREEK", "Cyrillic": "CYRILLIC", "Han": "CJK"}
    wanted = {words[s] for s in scripts}
    return len(letters), sum(unicodedata.name(c).split()[0] in wanted for c in letters)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "abc XYZ 123 +-*/",
        "it's明确 that",
        "ω = e^{2πi/5}, so ω^5 = 1",
        "Привет, мир! hello",
        "naïve façade: Ñandú",
        "全是中文，没有英文。",
        "🙂 ✓ ≤ → ∞ 3.14",
    ],
)
@pytest.mark.parametrize("scripts", [["Latin"], ["Han"], ["Latin", "Greek"], ["Cyrillic"]])
def test_letter_counts_match_unicodedata(text: str, scripts: list[str]) -> None:
    letters, inside = letter_counts(pl.Series([text]), scripts)
    assert (int(letters[0]), int(inside[0])) == letters_by_hand(text, set(scripts))


def test_letter_counts_of_several_rows_with_nulls() -> None:
    texts = pl.Series(["ab", None, "", "明确c", "ωω", "x1y2z"])
    for chunk_bytes in (1, 5, 1 << 20):  # one row per chunk, a few, all in one
        letters, inside = letter_counts(texts, ["han"], chunk_bytes=chunk_bytes)
        assert letters.tolist() == [2, 0, 0, 3, 2, 3]
        assert inside.tolist() == [0, 0, 0, 2, 0, 0]  # script names are case-insensitive


def test_unknown_script_is_named() -> None:
    with pytest.raises(ValueError, match="'Klingon' is not a Unicode script"):
        check_scripts(["Latin", "Klingon"])
    with pytest.raises(ValueError, match="not a script name"):
        check_scripts(["Han}|.*"])
    with pytest.raises(ValueError, match="at least one"):
        check_scripts([])


def test_utf8_buffers_of_a_slice() -> None:
    series = pl.Series(["zero", "één", None, "三"]).slice(1, 3)
    offsets, data = utf8_buffers(series)
    assert offsets.tolist() == [0, 5, 5, 8]
    assert bytes(data).decode() == "één三"
