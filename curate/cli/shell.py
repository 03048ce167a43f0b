"""`curate shell RUN_DIR`: an interactive DuckDB session over a run's views.

Statements end with `;` and may span lines; results print as tables. On a terminal, line
editing and history come from readline, and each statement is kept as one history entry in a
file that survives sessions. From a pipe it reads statements from stdin with no prompts, so
`curate shell RUN < queries.sql` works too. Dot commands: `.tables`, `.schema VIEW`, `.views`,
`.maxrows N`, `.help`, `.quit`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import duckdb
import typer
from rich.console import Console
from rich.table import Table

from curate.cli.common import cell, handle_errors, out

HELP = """\
Statements end with ';' and may span several lines. Views: pool, problems, traces, dropped,
stage_<op>, rejects, sft, preference (those the run has).
  .tables         every view and its row count
  .schema VIEW    the columns of a view
  .views          the CREATE VIEW statements (for plain DuckDB)
  .maxrows N      rows shown per result (now {max_rows})
  .help           this text
  .quit           leave (or Ctrl-D)"""


def default_history() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "curate" / "shell_history"


def statement_complete(text: str) -> bool:
    """True when `text` ends with a ';' outside quotes and comments."""
    last = ""
    quote: str | None = None
    i = 0
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
            last = ch
        elif text.startswith("--", i):
            newline = text.find("\n", i)
            i = len(text) if newline < 0 else newline
            continue
        elif not ch.isspace():
            last = ch
        i += 1
    return quote is None and last == ";"


def print_rows(
    console: Console, columns: Sequence[str], rows: Sequence[Sequence[Any]], max_rows: int
) -> None:
    table = Table(*columns)
    for row in rows[:max_rows]:
        table.add_row(*[cell(v) for v in row])
    console.print(table)
    if len(rows) > max_rows:
        console.print(f"[dim](more than {max_rows} rows; .maxrows N shows more)[/dim]")


class Session:
    """The loop's state: the connection, the statement being typed, the display settings."""

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        statements: list[str],
        console: Console,
        max_rows: int = 40,
    ) -> None:
        self.con = con
        self.view_sql = statements
        self.console = console
        self.max_rows = max_rows
        self.buffer: list[str] = []

    @property
    def prompt(self) -> str:
        return "   ...> " if self.buffer else "curate> "

    def feed(self, line: str) -> str | None:
        """Take one input line; returns the statement it completed (for history), or None.
        Raises EOFError for `.quit`."""
        if not self.buffer and line.strip().startswith("."):
            self.dot(line.strip())
            return None
        if not self.buffer and not line.strip():
            return None
        self.buffer.append(line)
        text = "\n".join(self.buffer)
        if not statement_complete(text):
            return None
        self.buffer = []
        self.execute(text)
        return text

    def execute(self, text: str) -> None:
        try:
            for statement in duckdb.extract_statements(text):
                cursor = self.con.execute(statement.query)
                if cursor.description:
                    columns = [d[0] for d in cursor.description]
                    rows = cursor.fetchmany(self.max_rows + 1)
                    print_rows(self.console, columns, rows, self.max_rows)
        except duckdb.Error as exc:
            self.console.print(f"[bold red]error:[/bold red] {exc}", highlight=False)

    def dot(self, command: str) -> None:
        name, _, arg = command.partition(" ")
        arg = arg.strip()
        if name in (".quit", ".exit", ".q"):
            raise EOFError
        if name == ".help":
            self.console.print(HELP.format(max_rows=self.max_rows), highlight=False)
        elif name == ".tables":
            views = [
                r[0]
                for r in self.con.execute(
                    "SELECT view_name FROM duckdb_views() WHERE NOT internal ORDER BY 1"
                ).fetchall()
            ]
            rows = []
            for view in views:
                count = self.con.execute(f"SELECT count(*) FROM {view}").fetchone()
                rows.append((view, f"{count[0] if count else 0:,}"))
            print_rows(self.console, ["view", "rows"], rows, len(rows))
        elif name == ".schema" and arg:
            self.execute(f"DESCRIBE {arg};")
        elif name == ".views":
            self.console.print("\n".join(self.view_sql), highlight=False, soft_wrap=True)
        elif name == ".maxrows" and arg.isdigit() and int(arg) > 0:
            self.max_rows = int(arg)
        else:
            self.console.print(f"unknown or incomplete command {command!r}; try .help")


def _run_tty(session: Session, history: Path) -> None:
    import readline

    history.parent.mkdir(parents=True, exist_ok=True)
    if history.exists():
        readline.read_history_file(history)
    readline.set_history_length(2000)
    readline.set_auto_history(False)  # one entry per statement, however many lines it took
    session.console.print(
        "[dim]DuckDB over the run's views. Statements end with ';'. .help for commands, "
        ".quit to leave.[/dim]"
    )
    try:
        while True:
            try:
                line = input(session.prompt)
            except KeyboardInterrupt:
                session.buffer = []
                session.console.print()
                continue
            if not session.buffer and line.strip().startswith("."):
                readline.add_history(line.strip())
            done = session.feed(line)
            if done is not None:
                readline.add_history(" ".join(part.strip() for part in done.splitlines()))
    except EOFError:
        session.console.print()
    finally:
        readline.write_history_file(history)


def _run_pipe(session: Session, stream: TextIO) -> None:
    try:
        for line in stream:
            session.feed(line.rstrip("\n"))
    except EOFError:
        return
    if session.buffer:
        session.feed(";")  # a last statement without its ';'


@handle_errors
def shell(
    run_dir: str = typer.Argument(
        ...,
        help="a run directory: runs/<name> beside the spec, or its URI (s3://bucket/runs/<name>)",
    ),
    history: Path = typer.Option(
        None,
        "--history",
        envvar="CURATE_SHELL_HISTORY",
        help="history file (default: $XDG_STATE_HOME/curate/shell_history)",
    ),
    max_rows: int = typer.Option(40, "--max-rows", help="rows shown per result"),
) -> None:
    """Open an interactive DuckDB session with the run's views (pool, problems, traces, …)."""
    from curate.run import open_run
    from curate.sql import connect_with_statements

    run = open_run(run_dir)
    if run.status_line():
        out.print(f"[yellow]{run.status_line()}[/yellow]", highlight=False)
    con, statements = connect_with_statements(run)
    session = Session(con, statements, out, max_rows=max_rows)
    if sys.stdin.isatty():
        _run_tty(session, history or default_history())
    else:
        _run_pipe(session, sys.stdin)
