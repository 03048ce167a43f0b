"""`curate build` and `curate validate`."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from curate.cli.common import err, handle_errors, out
from curate.spec import load_spec

SPEC = typer.Argument(..., help="the spec file (YAML)", exists=False)


@handle_errors
def build(
    spec: Path = SPEC,
    force: bool = typer.Option(False, "--force", help="re-run every stage, reuse nothing"),
    workers: int = typer.Option(0, "--workers", help="processes for CPU-bound steps (0: auto)"),
) -> None:
    """Run the spec: read input, run each step (reusing unchanged stages), write outputs."""
    from curate.engine import Build
    from curate.progress import RichReporter

    loaded = load_spec(spec)
    show_operator_logs()
    reporter = RichReporter(err)
    reporter.message(f"building [bold]{loaded.spec.name}[/bold] → {loaded.run_dir}")
    manifest = Build(loaded, reporter=reporter, force=force, workers=workers or None).run()
    reused = sum(1 for s in manifest["stages"] if s["status"] == "reused")
    err.print(
        f"run {manifest['run_id']}: {len(manifest['stages'])} stages "
        f"({reused} reused), manifest at {loaded.run_dir / 'manifest.json'}"
    )
    err.print(f'explore it: curate sql {loaded.run_dir} "SELECT * FROM problems LIMIT 5"')


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
    """Check a spec without running it; exit code 2 when it is invalid."""
    loaded = load_spec(spec)
    out.print(f"[green]ok[/green] {spec}: {len(loaded.steps)} steps")
    out.print(f"  input   {loaded.resolve(loaded.spec.input.path)}")
    for step in loaded.steps:
        params = step.params.model_dump(mode="json", by_alias=True, exclude_defaults=True)
        out.print(f"  {step.stage_id:<12} {params}", highlight=False)
    for kind in ("sft", "preference"):
        output = getattr(loaded.spec.outputs, kind)
        if output is not None:
            out.print(f"  → {kind:<10} {loaded.resolve(output.path)}")
    out.print(f"  run dir {loaded.run_dir}")
