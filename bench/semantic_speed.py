"""Throughput of semantic dedup against calling the model directly on the same texts.

Texts: distinct real problem statements from ../shared/data: GSM8K test (1,319), GSM-Hard
(the same questions with numbers changed; 329 are identical to the GSM8K ones and appear once)
and MATH-500 (500). Model: the packaged all-MiniLM-L6-v2, loaded once before anything is timed.

Timed, each best of --repeat runs, in this order:

- anchor: `model.encode(texts, batch_size=64, normalize_embeddings=True)`.
- ours, cold: `Dedup(method=semantic, on=prompt, threshold=0.9).run(pool)` with an empty cache
  folder: embedding (content-hash cache lookup, encode, write the cache), exact cosine search,
  clusters and the output columns.
- ours, cached: the same step again with another threshold (no text is encoded).

Run: .venv/bin/python bench/semantic_speed.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from curate.embeddings import load_model
from curate.filters.dedup import Dedup, DedupParams
from curate.operators import StageContext

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def texts() -> list[str]:
    out: list[str] = []
    for line in (SHARED / "gsm8k" / "test.jsonl").open():
        out.append(json.loads(line)["question"])
    for line in (SHARED / "gsm_hard_pairs" / "gsmhardv2.jsonl").open():
        out.append(json.loads(line)["input"])
    for line in (SHARED / "math500" / "test.jsonl").open():
        out.append(json.loads(line)["problem"])
    return list(dict.fromkeys(out))  # distinct, first-seen order


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    corpus = texts()
    pool = pl.DataFrame({"problem_id": [f"q{i}" for i in range(len(corpus))], "prompt": corpus})
    model = load_model()
    model.encode(corpus[:64], batch_size=64, show_progress_bar=False)  # warm up

    def anchor() -> np.ndarray:
        return np.asarray(
            model.encode(corpus, batch_size=64, normalize_embeddings=True, show_progress_bar=False)
        )

    def ours(cache: Path, threshold: float) -> pl.DataFrame:
        context = StageContext(stage_id="01-dedup", cache_dir=cache)
        params = DedupParams(method="semantic", on="prompt", threshold=threshold)
        return Dedup(params, context=context).run(pool).dropped

    times: dict[str, list[float]] = {"anchor": [], "cold": [], "cached": []}
    dropped = 0
    with tempfile.TemporaryDirectory(prefix="semantic-speed-") as tmp:
        for attempt in range(args.repeat):
            started = time.perf_counter()
            reference = anchor()
            times["anchor"].append(time.perf_counter() - started)
            cache = Path(tmp) / f"cache-{attempt}"
            started = time.perf_counter()
            dropped = ours(cache, 0.9).height
            times["cold"].append(time.perf_counter() - started)
            started = time.perf_counter()
            ours(cache, 0.95)
            times["cached"].append(time.perf_counter() - started)
        from curate.embeddings import embed_texts

        emb, _ = embed_texts(corpus, cache_dir=Path(tmp) / "cache-0")
        agree = float(np.abs(emb - reference).max())
    n = len(corpus)
    base = min(times["anchor"])
    print(f"{n:,} distinct texts, all-MiniLM-L6-v2, batch 64, best of {args.repeat}\n")
    print(f"{'':38}{'seconds':>9}{'texts/s':>10}{'vs anchor':>11}")
    for name, label in [
        ("anchor", "model.encode (ANCHOR)"),
        ("cold", "dedup semantic, empty cache"),
        ("cached", "dedup semantic, embeddings cached"),
    ]:
        seconds = min(times[name])
        print(f"{label:38}{seconds:>9.2f}{n / seconds:>10,.0f}{seconds / base:>10.3f}x")
    overhead = min(times["cold"]) / base - 1
    print(
        f"\noverhead of the operator over model.encode: {overhead:+.1%} (target <= 10%); "
        f"{dropped} problems dropped at cosine >= 0.9; largest difference between the "
        f"operator's cached embeddings and model.encode's: {agree:.2e}"
    )


if __name__ == "__main__":
    main()
