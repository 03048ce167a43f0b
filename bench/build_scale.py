"""Scale benchmark: a synthetic pool of 1,000,000 traces through verify, grade, select, prune and
both exports, against hand-written Polars anchors timed in the same run.

What it measures, each part in a fresh Python process so that every peak RSS is its own:

1. generate: a synthetic trace pool as Parquet, one row per trace (125,000 problems x 8 traces
   by default; fixed seed). Completions are 200-3,000 characters of filler words ending in
   "The answer is X."; X is the reference answer for a correct trace and a wrong number
   otherwise. Each problem draws its own success rate from U(0, 1), so pass rates spread over
   [0, 1]. A boolean `label` column says which traces are correct.
2. anchor "copy": plain Polars reads the input Parquet and writes it once (zstd): the floor of
   any pass over the data.
3. anchor "pipeline": the same selection written by hand in Polars (verdict by regex, pass rate
   per problem, bands, pass-rate window, per-difficulty token budget, two shortest correct
   traces per problem, SFT and preference Parquet) with no checkpoints, dropped tables, ids or
   lineage. Its row counts must equal curate's; the script stops if they do not.
4. curate build: `Build(load_spec(spec)).run()` on a spec with verify (exact), grade, select,
   prune and the SFT and preference exports. Per stage: the manifest's seconds and row counts,
   and the peak RSS sampled (every 20 ms, from /proc/self/statm) while the stage ran.
5. curate re-run: the same build again; every stage and export must be reused.
6. with --isolate, each stage and export once more on its own: its folder is deleted and the
   build re-run in a fresh process, which runs that stage alone (the rest is reused), so the
   process's peak RSS (ru_maxrss) is that stage's own. The sampled RSS of step 4 includes what
   earlier stages of the same process left allocated.

`verify` runs with `method: exact` (one regex extraction and a string compare per trace, in
Python): a pool of traces needs a `verdict` column before `grade`, and the input reader maps a
shipped label only to `source_label`. The script checks that verify's verdicts equal the labels.

Run (from the repository root):

    .venv/bin/python bench/build_scale.py                    # 1,000,000 traces
    .venv/bin/python bench/build_scale.py --traces 250000    # a quicker run
    .venv/bin/python bench/build_scale.py --isolate          # also each stage in its own process
    .venv/bin/python bench/build_scale.py --keep             # keep the pool, run dir and exports

Work files go to <out>/build_scale-<traces>/ (default out: bench/out, which git ignores) and are
deleted at the end unless --keep; the results are also written to <out>/build_scale-<traces>.json.
Timings are wall-clock on whatever else the machine is doing; compare ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_OUT = BENCH_DIR / "out"
WORK_PREFIX = "build_scale-"

TRACES_PER_PROBLEM = 8
BANDS: dict[str, tuple[float, float]] = {
    "easy": (0.75, 1.0),
    "medium": (0.25, 0.75),
    "hard": (0.0, 0.25),
}
PASS_RATE_WINDOW = (0.1, 0.9)  # select keeps gt 0.1, lt 0.9
BUDGETS = {"easy": 300, "medium": 500, "hard": 700}  # prune max_tokens per difficulty
PER_PROBLEM = 2
SHARD_ROWS = 250_000
CHARS_PER_TOKEN = 4  # prune's `approximate` tokenizer: ceil(chars / 4)

# Filler vocabulary: no "answer" and no "boxed", so the only answer marker is the final line.
FILLER = (
    "we let the sum of both sides so then since square root term gives hence note that equals "
    "value each factor prime number case check plus minus times divide by x y n k is a and or "
    "if not for all there exists integer even odd bound upper lower step first second third "
    "now consider this which means substitute expand simplify compute modulo remainder digit "
    "triangle angle area length circle radius probability count ways choose pairs sequence"
)
WORDS = FILLER.split()


# --------------------------------------------------------------------------------- measuring


def rss_mib() -> float:
    """Resident set size of this process now, in MiB (0.0 where /proc is not available)."""
    try:
        with open("/proc/self/statm") as handle:
            pages = int(handle.read().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def max_rss_mib() -> float:
    """Peak RSS of this process so far (ru_maxrss: KiB on Linux, bytes on macOS), in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


