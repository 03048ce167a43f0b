"""MinHash dedup staged on Ray (curate.executors.ray_dedup) at 1 and 2 workers, and the same
step run locally (one process, filters/dedup.py), on synthetic documents.

Each configuration runs in its own process: a local Ray with `--workers` CPUs, the stage run
through `RayExecutor.run_stage` exactly as a build runs it (parts, dropped rows, decisions).
Printed: wall time per dedup stage (sign, identical, bands, verify, components,
representatives, write), peak RSS of every Ray worker process (VmHWM from /proc, read before
Ray shuts down) and of the driver, and per-document costs. The estimate for 100M documents on
100 workers is derived from those costs (see bench/README.md for the assumptions).

    .venv/bin/python bench/ray_scale.py                  # 1,000,000 documents
    .venv/bin/python bench/ray_scale.py --docs 200000    # smaller
    .venv/bin/python bench/ray_scale.py --route-docs 100000000  # the driver's share at 100M
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out" / "ray_scale"
VOCAB = 20_000
DUP_SHARE = 0.10  # documents that are near-copies of an earlier one
EDIT_SHARE = 0.03  # words replaced in a near-copy (Jaccard of 5-gram sets well above 0.8)


def make_pool(docs: int, folder: Path, seed: int = 0) -> Path:
    """`docs` documents of 60-200 words from a Zipf-ish vocabulary; 10 % near-copies."""
    part = folder / "part-00000.parquet"
    if part.exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lengths = rng.integers(60, 201, docs)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    ranks = rng.zipf(1.3, int(offsets[-1])) % VOCAB
    copies = np.flatnonzero(rng.random(docs) < DUP_SHARE)
    copies = copies[copies > 0]
    sources = (rng.random(copies.size) * copies).astype(np.int64)
    words = ranks.astype(np.int64)
    word_lists = np.split(words, offsets[1:-1])
    for c, s in zip(copies.tolist(), sources.tolist(), strict=True):
        doc = word_lists[s].copy()
        edits = rng.random(doc.size) < EDIT_SHARE
        doc[edits] = rng.integers(0, VOCAB, int(edits.sum()))
        word_lists[c] = doc
    vocabulary = pl.Series([f"w{k}" for k in range(VOCAB)])
    flat = np.concatenate(word_lists)
    lens = np.array([w.size for w in word_lists])
    text = (
        pl.DataFrame({"doc": np.repeat(np.arange(docs), lens), "w": vocabulary.gather(flat)})
        .group_by("doc", maintain_order=True)
        .agg(pl.col("w").str.join(" "))["w"]
    )
    frame = pl.DataFrame(
        {
            "problem_id": [f"p{k}" for k in range(docs)],
            "trace_id": [f"t{k}" for k in range(docs)],
            "completion": text,
        }
    )
    frame.write_parquet(part, compression="zstd", row_group_size=100_000)
    return folder


def worker_peaks() -> dict[int, int]:
    """VmHWM (peak RSS, bytes) of each Ray worker process on this node."""
    peaks = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            if b"default_worker.py" not in cmdline and not cmdline.startswith(b"ray::"):
                continue
            for line in (proc / "status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peaks[int(proc.name)] = int(line.split()[1]) * 1024
        except OSError:
            continue
    return peaks


def own_peak_mb() -> int:
    """This process's peak RSS (VmHWM: reset by exec, unlike ru_maxrss, which a child
    inherits from the process that made the pool)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def run_one(pool: Path, workers: int, batch_rows: int) -> dict[str, object]:
    """One configuration, in this process."""
    from curate.executors import ExecutorSettings
    from curate.filters.dedup import Dedup, DedupParams
    from curate.operators import StageContext
    from curate.progress import SilentReporter

    params = DedupParams(method="minhash", on="completion", threshold=0.8)
    context = StageContext(stage_id="01-dedup", workers=max(1, workers))
    operator = Dedup(params, context=context)
    out = Path(tempfile.mkdtemp(prefix="ray-scale-"))
    started = time.perf_counter()
    if workers == 0:  # local: the operator on the whole pool in one process
        frame = pl.read_parquet(pool / "part-00000.parquet")
        result = operator.run(frame)
        seconds = time.perf_counter() - started
        return {
            "workers": 0,
            "seconds": round(seconds, 2),
            "dropped": result.dropped.height,
            "driver_peak_mb": own_peak_mb(),
        }
    import ray

    from curate.executors.ray import RayExecutor

    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    ray_started = time.perf_counter() - started
    executor = RayExecutor(ExecutorSettings(kind="ray", batch_rows=batch_rows))
    started = time.perf_counter()
    stage = executor.run_stage(
        operator, source=pool, out=out, metadata={}, reporter=SilentReporter()
    )
    seconds = time.perf_counter() - started
    peaks = worker_peaks()
    ray.shutdown()
    return {
        "workers": workers,
        "seconds": round(seconds, 2),
        "ray_start_seconds": round(ray_started, 2),
        "stages": {k: round(v, 2) for k, v in executor.last_timings.items()},
        "candidates": executor.last_candidates,
        "dropped": stage.stats.dropped,
        "worker_peak_mb": sorted(v // 2**20 for v in peaks.values()),
        "driver_peak_mb": own_peak_mb(),
    }


def driver_routing(docs: int, partitions: int = 200, slice_rows: int = 50_000) -> dict[str, object]:
    """The driver's share of choosing representatives (`ray_dedup.route`) at `docs` documents,
    on synthetic stars and pairs at the 1M run's duplicate rates (6.8 candidate pairs and ~3.4
    non-representative clustered rows per 100 documents); no Ray needed."""
    from curate.executors.ray_dedup import route

    rng = np.random.default_rng(0)
    pairs = int(docs * 0.068)
    v = np.unique(rng.integers(1, docs, int(docs * 0.034)))
    u = (v * rng.random(v.size)).astype(np.int64)  # each member's label: a smaller row
    stars = pl.DataFrame({"u": u, "v": v})
    i, j = rng.choice(v, pairs), rng.choice(v, pairs)
    sim = rng.random(pairs).astype(np.float32)
    starts = np.arange(0, docs, slice_rows, dtype=np.int64)
    before = own_peak_mb()
    started = time.perf_counter()
    members, _, _ = route(stars, (i, j, sim), starts, partitions)
    return {
        "route_docs": docs,
        "clustered_rows": members.height,
        "pairs": pairs,
        "seconds": round(time.perf_counter() - started, 2),
        "peak_mb_before": before,
        "peak_mb_after": own_peak_mb(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=1_000_000)
    parser.add_argument("--batch-rows", type=int, default=50_000)
    parser.add_argument("--configs", default="0,1,2", help="workers per run; 0 = local")
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--route-docs",
        type=int,
        default=None,
        help="only time the driver's share of choosing representatives at this many documents",
    )
    args = parser.parse_args()
    if args.route_docs is not None:
        print(json.dumps(driver_routing(args.route_docs)))
        return
    pool = make_pool(args.docs, OUT / f"pool-{args.docs}")
    if args.one is not None:
        print(json.dumps(run_one(pool, args.one, args.batch_rows)))
        return
    results = []
    for workers in [int(w) for w in args.configs.split(",")]:
        command = [sys.executable, __file__, "--docs", str(args.docs), "--one", str(workers)]
        command += ["--batch-rows", str(args.batch_rows)]
        env = {**os.environ, "RAY_DEDUP_BENCH": "1"}
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode != 0 or not lines:
            print(done.stderr[-3000:])
            raise SystemExit(f"workers={workers} failed")
        result = json.loads(lines[-1])
        results.append(result)
        print(json.dumps(result), flush=True)
    (OUT / f"results-{args.docs}.json").write_text(json.dumps(results, indent=2) + "\n")
    ray_runs = [r for r in results if r["workers"]]
    if ray_runs:
        best = min(ray_runs, key=lambda r: float(r["seconds"]))  # type: ignore[arg-type]
        per_doc = float(best["seconds"]) * int(best["workers"]) / args.docs  # type: ignore[arg-type]
        print(
            f"CPU-seconds per document (workers x wall / docs, {best['workers']} workers): "
            f"{per_doc * 1e6:.1f} µs"
        )


if __name__ == "__main__":
    main()
