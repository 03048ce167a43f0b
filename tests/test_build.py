"""End to end on the quickstart's real traces: outputs, lineage, reuse of unchanged stages,
re-running only what a change affects, and the SQL views over a run."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from curate.cli.main import app
from curate.engine import Build
from curate.spec import load_spec
from curate.sql import connect
from tests.conftest import QUICKSTART, QUICKSTART_DATA, QUICKSTART_INPUT


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the quickstart built once; returns the spec path."""
    root = tmp_path_factory.mktemp("quickstart")
    shutil.copytree(QUICKSTART / "data", root / "data")
    shutil.copy(QUICKSTART / "spec.yaml", root / "spec.yaml")
    Build(load_spec(root / "spec.yaml")).run()
    return root / "spec.yaml"


def manifest_of(spec: Path) -> dict:  # type: ignore[type-arg]
    return json.loads((spec.parent / "runs" / "quickstart" / "manifest.json").read_text())


def test_outputs_and_manifest(quickstart: Path) -> None:
    root = quickstart.parent
    manifest = manifest_of(quickstart)
    assert [s["stage_id"] for s in manifest["stages"]] == [
        "00-input",
        "01-verify",
        "02-decontaminate",
        "03-grade",
        "04-select",
        "05-dedup",
        "06-prune",
    ]
    assert manifest["stages"][0]["stats"]["rows_out"] == 800
    assert manifest["inputs"][0]["sha256"].startswith("5b9128525733336c")
    assert manifest["libraries"]["math-verify"]
    for kind in ("sft", "preference"):
        folder = root / "out" / kind
        assert (folder / "manifest.json").exists() and (folder / "spec.yaml").exists()
        files = sorted(folder.glob("*.parquet"))
        assert files and manifest["outputs"][kind]["rows"] > 0
        meta = pq.read_schema(files[0]).metadata
        assert meta[b"curate.run_id"].decode() == manifest["run_id"]
        assert meta[b"curate.spec_hash"].decode() == manifest["spec_hash"]
        assert b"curate.version" in meta
    sft = pl.read_parquet(root / "out" / "sft" / "*.parquet")
    assert sft["verdict"].all()
    assert sft.group_by("problem_id").len()["len"].max() <= 2  # per_problem: 2
    budgets = {"easy": 400, "medium": 800, "hard": 1600}
    for row in sft.iter_rows(named=True):
        assert row["completion_tokens"] <= budgets[row["difficulty"]]
        roles = [m["role"] for m in row["messages"]]
        assert roles == ["system", "user", "assistant"]


def test_preference_pairs_follow_redi(quickstart: Path) -> None:
    pairs = pl.read_parquet(quickstart.parent / "out" / "preference" / "*.parquet")
    pool = pl.read_parquet(quickstart.parent / "runs/quickstart/stages/04-select/part-*.parquet")
    mixed = (
        pool.filter(pl.col("verdict").is_not_null())
        .group_by("problem_id")
        .agg(pl.col("verdict").any().alias("some"), (~pl.col("verdict")).any().alias("wrong"))
        .filter(pl.col("some") & pl.col("wrong"))
    )
    assert set(pairs["problem_id"]) == set(mixed["problem_id"])
    for row in pairs.iter_rows(named=True):
        traces = pool.filter(pl.col("problem_id") == row["problem_id"]).sort("sample_index")
        first_good = traces.filter(pl.col("verdict") == True)["trace_id"][0]  # noqa: E712
        first_bad = traces.filter(pl.col("verdict") == False)["trace_id"][0]  # noqa: E712
        assert (row["chosen_trace_id"], row["rejected_trace_id"]) == (first_good, first_bad)


def test_second_build_reuses_every_stage(quickstart: Path) -> None:
    manifest = Build(load_spec(quickstart)).run()
    assert {s["status"] for s in manifest["stages"]} == {"reused"}
    assert {o["status"] for o in manifest["outputs"].values()} == {"reused"}


def test_changing_prune_reruns_only_prune_and_its_export(quickstart: Path, tmp_path: Path) -> None:
    root = tmp_path / "copy"
    shutil.copytree(quickstart.parent, root)
    spec = root / "spec.yaml"
    spec.write_text(spec.read_text().replace("per_problem: 2", "per_problem: 1"))
    manifest = Build(load_spec(spec)).run()
    status = {s["stage_id"]: s["status"] for s in manifest["stages"]}
    assert status == {
        "00-input": "reused",
        "01-verify": "reused",
        "02-decontaminate": "reused",
        "03-grade": "reused",
        "04-select": "reused",
        "05-dedup": "reused",
        "06-prune": "ran",
    }
    assert manifest["outputs"]["sft"]["status"] == "ran"
    assert manifest["outputs"]["preference"]["status"] == "reused"  # it reads `select`
    sft = pl.read_parquet(root / "out" / "sft" / "*.parquet")
    assert sft.group_by("problem_id").len()["len"].max() == 1


