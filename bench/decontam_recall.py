"""What each decontamination method catches: recall on GPT-4 rephrasings of the GSM8K test set
(lm-sys/llm-decontaminator) against the built-in `gsm8k` benchmark, and false positives on
GSM8K train problems (clean: not in the test set).

Runs the `decontaminate` operator itself (action: flag) on pools of
  - the 1,319 original test questions (every method should flag all of them),
  - the 1,319 rephrased test questions (the contamination that n-gram methods miss),
  - the GSM8K train questions that are not test questions (anything flagged is a false positive),
for exact, ngram (n = 8 and 13, any shared n-gram; n = 8 with fraction 0.5) and semantic
(all-MiniLM-L6-v2 at several cosine thresholds). A rephrasing counts as caught only when
contaminated_with names its own test item.

Anchors timed in the same run:
  - ngram: a plain-Python check (a set of n-gram tuples of the benchmark, `any()` per text, the
    shape of open-r1's decontaminate script) on the same texts and tokens; the flagged sets must
    be equal, and the time ratio is printed.
  - semantic: `model.encode` called directly on the same distinct texts (benchmark + pools);
    our first semantic run (cold cache: hashing, encoding, cache writes, search) is timed
    against it. Later thresholds read the embedding cache and are timed too.

Usage: .venv/bin/python bench/decontam_recall.py [--data /work/shared/data] [--skip-semantic]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import polars as pl

from curate.benchmarks import load_builtin
from curate.embeddings import load_model
from curate.filters.decontaminate import Decontaminate, DecontaminateParams
from curate.ngrams import word_tokens
from curate.operators import StageContext
from curate.text import match_key


def read_jsonl(path: Path) -> list[dict[str, object]]:
    with path.open() as handle:
        return [json.loads(line) for line in handle if line.strip()]


def flag(texts: list[str], cache: Path | None, **params: object) -> pl.DataFrame:
    frame = pl.DataFrame({"problem_id": [str(i) for i in range(len(texts))], "prompt": texts})
    op = Decontaminate(
        DecontaminateParams.model_validate({"against": ["gsm8k"], "action": "flag", **params}),
        context=StageContext(stage_id="bench", cache_dir=cache),
    )
    return op.run(frame).kept


def naive_ngram(texts: list[str], reference: list[str], n: int) -> set[int]:
    """The anchor: a set of n-gram tuples, any() per text (short texts as whole sequences)."""

    def grams(text: str) -> set[tuple[str, ...]]:
        tokens = word_tokens(text)
        if len(tokens) < n:
            return {("<short>", *tokens)} if tokens else set()
        return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}

    index: set[tuple[str, ...]] = set()
    for text in reference:
        index |= grams(text)
    return {i for i, text in enumerate(texts) if any(g in index for g in grams(text))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/work/shared/data"))
    parser.add_argument("--skip-semantic", action="store_true")
    args = parser.parse_args()

    pairs = read_jsonl(args.data / "rephrase_contamination" / "gsm8k_rephrase_pairs.jsonl")
    originals = [str(p["original"]) for p in pairs]
    rephrased = [str(p["rephrased"]) for p in pairs]
    want = [f"gsm8k:test-{p['gsm8k_test_index']}" for p in pairs]
    test_keys = {match_key(t) for t in originals}
    train_all = [str(r["question"]) for r in read_jsonl(args.data / "gsm8k" / "train.jsonl")]
    train = [t for t in train_all if match_key(t) not in test_keys]
    reference = load_builtin("gsm8k").items["text"].to_list()
    print(
        f"benchmark gsm8k test: {len(reference)} items; pools: {len(originals)} originals, "
        f"{len(rephrased)} rephrasings, {len(train)} train questions not in test "
        f"({len(train_all) - len(train)} train questions equal a test question, left out)"
    )

    cache = Path(tempfile.mkdtemp(prefix="decontam-bench-"))
    methods: list[tuple[str, dict[str, object]]] = [
        ("exact", {"method": "exact"}),
        ("ngram n=13", {"method": "ngram", "ngram": 13}),
        ("ngram n=8", {"method": "ngram", "ngram": 8}),
        ("ngram n=8, fraction>=0.5", {"method": "ngram", "ngram": 8, "fraction": 0.5}),
    ]
    if not args.skip_semantic:
        load_model()  # warm: the load is not part of either timing
        methods += [
            (f"semantic cos>={t}", {"method": "semantic", "threshold": t})
            for t in (0.95, 0.9, 0.85, 0.8, 0.75)
        ]

    rows = []
    seconds: dict[str, float] = {}
    for label, params in methods:
        started = time.perf_counter()
        orig = flag(originals, cache, **params)["contaminated_with"].to_list()
        reph = flag(rephrased, cache, **params)["contaminated_with"].to_list()
        clean = flag(train, cache, **params)["contaminated_with"].to_list()
        seconds[label] = time.perf_counter() - started
        rows.append(
            {
                "method": label,
                "originals flagged": sum(v is not None for v in orig) / len(orig),
                "rephrasings flagged": sum(v is not None for v in reph) / len(reph),
                "rephrasings, right item": sum(v == w for v, w in zip(reph, want, strict=True))
                / len(reph),
                "train flagged (false pos.)": sum(v is not None for v in clean) / len(clean),
                "seconds (3 pools)": seconds[label],
            }
        )

    table = pl.DataFrame(rows)
    with pl.Config(
        tbl_rows=-1, tbl_width_chars=200, float_precision=4, tbl_hide_dataframe_shape=True
    ):
        print(table)

    print("\nanchors (same texts, same run):")
    for n in (13, 8):
        started = time.perf_counter()
        naive = [naive_ngram(pool, reference, n) for pool in (originals, rephrased, train)]
        anchor = time.perf_counter() - started
        ours = [
            {
                i
                for i, v in enumerate(
                    flag(pool, None, method="ngram", ngram=n)["contaminated_with"]
                )
                if v is not None
            }
            for pool in (originals, rephrased, train)
        ]
        assert ours == naive, f"n={n}: the operator and the plain-Python anchor disagree"
        print(
            f"  ngram n={n}: operator {seconds[f'ngram n={n}']:.2f} s vs plain-Python sets "
            f"{anchor:.2f} s (ratio {seconds[f'ngram n={n}'] / anchor:.2f}); same flagged rows"
        )
    if not args.skip_semantic:
        model = load_model()
        distinct = list(dict.fromkeys(reference + originals + rephrased + train))
        started = time.perf_counter()
        model.encode(distinct, batch_size=64, show_progress_bar=False)
        direct = time.perf_counter() - started
        first = seconds["semantic cos>=0.95"]
        later = [seconds[k] for k in seconds if k.startswith("semantic") and "0.95" not in k]
        print(
            f"  semantic: first threshold (cold cache) {first:.1f} s vs model.encode on the same "
            f"{len(distinct)} distinct texts {direct:.1f} s (ratio {first / direct:.3f}); "
            f"later thresholds from the cache {min(later):.1f}-{max(later):.1f} s"
        )
    shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
