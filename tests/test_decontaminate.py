"""The decontaminate operator: hand-checkable exact, n-gram and semantic cases, benchmark loading
and its errors, and the real overlaps of AIME 1983-2023 with MATH-500 and the MATH test set."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from pydantic import ValidationError

from curate.benchmarks import BUILTIN, load_builtin, load_file
from curate.errors import InputError, OperatorError
from curate.filters.decontaminate import Decontaminate, DecontaminateParams
from curate.operators import OpResult, StageContext
from curate.registry import get_operator

DATA = Path(__file__).parent / "data" / "decontam"
AIME = DATA / "aime_1983_2023_problems.parquet"
MATH_TEST = DATA / "math_test_problems.parquet"


def write_bench(folder: Path, texts: list[str | None], name: str = "bench.jsonl") -> Path:
    path = folder / name
    path.write_text(
        "".join(json.dumps({"qid": f"q{i}", "question": t}) + "\n" for i, t in enumerate(texts))
    )
    return path


def bench(path: Path, **extra: Any) -> dict[str, Any]:
    return {"path": str(path), "text": "question", "id": "qid", **extra}


def pool(prompts: list[str | None], **extra: list[Any]) -> pl.DataFrame:
    frame = pl.DataFrame(
        {"problem_id": [f"p{i}" for i in range(len(prompts))], "prompt": prompts},
        schema={"problem_id": pl.String, "prompt": pl.String},
    )
    return frame.with_columns(*(pl.Series(k, v) for k, v in extra.items()))


def run(frame: pl.DataFrame, base_dir: Path | None = None, **params: Any) -> OpResult:
    context = StageContext(stage_id="02-decontaminate", base_dir=base_dir or Path.cwd())
    op = Decontaminate(DecontaminateParams.model_validate(params), context=context)
    result = op.run(frame)
    assert result.kept.height + result.dropped.height == frame.height
    assert "contaminated_with" in result.kept.columns
    return result


def flagged(result: OpResult) -> dict[str, tuple[str, str]]:
    """problem_id -> (contaminated_with, drop_detail) of the dropped rows."""
    return {
        r["problem_id"]: (r["contaminated_with"], r["drop_detail"])
        for r in result.dropped.iter_rows(named=True)
    }


def test_registered() -> None:
    assert get_operator("decontaminate") is Decontaminate
    assert Decontaminate.describe().startswith("Drop (or flag) rows whose text matches")


@pytest.mark.parametrize(
    ("name", "rows", "first_id"),
    [
        ("math500", 500, "test/precalculus/807.json"),
        ("aime24", 30, "2024-I-1"),
        ("aime25", 30, "2025-I-1"),
        ("amc23", 40, "2023-12A-1"),
        ("gsm8k", 1319, "test-0"),
    ],
)
def test_builtin_benchmarks_load(name: str, rows: int, first_id: str) -> None:
    loaded = load_builtin(name)
    assert loaded.height == rows
    assert loaded.items["id"][0] == first_id
    assert loaded.items["id"].n_unique() == rows
    assert loaded.items["text"].str.strip_chars().str.len_chars().min() > 0  # type: ignore[operator]


def test_builtin_names_and_cleaned_aime25() -> None:
    assert set(BUILTIN) == {"math500", "aime24", "aime25", "amc23", "gsm8k"}
    texts = load_builtin("aime25").items["text"].to_list()
    assert not any("Please reason step by step" in t for t in texts)
    assert (
        texts[0]
        == "Find the sum of all integer bases $b>9$ for which $17_b$ is a divisor of $97_b.$"
    )
    ids = load_builtin("aime25").items["id"].to_list()
    assert ids[14:16] == ["2025-I-15", "2025-II-1"]


def test_empty_pool(tmp_path: Path) -> None:
    empty = pool([])
    result = run(empty, against=[bench(write_bench(tmp_path, ["a b c"]))], method="exact")
    assert result.kept.height == 0 and result.dropped.height == 0
    assert result.kept.schema["contaminated_with"] == pl.String


def test_single_row_dropped_and_single_row_kept(tmp_path: Path) -> None:
    path = write_bench(tmp_path, ["What is 2+2?"])
    hit = run(pool(["what is 2+2?"]), against=[bench(path)], method="exact")
    assert flagged(hit) == {
        "p0": ("bench:q0", "exact: normalized text equals bench:q0"),
    }
    assert hit.dropped["drop_reason"].to_list() == ["contaminated"]
    clean = run(pool(["What is 2+3?"]), against=[bench(path)], method="exact")
    assert clean.dropped.height == 0
    assert clean.kept["contaminated_with"].to_list() == [None]


def test_exact_whitespace_case_and_unicode_variants(tmp_path: Path) -> None:
    path = write_bench(
        tmp_path,
        ["What is 2+2?", "Combien font deux plus deux ? Réponds en français.", "计算 1 加 1"],
    )
    frame = pool(
        [
            "  What   is\n2+2? ",  # whitespace runs and ends
            "WHAT IS 2+2?",  # case
            "Ｗｈａｔ ｉｓ ２＋２？",  # full-width forms: NFKC
            "What is 2 + 2?",  # different spacing inside: not the same text
            "COMBIEN font deux plus deux ? réponds EN FRANÇAIS.",  # non-ASCII case fold
            "计算 1 加 1",  # CJK
            "计算 1 加 2",
            None,  # null text: never contaminated
            "   ",  # blank
        ]
    )
    result = run(frame, against=[bench(path)], method="exact")
    got = {pid: item for pid, (item, _) in flagged(result).items()}
    assert got == {
        "p0": "bench:q0",
        "p1": "bench:q0",
        "p2": "bench:q0",
        "p4": "bench:q1",
        "p5": "bench:q2",
    }
    assert result.kept["problem_id"].to_list() == ["p3", "p6", "p7", "p8"]


def test_ngram_boundaries(tmp_path: Path) -> None:
    path = write_bench(tmp_path, ["a b c d e", "p q"])
    frame = pool(
        [
            "x a b c y",  # shares the 3-gram "a b c"
            "a b x c d",  # shares no 3-gram (a b x, b x c, x c d)
            "a b",  # shorter than n: whole text "a b" equals no item
            "P, q!",  # shorter than n: same words as item "p q" (punctuation is no word)
            "p q r",  # contains the short item but is not it: not flagged (documented)
            "A-B-C",  # punctuation skipped: the words a b c
            "",
        ]
    )
    result = run(frame, against=[bench(path)], method="ngram", ngram=3)
    assert flagged(result) == {
        "p0": (
            "bench:q0",
            "ngram n=3: 1 of the text's 3 distinct 3-grams (0.3333; any shared) shared with "
            "bench:q0",
        ),
        "p3": ("bench:q1", "ngram n=3: whole text (shorter than 3 words) equals bench:q1"),
        "p5": (
            "bench:q0",
            "ngram n=3: 1 of the text's 1 distinct 3-grams (1.0; any shared) shared with bench:q0",
        ),
    }
    # exactly n words and equal: one gram, shared
    exact_n = run(pool(["c d e"]), against=[bench(path)], method="ngram", ngram=3)
    assert list(flagged(exact_n)) == ["p0"]


def test_ngram_fraction(tmp_path: Path) -> None:
    path = write_bench(tmp_path, ["a b c d e"])
    frame = pool(["a b c x y z"])  # 2-grams ab bc cx xy yz: 2 of 5 in the item
    at = run(frame, against=[bench(path)], method="ngram", ngram=2, fraction=0.4)
    assert flagged(at) == {
        "p0": (
            "bench:q0",
            "ngram n=2: 2 of the text's 5 distinct 2-grams (0.4; fraction >= 0.4) shared with "
            "bench:q0",
        )
    }
    above = run(frame, against=[bench(path)], method="ngram", ngram=2, fraction=0.5)
    assert above.dropped.height == 0
    anyshared = run(frame, against=[bench(path)], method="ngram", ngram=2)
    assert anyshared.dropped.height == 1


def test_best_item_and_ties(tmp_path: Path) -> None:
    first = write_bench(tmp_path, ["one two three four", "one two three four five six"], "b1.jsonl")
    second = write_bench(tmp_path, ["one two three four five six"], "b2.jsonl")
    frame = pool(["one two three four five six", "one two three four"])
    # ngram: the item sharing most n-grams wins; on a tie, the benchmark listed first, then the
    # earliest item
    result = run(
        frame,
        against=[bench(second, name="second"), bench(first, name="first")],
        method="ngram",
        ngram=2,
    )
    got = {pid: item for pid, (item, _) in flagged(result).items()}
    assert got == {"p0": "second:q0", "p1": "second:q0"}
    swapped = run(
        frame, against=[bench(first, name="first"), bench(second, name="second")], ngram=2
    )
    got = {pid: item for pid, (item, _) in flagged(swapped).items()}
    assert got == {"p0": "first:q1", "p1": "first:q0"}  # p1: 3 shared with q0 and q1; q0 first


def test_each_trace_of_a_problem_gets_the_same_verdict(tmp_path: Path) -> None:
    path = write_bench(tmp_path, ["Natalia sold clips to 48 of her friends in April."])
    prompts = ["Natalia sold clips to 48 of her friends in April."] * 8 + ["Other problem."] * 8
    frame = pool(prompts, sample_index=list(range(8)) * 2)
    result = run(frame, against=[bench(path)], method="exact")
    assert result.dropped.height == 8
    assert result.dropped["contaminated_with"].unique().to_list() == ["bench:q0"]
    assert result.kept["sample_index"].to_list() == list(range(8))


def test_flag_keeps_rows_and_earlier_flags_survive(tmp_path: Path) -> None:
    path = write_bench(tmp_path, ["a b c"])
    frame = pool(["a b c", "x y z"], contaminated_with=[None, "math500:earlier"])
    result = run(frame, against=[bench(path)], method="exact", action="flag")
    assert result.dropped.height == 0
    assert result.kept["contaminated_with"].to_list() == ["bench:q0", "math500:earlier"]


def test_on_another_column(tmp_path: Path) -> None:
    path = write_bench(tmp_path, ["leaked answer text"])
    frame = pool(["p", "q"], completion=["Leaked  answer text", "fine"])
    result = run(frame, against=[bench(path)], method="exact", on="completion")
    assert list(flagged(result)) == ["p0"]
    with pytest.raises(OperatorError, match=r"needs column\(s\) reasoning"):
        run(frame, against=[bench(path)], method="exact", on="reasoning")
    with pytest.raises(OperatorError, match="column 'n' is Int64, expected text"):
        run(pool(["p"], n=[1]), against=[bench(path)], method="exact", on="n")


def test_relative_path_resolves_against_the_spec_folder(tmp_path: Path) -> None:
    (tmp_path / "benches").mkdir()
    write_bench(tmp_path / "benches", ["a b c"], "mine.jsonl")
    result = run(
        pool(["A B C"]),
        base_dir=tmp_path,
        against=[{"path": "benches/mine.jsonl", "text": "question"}],
        method="exact",
    )
    assert flagged(result)["p0"][0] == "mine:0"  # name from the stem, id from the row number


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"against": ["math5000"]}, "'math5000' is not a built-in benchmark; built-in: math500"),
        ({"against": []}, "at least 1 item"),
        ({"against": ["math500", "math500"]}, "math500 given more than once"),
        (
            {"against": ["math500", {"path": "x/math500.jsonl"}]},
            "math500 given more than once",
        ),
        (
            {"against": ["gsm8k"], "threshold": 0.8},
            "threshold do\\(es\\) not apply to method: ngram",
        ),
        (
            {"against": ["gsm8k"], "method": "semantic", "fraction": 0.5},
            "fraction do\\(es\\) not apply to method: semantic",
        ),
        ({"against": ["gsm8k"], "method": "exact", "ngram": 8}, "not apply to method: exact"),
        ({"against": ["gsm8k"], "fraction": 0}, "greater than 0"),
        ({"against": ["gsm8k"], "method": "minhash"}, "'exact', 'ngram' or 'semantic'"),
        ({"against": ["gsm8k"], "action": "delete"}, "'drop' or 'flag'"),
    ],
)
def test_bad_params(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        DecontaminateParams.model_validate(params)


def test_bad_benchmark_files(tmp_path: Path) -> None:
    frame = pool(["a"])
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(InputError, match=f"benchmark file {missing} does not exist"):
        run(frame, against=[{"path": str(missing)}], method="exact")
    path = write_bench(tmp_path, ["a"])
    with pytest.raises(InputError, match=r"bench.jsonl, line 1: no column 'problem'"):
        run(frame, against=[{"path": str(path), "text": "problem"}], method="exact")
    parquet = tmp_path / "b.parquet"
    pl.DataFrame({"question": ["a"]}).write_parquet(parquet)
    with pytest.raises(
        InputError, match=r"b.parquet: no column 'problem'; columns present: question"
    ):
        run(frame, against=[{"path": str(parquet), "text": "problem"}], method="exact")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "a"}\n{"text": \n')
    with pytest.raises(InputError, match=r"broken.jsonl, line 2"):
        load_file(broken)
    dup = tmp_path / "dup.jsonl"
    dup.write_text('{"id": 1, "text": "a"}\n{"id": 1, "text": "b"}\n')
    with pytest.raises(InputError, match="id '1' appears more than once"):
        load_file(dup, id_column="id")
    text_file = tmp_path / "x.txt"
    text_file.write_text("a")
    with pytest.raises(InputError, match=r"cannot tell the format from '\.txt'"):
        load_file(text_file)
    numbers = tmp_path / "numbers.jsonl"
    numbers.write_text('{"text": 5}\n')
    with pytest.raises(InputError, match=r"numbers\.jsonl, line 1: column 'text' is a number"):
        load_file(numbers)


def test_blank_benchmark_items_are_skipped(tmp_path: Path) -> None:
    path = write_bench(tmp_path, ["", None, "real item"])
    loaded = load_file(path, text_column="question", id_column="qid")
    assert loaded.items.rows() == [("q2", "real item")]
    assert run(pool([""]), against=[bench(path)], method="exact").dropped.height == 0


# -- real data ------------------------------------------------------------------------------


def ws(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def aime() -> pl.DataFrame:
    frame = pl.read_parquet(AIME)
    return frame.select(
        pl.format("aime-{}-{}-{}", "year", "aime_number", "problem_number").alias("problem_id"),
        pl.col("problem").alias("prompt"),
    )


def test_aime_against_math500_flags_exactly_the_shared_problems(aime: pl.DataFrame) -> None:
    assert aime.height == 975
    math500 = load_builtin("math500").items
    shared = {ws(t) for t in aime["prompt"]} & {ws(t) for t in math500["text"]}
    expected = {pid for pid, t in aime.iter_rows() if ws(t) in shared}
    assert len(shared) == 3 and len(expected) == 3

    result = run(aime, against=["math500"], method="exact")
    got = flagged(result)
    assert set(got) == expected
    by_id = dict(math500.iter_rows())
    texts = dict(aime.iter_rows())
    for pid, (item, _) in got.items():  # each names the MATH-500 item with that text
        assert ws(by_id[item.removeprefix("math500:")]) == ws(texts[pid])


def test_aime_against_math_test_file_flags_the_20(aime: pl.DataFrame) -> None:
    math_test = pl.read_parquet(MATH_TEST)
    assert math_test.height == 5000
    shared = {ws(t) for t in aime["prompt"]} & {ws(t) for t in math_test["problem"]}
    expected = {pid for pid, t in aime.iter_rows() if ws(t) in shared}
    assert len(expected) == 20
    result = run(
        aime,
        against=[{"path": str(MATH_TEST), "text": "problem", "id": "idx", "name": "math_test"}],
        method="exact",
    )
    assert set(flagged(result)) == expected
    assert all(item.startswith("math_test:") for item, _ in flagged(result).values())


def test_aime_ngram_with_a_fraction_finds_the_exact_overlaps(aime: pl.DataFrame) -> None:
    exact = set(flagged(run(aime, against=["math500"], method="exact")))
    result = run(aime, against=["math500"], method="ngram", ngram=13, fraction=0.5)
    got = flagged(result)
    assert exact <= set(got)
    assert 3 <= len(got) <= 10  # near-copies only, not the shared AIME boilerplate
    # any shared 13-gram also catches stock phrasing ("m and n are relatively prime ...")
    loose = run(aime, against=["math500"], method="ngram", ngram=13)
    assert len(flagged(loose)) > 5 * len(got)


# -- semantic (real model, a few texts) ----------------------------------------------------


def test_semantic_flags_a_paraphrase_and_reuses_cached_embeddings(tmp_path: Path) -> None:
    path = write_bench(
        tmp_path,
        [
            "Janet's ducks lay 16 eggs per day. She eats three for breakfast and sells the rest "
            "for $2 each. How much does she make every day?",
            "A robe takes 2 bolts of blue fiber and half that much white fiber. How many bolts "
            "in total does it take?",
        ],
    )
    frame = pool(
        [
            "Every day Janet's ducks produce 16 eggs; she eats 3 for breakfast and sells the "
            "remaining eggs at $2 apiece. What are her daily earnings?",
            "The mitochondria is the powerhouse of the cell.",
        ]
    )
    cache = tmp_path / "cache"
    context = StageContext(stage_id="02-decontaminate", cache_dir=cache)

    def semantic(threshold: float) -> OpResult:
        params = DecontaminateParams.model_validate(
            {"against": [bench(path)], "method": "semantic", "threshold": threshold}
        )
        return Decontaminate(params, context=context).run(frame)

    result = semantic(0.8)
    [(pid, (item, detail))] = flagged(result).items()
    assert (pid, item) == ("p0", "bench:q0")
    assert detail.startswith("semantic: cosine 0.")
    assert detail.endswith(">= 0.8 (all-MiniLM-L6-v2) with bench:q0")
    parts = sorted(cache.rglob("part-*.npz"))
    assert len(parts) == 2  # the benchmark's texts and the pool's texts
    assert semantic(0.999).dropped.height == 0  # a new threshold: nothing embedded again
    assert sorted(cache.rglob("part-*.npz")) == parts
