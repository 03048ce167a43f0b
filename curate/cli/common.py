"""What every command shares: the consoles, the output-format option, and the one place where
library errors become a message on stderr and an exit code."""

from __future__ import annotations

import functools
from collections.abc import Callable
from enum import Enum
from typing import ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from curate.errors import CurateError

out = Console()
err = Console(stderr=True)

P = ParamSpec("P")
R = TypeVar("R")


class Format(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"
    parquet = "parquet"


def handle_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Turn a CurateError into its message on stderr and its exit code (2 for invalid specs)."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except CurateError as exc:
            # escaped: messages hold brackets ("pip install 'curate[vllm]'"), not markup
            err.print(f"[bold red]error:[/bold red] {escape(str(exc))}", highlight=False)
            raise typer.Exit(exc.exit_code) from None

    return wrapper


def cell(value: object) -> Text:
    """One SQL value as a table cell: plain text, never Rich markup (values hold brackets, as in
    `[1, 2]` or `curate[vllm]`), null as ∅, floats to 4 significant digits, long text cut."""
    if value is None:
        return Text("∅")
    if isinstance(value, float):
        return Text(f"{value:.4g}")
    text = str(value)
    return Text(text if len(text) <= 80 else text[:77] + "…")
