"""`curate build` and `curate validate`."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from curate.cli.common import err, handle_errors, out
from curate.spec import load_spec

if TYPE_CHECKING:
    from curate.costs import CostPlan

SPEC = typer.Argument(..., help="the spec file (YAML)", exists=False)


@handle_errors
def build(
    spec: Path = SPEC,
    force: bool = typer.Option(False, "--force", help="re-run every stage, reuse nothing"),
    workers: int = typer.Option(0, "--workers", help="processes for CPU-bound steps (0: auto)"),
    refresh: bool = typer.Option(
        False, "--refresh", help="ask teachers again: ignore (and overwrite) cached answers"
    ),
    executor: str = typer.Option(
        "",
        "--executor",
        help="where the steps run: local or ray (default: the spec's `executor:`, else local)",
    ),
    address: str = typer.Option(
        "",
        "--address",
        help="with --executor ray: the cluster to join ('auto' on a cluster node); none "
        "starts a local Ray",
    ),
    num_cpus: int | None = typer.Option(
        None, "--num-cpus", help="with --executor ray: CPUs of a local Ray started by the build"
    ),
    memory_per_task: int | None = typer.Option(
        None, "--memory-per-task", help="with --executor ray: bytes of memory each task reserves"
    ),
    batch_rows: int | None = typer.Option(
        None, "--batch-rows", help="rows per task of a batch step"
    ),
    sample_actors: int | None = typer.Option(
        None, "--sample-actors", help="with --executor ray: actors a sample step sends from"
    ),
    dry_run: bool = typer.Option(
        False,
        "--dry-run",
        help="send nothing, write nothing: print each sample step's requests, what the cache "
        "answers, and the worst-case tokens and cost",
    ),
) -> None:
    """Run the spec: read input, run each step (reusing unchanged stages), write outputs."""
    from curate.engine import Build
    from curate.executors import executor_settings, make_executor
    from curate.progress import RichReporter

    loaded = load_spec(spec)
    if dry_run:
        from curate.costs import cost_plan

        print_cost_plan(cost_plan(Build(loaded, force=force, refresh=refresh)), out)
        return
    settings = executor_settings(
        loaded.spec.executor,
        kind=executor or None,
        address=address or None,
        num_cpus=num_cpus,
        memory_per_task=memory_per_task,
        batch_rows=batch_rows,
        sample_actors=sample_actors,
    )
    show_operator_logs()
    reporter = RichReporter(err)
    reporter.message(f"building [bold]{loaded.spec.name}[/bold] → {loaded.run_dir}")
    if settings.kind == "ray":
        reporter.message(f"executor: ray ({settings.address or 'a local Ray started here'})")
    build_ = Build(
        loaded,
        reporter=reporter,
        force=force,
        workers=workers or None,
        refresh=refresh,
        executor=make_executor(settings),
    )
    manifest = build_.run()
    reused = sum(1 for s in manifest["stages"] if s["status"] == "reused")
    err.print(
        f"run {manifest['run_id']}: {len(manifest['stages'])} stages "
        f"({reused} reused), manifest at {loaded.run_dir / 'manifest.json'}"
    )
    err.print(f'explore it: curate sql {loaded.run_dir} "SELECT * FROM problems LIMIT 5"')


def print_cost_plan(plan: CostPlan, console: Console) -> None:
    """The cost plan as a table: per sample step and teacher, what is asked and its worst case."""
    if plan.note:
        console.print(f"  [yellow]{plan.note}[/yellow]", highlight=False)
        return
    if not plan.steps:
        return
    table = Table(title="teacher requests", title_justify="left")
    for name in ("step", "teacher", "samples", "cached", "to send", "worst tokens", "worst $"):
        table.add_column(name, justify="left" if name in ("step", "teacher") else "right")
    estimated = False
    for step in plan.steps:
        estimated = estimated or not step.exact
        label = step.stage_id if step.exact else f"{step.stage_id}*"
        for t in step.teachers:
            table.add_row(
                label,
                t.teacher,
                f"{t.samples:,}",
                f"{t.cached:,}",
                f"{t.requests:,}",
                f"{t.prompt_tokens + t.completion_tokens:,}",
                f"{t.cost_usd:,.4f}",
            )
    console.print(table)
    console.print(
        "  to send: what the cache does not answer; worst: prompt estimate + max_tokens"
        + (
            "\n  * from the input file, as if the steps before it kept every row: at most"
            if estimated
            else ""
        ),
        highlight=False,
    )
    worst = plan.worst_cost_usd
    if plan.budget_usd is not None:
        verdict = "within" if worst <= plan.budget_usd else "over"
        console.print(
            f"  worst case ${worst:,.4f}, {verdict} budget_usd ${plan.budget_usd:,.4f}; "
            "sending stops once the budget is spent",
            highlight=False,
        )
    else:
        console.print(f"  worst case ${worst:,.4f} (no budget_usd set)", highlight=False)


def show_operator_logs() -> None:
    """Operators say what they decided at INFO on loggers under `curate` (dedup prints its
    bands x rows split and the threshold it implies); show those lines on stderr, through the
    same console as the progress bars so they do not tear them."""
    from rich.logging import RichHandler

    logger = logging.getLogger("curate")
    if not any(isinstance(h, RichHandler) for h in logger.handlers):
        handler = RichHandler(
            console=err, show_time=False, show_level=False, show_path=False, markup=False
        )
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


@handle_errors
def validate(spec: Path = SPEC) -> None:
    """Check a spec without running it; exit code 2 when it is invalid.

    With sample steps, also print their requests and worst-case tokens and cost (as
    `build --dry-run` does)."""
    from curate.costs import cost_plan
    from curate.engine import Build

    loaded = load_spec(spec)
    out.print(f"[green]ok[/green] {escape(str(spec))}: {len(loaded.steps)} steps")
    out.print(f"  input   {escape(str(loaded.resolve(loaded.spec.input.path)))}")
    for step in loaded.steps:
        params = step.params.model_dump(mode="json", by_alias=True, exclude_defaults=True)
        # escaped: params hold brackets ("[a-z]" in a regex, lists), not markup
        out.print(f"  {step.stage_id:<12} {escape(str(params))}", highlight=False)
    for kind in ("sft", "preference"):
        output = getattr(loaded.spec.outputs, kind)
        if output is not None:
            out.print(f"  → {kind:<10} {escape(str(loaded.resolve(output.path)))}")
    out.print(f"  run dir {escape(str(loaded.run_dir))}")
    print_cost_plan(cost_plan(Build(loaded)), out)
    for name, teacher in loaded.spec.teachers.items():
        env = getattr(teacher, "api_key_env", None)
        if env and not os.environ.get(env):
            out.print(
                f"  [yellow]teacher '{name}': environment variable {env} is not set; a build "
                "needs the API key in it[/yellow]"
            )