def test_dropped_rows_carry_reasons_and_add_up(quickstart: Path) -> None:
    con = connect(quickstart.parent / "runs" / "quickstart")
    manifest = manifest_of(quickstart)
    for stage in manifest["stages"]:
        stats = stage["stats"]
        assert stats["rows_in"] == stats["rows_out"] + stats["dropped"]
    total_dropped = sum(s["stats"]["dropped"] for s in manifest["stages"])
    row = con.execute("SELECT count(*), count(drop_reason) FROM dropped").fetchone()
    assert row == (total_dropped, total_dropped)
    traces = con.execute("SELECT count(*) FROM traces").fetchone()
    assert traces is not None and traces[0] == 800


def test_sql_views(quickstart: Path) -> None:
    con = connect(quickstart.parent / "runs" / "quickstart")
    problems = con.execute("SELECT count(*), count(difficulty) FROM problems").fetchone()
    assert problems == (100, 93)  # 7 problems leave at decontaminate, before they are graded
    views = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views()").fetchall()}
    assert {
        "pool",
        "problems",
        "traces",
        "dropped",
        "stage_input",
        "stage_verify",
        "stage_grade",
        "stage_decontaminate",
        "stage_select",
        "stage_dedup",
        "stage_prune",
        "sft",
        "preference",
    } <= views
    pool = con.execute("SELECT count(*) FROM pool").fetchone()
    prune = con.execute("SELECT count(*) FROM stage_prune").fetchone()
    assert pool == prune


def test_cli_sql_formats(quickstart: Path, tmp_path: Path) -> None:
    run = str(quickstart.parent / "runs" / "quickstart")
    runner = CliRunner()
    query = "SELECT difficulty, count(*) AS n FROM problems GROUP BY 1 ORDER BY 1"
    csv = runner.invoke(app, ["sql", run, query, "--format", "csv"])
    assert csv.exit_code == 0, csv.output
    assert csv.output.splitlines()[0] == "difficulty,n"
    as_json = runner.invoke(app, ["sql", run, query, "--format", "json"])
    rows = [json.loads(line) for line in as_json.output.splitlines()]
    assert sum(r["n"] for r in rows) == 100
    target = tmp_path / "p.parquet"
    runner.invoke(app, ["sql", run, query, "--format", "parquet", "--output", str(target)])
    assert pl.read_parquet(target)["n"].sum() == 100
    table = runner.invoke(app, ["sql", run, query])
    assert table.exit_code == 0 and "easy" in table.output
    bad = runner.invoke(app, ["sql", run, "SELECT nope FROM pool"])
    assert bad.exit_code != 0 and "SQL error" in bad.output


def test_exports_load_with_datasets(quickstart: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import datasets

    out = quickstart.parent / "out"
    sft = datasets.load_dataset("parquet", data_files=str(out / "sft" / "*.parquet"), split="train")
    assert sft.num_rows == manifest_of(quickstart)["outputs"]["sft"]["rows"]
    message = sft[0]["messages"][-1]
    assert set(message) == {"role", "content"} and message["role"] == "assistant"
    pref = datasets.load_dataset(
        "parquet", data_files=str(out / "preference" / "*.parquet"), split="train"
    )
    for column in ("prompt", "chosen", "rejected"):
        assert all(set(m) == {"role", "content"} for m in pref[0][column])


def test_editing_a_file_a_step_reads_reruns_that_step(write_spec: Callable[[str], Path]) -> None:
    """A benchmark file named by `decontaminate` is part of its stage fingerprint: the same
    spec with an edited file re-runs the step (and what follows), an untouched one is reused."""
    first_prompt = json.loads(QUICKSTART_DATA.read_text().splitlines()[0])["question"]
    spec = write_spec(
        "name: leak\n"
        + QUICKSTART_INPUT
        + """
steps:
  - decontaminate: {against: [{path: data/bench.jsonl, text: problem}], method: exact}
  - verify: {method: exact}
"""
    )
    bench = spec.parent / "data" / "bench.jsonl"
    bench.write_text(json.dumps({"problem": "not a quickstart problem"}) + "\n")

    def stages() -> dict[str, tuple[str, int]]:
        manifest = Build(load_spec(spec)).run()
        return {s["stage_id"]: (s["status"], s["stats"]["rows_out"]) for s in manifest["stages"]}

    assert stages()["01-decontaminate"] == ("ran", 800)
    assert stages()["01-decontaminate"] == ("reused", 800)
    bench.write_text(json.dumps({"problem": first_prompt}) + "\n")  # now one problem leaks
    after = stages()
    assert after["01-decontaminate"] == ("ran", 792)
    assert after["02-verify"] == ("ran", 792)
