"""The dedup operator (exact, minhash, semantic) and its parts: shingles, clusters, banding."""

from __future__ import annotations

import itertools
import logging
import unicodedata
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from datasketch.lsh import _optimal_param
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components as scipy_components

from curate.clusters import component_sizes, connected_components
from curate.engine import Build
from curate.errors import OperatorError
from curate.filters.dedup import Dedup, DedupParams, group_pairs
from curate.minhash import (
    Banding,
    candidate_probability,
    implied_threshold,
    optimal_split,
    shingle_jaccard,
)
from curate.operators import OpResult, StageContext
from curate.registry import get_operator
from curate.shingles import (
    COMPOSING_STARTERS,
    match_keys,
    ngram_hashes,
    shingle_hashes,
    token_hashes,
)
from curate.shingles import encode as encode_for_kernels
from curate.spec import load_spec
from curate.text import match_key, words

DATA = Path(__file__).parent / "data" / "gsm_hard_pairs" / "pairs.parquet"
DECONTAM = Path(__file__).parent / "data" / "decontam"
GSM8K_SOLUTIONS = Path(__file__).parent / "data" / "gsm8k_gpt3_solutions" / "solutions.parquet"
CTX = StageContext(stage_id="01-dedup")
DUP_COLUMNS = ["dup_cluster", "dup_of"]


def traces(
    completions: Sequence[str | None],
    problems: Sequence[str] | None = None,
    **extra: Sequence[object],
) -> pl.DataFrame:
    """A pool of trace rows t0, t1, ... (problem p0 unless given)."""
    n = len(completions)
    problem_ids = list(problems) if problems is not None else ["p0"] * n
    frame = pl.DataFrame(
        {
            "problem_id": problem_ids,
            "prompt": [f"prompt of {p}" for p in problem_ids],
            "trace_id": [f"t{i}" for i in range(n)],
            "completion": pl.Series(list(completions), dtype=pl.String),
        }
    )
    return frame.with_columns(*(pl.Series(k, list(v)) for k, v in extra.items()))


def dedup(frame: pl.DataFrame, context: StageContext = CTX, **params: object) -> OpResult:
    result = Dedup(DedupParams.model_validate(params), context=context).run(frame)
    assert result.kept.height + result.dropped.height == frame.height
    expected = [c for c in frame.columns if c not in DUP_COLUMNS] + DUP_COLUMNS
    assert result.kept.columns == expected
    return result


def kept_ids(result: OpResult) -> list[str]:
    return result.kept["trace_id"].to_list()


def dropped(result: OpResult) -> dict[str, tuple[str, str, str]]:
    """trace_id -> (dup_of, dup_cluster, drop_detail)."""
    return {
        r["trace_id"]: (r["dup_of"], r["dup_cluster"], r["drop_detail"])
        for r in result.dropped.iter_rows(named=True)
    }


# --- params and registration -----------------------------------------------------------


