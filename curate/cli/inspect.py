"""`curate stats` (a run's numbers in the terminal, or as JSON) and `curate report` (the HTML
page). Both show curate.summary, the numbers the dataset card states too."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from curate.cli.common import err, handle_errors, out
from curate.summary import Lengths, Summary

RUN_DIR = typer.Argument(
    ..., help="a run directory: runs/<name> beside the spec, or its URI (s3://bucket/runs/<name>)"
)


class StatsFormat(str, Enum):
    table = "table"
    json = "json"


def _n(value: float | int | None, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"


def _length(stats: Lengths | None) -> str:
    if stats is None:
        return "–"
    return f"{stats.median:,.0f} ({stats.q1:,.0f}–{stats.q3:,.0f})"


def _table(title: str, columns: list[str], right: set[int]) -> Table:
    table = Table(title=title, title_justify="left", title_style="bold")
    for index, name in enumerate(columns):
        table.add_column(name, justify="right" if index in right else "left", overflow="fold")
    return table


def print_summary(console: Console, s: Summary) -> None:
    console.print(
        f"[bold]{s.name}[/bold] run {s.run_id or 'unknown'}: {s.problems:,} problems, "
        f"{s.traces:,} traces, {s.kept:,} kept; lengths in {s.length_unit}",
        highlight=False,
    )
    funnel = _table("funnel", ["stage", "operator", "rows in", "rows out", "dropped"], {2, 3, 4})
    for st in s.stages:
        funnel.add_row(st.stage_id, st.operator, _n(st.rows_in), _n(st.rows_out), _n(st.dropped))
    for kind, rows in s.outputs.items():
        funnel.add_row(f"→ {kind}", "export", "", _n(rows), "")
    console.print(funnel)

    if s.drops:
        drops = _table("dropped, by stage and reason", ["stage", "reason", "rows", "example"], {2})
        for d in s.drops:
            drops.add_row(d.stage_id, d.reason, _n(d.rows), d.example or "")
        console.print(drops)

    rates = s.pass_rates
    if rates.problems:
        hist = _table(
            f"pass rate per problem: {rates.problems:,} problems, mean {_n(rates.mean)}, "
            f"median {_n(rates.median)}",
            ["pass rate", "problems", ""],
            {1},
        )
        top = max(rates.counts) or 1
        for i, count in enumerate(rates.counts):
            close = "]" if i == len(rates.counts) - 1 else ")"
            label = f"[{rates.edges[i]:.1f}, {rates.edges[i + 1]:.1f}{close}"
            hist.add_row(label, _n(count), "█" * round(30 * count / top))
        console.print(hist)
    else:
        console.print("pass rate: no grade stage among the stages present")

    bands = _table(
        f"difficulty bands (length: median (q1–q3), {s.length_unit})",
        [
            "band",
            "problems",
            "mean pass",
            "traces",
            "kept",
            "length all",
            "length kept",
            "p90 kept",
            "tokens kept",
        ],
        {1, 2, 3, 4, 5, 6, 7, 8},
    )
    for b in s.bands:
        bands.add_row(
            b.name,
            _n(b.problems),
            _n(b.mean_pass_rate),
            _n(b.traces),
            _n(b.kept),
            _length(b.length_all),
            _length(b.length_kept),
            _n(b.length_kept.p90 if b.length_kept else None),
            _n(b.length_kept.total if b.length_kept else None),
        )
    console.print(bands)

    if s.teachers:
        print_teachers(console, s)

    if not s.dedup:
        console.print("dedup: no dedup step in this run")
    for dd in s.dedup:
        if not dd.sizes:
            console.print(f"dedup: {dd.note}")
            continue
        sizes = ", ".join(f"{size}: {count:,}" for size, count in dd.sizes.items())
        console.print(
            f"dedup {dd.stage_id}: {dd.clusters:,} clusters over {dd.rows:,} rows; "
            f"clusters by size: {sizes}",
            highlight=False,
        )

    for e in s.exports:
        by = ", ".join(f"{k} {v:,}" for k, v in e.by_difficulty.items())
        console.print(
            f"export {e.kind}: {e.rows:,} rows over {e.problems:,} problems ({by}); length of "
            f"{e.length_of}: {_length(e.length)}",
            highlight=False,
        )


def print_teachers(console: Console, s: Summary) -> None:
    """The teachers side by side: outcomes, length spread, and agreement between each pair."""
    teachers = _table(
        "teachers (verdict on a problem: majority of its judged traces; split: a tie)",
        [
            "model",
            "traces",
            "judged",
            "correct",
            "accuracy",
            "problems",
            "solved",
            "split",
            "solved only",
            "kept",
        ],
        set(range(1, 10)),
    )
    for t in s.teachers:
        teachers.add_row(
            t.model,
            _n(t.traces),
            _n(t.judged),
            _n(t.correct),
            _n(t.accuracy),
            _n(t.problems),
            _n(t.solved),
            _n(t.split),
            _n(t.solved_only),
            _n(t.kept),
        )
    console.print(teachers)
    lengths = _table(
        f"teacher trace length, {s.length_unit}",
        ["model", "mean", "median", "q1–q3", "p90", "max", "mean correct", "median correct"],
        set(range(1, 8)),
    )
    for t in s.teachers:
        a, c = t.length, t.length_correct
        lengths.add_row(
            t.model,
            _n(a.mean if a else None),
            _n(a.median if a else None),
            f"{a.q1:,.0f}–{a.q3:,.0f}" if a else "–",
            _n(a.p90 if a else None),
            _n(a.max if a else None),
            _n(c.mean if c else None),
            _n(c.median if c else None),
        )
    console.print(lengths)
    pairs = s.teacher_agreement.pairs
    if not pairs:
        if len(s.teachers) > 1:
            console.print("teacher agreement: no problem has a verdict from two teachers")
        return
    agreement = _table(
        "agreement between teachers, on problems both have a verdict on",
        [
            "teacher a",
            "teacher b",
            "problems",
            "agree",
            "agreement",
            "κ",
            "both",
            "a only",
            "b only",
            "neither",
        ],
        set(range(2, 10)),
    )
    for pair in pairs:
        agreement.add_row(
            pair.a,
            pair.b,
            _n(pair.problems),
            _n(pair.agree),
            _n(pair.agreement),
            _n(pair.kappa, 2),
            _n(pair.both_solved),
            _n(pair.a_only),
            _n(pair.b_only),
            _n(pair.neither),
        )
    console.print(agreement)


@handle_errors
def stats(
    run_dir: str = RUN_DIR,
    format: StatsFormat = typer.Option(StatsFormat.table, "--format", "-f", help="table or json"),
) -> None:
    """Summarize a run: funnel, drops, pass rates, bands, teachers side by side, dedup, exports.

    Teachers: accuracy, length spread and agreement between each pair of teachers."""
    from curate.summary import summarize

    summary = summarize(run_dir)
    if summary.status:
        err.print(f"[yellow]warning:[/yellow] {summary.status}", highlight=False)
    if format is StatsFormat.json:
        typer.echo(json.dumps(summary.to_json(), indent=2))
    else:
        print_summary(out, summary)


@handle_errors
def report(
    run_dir: str = RUN_DIR,
    output: Path = typer.Option(
        Path("report.html"), "--output", "-o", help="the HTML file to write"
    ),
) -> None:
    """Write one self-contained HTML page with the run's plots and sample traces."""
    from curate.report import write_report

    summary = write_report(run_dir, output)
    if summary.status:
        err.print(f"[yellow]warning:[/yellow] {summary.status}", highlight=False)
    err.print(f"wrote {output} ({output.stat().st_size / 1e6:.1f} MB); open it in a browser")
