"""`curate publish`: the folder the Hugging Face Hub expects, and its upload in one commit.

The folder holds the data files per config (`data/sft/`, `data/preference/`, split `train`),
a README.md dataset card (curate.card), and `curate/manifest.json` and `curate/spec.yaml` for
lineage. `--dry-run` writes exactly this folder; a real publish writes the same folder with
the same function, then commits every file in it (and deletes files a previous publish left
under `data/` or `curate/` that this folder no longer has, so no stale shard stays behind a
glob) in one commit. The token comes from `HF_TOKEN` or the huggingface_hub login; it is
handed to huggingface_hub only and never written, printed or put in the card.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curate.card import card_text
from curate.engine import MANIFEST_FILE
from curate.errors import PublishError, RunDirError
from curate.run import open_run
from curate.storage import AnyPath, is_uri
from curate.storage import run_path as run_path_of
from curate.summary import summarize

REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
KINDS = ("sft", "preference")
OWNED = ("data/", "curate/", "README.md")  # what publish manages in the Hub repository


@dataclass(frozen=True)
class Source:
    """A finished build's outputs, found from the folder given to `curate publish`."""

    manifest: dict[str, Any]
    outputs: dict[str, Path]  # kind -> folder with the Parquet shards
    run_dir: AnyPath
    spec_text: str


def check_repo(repo: str) -> str:
    if not REPO_ID.match(repo) or ".." in repo or repo.endswith((".git", ".")):
        raise PublishError(
            f"--repo must be 'org/name' (letters, digits, '-', '_', '.'), e.g. "
            f"'my-org/math-distill'; got {repo!r}"
        )
    return repo


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise PublishError(f"{path}: not valid JSON ({exc})") from None
    return data


def locate(out_dir: str | Path, run_dir: str | Path | None = None) -> Source:
    """Find the manifest and output folders under `out_dir`: an output folder, the folder that
    holds the output folders (`out/`), or a run directory."""
    root = Path(out_dir).expanduser().resolve()
    if not root.is_dir():
        raise PublishError(f"{out_dir}: no such folder")
    found = [root / MANIFEST_FILE] if (root / MANIFEST_FILE).is_file() else []
    found += sorted(root.glob(f"*/{MANIFEST_FILE}")) if not found else []
    if not found:
        raise PublishError(
            f"{out_dir}: no {MANIFEST_FILE} here or in its subfolders; give the output folder "
            "of a finished `curate build` (e.g. out/ or out/sft)"
        )
    manifests = [_read_manifest(p) for p in found]
    runs = {m["run_id"] for m in manifests}
    if len(runs) > 1:
        raise PublishError(
            f"{out_dir}: its outputs come from different builds ({', '.join(sorted(runs))}); "
            "build again so that every output is from one run"
        )
    manifest = manifests[0]
    outputs: dict[str, Path] = {}
    for kind, output in manifest.get("outputs", {}).items():
        folder = Path(output["path"])
        moved = [p.parent for p in found if p.parent.name == folder.name]
        if not folder.is_dir() and moved:
            folder = moved[0]  # the outputs were moved together with their manifests
        if not any(folder.glob("*.parquet")):
            raise PublishError(f"{folder}: the {kind} output has no Parquet files")
        outputs[kind] = folder
    if not outputs:
        raise PublishError(f"{out_dir}: the build wrote no outputs (the spec has no `outputs`)")
    spec = manifest["spec"]
    spec_dir = Path(manifest["spec_path"]).parent
    named = spec.get("run_dir") or f"runs/{spec['name']}"
    default_run = run_path_of(named) if is_uri(named) else spec_dir / named
    run_path = run_path_of(run_dir) if run_dir else default_run
    if not (run_path / MANIFEST_FILE).is_file():
        raise RunDirError(
            f"{run_path}: the run directory of these outputs is not there (the card's statistics "
            "come from it); pass --run RUN_DIR"
        )
    copies = [f / "spec.yaml" for f in outputs.values() if (f / "spec.yaml").exists()]
    spec_text = (copies[0] if copies else run_path / "spec.yaml").read_text()
    return Source(manifest=manifest, outputs=outputs, run_dir=run_path, spec_text=spec_text)