def test_registered_under_dedup() -> None:
    assert get_operator("dedup") is Dedup
    assert Dedup.describe().startswith("Drop exact, MinHash or semantic duplicates")


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"method": "exact", "ngram": 3}, "ngram only apply to method: minhash"),
        ({"method": "exact", "threshold": 0.9}, "threshold does not apply to method: exact"),
        ({"method": "minhash", "model": "x"}, "model only apply to method: semantic"),
        ({"method": "minhash", "bands": 4}, "give bands and rows together"),
        ({"method": "minhash", "bands": 20, "rows": 7}, "= 140 exceeds num_perm = 128"),
        ({"method": "minhash", "threshold": 1.5}, "less than or equal to 1"),
        ({"on": "prompt", "scope": "per_problem"}, "prompt is a problem column"),
        ({"keep": "best"}, "first"),
    ],
)
def test_bad_params_are_refused(params: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        DedupParams.model_validate(params)


def test_missing_or_non_text_column_and_missing_score() -> None:
    frame = traces(["a", "b"], n_tokens=[1, 2])
    with pytest.raises(OperatorError, match=r"needs column\(s\) reasoning named by `on`"):
        dedup(frame, on="reasoning")
    with pytest.raises(
        OperatorError, match="`on: n_tokens` must be a text column, but it is Int64"
    ):
        dedup(frame, on="n_tokens")
    with pytest.raises(OperatorError, match=r"score for `keep: best_score`"):
        dedup(frame, on="completion", keep="best_score")


# --- exact -----------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["exact", "minhash"])
def test_empty_and_single_row(method: str) -> None:
    empty = traces([])
    result = dedup(empty, method=method, on="completion")
    assert result.kept.height == 0 and result.dropped.height == 0
    one = dedup(traces(["The only trace."]), method=method, on="completion")
    assert kept_ids(one) == ["t0"]
    assert one.kept.select(DUP_COLUMNS).row(0) == (None, None)


def test_exact_all_duplicates_keep_first() -> None:
    # identical after NFKC, casefold and whitespace collapsing
    frame = traces(["The ﬁnal answer is 4.", "the final  answer is 4.", "THE FINAL\nANSWER IS 4."])
    result = dedup(frame, method="exact", on="completion")
    assert kept_ids(result) == ["t0"]
    assert result.kept.select(DUP_COLUMNS).row(0) == ("t0", None)
    detail = (
        "exact duplicate of t0 on completion: identical after normalization (cluster of 3 rows)"
    )
    assert dropped(result) == {"t1": ("t0", "t0", detail), "t2": ("t0", "t0", detail)}
    assert result.dropped["drop_reason"].to_list() == ["duplicate", "duplicate"]


def test_exact_non_ascii() -> None:
    frame = traces(
        ["Straße ＡＢＣ", "STRASSE abc", "数学题：二加二", "数学题:二加二", "数学题 二加二"]
    )
    result = dedup(frame, method="exact", on="completion")
    # casefold maps ß to ss, NFKC maps fullwidth letters and the fullwidth colon
    assert kept_ids(result) == ["t0", "t2", "t4"]
    assert {k: v[0] for k, v in dropped(result).items()} == {"t1": "t0", "t3": "t2"}


def test_null_and_blank_texts_are_never_duplicates() -> None:
    frame = traces([None, None, "  ", "\t", "", "x"])
    for method in ("exact", "minhash"):
        result = dedup(frame, method=method, on="completion")
        assert result.dropped.height == 0
        assert result.kept["dup_cluster"].null_count() == 6


def test_prompt_dedup_drops_whole_problems_and_keeps_the_representatives_traces() -> None:
    frame = pl.DataFrame(
        {
            "problem_id": ["p1", "p1", "p2", "p2", "p3"],
            "trace_id": ["a", "b", "c", "d", "e"],
            "prompt": ["What is 2+2?", "What is 2+2?", "what is  2+2?", "what is  2+2?", "Other"],
            "completion": ["4", "four", "4", "4", "x"],
        }
    )
    result = dedup(frame, method="exact", on="prompt")
    assert kept_ids(result) == ["a", "b", "e"]
    assert result.kept.select(DUP_COLUMNS).rows() == [("p1", None), ("p1", None), (None, None)]
    detail = (
        "exact duplicate of p1 on prompt: identical after normalization (cluster of 2 problems)"
    )
    assert dropped(result) == {"c": ("p1", "p1", detail), "d": ("p1", "p1", detail)}


def test_per_problem_compares_only_within_a_problem() -> None:
    frame = traces(["same text", "same text", "same text", "other"], problems=["a", "a", "b", "b"])
    global_ = dedup(frame, method="exact", on="completion")
    assert kept_ids(global_) == ["t0", "t3"]
    local = dedup(frame, method="exact", on="completion", scope="per_problem")
    assert kept_ids(local) == ["t0", "t2", "t3"]
    assert dropped(local)["t1"][2].endswith("(cluster of 2 rows of the same problem)")


@pytest.mark.parametrize(
    ("keep", "scores", "winner"),
    [
        ("first", [None, None, None, None], "t0"),
        ("shortest", [None, None, None, None], "t1"),  # t1 and t3 tie at 5 chars: first wins
        ("longest", [None, None, None, None], "t2"),
        ("best_score", [0.2, None, 0.9, 0.9], "t2"),  # tie at 0.9: first wins; null is last
    ],
)
def test_keep_rules(keep: str, scores: list[float | None], winner: str) -> None:
    # one cluster: the texts differ only in case and spacing (7, 5, 9 and 5 characters)
    frame = traces(["A  b  c", "a b c", "A   B   C", "a b c"], score=scores)
    result = dedup(frame, method="exact", on="completion", keep=keep)
    assert kept_ids(result) == [winner]
    assert set(result.dropped["dup_of"]) == {winner}
    assert set(result.dropped["dup_cluster"]) == {winner}


def test_best_score_for_problems_is_the_mean_score() -> None:
    frame = pl.DataFrame(
        {
            "problem_id": ["p1", "p1", "p2", "p2"],
            "trace_id": ["a", "b", "c", "d"],
            "prompt": ["Q", "Q", "q", "q"],
            "score": [1.0, 0.0, 0.6, 0.6],  # means 0.5 and 0.6
        }
    )
    result = dedup(frame, method="exact", on="prompt", keep="best_score")
    assert kept_ids(result) == ["c", "d"]


def test_dup_columns_are_replaced() -> None:
    frame = traces(["x", "y"]).with_columns(
        pl.lit("old").alias("dup_cluster"), pl.lit("old").alias("dup_of")
    )
    result = dedup(frame, method="exact", on="completion")
    assert result.kept.select(DUP_COLUMNS).rows() == [(None, None), (None, None)]


def test_exact_finds_every_identical_gsm_hard_pair() -> None:
    pairs = pl.read_parquet(DATA)
    n = pairs.height
    pool = pl.DataFrame(
        {
            "problem_id": [f"gsm8k-{i}" for i in range(n)] + [f"hard-{i}" for i in range(n)],
            "prompt": pairs["original"].to_list() + pairs["perturbed"].to_list(),
        }
    )
    decided = Dedup(DedupParams(method="exact", on="prompt"), context=CTX).decide(pool)
    cluster = decided["dup_cluster"].to_list()
    together = {k for k in range(n) if cluster[k] is not None and cluster[k] == cluster[n + k]}
    identical = set(pairs.filter(pl.col("identical_text"))["pair_id"].to_list())
    assert len(identical) == 329
    assert together == identical
    assert decided["drop_reason"].drop_nulls().len() == 329


# --- minhash ---------------------------------------------------------------------------

WORDS = [f"w{k}" for k in range(20)]
BASE = " ".join(WORDS)
ONE_CHANGED = " ".join([*WORDS[:19], "other"])  # unigram Jaccard 19/21


def test_minhash_hand_checked_pair_and_threshold() -> None:
    frame = traces([BASE, ONE_CHANGED, "something else entirely"])
    op = Dedup(DedupParams(method="minhash", on="completion", ngram=1, threshold=0.85), context=CTX)
    pairs = op.pairs(frame)
    assert pairs["a"].to_list() == ["t0"] and pairs["b"].to_list() == ["t1"]
    # within the verification margin, so the reported similarity is the exact Jaccard
    assert pairs["similarity"][0] == pytest.approx(19 / 21, abs=1e-6)
    result = dedup(frame, method="minhash", on="completion", ngram=1, threshold=0.85)
    assert kept_ids(result) == ["t0", "t2"]
    detail = dropped(result)["t1"][2]
    assert detail.startswith("minhash duplicate of t0 on completion: estimated Jaccard 0.")
    assert detail.endswith("to it, threshold 0.85 (cluster of 2 rows)")
    stricter = dedup(frame, method="minhash", on="completion", ngram=1, threshold=0.95)
    assert stricter.dropped.height == 0


def test_minhash_all_duplicates_and_non_ascii_char_shingles() -> None:
    same = dedup(traces(["Один и тот же текст."] * 4), method="minhash", on="completion")
    assert kept_ids(same) == ["t0"]
    frame = traces(
        ["数学题：二加二等于几？请回答。", "数学题：二加二等于几？请作答。", "完全不同的句子"]
    )
    # char 2-grams: 14 and 14 bigrams sharing 12 -> Jaccard 12/16
    params = {"method": "minhash", "on": "completion", "shingle": "char", "ngram": 2}
    assert kept_ids(dedup(frame, **params, threshold=0.7)) == ["t0", "t2"]
    assert kept_ids(dedup(frame, **params, threshold=0.8)) == ["t0", "t1", "t2"]


def test_minhash_per_problem() -> None:
    frame = traces([BASE, ONE_CHANGED, BASE], problems=["a", "a", "b"])
    local = dedup(frame, method="minhash", on="completion", ngram=1, scope="per_problem")
    assert kept_ids(local) == ["t0", "t2"]
    global_ = dedup(frame, method="minhash", on="completion", ngram=1)
    assert kept_ids(global_) == ["t0"]


def test_bands_and_rows_override_the_threshold_split(caplog: pytest.LogCaptureFixture) -> None:
    frame = traces([BASE, ONE_CHANGED])
    params = {"method": "minhash", "on": "completion", "ngram": 1, "threshold": 0.85}
    with caplog.at_level(logging.INFO, logger="curate.filters.dedup"):
        chosen = dedup(frame, **params)
    assert chosen.dropped.height == 1
    split = DedupParams.model_validate(params).banding()
    assert f"as {split.bands} bands x {split.rows} rows" in caplog.text
    assert f"(1/b)^(1/r) = {implied_threshold(split.bands, split.rows):.3f}" in caplog.text
    # one band of all 128 slots: only identical signatures are candidates
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="curate.filters.dedup"):
        strict = dedup(frame, **params, bands=1, rows=128)
    assert strict.dropped.height == 0
    assert "as 1 bands x 128 rows; the split implies a similarity threshold" in caplog.text
    assert "(1/b)^(1/r) = 1.000" in caplog.text


