"""Accuracy of the dedup operator on real near-duplicates: GSM-Hard vs GSM8K test.

../shared/data/gsm_hard_pairs/pairs.jsonl holds 1,319 pairs (a GSM8K test question and its
GSM-Hard version with numbers replaced; 329 pairs are byte-identical). The pool here is all
2,638 questions as problems (`on: prompt`, global scope), so every pair of questions, within and
across the two sets, is a candidate.

- exact: must put all 329 identical pairs in one cluster each.
- minhash: the anchor is brute force, the exact Jaccard of every pair of questions (3.5 M pairs)
  over the same shingles (word 5-grams of curate.text.words, computed in plain Python). Recall is
  the share of pairs at or above the threshold that end in one cluster; every pair the operator
  reports (`Dedup.pairs`: the verified pairs it joins) must have true Jaccard >= threshold - 0.05.
  Also shown: the same without verification (`verify: false`), pairs that share a cluster
  only through a chain (true Jaccard below threshold - 0.05), and the spread of the signature
  estimate of Jaccard, ours against rensa's R-MinHash.
- semantic: how many of the 1,319 pairs the default model puts in one cluster, and how many
  reported pairs join different problems.

Run: .venv/bin/python bench/dedup_accuracy.py [--data PATH] [--num-perm 128 256]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
from scipy import sparse

from curate.filters.dedup import Dedup, DedupParams
from curate.minhash import estimated_jaccard, rensa_signatures, signatures
from curate.operators import StageContext
from curate.shingles import shingle_hashes
from curate.text import words

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm_hard_pairs" / "pairs.jsonl"
NGRAM = 5
MARGIN = 0.05


def load_pool(path: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    pairs = pl.DataFrame([json.loads(line) for line in path.read_text().splitlines()])
    n = pairs.height
    pool = pl.DataFrame(
        {
            "problem_id": [f"gsm8k-{i}" for i in range(n)] + [f"hard-{i}" for i in range(n)],
            "prompt": pairs["original"].to_list() + pairs["perturbed"].to_list(),
        }
    )
    return pairs, pool


def shingle_sets(texts: list[str], n: int) -> list[set[tuple[str, ...]]]:
    """Word n-gram sets in plain Python: the reference the operator's shingles must match."""
    out = []
    for text in texts:
        tokens = words(text)
        if len(tokens) < n:
            out.append({tuple(tokens)} if tokens else set())
        else:
            out.append({tuple(tokens[k : k + n]) for k in range(len(tokens) - n + 1)})
    return out


