"""`curate publish OUT_DIR --repo org/name`: write the Hub folder with its dataset card, then
upload it in one commit (or, with --dry-run, only write it)."""

from __future__ import annotations

from pathlib import Path

import typer

from curate.cli.common import err, handle_errors, out


@handle_errors
def publish(
    out_dir: Path = typer.Argument(
        ..., help="the build's output folder (e.g. out/, or one output such as out/sft)"
    ),
    repo: str = typer.Option(..., "--repo", help="the dataset repository, as org/name"),
    private: bool = typer.Option(False, "--private", help="create the repository as private"),
    revision: str = typer.Option(
        None, "--revision", help="branch to commit to (created when missing; default: main)"
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="write the folder that would be uploaded, upload nothing"
    ),
    folder: Path = typer.Option(
        None, "--folder", help="where the Hub folder is written (default: OUT_DIR/../hub/ORG/NAME)"
    ),
    run: str = typer.Option(
        None,
        "--run",
        help="the run directory (a path or URI) when it is not where the manifest says",
    ),
) -> None:
    """Publish the SFT and preference sets to the Hugging Face Hub with a dataset card."""
    from curate.publish import build_folder, check_repo, locate, upload

    check_repo(repo)
    source = locate(out_dir, run)
    target = folder or out_dir.resolve().parent / "hub" / repo
    files = build_folder(source, target, repo=repo)
    err.print(f"wrote {target}: {len(files)} files", highlight=False)
    for name in files:
        out.print(f"  {name}", highlight=False)
    if dry_run:
        err.print("dry run: nothing uploaded")
        return
    manifest = source.manifest
    url = upload(
        target,
        repo=repo,
        private=private,
        revision=revision,
        message=f"curate publish: {manifest['name']} (run {manifest['run_id']})",
    )
    err.print(f"published {repo} in one commit: {url}", highlight=False)