def test_verify_false_keeps_every_band_match() -> None:
    # 32 bands of one slot: two texts at Jaccard 1/3 share a slot with probability 1 - (2/3)^32
    frame = traces(["a b c d e f", "a b c x y z"])
    params = {"method": "minhash", "on": "completion", "ngram": 1, "threshold": 0.9}
    assert dedup(frame, **params, bands=32, rows=1).dropped.height == 0
    loose = dedup(frame, **params, bands=32, rows=1, verify=False)
    assert loose.dropped.height == 1


def test_changed_threshold_reads_signatures_from_the_cache(tmp_path: Path) -> None:
    frame = traces([BASE, ONE_CHANGED, BASE, "a different text"])
    context = StageContext(stage_id="01-dedup", cache_dir=tmp_path)
    first = Dedup(DedupParams(method="minhash", on="completion", threshold=0.8), context=context)
    first.run(frame)
    assert first.cache_stats is not None
    assert (first.cache_stats.distinct, first.cache_stats.computed) == (3, 3)
    folders = list(tmp_path.glob("minhash-*"))
    assert len(folders) == 1 and len(list(folders[0].glob("part-*.npz"))) == 1
    second = Dedup(DedupParams(method="minhash", on="completion", threshold=0.6), context=context)
    second.run(frame)
    assert second.cache_stats is not None
    assert (second.cache_stats.from_cache, second.cache_stats.computed) == (3, 0)
    assert len(list(folders[0].glob("part-*.npz"))) == 1  # nothing new written
    other = Dedup(DedupParams(method="minhash", on="completion", ngram=3), context=context)
    other.run(frame)
    assert len(list(tmp_path.glob("minhash-*"))) == 2  # new shingles: a new cache