def brute_force_jaccard(sets: list[set[tuple[str, ...]]]) -> np.ndarray:
    """The dense matrix of exact Jaccard similarities (a sparse incidence product)."""
    vocab: dict[tuple[str, ...], int] = {}
    rows, cols = [], []
    for r, shingles in enumerate(sets):
        for s in shingles:
            rows.append(r)
            cols.append(vocab.setdefault(s, len(vocab)))
    m = sparse.csr_matrix(
        (np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(sets), len(vocab))
    )
    inter = (m @ m.T).toarray()
    size = np.asarray(m.sum(axis=1)).ravel()
    union = size[:, None] + size[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def run(pool: pl.DataFrame, **params: object) -> tuple[pl.DataFrame, pl.DataFrame, float]:
    """The operator's decisions, its reported pairs, and the seconds `decide` took (with an
    empty cache; `pairs` then reads the signatures or embeddings back from it)."""
    with tempfile.TemporaryDirectory() as cache:
        context = StageContext(stage_id="bench", cache_dir=Path(cache))
        op = Dedup(DedupParams.model_validate(params), context=context)
        started = time.perf_counter()
        decided = op.decide(pool)
        seconds = time.perf_counter() - started
        return decided, op.pairs(pool), seconds


def exact_check(pairs: pl.DataFrame, pool: pl.DataFrame) -> None:
    decided, _, seconds = run(pool, method="exact", on="prompt")
    n = pairs.height
    cluster = decided["dup_cluster"].to_list()
    same = [cluster[k] is not None and cluster[k] == cluster[n + k] for k in range(n)]
    identical = pairs["identical_text"].to_list()
    found = sum(1 for k in range(n) if same[k] and identical[k])
    missed = sum(1 for k in range(n) if identical[k] and not same[k])
    extra = sum(1 for k in range(n) if same[k] and not identical[k])
    dropped = decided["drop_reason"].is_not_null().sum()
    print(
        f"exact: {found} of {sum(identical)} identical pairs clustered, {missed} missed, "
        f"{extra} non-identical pairs clustered; {dropped} questions dropped; {seconds:.2f}s"
    )


def minhash_rows(
    pool: pl.DataFrame, jac: np.ndarray, thresholds: list[float], num_perms: list[int]
) -> None:
    ids = pool["problem_id"].to_list()
    index = {pid: k for k, pid in enumerate(ids)}
    upper = np.triu(np.ones(jac.shape, dtype=bool), k=1)
    header = (
        f"{'threshold':>9} {'num_perm':>8} {'verify':>6} {'bands x rows':>12} {'true pairs':>10} "
        f"{'recall':>7} {'reported':>8} {'min J':>6} {'below t-0.05':>12} {'chained':>7} "
        f"{'seconds':>7}"
    )
    print(header)
    for threshold in thresholds:
        truth = upper & (jac >= threshold)
        n_true = int(truth.sum())
        for num_perm in num_perms:
            for verify in (True, False):
                params = {
                    "method": "minhash",
                    "on": "prompt",
                    "threshold": threshold,
                    "num_perm": num_perm,
                    "ngram": NGRAM,
                    "verify": verify,
                }
                decided, reported, seconds = run(pool, **params)
                banding = DedupParams.model_validate(params).banding()
                cluster = decided["dup_cluster"]
                codes = cluster.rank("dense").fill_null(0).to_numpy()
                in_cluster = cluster.is_not_null().to_numpy()
                ti, tj = np.nonzero(truth)
                hit = in_cluster[ti] & in_cluster[tj] & (codes[ti] == codes[tj])
                recall = float(hit.mean()) if n_true else 1.0
                a = np.array([index[x] for x in reported["a"].to_list()], dtype=np.int64)
                b = np.array([index[x] for x in reported["b"].to_list()], dtype=np.int64)
                true_j = jac[a, b] if a.size else np.zeros(0)
                below = int((true_j < threshold - MARGIN).sum())
                same = in_cluster[:, None] & in_cluster[None, :] & (codes[:, None] == codes[None])
                chained = int((same & upper & (jac < threshold - MARGIN)).sum())
                min_j = f"{true_j.min():.3f}" if true_j.size else "-"
                print(
                    f"{threshold:>9.2f} {num_perm:>8} {('yes' if verify else 'no'):>6} "
                    f"{f'{banding.bands} x {banding.rows}':>12} {n_true:>10} {recall:>7.4f} "
                    f"{a.size:>8} {min_j:>6} {below:>12} {chained:>7} {seconds:>7.2f}"
                )


def estimator_error(pool: pl.DataFrame, jac: np.ndarray, num_perms: list[int]) -> None:
    """Spread of the signatures' Jaccard estimate around the true value: ours (one-permutation
    MinHash, densified) against rensa's R-MinHash on the same shingles."""
    shingles = shingle_hashes(pool["prompt"], unit="word", n=NGRAM)
    i, j = np.nonzero(np.triu((jac > 0.4) & (jac < 0.95), k=1))
    true = jac[i, j]
    print(f"\nestimate - true Jaccard over the {i.size:,} pairs with 0.4 < J < 0.95:")
    print(f"{'num_perm':>8} {'signer':>22} {'mean':>8} {'std':>7} {'binomial std':>13}")
    for num_perm in num_perms:
        binomial = float(np.sqrt(true * (1 - true) / num_perm).mean())
        for name, sign in (
            ("ours (OPH, densified)", signatures),
            ("rensa R-MinHash", rensa_signatures),
        ):
            sig = sign(shingles, num_perm=num_perm, seed=1)
            err = estimated_jaccard(sig, i, j) - true
            print(
                f"{num_perm:>8} {name:>22} {err.mean():>+8.4f} {err.std():>7.4f} {binomial:>13.4f}"
            )


def semantic_rows(pairs: pl.DataFrame, pool: pl.DataFrame, thresholds: list[float]) -> None:
    n = pairs.height
    print("\nsemantic (all-MiniLM-L6-v2, cosine), the same 2,638 questions:")
    for threshold in thresholds:
        decided, reported, seconds = run(pool, method="semantic", on="prompt", threshold=threshold)
        cluster = decided["dup_cluster"].to_list()
        same = sum(1 for k in range(n) if cluster[k] is not None and cluster[k] == cluster[n + k])
        other = reported.filter(
            pl.col("a").str.replace("^(gsm8k|hard)-", "")
            != pl.col("b").str.replace("^(gsm8k|hard)-", "")
        ).height
        print(
            f"  threshold {threshold:.2f}: {same} of {n} pairs in one cluster, {reported.height} "
            f"pairs reported, {other} of them between different problems; {seconds:.1f}s"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 0.6, 0.7, 0.8, 0.9])
    parser.add_argument("--num-perm", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--skip-semantic", action="store_true")
    args = parser.parse_args()
    pairs, pool = load_pool(args.data)
    print(f"{args.data}: {pairs.height} pairs, {pool.height} questions\n")
    exact_check(pairs, pool)
    started = time.perf_counter()
    jac = brute_force_jaccard(shingle_sets(pool["prompt"].to_list(), NGRAM))
    print(
        f"\nbrute force: exact Jaccard of all {pool.height * (pool.height - 1) // 2:,} pairs "
        f"(word {NGRAM}-grams) in {time.perf_counter() - started:.1f}s\n"
    )
    minhash_rows(pool, jac, args.thresholds, args.num_perm)
    estimator_error(pool, jac, args.num_perm)
    if not args.skip_semantic:
        semantic_rows(pairs, pool, [0.9, 0.95])
    print(
        "\nrecall: true pairs (J >= threshold) in one cluster; reported: the verified pairs the "
        "operator joins (Dedup.pairs); below t-0.05: reported pairs with true J < threshold - "
        "0.05 (must be 0); chained: pairs in one cluster with true J < threshold - 0.05"
    )


if __name__ == "__main__":
    main()
