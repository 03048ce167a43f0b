"""How a build shows itself: a progress bar per stage and a closing funnel table. The engine
talks to a `Reporter`; `SilentReporter` is for library use, `RichReporter` for the terminal."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table


class SilentReporter:
    """Reports nothing. Subclasses override what they show."""

    def message(self, text: str) -> None:
        """A line of information for the user."""

    def stage_started(self, stage_id: str, total_rows: int | None) -> None:
        """A stage begins; `total_rows` is None when progress cannot be counted."""

    def advance(self, rows: int) -> None:
        """`rows` more rows of the current stage are done."""

    def stage_finished(self, record: dict[str, Any]) -> None:
        """A stage ended (ran or reused); `record` is its manifest entry."""

    def funnel(self, stages: list[dict[str, Any]], outputs: dict[str, Any]) -> None:
        """The closing table: rows in, out and dropped per stage, and what was written."""


class RichReporter(SilentReporter):
    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def message(self, text: str) -> None:
        self.console.print(text)

    def stage_started(self, stage_id: str, total_rows: int | None) -> None:
        if not self.console.is_terminal:
            return  # logs and pipes get one line per stage, not redrawn bars
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("rows"),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task(stage_id, total=total_rows)

    def advance(self, rows: int) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task, rows)

    def stage_finished(self, record: dict[str, Any]) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        stats = record["stats"]
        if "output" in record:
            self.console.print(
                f"[green]✓[/green] {record['stage_id']:<14} {record['status']:<7} "
                f"{stats['rows_out']:>9,} rows → {record['output']}"
            )
        elif record["status"] == "reused":
            self.console.print(
                f"[dim]↺ {record['stage_id']:<14} reused  {stats['rows_out']:>9,} rows "
                f"(fingerprint {record['fingerprint'][:12]} unchanged)[/dim]"
            )
        else:
            self.console.print(
                f"[green]✓[/green] {record['stage_id']:<14} ran     {stats['rows_in']:>9,} → "
                f"{stats['rows_out']:,} rows, {stats['dropped']:,} dropped "
                f"in {stats['seconds']:.1f}s"
            )

    def funnel(self, stages: list[dict[str, Any]], outputs: dict[str, Any]) -> None:
        table = Table(title="funnel", title_justify="left")
        for name, justify in [
            ("stage", "left"),
            ("status", "left"),
            ("rows in", "right"),
            ("rows out", "right"),
            ("dropped", "right"),
            ("top drop reasons", "left"),
        ]:
            table.add_column(name, justify=justify)  # type: ignore[arg-type]
        for record in stages:
            stats = record["stats"]
            reasons = sorted(stats["dropped_by_reason"].items(), key=lambda kv: -kv[1])[:3]
            table.add_row(
                record["stage_id"],
                record["status"],
                f"{stats['rows_in']:,}",
                f"{stats['rows_out']:,}",
                f"{stats['dropped']:,}",
                ", ".join(f"{k} {v:,}" for k, v in reasons),
            )
        for kind, output in outputs.items():
            table.add_row(
                f"→ {kind}", output["status"], "", f"{output['rows']:,}", "", output["path"]
            )
        self.console.print(table)