class RssSampler(threading.Thread):
    """Samples RSS in the background; `reset` starts a new window, `peak` is its maximum."""

    def __init__(self, interval_s: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.interval_s = interval_s
        self._peak = rss_mib()
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def run(self) -> None:
        while not self._stop.is_set():
            self._note(rss_mib())
            time.sleep(self.interval_s)

    def _note(self, value: float) -> None:
        with self._lock:
            self._peak = max(self._peak, value)

    def reset(self) -> None:
        with self._lock:
            self._peak = rss_mib()

    def peak(self) -> float:
        self._note(rss_mib())
        with self._lock:
            return self._peak

    def stop(self) -> None:
        self._stop.set()


# --------------------------------------------------------------------------------- generate


def generate_pool(path: Path, traces: int, seed: int) -> dict[str, Any]:
    """Write the synthetic pool: `traces` rows, TRACES_PER_PROBLEM consecutive rows a problem."""
    rng = np.random.default_rng(seed)
    n_problems = math.ceil(traces / TRACES_PER_PROBLEM)
    base = " ".join(rng.choice(WORDS, size=600_000).tolist())  # ~3.6M characters of filler
    limit = len(base) - 3_001

    rate = rng.uniform(0.0, 1.0, n_problems)  # each problem's chance that a trace is right
    answer = rng.integers(0, 1_000_000, n_problems)
    problem = np.repeat(np.arange(n_problems), TRACES_PER_PROBLEM)[:traces]
    correct = rng.random(traces) < rate[problem]
    given = np.where(correct, answer[problem], answer[problem] + rng.integers(1, 1_000, traces))
    lengths = rng.integers(200, 3_001, traces).tolist()
    starts = rng.integers(0, limit, traces).tolist()
    prompt_lengths = rng.integers(80, 600, n_problems).tolist()
    prompt_starts = rng.integers(0, limit, n_problems).tolist()

    prompts = [
        f"Problem {i}: {base[s : s + n]}. Find the value."
        for i, (s, n) in enumerate(zip(prompt_starts, prompt_lengths, strict=True))
    ]
    completions = [
        f"{base[s : s + n]}.\n\nThe answer is {x}."
        for s, n, x in zip(starts, lengths, given.tolist(), strict=True)
    ]
    problems = pl.DataFrame(
        {
            "id": [f"prob-{i:07d}" for i in range(n_problems)],
            "prompt": prompts,
            "answer": [str(a) for a in answer.tolist()],
        }
    )
    frame = problems[problem.tolist()].with_columns(
        pl.Series("completion", completions, dtype=pl.String),
        pl.Series("label", correct, dtype=pl.Boolean),
    )
    frame.write_parquet(path, compression="zstd", row_group_size=100_000)
    pass_rates = frame.group_by("id").agg(pl.col("label").mean())["label"]
    return {
        "rows": frame.height,
        "problems": n_problems,
        "file_mib": round(path.stat().st_size / 2**20, 1),
        "completion_chars_mean": round(float(np.mean(lengths)) + 20, 1),
        "share_correct": round(float(correct.mean()), 4),
        "problems_all_or_none_correct": int(pass_rates.is_in([0.0, 1.0]).sum()),
    }


# ----------------------------------------------------------------------------------- anchors


def anchor_copy(pool: Path, work: Path) -> dict[str, Any]:
    """Plain Polars: read the input Parquet and write it once."""
    target = work / "anchor-copy.parquet"
    pl.read_parquet(pool).write_parquet(target, compression="zstd")
    return {"file_mib": round(target.stat().st_size / 2**20, 1)}


def _band(column: pl.Expr) -> pl.Expr:
    chain: Any = None
    for name, (lo, hi) in sorted(BANDS.items(), key=lambda item: item[1][0]):
        inside = (column >= lo) & (column <= hi if hi >= 1.0 else column < hi)
        chain = (pl.when(inside) if chain is None else chain.when(inside)).then(pl.lit(name))
    result: pl.Expr = chain.otherwise(None)
    return result


def _messages(role: str, text: pl.Expr) -> pl.Expr:
    return pl.concat_list(pl.struct(pl.lit(role).alias("role"), text.alias("content")))


def anchor_pipeline(pool: Path, work: Path) -> dict[str, Any]:
    """The build's selection by hand in Polars: no checkpoints, dropped tables, ids or lineage."""
    lo, hi = PASS_RATE_WINDOW
    frame = pl.read_parquet(pool).with_columns(
        pl.int_range(pl.len()).over("id").alias("sample_index"),
        (pl.col("completion").str.extract(r"answer is (\S+?)\.?$", 1) == pl.col("answer")).alias(
            "verdict"
        ),
        ((pl.col("completion").str.len_chars() + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN).alias(
            "tokens"
        ),
    )
    graded = frame.with_columns(pl.col("verdict").mean().over("id").alias("pass_rate"))
    graded = graded.with_columns(_band(pl.col("pass_rate")).alias("difficulty"))
    selected = graded.filter((pl.col("pass_rate") > lo) & (pl.col("pass_rate") < hi))

    budget = pl.col("difficulty").replace_strict(BUDGETS, default=None, return_dtype=pl.Int64)
    pruned = (
        selected.filter(pl.col("verdict") & (pl.col("tokens") <= budget))
        .sort("id", "tokens", "sample_index")
        .filter(pl.int_range(pl.len()).over("id") < PER_PROBLEM)
    )
    user = _messages("user", pl.col("prompt"))
    sft = pruned.select(
        pl.concat_list(user, _messages("assistant", pl.col("completion"))).alias("messages"),
        "id",
        "difficulty",
        "pass_rate",
        "tokens",
    )
    sft.write_parquet(work / "anchor-sft.parquet", compression="zstd")

    firsts = (
        selected.sort("id", "sample_index").group_by("id", "verdict", maintain_order=True).first()
    )
    rejected = firsts.filter(~pl.col("verdict")).select(
        "id", _messages("assistant", pl.col("completion")).alias("rejected")
    )
    pairs = (
        firsts.filter(pl.col("verdict"))
        .join(rejected, on="id", how="inner")
        .select(
            user.alias("prompt"),
            _messages("assistant", pl.col("completion")).alias("chosen"),
            "rejected",
            "id",
            "difficulty",
            "pass_rate",
        )
    )
    pairs.write_parquet(work / "anchor-preference.parquet", compression="zstd")
    return {"sft_rows": sft.height, "preference_rows": pairs.height}


# ------------------------------------------------------------------------------------ curate


def write_spec(work: Path, pool: Path) -> Path:
    """The spec of the benchmarked build, in the work folder."""
    bands = ", ".join(f"{name}: [{lo}, {hi}]" for name, (lo, hi) in BANDS.items())
    budgets = ", ".join(f"{name}: {tokens}" for name, tokens in BUDGETS.items())
    lo, hi = PASS_RATE_WINDOW
    text = f"""\
# Written by bench/build_scale.py: the scale benchmark's build.
name: build-scale
seed: 0
run_dir: run
input:
  path: {pool.name}
  source: synthetic
  model: synthetic-teacher
  columns: {{id: id, prompt: prompt, answer: answer, completion: completion, label: label}}
steps:
  - verify: {{method: exact}}
  - grade: {{bands: {{{bands}}}}}
  - select: {{pass_rate: {{gt: {lo}, lt: {hi}}}}}
  - prune:
      max_tokens: {{{budgets}}}
      keep: shortest_correct
      per_problem: {PER_PROBLEM}
outputs:
  sft: {{path: exports/sft, shard_rows: {SHARD_ROWS}}}
  preference: {{path: exports/preference, from: select, shard_rows: {SHARD_ROWS}}}
"""
    path = work / "spec.yaml"
    path.write_text(text)
    return path


def curate_build(spec_path: Path) -> dict[str, Any]:
    """One `Build(load_spec(spec)).run()`, with per-stage wall time and sampled peak RSS."""
    from curate.engine import Build
    from curate.progress import SilentReporter
    from curate.spec import load_spec

    class MemoryReporter(SilentReporter):
        def __init__(self, sampler: RssSampler) -> None:
            self.sampler = sampler
            self.started = time.perf_counter()
            self.peaks: dict[str, float] = {}
            self.walls: dict[str, float] = {}

        def stage_started(self, stage_id: str, total_rows: int | None) -> None:
            self.sampler.reset()
            self.started = time.perf_counter()

        def stage_finished(self, record: dict[str, Any]) -> None:
            if record.get("status") == "ran":
                self.peaks[record["stage_id"]] = round(self.sampler.peak(), 1)
                self.walls[record["stage_id"]] = round(time.perf_counter() - self.started, 3)

    sampler = RssSampler()
    sampler.start()
    reporter = MemoryReporter(sampler)
    started = time.perf_counter()
    manifest = Build(load_spec(spec_path), reporter=reporter).run()
    total = time.perf_counter() - started
    sampler.stop()

    stages = [
        {
            "stage": record["stage_id"],
            "status": record["status"],
            "rows_in": record["stats"]["rows_in"],
            "rows_out": record["stats"]["rows_out"],
            "dropped": record["stats"]["dropped"],
            "dropped_by_reason": record["stats"]["dropped_by_reason"],
            "seconds": record["stats"]["seconds"],
            "peak_rss_mib": reporter.peaks.get(record["stage_id"]),
        }
        for record in manifest["stages"]
    ]
    for kind, output in manifest["outputs"].items():
        stage = f"export {kind}"
        stages.append(
            {
                "stage": stage,
                "status": output["status"],
                "rows_in": None,
                "rows_out": output["rows"],
                "dropped": None,
                "dropped_by_reason": {},
                "seconds": output.get("seconds") if output["status"] == "ran" else None,
                "peak_rss_mib": reporter.peaks.get(stage),
            }
        )
    run_dir = spec_path.parent / "run"
    agreement = _verdicts_match_labels(run_dir)
    return {
        "total_s": round(total, 3),
        "stages": stages,
        "verdict_equals_label": agreement,
        "run_dir_mib": round(_folder_bytes(run_dir) / 2**20, 1),
    }


def breakdown(spec_path: Path) -> dict[str, Any]:
    """Where each stage's time goes: reading its input, the operator, writing its Parquet.

    Redoes the stages of a finished build outside the engine, from the build's own stage
    folders, writing to a scratch folder. Verify is left out: it streams in batches and its time
    is the per-trace Python extraction."""
    from curate.export.preference import preference_rows
    from curate.export.sft import sft_rows
    from curate.inputs import read_input
    from curate.operators import StageContext
    from curate.parquet_io import PartWriter, read_parts, to_arrow, write_table
    from curate.schemas.exports import EXPORT_SCHEMAS
    from curate.schemas.pool import POOL_SCHEMA
    from curate.schemas.spec import PreferenceOutput, SFTOutput
    from curate.spec import load_spec

    loaded = load_spec(spec_path)
    stages = loaded.run_dir / "stages"
    scratch = spec_path.parent / "breakdown"
    scratch.mkdir(exist_ok=True)
    parts: dict[str, Any] = {}

    def write_pool(name: str, frame: pl.DataFrame) -> None:
        folder = scratch / name
        folder.mkdir(exist_ok=True)
        with PartWriter(folder, metadata={}, schema=POOL_SCHEMA) as writer:
            writer.write(frame)

    clock = time.perf_counter()
    result = read_input(loaded.spec.input, base_dir=loaded.base_dir)
    read_s = time.perf_counter() - clock
    clock = time.perf_counter()
    write_pool("00-input", result.frame)
    parts["00-input"] = {"read": read_s, "operator": 0.0, "write": time.perf_counter() - clock}
    del result

    previous = "00-input"
    for step in loaded.steps:
        source, previous = stages / previous, step.stage_id
        if step.name == "verify":
            continue
        clock = time.perf_counter()
        frame = read_parts(source)
        read_s = time.perf_counter() - clock
        context = StageContext(
            stage_id=step.stage_id, seed=loaded.spec.seed, base_dir=loaded.base_dir
        )
        clock = time.perf_counter()
        out = step.operator(step.params, context=context).run(frame)
        operator_s = time.perf_counter() - clock
        clock = time.perf_counter()
        write_pool(step.stage_id, out.kept)
        write_s = time.perf_counter() - clock
        clock = time.perf_counter()
        if out.dropped.height:
            write_table(
                scratch / f"{step.stage_id}-dropped.parquet", to_arrow(out.dropped), metadata={}
            )
        parts[step.stage_id] = {
            "read": read_s,
            "operator": operator_s,
            "write": write_s,
            "write_dropped": time.perf_counter() - clock if out.dropped.height else None,
            "dropped_rows": out.dropped.height,
        }
        del frame, out

    outputs = loaded.spec.outputs
    configs: list[tuple[str, SFTOutput | PreferenceOutput | None]] = [
        ("sft", outputs.sft),
        ("preference", outputs.preference),
    ]
    for kind, config in configs:
        if config is None:
            continue
        stage = loaded.step_named(config.from_stage).stage_id if config.from_stage else previous
        clock = time.perf_counter()
        pool = read_parts(stages / stage)
        read_s = time.perf_counter() - clock
        clock = time.perf_counter()
        if isinstance(config, SFTOutput):
            rows = sft_rows(pool, config)
        else:
            rows = preference_rows(pool, config, base_dir=loaded.base_dir)
        operator_s = time.perf_counter() - clock
        clock = time.perf_counter()
        table = to_arrow(rows, EXPORT_SCHEMAS[kind]).cast(EXPORT_SCHEMAS[kind])
        write_table(scratch / f"export-{kind}.parquet", table, metadata={})
        parts[f"export {kind}"] = {
            "read": read_s,
            "operator": operator_s,
            "write": time.perf_counter() - clock,
        }
        del pool, rows, table
    shutil.rmtree(scratch)
    return {
        "parts": {
            k: {n: v if v is None else round(v, 3) for n, v in p.items()} for k, p in parts.items()
        },
    }


def _verdicts_match_labels(run_dir: Path) -> bool | None:
    """Whether verify's verdict equals the synthetic label on every trace."""
    folders = sorted((run_dir / "stages").glob("*-verify"))
    if not folders:
        return None
    check = pl.scan_parquet(folders[0] / "part-*.parquet").select(
        (pl.col("verdict") == pl.col("source_label")).all()
    )
    return bool(check.collect().item())


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


# ------------------------------------------------------------------------------- processes


def run_phase(args: argparse.Namespace) -> None:
    """In a child process: run one phase and write its result, with its own peak RSS."""
    work = Path(args.work)
    pool = work / "pool.parquet"
    started = time.perf_counter()
    result: dict[str, Any]
    if args.phase == "generate":
        result = generate_pool(pool, args.traces, args.seed)
    elif args.phase == "anchor-copy":
        result = anchor_copy(pool, work)
    elif args.phase == "anchor-pipeline":
        result = anchor_pipeline(pool, work)
    elif args.phase == "breakdown":
        result = breakdown(work / "spec.yaml")
    else:
        result = curate_build(work / "spec.yaml")
    result["seconds"] = round(time.perf_counter() - started, 3)
    result["max_rss_mib"] = round(max_rss_mib(), 1)
    (work / f"phase-{args.phase}.json").write_text(json.dumps(result, indent=2))


def stage_folder(work: Path, stage: str) -> Path:
    """Where a stage ("02-grade") or an export ("export sft") of the benchmark build lives."""
    if stage.startswith("export "):
        return work / "exports" / stage.removeprefix("export ")
    return work / "run" / "stages" / stage


def isolate(args: argparse.Namespace, work: Path, stages: list[str]) -> dict[str, Any]:
    """Each stage re-run alone in a fresh process: its seconds and its process's peak RSS."""
    isolated: dict[str, Any] = {}
    for stage in stages:
        shutil.rmtree(stage_folder(work, stage))
        result = spawn("build", args, work, f"{stage} alone")
        ran = [s["stage"] for s in result["stages"] if s["status"] == "ran"]
        if ran != [stage]:
            raise RuntimeError(f"isolating {stage}: the re-run ran {ran}")
        row = next(s for s in result["stages"] if s["stage"] == stage)
        isolated[stage] = {
            "seconds": row["seconds"],
            "build_s": result["total_s"],
            "max_rss_mib": result["max_rss_mib"],
        }
    return isolated


def spawn(phase: str, args: argparse.Namespace, work: Path, tag: str) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--phase", phase]
    command += ["--work", str(work), "--traces", str(args.traces), "--seed", str(args.seed)]
    print(f"  {tag} ...", end="", flush=True)
    subprocess.run(command, check=True)
    result: dict[str, Any] = json.loads((work / f"phase-{phase}.json").read_text())
    print(f" {result['seconds']:.1f} s, peak RSS {result['max_rss_mib']:,.0f} MiB", flush=True)
    return result


# ---------------------------------------------------------------------------------- report


def _num(value: float | int | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}" if isinstance(value, float) else f"{value:,}"


def report(results: dict[str, Any]) -> str:
    """The results as a plain-text table."""
    build, rerun = results["build"], results["rerun"]
    copy, pipeline = results["anchor_copy"], results["anchor_pipeline"]
    isolated: dict[str, Any] = results.get("isolated", {})
    lines = [
        f"curate build scale benchmark: {results['traces']:,} traces "
        f"({results['generate']['problems']:,} problems x {TRACES_PER_PROBLEM}), "
        f"input {results['generate']['file_mib']:,.0f} MiB Parquet",
        "",
        "seconds: the manifest's, in the one build; RSS: sampled peak of that build process",
        "while the stage ran (it includes what earlier stages left allocated)",
    ]
    header = (
        f"{'stage':<20}{'rows in':>11}{'rows out':>11}{'dropped':>11}{'seconds':>9}{'RSS MiB':>9}"
    )
    if isolated:
        lines.append("alone: the stage re-run by itself in a fresh process (--isolate)")
        header += f"{'alone s':>9}{'alone peak MiB':>16}"
    lines += ["", header]
    for stage in build["stages"]:
        line = (
            f"{stage['stage']:<20}{_num(stage['rows_in']):>11}{_num(stage['rows_out']):>11}"
            f"{_num(stage['dropped']):>11}{_num(stage['seconds'], 1):>9}"
            f"{_num(stage['peak_rss_mib']):>9}"
        )
        alone = isolated.get(stage["stage"])
        if alone is not None:
            line += f"{_num(alone['seconds'], 1):>9}{_num(alone['max_rss_mib']):>16}"
        lines.append(line)
    stage_sum = sum(s["seconds"] or 0.0 for s in build["stages"])
    lines += [
        f"{'sum of stages':<53}{stage_sum:>9.1f}",
        f"{'build wall (in-process; RSS: ru_maxrss)':<53}{build['total_s']:>9.1f}"
        f"{_num(build['max_rss_mib']):>9}",
        "",
        f"{'anchor':<40}{'seconds':>9}{'peak RSS MiB':>14}{'curate / anchor':>17}",
    ]
    for name, anchor in (
        ("polars read + write Parquet", copy),
        ("polars hand-written pipeline", pipeline),
    ):
        ratio = build["total_s"] / anchor["seconds"]
        lines.append(
            f"{name:<40}{anchor['seconds']:>9.1f}{_num(anchor['max_rss_mib']):>14}{ratio:>16.1f}x"
        )
    verify_s = sum(s["seconds"] or 0.0 for s in build["stages"] if s["stage"].endswith("verify"))
    if verify_s:
        ratio = (build["total_s"] - verify_s) / pipeline["seconds"]
        lines.append(f"{'curate less its verify stage, vs the pipeline':<63}{ratio:>16.1f}x")
    outputs = {s["stage"]: s["rows_out"] for s in build["stages"]}
    reused = sum(1 for s in rerun["stages"] if s["status"] == "reused")
    lines += [
        "",
        f"no-op re-run: {reused} of {len(rerun['stages'])} stages/exports reused, "
        f"{rerun['total_s']:.1f} s, peak RSS {rerun['max_rss_mib']:,.0f} MiB",
        f"verify verdicts equal the synthetic labels: {build['verdict_equals_label']}",
        f"rows written, curate / hand-written: sft {_num(outputs.get('export sft'))} / "
        f"{pipeline['sft_rows']:,}, preference {_num(outputs.get('export preference'))} / "
        f"{pipeline['preference_rows']:,}",
        f"throughput: {results['traces'] / build['total_s']:,.0f} traces/s (curate), "
        f"{results['traces'] / pipeline['seconds']:,.0f} traces/s (hand-written pipeline)",
        f"run directory on disk: {build['run_dir_mib']:,.0f} MiB; "
        f"pool generation: {results['generate']['seconds']:.1f} s",
    ]
    return "\n".join(lines)


def report_breakdown(breakdown: dict[str, Any]) -> str:
    """Seconds reading, in the operator and writing, per stage (from --breakdown)."""
    lines = [
        "breakdown (seconds; a stage redone outside the engine, from the build's stage folders)",
        "",
        f"{'stage':<20}{'read':>9}{'operator':>10}{'write':>9}{'dropped':>10}{'sum':>9}",
    ]
    for stage, part in breakdown["parts"].items():
        dropped = part.get("write_dropped")
        total = part["read"] + part["operator"] + part["write"] + (dropped or 0.0)
        lines.append(
            f"{stage:<20}{part['read']:>9.1f}{part['operator']:>10.1f}{part['write']:>9.1f}"
            f"{_num(dropped, 1):>10}{total:>9.1f}"
        )
    lines += [
        "read: read_input (the per-row reader) for 00-input, read_parts for the others;",
        "write: PartWriter (to Arrow, zstd Parquet, fsync); dropped: writing the dropped rows",
    ]
    return "\n".join(lines)


def check(results: dict[str, Any]) -> list[str]:
    """Problems with the results that make the numbers meaningless."""
    problems = []
    build, pipeline = results["build"], results["anchor_pipeline"]
    outputs = {s["stage"]: s["rows_out"] for s in build["stages"]}
    if outputs.get("export sft") != pipeline["sft_rows"]:
        problems.append(f"sft rows: curate {outputs.get('export sft')}, anchor {pipeline}")
    if outputs.get("export preference") != pipeline["preference_rows"]:
        problems.append(
            f"preference rows: curate {outputs.get('export preference')}, anchor {pipeline}"
        )
    if build["verdict_equals_label"] is not True:
        problems.append("verify's verdicts differ from the synthetic labels")
    if any(s["status"] != "ran" for s in build["stages"]):
        problems.append("the first build reused a stage: the run directory was not fresh")
    if any(s["status"] != "reused" for s in results["rerun"]["stages"]):
        problems.append("the re-run ran a stage again")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=int, default=1_000_000, help="rows of the pool")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for work files")
    parser.add_argument("--keep", action="store_true", help="keep the pool, run and exports")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic pool")
    parser.add_argument(
        "--isolate", action="store_true", help="also re-run each stage alone in a fresh process"
    )
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="also time each stage's read, operator and write apart (verify excepted)",
    )
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.traces < TRACES_PER_PROBLEM:
        parser.error(f"--traces must be at least {TRACES_PER_PROBLEM}")
    if args.phase:
        run_phase(args)
        return 0

    out = args.out.expanduser().resolve()
    work = out / f"{WORK_PREFIX}{args.traces}"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    print(f"work folder: {work}  ({os.cpu_count()} CPUs, {platform.platform()})")
    results: dict[str, Any] = {
        "traces": args.traces,
        "seed": args.seed,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "polars": pl.__version__,
    }
    try:
        results["generate"] = spawn("generate", args, work, "generate synthetic pool")
        write_spec(work, work / "pool.parquet")
        results["anchor_copy"] = spawn("anchor-copy", args, work, "anchor: read + write")
        results["anchor_pipeline"] = spawn("anchor-pipeline", args, work, "anchor: pipeline")
        results["build"] = spawn("build", args, work, "curate build")
        results["rerun"] = spawn("build", args, work, "curate build again (no-op)")
        if args.breakdown:
            results["breakdown"] = spawn("breakdown", args, work, "breakdown of stage times")
        if args.isolate:
            stages = [s["stage"] for s in results["build"]["stages"]]
            results["isolated"] = isolate(args, work, stages)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    (out / f"{WORK_PREFIX}{args.traces}.json").write_text(json.dumps(results, indent=2) + "\n")
    print()
    print(report(results))
    if "breakdown" in results:
        print()
        print(report_breakdown(results["breakdown"]))
    problems = check(results)
    for problem in problems:
        print(f"PROBLEM: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
