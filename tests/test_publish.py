"""`curate publish`: the --dry-run folder loads with `datasets` and its card validates with
huggingface_hub's card tools; the upload runs against a local Hub stand-in (tests/hub_server.py)
that records what huggingface_hub sends: one commit with every file of the folder, the token in
the Authorization header and nowhere in any file; and bad input is refused with its reason."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from curate.cli.main import app
from curate.errors import SpecError
from curate.publish import folder_files
from curate.spec import load_spec
from tests.conftest import REPO
from tests.hub_server import FakeHub

CURATE = REPO / ".venv" / "bin" / "curate"
TOKEN = "hf_curateTestToken0123456789abcdef"


def flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture
def out_dir(quickstart_run: Path) -> Path:
    return quickstart_run.parent.parent / "out"


@pytest.fixture
def dry_run(out_dir: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "hub"
    result = CliRunner().invoke(
        app,
        [
            "publish",
            str(out_dir),
            "--repo",
            "curate-tests/quickstart",
            "--dry-run",
            "--folder",
            str(folder),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "nothing uploaded" in result.output
    return folder


def test_dry_run_folder_loads_with_datasets(dry_run: Path, out_dir: Path, tmp_path: Path) -> None:
    import datasets

    assert folder_files(dry_run) == [
        "README.md",
        "curate/manifest.json",
        "curate/spec.yaml",
        "data/preference/train-00000-of-00001.parquet",
        "data/sft/train-00000-of-00001.parquet",
    ]
    manifest = json.loads((out_dir / "sft" / "manifest.json").read_text())
    sft = datasets.load_dataset(str(dry_run), "sft", split="train", cache_dir=str(tmp_path / "c"))
    assert sft.num_rows == manifest["outputs"]["sft"]["rows"] == 163
    assert [m["role"] for m in sft[0]["messages"]] == ["system", "user", "assistant"]
    pairs = datasets.load_dataset(
        str(dry_run), "preference", split="train", cache_dir=str(tmp_path / "c")
    )
    assert pairs.num_rows == manifest["outputs"]["preference"]["rows"] == 10
    assert pairs[0]["chosen"][-1]["role"] == "assistant"


def test_card_header_validates(dry_run: Path) -> None:
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCard

    card = DatasetCard.load(dry_run / "README.md")
    data = card.data
    assert data.license == "mit"  # from the spec
    assert data.task_categories == ["text-generation"]
    assert data.size_categories == ["n<1K"]  # 163 + 10 rows
    assert {"curate", "sft", "preference"} <= set(data.tags)
    configs = MetadataConfigs.from_dataset_card_data(data)
    assert configs == {
        "sft": {"data_files": [{"split": "train", "path": "data/sft/*.parquet"}], "default": True},
        "preference": {"data_files": [{"split": "train", "path": "data/preference/*.parquet"}]},
    }
    # the header is plain YAML too, with nothing but what the Hub reads
    header = yaml.safe_load(card.content.split("---")[1])
    assert set(header) == {
        "license",
        "pretty_name",
        "task_categories",
        "size_categories",
        "tags",
        "configs",
    }


def test_card_body_says_how_the_data_was_made(dry_run: Path) -> None:
    text = (dry_run / "README.md").read_text()
    for heading in (
        "## Configs",
        "## How to load it",
        "## How it was made",
        "## Difficulty and length",
        "## The spec",
        "## Licence",
    ):
        assert heading in text
    assert 'load_dataset("curate-tests/quickstart", "sft", split="train")' in text
    assert "qwen2.5-math-instruct" in text  # the teacher
    assert "Verifier: `verify`" in text and '"method": "math"' in text
    assert "| 06-prune | prune | 481 | 163 | 318 |" in text  # the stage with rows in and out
    assert "| easy | 84 | 0.993 | 672 | 152 |" in text  # a band, as `curate stats` gives it
    assert "license: mit" in text.split("## The spec", 1)[1]  # the spec itself
    manifest = (dry_run / "curate" / "manifest.json").read_text()
    assert str(dry_run.parent.parent) not in manifest  # no local paths of this machine
    assert json.loads(manifest)["outputs"]["sft"]["path"] == "data/sft"


def _publish(
    out_dir: Path, folder: Path, hub: FakeHub, *extra: str, token: str | None = TOKEN, home: Path
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update({"HF_ENDPOINT": hub.url, "HF_HOME": str(home), "HF_HUB_DISABLE_TELEMETRY": "1"})
    if token is not None:
        env["HF_TOKEN"] = token
    return subprocess.run(
        [str(CURATE), "publish", str(out_dir), "--folder", str(folder), *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_upload_is_one_commit_of_the_dry_run_folder(
    dry_run: Path, out_dir: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "upload"
    with FakeHub() as hub:
        hub.state.files("curate-tests/quickstart", "dev").update(
            {"data/sft/train-00000-of-00002.parquet": b"stale shard", "notes.txt": b"theirs"}
        )
        result = _publish(
            out_dir,
            folder,
            hub,
            "--repo",
            "curate-tests/quickstart",
            "--private",
            "--revision",
            "dev",
            home=tmp_path / "hf",
        )
    assert result.returncode == 0, result.stderr
    state = hub.state
    (commit,) = state.commits
    assert (commit.repo, commit.revision) == ("curate-tests/quickstart", "dev")
    assert sorted(commit.files) == folder_files(dry_run)
    for name, content in commit.files.items():
        assert content == (dry_run / name).read_bytes(), name  # exactly the dry-run folder
    assert commit.deleted == ["data/sft/train-00000-of-00002.parquet"]  # not notes.txt
    assert state.repos["curate-tests/quickstart"] == {
        "name": "quickstart",
        "organization": "curate-tests",
        "visibility": "private",
        "type": "dataset",
    }
    # the token went in the Authorization header, and nowhere else
    assert all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in state.requests)
    for name, content in commit.files.items():
        assert TOKEN.encode() not in content, name
    for path in folder.rglob("*"):
        assert not path.is_file() or TOKEN.encode() not in path.read_bytes(), path
    assert TOKEN not in result.stdout + result.stderr
    assert [r.path for r in state.requests if r.path.endswith("/commit/dev")] == [
        "/api/datasets/curate-tests/quickstart/commit/dev"
    ]


def test_no_token_uploads_nothing(out_dir: Path, tmp_path: Path) -> None:
    with FakeHub() as hub:
        result = _publish(
            out_dir,
            tmp_path / "f",
            hub,
            "--repo",
            "curate-tests/quickstart",
            token=None,
            home=tmp_path / "empty-hf-home",
        )
    assert result.returncode == 7
    assert "no Hugging Face token" in flat(result.stderr)
    assert hub.state.requests == []


@pytest.mark.parametrize("repo", ["quickstart", "a/b/c", "org/", "/name", "org/na me"])
def test_repo_must_be_org_slash_name(out_dir: Path, tmp_path: Path, repo: str) -> None:
    result = CliRunner().invoke(
        app, ["publish", str(out_dir), "--repo", repo, "--dry-run", "--folder", str(tmp_path)]
    )
    assert result.exit_code == 7
    assert "--repo must be 'org/name'" in flat(result.output)
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_publishing_needs_a_licence(quickstart_run: Path, tmp_path: Path) -> None:
    """The same build from a spec without `license:` (its manifests say so)."""
    root = tmp_path / "copy"
    shutil.copytree(quickstart_run.parent.parent, root, ignore=shutil.ignore_patterns("data"))
    for path in root.rglob("manifest.json"):
        manifest = json.loads(path.read_text())
        manifest["spec"]["license"] = None
        manifest["spec_path"] = str(root / "spec.yaml")
        for output in manifest["outputs"].values():
            output["path"] = str(root / "out" / Path(output["path"]).name)
        path.write_text(json.dumps(manifest))
    result = CliRunner().invoke(
        app,
        [
            "publish",
            str(root / "out"),
            "--repo",
            "o/n",
            "--dry-run",
            "--folder",
            str(tmp_path / "hub"),
        ],
    )
    assert result.exit_code == 7
    assert "publishing needs a licence: add `license: <id>` to the spec" in flat(result.output)
    assert not (tmp_path / "hub").exists()


def test_a_licence_must_be_a_hub_id(write_spec) -> None:  # type: ignore[no-untyped-def]
    spec = write_spec(
        "name: x\nlicense: MIT License\ninput: {path: data/math_cot_100.jsonl, "
        "columns: {prompt: question}}\n"
    )
    with pytest.raises(SpecError) as caught:
        load_spec(spec)
    assert "spec.yaml:2:10: license:" in str(caught.value)


def test_an_output_folder_that_is_not_there(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["publish", str(tmp_path / "nope"), "--repo", "o/n"])
    assert result.exit_code == 7 and "nope: no such folder" in flat(result.output)
    result = CliRunner().invoke(app, ["publish", str(tmp_path), "--repo", "o/n"])
    assert result.exit_code == 7 and "no manifest.json here" in flat(result.output)
