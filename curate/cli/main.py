"""The `curate` command: a thin shell over the library, one module per command group."""

from __future__ import annotations

import typer

from curate import __version__
from curate.cli.build import build, validate
from curate.cli.inspect import report, stats
from curate.cli.ops import ops, schema
from curate.cli.publish import publish
from curate.cli.shell import shell
from curate.cli.sql import sql
from curate.cli.teacher_server import teacher_server

app = typer.Typer(
    name="curate",
    help="Turn problems with reference answers into clean reasoning-distillation training sets.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"curate {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="print the version and exit"
    ),
) -> None:
    """Turn problems with reference answers into clean reasoning-distillation training sets."""


app.command()(build)
app.command()(validate)
app.command()(ops)
app.command()(sql)
app.command()(shell)
app.command()(stats)
app.command()(report)
app.command()(publish)
app.command()(schema)
app.command(name="teacher-server")(teacher_server)

if __name__ == "__main__":
    app()
