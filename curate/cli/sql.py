"""`curate sql RUN_DIR "SELECT …"`: query a run's views and print or save the result."""

from __future__ import annotations

from pathlib import Path

import duckdb
import typer
from rich.table import Table

from curate.cli.common import Format, cell, err, handle_errors, out
from curate.errors import CurateError


@handle_errors
def sql(
    run_dir: str = typer.Argument(
        ...,
        help="a run directory: runs/<name> beside the spec, or its URI (s3://bucket/runs/<name>)",
    ),
    query: str = typer.Argument(
        None, help="SQL over the views: pool, problems, traces, dropped, stage_<op>, sft, …"
    ),
    format: Format = typer.Option(Format.table, "--format", "-f", help="output format"),
    output: Path = typer.Option(None, "--output", "-o", help="write the result to this file"),
    max_rows: int = typer.Option(50, "--max-rows", help="rows shown in table format"),
    print_views: bool = typer.Option(
        False, "--print-views", help="print the CREATE VIEW statements, for plain DuckDB"
    ),
) -> None:
    """Run SQL over a run directory. With no query, list the views and their row counts."""
    from curate.run import open_run
    from curate.sql import connect, view_names, view_statements

    run = open_run(run_dir)
    if run.status_line():
        err.print(f"[yellow]warning:[/yellow] {run.status_line()}", highlight=False)
    if print_views:
        typer.echo("\n".join(view_statements(run)))
        return
    con = connect(run)
    if query is None:
        table = Table("view", "rows", box=None)
        for view in view_names(con):
            count = con.execute(f"SELECT count(*) FROM {view}").fetchone()
            table.add_row(view, f"{count[0] if count else 0:,}")
        out.print(table)
        return
    try:
        relation = con.sql(query)
    except duckdb.Error as exc:
        raise CurateError(f"SQL error: {exc}") from None
    if relation is None:
        return
    if format is Format.parquet:
        if output is None:
            raise CurateError("--format parquet needs --output FILE")
        relation.write_parquet(str(output))
        return
    if format is Format.table and output is None:
        _print_table(relation, max_rows)
        return
    if format is Format.json:
        text = relation.pl().write_ndjson()
    else:  # csv, or a table into a file: CSV is the honest text form
        text = _nested_as_json(relation).pl().write_csv()
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text)


def _nested_as_json(relation: duckdb.DuckDBPyRelation) -> duckdb.DuckDBPyRelation:
    """CSV holds no lists or structs: such columns become their JSON text."""
    columns = []
    for name, dtype in zip(relation.columns, relation.types, strict=True):
        quoted = '"' + name.replace('"', '""') + '"'
        kind = str(dtype)
        nested = kind.endswith("]") or kind.startswith(("STRUCT", "MAP", "UNION"))
        columns.append(f"to_json({quoted})::VARCHAR AS {quoted}" if nested else quoted)
    return relation.project(", ".join(columns))


def _print_table(relation: duckdb.DuckDBPyRelation, max_rows: int) -> None:
    table = Table(*relation.columns, show_lines=False)
    rows = relation.limit(max_rows + 1).fetchall()
    for row in rows[:max_rows]:
        table.add_row(*[cell(v) for v in row])
    out.print(table)
    if len(rows) > max_rows:
        out.print(f"[dim](more than {max_rows} rows; use --max-rows or --format csv)[/dim]")
