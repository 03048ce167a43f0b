"""Speed of the `quality` operator on a synthetic trace pool, against anchors timed in the same run.

The pool (default 1,000,000 traces, seed 0): each completion is 200-3,000 characters of filler
words (about 1,600 on average, as in build_scale.py) ending in "The answer is X."; 25 % of them
hold a non-ASCII math symbol (so the script check's regex path runs on them), 1 % have a loop
planted (one 12-word sentence appended 25 times: its 20-grams repeat 23-24 times), 1 % have a
Chinese phrase planted, and 1 % have finish_reason "length".

Timed, each over the same in-memory column in batches of 20,000 rows (the engine's batch size):

- anchor *polars read*: ``pl.read_parquet(pool, columns=["completion"])`` (the floor of any pass);
- anchor *str.split*: ``[t.split() for t in batch.to_list()]``, the least a Python tokenizer does
  (the Python strings are made per batch and counted in);
- *repetition kernel*: ``find_repetitions(batch, n=20, max_repeats=20)``;
- *quality, defaults*: ``Quality(QualityParams()).run(batch)``: truncated, missing_answer,
  repetition (20, 20);
- *quality, all but no_final_answer*: the defaults plus length (chars and approximate tokens)
  and a script bound ([Han] <= 0.0);
- *quality, no_final_answer only*: answer extraction (curate.verifiers.extract) in Python, per
  row, as the check runs before `verify` has written extracted_answer;
- *naive Python repetition*: a dict of n-gram tuples per row (`most_repeated`, the tests'
  reference), on the first --naive-rows rows, scaled to the pool.

Checks: the kernel finds exactly the planted loops, and it agrees with the naive reference on
the rows the reference ran on. The script stops with an error otherwise.

Run (from the repository root):

    .venv/bin/python bench/quality_speed.py                   # 1,000,000 traces
    .venv/bin/python bench/quality_speed.py --traces 100000   # a quicker run

The pool is written to <out>/quality_speed-<traces>.parquet (default out: bench/out, which git
ignores) and deleted unless --keep; results go to <out>/quality_speed-<traces>.json.
Timings are wall-clock on whatever else the machine is doing; compare ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from curate.filters.quality import Quality, QualityParams
from curate.filters.repetition import find_repetitions, most_repeated
from curate.operators import StageContext

BATCH_ROWS = 20_000  # curate.engine.BATCH_ROWS
FILLER = (
    "we let the sum of both sides so then since square root term gives hence note that equals "
    "value each factor prime number case check plus minus times divide by x y n k is a and or "
    "if not for all there exists integer even odd bound upper lower step first second third "
    "now consider this which means substitute expand simplify compute modulo remainder digit "
    "triangle angle area length circle radius probability count ways choose pairs sequence"
)
WORDS = FILLER.split()
SYMBOLS = ["×", "≤", "π", "√", "→", "≈"]
LOOP = " Wait, let me recheck the computation of the sum once more carefully."  # 12 words
MIXED = " 所以我们得到"


def generate(rows: int, seed: int) -> tuple[pl.DataFrame, set[int]]:
    rng = np.random.default_rng(seed)
    base = " ".join(rng.choice(WORDS, size=600_000).tolist())
    lengths = rng.integers(200, 3_001, rows).tolist()
    starts = rng.integers(0, len(base) - 3_001, rows).tolist()
    answers = rng.integers(0, 1_000_000, rows).tolist()
    symbol = rng.random(rows) < 0.25
    loop = rng.random(rows) < 0.01
    mixed = rng.random(rows) < 0.01
    length = rng.random(rows) < 0.01
    which = rng.integers(0, len(SYMBOLS), rows).tolist()
    completions = []
    for i in range(rows):
        text = base[starts[i] : starts[i] + lengths[i]]
        if symbol[i]:
            text = f"{text} {SYMBOLS[which[i]]} "
        if mixed[i]:
            text += MIXED
        if loop[i]:
            text += LOOP * 25
        completions.append(f"{text}.\n\nThe answer is {answers[i]}.")
    frame = pl.DataFrame(
        {
            "problem_id": [f"p{i // 8:07d}" for i in range(rows)],
            "completion": completions,
            "finish_reason": np.where(length, "length", "stop").tolist(),
        }
    )
    return frame, set(np.flatnonzero(loop).tolist())


def batches(frame: pl.DataFrame) -> Iterator[pl.DataFrame]:
    for start in range(0, frame.height, BATCH_ROWS):
        yield frame.slice(start, BATCH_ROWS)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    value = fn()
    return time.perf_counter() - started, value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=int, default=1_000_000)
    parser.add_argument("--naive-rows", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench/out"))
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    pool_path = args.out / f"quality_speed-{args.traces}.parquet"

    gen_s, (frame, planted) = timed(lambda: generate(args.traces, args.seed))
    frame.write_parquet(pool_path, compression="zstd", row_group_size=100_000)
    chars = frame["completion"].str.len_chars()
    print(
        f"pool: {frame.height:,} traces, {chars.mean():,.0f} chars mean, "
        f"{chars.sum() / 2**20:,.0f} MiB of text, {len(planted):,} planted loops "
        f"(generated in {gen_s:.0f} s)",
        flush=True,
    )
    del frame

    results: dict[str, float] = {}
    results["polars read"], frame = timed(
        lambda: pl.read_parquet(pool_path, columns=["problem_id", "completion", "finish_reason"])
    )
    column = frame["completion"]
    print(f"polars read: {results['polars read']:.1f} s", flush=True)

    def split_all() -> int:
        return sum(len(t.split()) for b in batches(frame) for t in b["completion"].to_list())

    results["str.split"], tokens = timed(split_all)
    print(f"str.split: {results['str.split']:.1f} s ({tokens:,} tokens)", flush=True)

    def kernel() -> list[int]:
        rows: list[int] = []
        for i, b in enumerate(batches(frame)):
            found = find_repetitions(b["completion"], n=20, max_repeats=20)
            rows.extend(i * BATCH_ROWS + r.row for r in found)
        return rows

    results["repetition kernel"], found = timed(kernel)
    print(f"repetition kernel: {results['repetition kernel']:.1f} s", flush=True)

    ctx = StageContext(stage_id="bench-quality")
    all_checks = QualityParams.model_validate(
        {
            "length": {"completion_chars": {"ge": 100}, "completion_tokens": {"le": 4096}},
            "script": {"scripts": ["Han"], "fraction": {"le": 0.0}},
        }
    )
    counts: dict[str, dict[str, int]] = {}
    answer_only = QualityParams.model_validate(
        {"truncated": False, "missing_answer": False, "repetition": None, "no_final_answer": True}
    )
    configs = (
        ("quality, defaults", QualityParams()),
        ("quality, all but no_final_answer", all_checks),
        ("quality, no_final_answer only", answer_only),
    )
    for label, params in configs:
        op = Quality(params, context=ctx)

        def run_op(op: Quality = op) -> dict[str, int]:
            reasons: dict[str, int] = {}
            for b in batches(frame):
                dropped = op.run(b).dropped
                for reason, n in dropped.group_by("drop_reason").len().iter_rows():
                    reasons[reason] = reasons.get(reason, 0) + n
            return reasons

        results[label], counts[label] = timed(run_op)
        print(f"{label}: {results[label]:.1f} s, dropped {counts[label]}", flush=True)

    sample = column.head(args.naive_rows).to_list()
    naive_s, naive = timed(lambda: [most_repeated(t, 20)[1] for t in sample])
    results["naive Python repetition (scaled)"] = naive_s * frame.height / len(sample)
    print(f"naive Python on {len(sample):,} rows: {naive_s:.1f} s", flush=True)

    problems = []
    if set(found) != planted:
        problems.append(f"kernel found {len(found)} rows, planted {len(planted)}")
    naive_rows = {i for i, c in enumerate(naive) if c > 20}
    if naive_rows != {r for r in found if r < len(sample)}:
        problems.append("kernel and naive reference disagree on the sample")

    rows = frame.height
    lines = [
        f"quality speed: {rows:,} traces in batches of {BATCH_ROWS:,}, "
        f"{column.str.len_chars().mean():,.0f} chars mean",
        "",
        f"{'':38}{'seconds':>9}{'traces/s':>12}{'/ str.split':>13}{'/ read':>9}",
    ]
    for label, seconds in results.items():
        lines.append(
            f"{label:38}{seconds:9.1f}{rows / seconds:12,.0f}"
            f"{seconds / results['str.split']:12.2f}x{seconds / results['polars read']:8.1f}x"
        )
    lines += [
        "",
        f"naive Python / repetition kernel: "
        f"{results['naive Python repetition (scaled)'] / results['repetition kernel']:.1f}x",
        f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB",
        f"machine: {platform.machine()}, Python {platform.python_version()}, "
        f"Polars {pl.__version__}, NumPy {np.__version__}",
        f"checks: {'OK' if not problems else '; '.join(problems)}",
    ]
    print("\n" + "\n".join(lines))
    record = {"traces": rows, "seconds": results, "dropped": counts, "problems": problems}
    (args.out / f"quality_speed-{args.traces}.json").write_text(json.dumps(record, indent=2))
    if not args.keep:
        pool_path.unlink()
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