def public_manifest(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest with local paths made relative to the spec's folder (or to ~): what it
    says about the build stays, where it sat on this machine goes."""
    base = str(Path(manifest["spec_path"]).parent) + "/"
    home = str(Path.home()) + "/"

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        if isinstance(value, str) and value.startswith(base):
            return value[len(base) :]
        if isinstance(value, str) and value.startswith(home):
            return "~/" + value[len(home) :]
        return value

    cleaned: dict[str, Any] = clean(manifest)
    for kind in cleaned.get("outputs", {}):
        cleaned["outputs"][kind]["path"] = f"data/{kind}"
    return cleaned


def _is_ours(folder: Path) -> bool:
    return (folder / "README.md").is_file() and (folder / "curate" / MANIFEST_FILE).is_file()


def build_folder(source: Source, folder: str | Path, *, repo: str) -> list[str]:
    """Write the Hub folder (replacing an earlier one); returns its files, relative, sorted."""
    check_repo(repo)
    spec = source.manifest["spec"]
    license = spec.get("license")
    if not license:
        raise PublishError(
            "publishing needs a licence: add `license: <id>` to the spec (a Hub licence id such "
            "as mit, apache-2.0 or cc-by-4.0, matching the licence of your inputs and the terms "
            "of your teachers) and build again (every stage is reused)"
        )
    target = Path(folder).expanduser().resolve()
    if target.exists() and any(target.iterdir()) and not _is_ours(target):
        raise PublishError(
            f"{target}: exists and is not a folder `curate publish` wrote; choose another --folder"
        )
    tmp = target.with_name(f".tmp-{target.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    configs: dict[str, list[str]] = {}
    for kind in KINDS:
        if kind not in source.outputs:
            continue
        data = tmp / "data" / kind
        data.mkdir(parents=True)
        for shard in sorted(source.outputs[kind].glob("*.parquet")):
            shutil.copy2(shard, data / shard.name)
        configs[kind] = [f"data/{kind}/*.parquet"]
    lineage = tmp / "curate"
    lineage.mkdir()
    (lineage / MANIFEST_FILE).write_text(
        json.dumps(public_manifest(source.manifest), indent=2) + "\n"
    )
    (lineage / "spec.yaml").write_text(source.spec_text)
    summary = summarize(open_run(source.run_dir))
    (tmp / "README.md").write_text(
        card_text(
            repo=repo,
            manifest=source.manifest,
            summary=summary,
            spec_text=source.spec_text,
            configs=configs,
            license=license,
        )
    )
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(target)
    return folder_files(target)


def folder_files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def upload(
    folder: str | Path,
    *,
    repo: str,
    private: bool = False,
    revision: str | None = None,
    message: str = "Publish with curate",
) -> str:
    """Commit every file of `folder` to the dataset repo `repo` in one commit; returns the
    commit URL. The Hub endpoint is HF_ENDPOINT's (huggingface_hub reads it)."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError

    check_repo(repo)
    root = Path(folder)
    files = folder_files(root)
    if get_token() is None:
        raise PublishError(
            "no Hugging Face token: set HF_TOKEN or log in with `hf auth login` "
            "(or use --dry-run to only write the folder)"
        )
    api = HfApi()
    try:
        api.create_repo(repo, repo_type="dataset", private=private or None, exist_ok=True)
        if revision:
            api.create_branch(repo, branch=revision, repo_type="dataset", exist_ok=True)
        remote = api.list_repo_files(repo, repo_type="dataset", revision=revision)
        stale = [f for f in remote if f.startswith(OWNED) and f not in files]
        operations: list[Any] = [
            CommitOperationAdd(path_in_repo=f, path_or_fileobj=str(root / f)) for f in files
        ]
        operations += [CommitOperationDelete(path_in_repo=f) for f in sorted(stale)]
        info = api.create_commit(
            repo,
            operations,
            commit_message=message,
            repo_type="dataset",
            revision=revision,
        )
    except HfHubHTTPError as exc:
        raise PublishError(f"the Hub refused the upload to {repo}: {exc}") from None
    url: str = info.commit_url
    return url