def _ngram_sets(texts: list[str], n: int) -> list[set[tuple[str, ...]]]:
    out = []
    for text in texts:
        tokens = words(text)
        grams = {tuple(tokens[k : k + n]) for k in range(len(tokens) - n + 1)}
        out.append(grams or ({tuple(tokens)} if tokens else set()))
    return out


def test_minhash_recall_and_precision_on_gsm_hard() -> None:
    pairs = pl.read_parquet(DATA).head(300)
    texts = pairs["original"].to_list() + pairs["perturbed"].to_list()
    pool = pl.DataFrame({"problem_id": [f"q{k}" for k in range(len(texts))], "prompt": texts})
    threshold = 0.8
    sets = _ngram_sets(texts, 5)
    truth = {
        (a, b)
        for a, b in itertools.combinations(range(len(texts)), 2)
        if sets[a] and len(sets[a] & sets[b]) / len(sets[a] | sets[b]) >= threshold
    }
    op = Dedup(DedupParams(method="minhash", on="prompt", threshold=threshold), context=CTX)
    decided = op.decide(pool)
    cluster = decided["dup_cluster"].to_list()
    found = sum(1 for a, b in truth if cluster[a] is not None and cluster[a] == cluster[b])
    assert len(truth) > 150
    assert found / len(truth) >= 0.95
    index = {f"q{k}": k for k in range(len(texts))}
    for a, b in op.pairs(pool).select("a", "b").iter_rows():
        sa, sb = sets[index[a]], sets[index[b]]
        assert len(sa & sb) / len(sa | sb) >= threshold - 0.05


