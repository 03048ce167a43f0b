"""Looking at a run: `curate stats` against the run's SQL, `curate sql --print-views` in plain
DuckDB, `curate shell` from a pipe and on a terminal, `curate report` in real headless
Chromium, dedup cluster sizes, and runs that are missing or never finished."""

from __future__ import annotations

import json
import os
import pty
import select
import shutil
import time
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from curate.cli.main import app
from curate.engine import Build
from curate.errors import OperatorError
from curate.report import write_report
from curate.run import open_run
from curate.spec import load_spec
from curate.sql import connect
from curate.summary import summarize
from tests.chromium import open_page
from tests.conftest import QUICKSTART_INPUT, REPO

CURATE = REPO / ".venv" / "bin" / "curate"


@pytest.fixture
def run_dir(quickstart_run: Path) -> Path:
    return quickstart_run


def invoke(*args: str | Path, input: str | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(app, [str(a) for a in args], input=input)
    return result.exit_code, result.output


def flat(text: str) -> str:
    """Output with the terminal's line wrapping undone, for matching messages."""
    return " ".join(text.split())


# --- stats ------------------------------------------------------------------------------------


def test_stats_matches_the_runs_sql(run_dir: Path) -> None:
    code, output = invoke("stats", run_dir, "--format", "json")
    assert code == 0, output
    stats = json.loads(output)
    con = connect(run_dir)

    def one(sql: str) -> tuple:  # type: ignore[type-arg]
        row = con.execute(sql).fetchone()
        assert row is not None
        return row

    assert stats["finished"] is True and stats["missing"] == []
    assert (stats["problems"], stats["traces"], stats["kept"]) == (
        one("SELECT count(*) FROM problems")[0],
        one("SELECT count(*) FROM traces")[0],
        one("SELECT count(*) FROM pool")[0],
    )
    # funnel: the manifest's counts are the rows of the stage views
    for stage in stats["stages"]:
        view = "stage_" + stage["stage_id"].split("-", 1)[1]
        assert stage["rows_out"] == one(f"SELECT count(*) FROM {view}")[0]
    # what each filter dropped and why
    drops = {(d["stage_id"], d["reason"]): d["rows"] for d in stats["drops"]}
    rows = con.execute("SELECT drop_stage, drop_reason, count(*) FROM dropped GROUP BY ALL")
    assert drops == {(s, r): n for s, r, n in rows.fetchall()}
    assert drops[("06-prune", "beyond_per_problem")] == 246  # quickstart README's funnel
    # pass-rate distribution: bins of 0.1, the last one closed
    rates = con.execute("SELECT pass_rate FROM problems WHERE pass_rate IS NOT NULL").fetchall()
    bins = [0] * 10
    for (rate,) in rates:
        bins[min(int(rate * 10), 9)] += 1
    assert stats["pass_rates"]["counts"] == bins and sum(bins) == 93  # 7 left ungraded
    # bands: problems, traces kept, tokens kept
    for band in stats["bands"]:
        name = band["name"]
        where = "difficulty IS NULL" if name == "ungraded" else f"difficulty = '{name}'"
        problems, kept, tokens = one(
            "SELECT count(DISTINCT problem_id), count(*) FILTER (WHERE drop_stage IS NULL), "
            "sum(completion_tokens) FILTER (WHERE drop_stage IS NULL) FROM traces "
            f"WHERE problem_id IN (SELECT problem_id FROM problems WHERE {where})"
        )
        total = band["length_kept"]["total"] if band["length_kept"] else None
        assert (band["problems"], band["kept"], total) == (problems, kept, tokens)
    # spec order, then the problems that left before grading (decontaminate)
    assert [b["name"] for b in stats["bands"]] == ["easy", "medium", "hard", "ungraded"]
    assert [(b["problems"], b["kept"]) for b in stats["bands"]] == [
        (84, 152),
        (5, 9),
        (4, 2),
        (7, 0),
    ]
    # teachers
    (teacher,) = stats["teachers"]
    assert (teacher["judged"], teacher["correct"]) == one(
        "SELECT count(verdict), count_if(verdict) FROM traces"
    )
    assert teacher["correct"] == 737  # quickstart README: our verifier's count
    assert (teacher["problems"], teacher["solved_only"]) == (100, 0)  # nobody to compare with
    assert stats["teacher_agreement"]["pairs"] == []
    # exports, read straight from their Parquet files
    sft = pl.read_parquet(run_dir.parent.parent / "out" / "sft" / "*.parquet")
    (export,) = [e for e in stats["exports"] if e["kind"] == "sft"]
    assert export["rows"] == sft.height
    assert export["length"]["median"] == pytest.approx(
        (sft["completion_tokens"] + sft["reasoning_tokens"].fill_null(0)).median()
    )
    sizes = con.execute(
        "SELECT n, count(*) FROM (SELECT dup_cluster, count(*) AS n FROM traces "
        "WHERE dup_cluster IS NOT NULL GROUP BY 1 HAVING n > 1) GROUP BY 1"
    ).fetchall()
    [dedup] = stats["dedup"]
    assert dedup["stage_id"] == "05-dedup" and dedup["sizes"] == {str(n): c for n, c in sizes}
    assert dedup["clusters"] == sum(c for _, c in sizes) == 102


def test_stats_prints_tables(run_dir: Path) -> None:
    code, output = invoke("stats", run_dir)
    assert code == 0, output
    for text in ("funnel", "06-prune", "pass_rate_outside_window", "difficulty bands", "medium"):
        assert text in output
    assert "qwen2.5" in output and "737" in output  # the teacher and its correct traces
    assert "dedup 05-dedup: 102 clusters over 349 rows" in flat(output)


# --- SQL and shell ----------------------------------------------------------------------------


def test_print_views_open_in_plain_duckdb(run_dir: Path) -> None:
    code, output = invoke("sql", run_dir, "--print-views")
    assert code == 0, output
    plain = duckdb.connect()
    plain.execute(output)  # the whole text, as one script
    ours = connect(run_dir)
    for view in ("pool", "problems", "traces", "dropped", "stage_prune", "sft", "preference"):
        sql = f"SELECT count(*) FROM {view}"
        assert plain.execute(sql).fetchone() == ours.execute(sql).fetchone(), view


def test_shell_from_a_pipe(run_dir: Path) -> None:
    script = (
        "SELECT difficulty, count(*) AS n\n"
        "  FROM problems -- a comment; not the end\n"
        "  WHERE pass_rate IS NOT NULL\n"
        "  GROUP BY 1 ORDER BY 2 DESC;\n"
        ".tables\n"
        ".schema preference\n"
        "SELECT no_such_column FROM pool;\n"
        "SELECT 'a;b' AS text;\n"
    )
    code, output = invoke("shell", run_dir, input=script)
    assert code == 0, output
    assert "easy" in output and "84" in output  # the first statement ran, over four lines
    assert "stage_prune" in output and "163" in output  # .tables with row counts
    assert "chosen_trace_id" in output  # .schema
    assert "error:" in output and "no_such_column" in output
    assert "a;b" in output  # a ';' inside quotes does not end a statement


def test_shell_on_a_terminal_keeps_history(run_dir: Path, tmp_path: Path) -> None:
    history = tmp_path / "history"
    pid, fd = pty.fork()
    if pid == 0:  # the child: curate shell on the pty
        try:
            os.environ.update({"CURATE_SHELL_HISTORY": str(history), "TERM": "xterm"})
            os.execv(str(CURATE), ["curate", "shell", str(run_dir)])
        finally:
            os._exit(127)  # only reached when exec failed: never run the rest of pytest
    seen = b""

    def wait_for(token: bytes, count: int = 1) -> None:
        nonlocal seen
        deadline = time.monotonic() + 30
        while seen.count(token) < count:
            assert time.monotonic() < deadline, seen.decode(errors="replace")
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                seen += os.read(fd, 65536)

    try:
        wait_for(b"curate> ")
        os.write(fd, b"SELECT count(*) AS kept\r")
        wait_for(b"...> ")  # a continuation prompt: the statement is not complete
        os.write(fd, b"FROM pool;\r")
        wait_for(b"163")
        os.write(fd, b"\x1b[A\r")  # arrow up recalls the whole statement as one entry
        wait_for(b"163", 2)
        os.write(fd, b".quit\r")
    finally:
        os.waitpid(pid, 0)
        os.close(fd)
    lines = history.read_text().splitlines()
    assert "SELECT count(*) AS kept FROM pool;" in lines
    assert ".quit" in lines


# --- the report in Chromium -----------------------------------------------------------------

PROBE = """(() => {
  const plots = {};
  for (const div of document.querySelectorAll('[data-plot]')) {
    plots[div.dataset.plot] = {
      svg: div.querySelectorAll('svg.main-svg').length,
      traces: div.querySelectorAll('g.trace').length,
      bars: div.querySelectorAll('g.trace.bars g.point').length,
      boxes: div.querySelectorAll('g.trace.boxes path.box').length,
      points: div.querySelectorAll('g.trace.scatter g.points path.point').length,
      funnel: div.querySelectorAll('g.trace.bars g.point, g.funnel g.point').length,
      text: div.innerText,
    };
  }
  return {plots, samples: document.querySelectorAll('#samples tbody tr').length,
          title: document.title, status: !!document.getElementById('status')};
})()"""
READY = (
    "document.querySelectorAll('.js-plotly-plot').length > 0 && "
    "[...document.querySelectorAll('.js-plotly-plot')].every(p => p.querySelector('svg.main-svg'))"
)


def test_report_renders_every_plot_in_chromium(run_dir: Path, tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    code, output = invoke("report", run_dir, "-o", page)
    assert code == 0, output
    result = open_page(page, PROBE, ready=READY)
    assert result.errors == [], result.errors
    assert {url.split(":", 1)[0] for url in result.requests} == {"file"}  # nothing fetched
    plots = result.value["plots"]
    assert list(plots) == [
        "funnel",
        "drops",
        "pass-rate",
        "length",
        "teachers",
        "teacher-length",
        "agreement",
        "dedup",
    ]
    for name in ("funnel", "drops", "pass-rate", "length", "teachers", "teacher-length", "dedup"):
        assert plots[name]["svg"] >= 1 and plots[name]["traces"] >= 1, (name, plots[name])
    assert plots["pass-rate"]["bars"] == 10  # one bar per 0.1 bin
    assert plots["length"]["boxes"] == 7  # all and kept for each band, all for ungraded
    assert plots["teachers"]["points"] == 1  # one teacher
    assert plots["teacher-length"]["boxes"] == 2  # its traces, all and correct
    assert "one teacher: nothing to compare" in plots["agreement"]["text"]
    assert plots["funnel"]["funnel"] == 9  # seven stages and two exports
    assert plots["drops"]["bars"] == 6  # one per (stage, reason) with rows
    assert result.value["samples"] == 16  # up to 2 correct + 2 other per band, 4 bands
    assert result.value["status"] is False  # a finished run: no warning
    assert result.screenshot[:8] == b"\x89PNG\r\n\x1a\n" and len(result.screenshot) > 50_000
    (tmp_path / "report.png").write_bytes(result.screenshot)


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["stats", "report", "sql", "shell"])
def test_a_missing_run_directory_is_named(command: str, tmp_path: Path) -> None:
    code, output = invoke(command, tmp_path / "nope")
    assert code == 6, output
    assert "nope: no such run directory" in flat(output)


def test_a_folder_that_is_no_run(tmp_path: Path) -> None:
    code, output = invoke("stats", tmp_path)
    assert code == 6 and "no stage of this run finished" in flat(output)


def test_a_build_that_failed_shows_what_exists(write_spec, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    spec = write_spec(
        "name: late\n"
        + QUICKSTART_INPUT
        + "  limit: 10\n"  # ten problems, 80 traces
        + "steps:\n  - verify: {method: math}\n  - grade: {}\n"
        + "  - select: {where: 'no_such_column > 1'}\n  - prune: {per_problem: 1}\n"
    )
    with pytest.raises(OperatorError):
        Build(load_spec(spec)).run()
    run = tmp_path / "runs" / "late"
    code, output = invoke("stats", run, "--format", "json")
    assert code == 0, output
    assert "missing stage(s): 03-select, 04-prune" in flat(output)
    stats = json.loads(output[output.index("{") :])
    assert stats["finished"] is False and stats["missing"] == ["03-select", "04-prune"]
    assert [s["stage_id"] for s in stats["stages"]] == ["00-input", "01-verify", "02-grade"]
    assert stats["kept"] == 80 and stats["pass_rates"]["problems"] == 10
    page = tmp_path / "report.html"
    code, output = invoke("report", run, "-o", page)
    assert code == 0 and "missing stage(s): 03-select, 04-prune" in flat(output)
    assert 'id="status"' in page.read_text()
    assert connect(run).execute("SELECT count(*) FROM pool").fetchone() == (80,)


def test_a_stale_stage_of_an_older_build_counts_as_missing(run_dir: Path, tmp_path: Path) -> None:
    """A build with new prune params killed before prune finished: the prune folder on disk is
    the old build's, so it is missing, not shown as current."""
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    plan = json.loads((copy / "plan.json").read_text())
    plan["run_id"] = "a-newer-build"
    plan["stages"][-1]["params"]["per_problem"] = 1
    (copy / "plan.json").write_text(json.dumps(plan))
    run = open_run(copy)
    assert (run.finished, run.missing) == (False, ["06-prune"])
    assert [s["stage_id"] for s in run.stages][-1] == "05-dedup"
    assert summarize(run).kept == 481  # the dedup stage's rows


# --- dedup cluster sizes ----------------------------------------------------------------------


def _write_stage(folder: Path, stage: dict, kept: pa.Table, dropped: pa.Table | None) -> None:  # type: ignore[type-arg]
    folder.mkdir(parents=True)
    pq.write_table(kept, folder / "part-00000.parquet")
    if dropped is not None:
        pq.write_table(dropped, folder / "dropped.parquet")
    (folder / "stage.json").write_text(json.dumps(stage))


def test_dedup_cluster_sizes(tmp_path: Path) -> None:
    """A run whose dedup stage marked clusters {a: 3 rows, b: 2, c: 1} and dropped the copies:
    sizes count kept and dropped rows of a cluster together."""
    ids = ["p1", "p2", "p3", "p4", "p5", "p6"]
    prompts = ["x + 1", "x+1", "X + 1", "y", "y ", "zébra ü"]
    problems = pa.table({"problem_id": ids, "prompt": prompts})
    stats = {"rows_in": 6, "rows_out": 6, "dropped": 0, "dropped_by_reason": {}}
    stages = [
        {"stage_id": "00-input", "operator": "input", "fingerprint": "f0", "stats": stats},
        {
            "stage_id": "01-dedup",
            "operator": "dedup",
            "fingerprint": "f1",
            "input_fingerprint": "f0",
            "params": {},
            "stats": {
                "rows_in": 6,
                "rows_out": 3,
                "dropped": 3,
                "dropped_by_reason": {"duplicate": 3},
            },
        },
    ]
    _write_stage(tmp_path / "stages" / "00-input", stages[0], problems, None)
    kept = pa.table(
        {
            "problem_id": ["p1", "p4", "p6"],
            "prompt": ["x + 1", "y", "zébra ü"],
            "dup_cluster": ["a", "b", "c"],
            "dup_of": [None, None, None],
        },
        schema=pa.schema(
            [
                ("problem_id", pa.string()),
                ("prompt", pa.string()),
                ("dup_cluster", pa.string()),
                ("dup_of", pa.string()),
            ]
        ),
    )
    dropped = pa.table(
        {
            "problem_id": ["p2", "p3", "p5"],
            "prompt": ["x+1", "X + 1", "y "],
            "dup_cluster": ["a", "a", "b"],
            "dup_of": ["p1", "p1", "p4"],
            "drop_stage": ["01-dedup"] * 3,
            "drop_reason": ["duplicate"] * 3,
            "drop_detail": ["same as p1", "same as p1", "same as p4"],
        }
    )
    _write_stage(tmp_path / "stages" / "01-dedup", stages[1], kept, dropped)
    manifest = {"run_id": "r1", "name": "dups", "stages": stages, "outputs": {}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))

    summary = summarize(tmp_path)
    (dedup,) = summary.dedup
    assert (dedup.stage_id, dedup.sizes, dedup.clusters, dedup.rows) == (
        "01-dedup",
        {1: 1, 2: 1, 3: 1},
        3,
        6,
    )
    assert summary.drops[0].rows == 3 and summary.drops[0].example == "same as p1"
    page = tmp_path / "report.html"
    write_report(tmp_path, page)
    text = page.read_text()
    assert 'id="plot-dedup"' in text and "no dedup step" not in text
    code, output = invoke("stats", tmp_path)
    assert code == 0 and "dedup 01-dedup: 3 clusters over 6 rows" in flat(output)


def test_sql_and_shell_print_brackets_as_text(run_dir: Path) -> None:
    """Values are text, not Rich markup: '[bold]' and list values survive."""
    query = "SELECT 'a[bold]b[x,y]c' AS t, [1, 2] AS l"
    code, output = invoke("sql", run_dir, query)
    assert code == 0 and "a[bold]b[x,y]c" in output and "[1, 2]" in output, output
    code, output = invoke("shell", run_dir, input=query + ";\n")
    assert code == 0 and "a[bold]b[x,y]c" in output and "[1, 2]" in output, output


def test_sql_csv_writes_lists_and_structs_as_json(run_dir: Path) -> None:
    code, output = invoke(
        "sql", run_dir, "SELECT [1, 2] AS l, {'a': 1} AS s, 'x' AS t", "-f", "csv"
    )
    assert code == 0, output
    assert output.splitlines()[-2:] == ["l,s,t", '"[1,2]","{""a"":1}",x']