# --- shingles ----------------------------------------------------------------------------

SAMPLES = [
    "The ﬁnal answer is $\\boxed{42}$, i.e. x² = 3+4=7 (Straße, STRASSE).",
    "Σοφία ΣΑΣ ς straße İstanbul ǅ",
    "नमस्ते दुनिया क़",  # Devanagari: vowel signs are not \\w in Python
    "中文文本，测试。２０２４年",
    "e\u0301 vs é, 한국어 \u1100\u1161, e\u0308\u0301",
    "x\x1cy\x1f z\x00w\x7f_under_score__",
    "😀 emoji🎉ok — “quotes” ‘single’ … ½ ⅔ ①",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa b 12345678 123456789",
    "",
    "   ",
]


def check_tokens(texts: list[str | None]) -> None:
    """Token counts equal `words`, and equal tokens (only those) share a hash."""
    hashes, counts = token_hashes(pl.Series(texts, dtype=pl.String), "word")
    expected = [words(t) for t in texts]
    assert counts.tolist() == [len(w) for w in expected]
    seen: dict[str, int] = {}
    back: dict[int, str] = {}
    for token, value in zip(itertools.chain(*expected), hashes.tolist(), strict=True):
        assert seen.setdefault(token, value) == value
        assert back.setdefault(value, token) == token


def test_word_tokens_match_curate_text_words() -> None:
    check_tokens([*SAMPLES, None])
    pairs = pl.read_parquet(DATA)
    check_tokens(pairs["original"].to_list()[:200])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(max_size=40), max_size=8))
def test_word_tokens_match_words_on_generated_text(texts: list[str]) -> None:
    check_tokens(list(texts))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(alphabet=st.characters(max_codepoint=127), max_size=30), max_size=8))
def test_match_keys_equal_match_key(texts: list[str]) -> None:
    assert match_keys(pl.Series(texts, dtype=pl.String)).to_list() == [match_key(t) for t in texts]


def test_match_keys_non_ascii_and_char_shingles() -> None:
    got = match_keys(pl.Series(SAMPLES, dtype=pl.String)).to_list()
    assert got == [match_key(t) for t in SAMPLES]
    _, counts = token_hashes(pl.Series(SAMPLES), "char")
    assert counts.tolist() == [len(match_key(t)) for t in SAMPLES]


def check_folded_runs(texts: list[str]) -> None:
    """`encode` folds only runs of non-ASCII characters; every row must read as the whole row
    folded (NFKC, casefold), up to ASCII case, which the tokenizer ignores."""
    encoded = encode_for_kernels(pl.Series(texts, dtype=pl.String), "word")
    for row, text in enumerate(texts):
        got = encoded.data[encoded.offsets[row] : encoded.offsets[row + 1]].tobytes()
        assert got.lower() == unicodedata.normalize("NFKC", text).casefold().encode().lower()


def test_encode_folds_runs_like_whole_texts() -> None:
    texts = [
        "Area = 3x\u00b2 + x\u2081, \u0394y over \u03a3",  # superscript, subscript, Greek capitals
        "cafe\u0301 and CAFE\u0301",  # a combining mark composes with the ASCII letter before it
        "\u1100\u1161\u11a8 \u1100 \u1161",  # Hangul jamo compose, also across a run
        "\u2168 \ufb01x \u0130I \u00bd",  # compatibility forms; casefold that grows
        "ends with \u03a3",  # a folded run at a row's end ...
        "\u0301starts with a mark",  # ... and at the next row's start: rows fold apart
        "\u00e9\u00c9\u00e9",  # a run of stable and unstable characters together
        "",
        "plain ASCII, UPPER",
    ]
    check_folded_runs(texts)
    # real texts: GSM8K questions and model solutions, AIME problems (superscripts, Greek)
    solutions = pl.read_parquet(GSM8K_SOLUTIONS).select(pl.col(pl.String))
    real = [t for column in solutions.iter_columns() for t in column.drop_nulls().to_list()]
    real += pl.read_parquet(DECONTAM / "aime_1983_2023_problems.parquet")["problem"].to_list()
    real = [t for t in real if not t.isascii()]
    changed = [t for t in real if unicodedata.normalize("NFKC", t).casefold() != t.lower()]
    assert len(real) > 300 and len(changed) >= 15
    check_folded_runs(real)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.text(alphabet="aE \u0301\u00b2\u03a3\u1100\u1161\u00e9\u0130.", max_size=20)))
def test_encode_folds_runs_like_whole_texts_generated(texts: list[str]) -> None:
    check_folded_runs(texts)


def test_composing_starters_match_unicodedata() -> None:
    second = set()
    for cp in range(0x80, 0x30000):
        parts = unicodedata.decomposition(chr(cp)).split()
        if len(parts) == 2 and not parts[0].startswith("<"):
            second.add(int(parts[1], 16))
    starters = {cp for cp in second if unicodedata.combining(chr(cp)) == 0}
    hangul = set(range(0x1161, 0x1176)) | set(range(0x11A8, 0x11C3))
    assert set(COMPOSING_STARTERS) == starters | hangul


def test_ngram_hashes_layout() -> None:
    tokens = np.arange(1, 8, dtype=np.uint64)  # rows of 3, 0, 1, 3 tokens
    shingles = ngram_hashes(tokens, np.array([3, 0, 1, 3]), 2)
    assert shingles.counts.tolist() == [2, 0, 1, 2]
    h = shingles.hashes
    assert len(set(h.tolist())) == 5  # all different windows
    again = ngram_hashes(np.array([5, 6, 7, 1, 2, 3], dtype=np.uint64), np.array([3, 3]), 2)
    assert set(again.hashes.tolist()) == {h[3], h[4], h[0], h[1]}  # same windows, same hashes
    with pytest.raises(ValueError, match="5 token hashes for rows holding 4 tokens"):
        ngram_hashes(np.arange(5, dtype=np.uint64), np.array([4]), 2)


def test_shingle_jaccard_is_exact() -> None:
    texts = pl.Series(["a b c d", "a b c e", "", "a b c d"])
    shingles = shingle_hashes(texts, unit="word", n=1)
    got = shingle_jaccard(shingles, np.array([0, 0, 2]), np.array([1, 3, 2]))
    assert got.tolist() == pytest.approx([3 / 5, 1.0, 0.0])


# --- banding and clusters ----------------------------------------------------------------


@pytest.mark.parametrize("threshold", [0.5, 0.7, 0.8, 0.9])
@pytest.mark.parametrize("weights", [(0.5, 0.5), (0.1, 0.9)])
def test_optimal_split_is_datasketchs(threshold: float, weights: tuple[float, float]) -> None:
    fp, fn = weights
    got = optimal_split(threshold, 128, fp_weight=fp, fn_weight=fn)
    assert got == tuple(_optimal_param(threshold, 128, fp, fn))


def test_banding_numbers() -> None:
    banding = Banding(num_perm=128, bands=16, rows=8, threshold=0.7)
    assert banding.implied == pytest.approx((1 / 16) ** (1 / 8))
    assert float(candidate_probability(0.7, 16, 8)) == pytest.approx(1 - (1 - 0.7**8) ** 16)
    assert "128 permutations as 16 bands x 8 rows;" in banding.describe()
    assert "(4 of 128 unused)" in Banding(num_perm=128, bands=4, rows=31, threshold=0.9).describe()


def test_connected_components_by_hand_and_against_scipy() -> None:
    labels = connected_components(7, np.array([5, 1, 3]), np.array([6, 3, 0]))
    assert labels.tolist() == [0, 0, 2, 0, 4, 5, 5]
    assert component_sizes(labels).tolist() == [3, 3, 1, 3, 1, 2, 2]
    rng = np.random.default_rng(0)
    for n, m in [(50, 30), (2000, 1500), (2000, 4000)]:
        i, j = rng.integers(0, n, m), rng.integers(0, n, m)
        ours = connected_components(n, i, j)
        _, theirs = scipy_components(coo_matrix((np.ones(m), (i, j)), shape=(n, n)))
        smallest = np.full(n, n)
        np.minimum.at(smallest, theirs, np.arange(n))
        assert np.array_equal(ours, smallest[theirs])
    chain = rng.permutation(1000)
    assert (connected_components(1000, chain[:-1], chain[1:]) == 0).all()
    with pytest.raises(ValueError, match=r"outside 0\.\.2"):
        connected_components(3, np.array([0]), np.array([3]))


def test_group_pairs() -> None:
    i, j = group_pairs(np.array([3, 1, 3, 1, 1, 7]))
    assert sorted(zip(i.tolist(), j.tolist(), strict=True)) == [(0, 2), (1, 3), (1, 4), (3, 4)]
    assert group_pairs(np.array([], dtype=np.int64))[0].size == 0


# --- semantic ------------------------------------------------------------------------------

PARAPHRASES = [
    "Natalia sold clips to 48 of her friends in April.",
    "In April, Natalia sold clips to forty-eight of her friends.",
    "The mitochondria is the powerhouse of the cell.",
    "Paris is the capital of France.",
]


@pytest.fixture(scope="module")
def encode() -> Callable[[list[str]], np.ndarray]:
    from curate.embeddings import load_model

    model = load_model()

    def run(texts: list[str]) -> np.ndarray:
        return np.asarray(model.encode(texts, normalize_embeddings=True, show_progress_bar=False))

    return run


def test_semantic_dedup(encode: Callable[[list[str]], np.ndarray], tmp_path: Path) -> None:
    emb = encode(PARAPHRASES)
    cosine = float(emb[0] @ emb[1])
    assert cosine > 0.8
    frame = traces(PARAPHRASES, problems=["a", "b", "a", "b"])
    context = StageContext(stage_id="01-dedup", cache_dir=tmp_path)
    op = Dedup(DedupParams(method="semantic", on="completion", threshold=0.8), context=context)
    pairs = op.pairs(frame)
    assert pairs.rows() == [("t0", "t1", pytest.approx(cosine, abs=1e-4))]
    result = op.run(frame)
    assert kept_ids(result) == ["t0", "t2", "t3"]
    assert dropped(result)["t1"][2] == (
        f"semantic duplicate of t0 on completion: cosine {round(cosine, 3)} to it, threshold 0.8 "
        "(cluster of 2 rows)"
    )
    assert op.cache_stats is not None and op.cache_stats.from_cache == 4  # pairs() embedded them
    local = dedup(frame, method="semantic", on="completion", threshold=0.8, scope="per_problem")
    assert local.dropped.height == 0  # the paraphrases belong to different problems
    above = dedup(frame, method="semantic", on="completion", threshold=min(1.0, cosine + 0.01))
    assert above.dropped.height == 0


# --- through the engine --------------------------------------------------------------------


def test_build_with_dedup_steps_and_a_cached_rerun(write_spec: Callable[[str], Path]) -> None:
    from tests.conftest import QUICKSTART_INPUT

    spec_text = (
        "name: dedup\n"
        + QUICKSTART_INPUT
        + "steps:\n"
        # "on" is quoted: YAML 1.1 (PyYAML) reads a bare `on` key as the boolean true
        + '  - dedup: {"on": prompt, method: exact}\n'
        + '  - dedup: {"on": completion, method: minhash, scope: per_problem, threshold: 0.9}\n'
    )
    spec = write_spec(spec_text)
    manifest = Build(load_spec(spec)).run()
    stages = {s["stage_id"]: s for s in manifest["stages"]}
    assert stages["01-dedup"]["stats"]["dropped"] == 0  # 100 distinct MATH problems
    near = stages["02-dedup"]["stats"]
    assert near["dropped"] == near["dropped_by_reason"]["duplicate"] > 0
    run = spec.parent / "runs" / "dedup"
    drops = pl.read_parquet(run / "stages" / "02-dedup" / "dropped.parquet")
    kept = pl.read_parquet(run / "stages" / "02-dedup" / "part-*.parquet")
    assert set(drops["dup_of"]) <= set(kept["trace_id"])
    same_problem = drops.join(kept, left_on="dup_of", right_on="trace_id", suffix="_rep")
    assert (same_problem["problem_id"] == same_problem["problem_id_rep"]).all()
    cache_files = sorted((run / "cache" / "dedup").rglob("part-*.npz"))
    assert len(cache_files) == 1
    spec.write_text(spec_text.replace("threshold: 0.9", "threshold: 0.8"))
    again = Build(load_spec(spec)).run()
    assert [s["status"] for s in again["stages"]] == ["reused", "reused", "ran"]
    assert sorted((run / "cache" / "dedup").rglob("part-*.npz")) == cache_files
    assert again["stages"][2]["stats"]["dropped"] >= near["dropped"]
