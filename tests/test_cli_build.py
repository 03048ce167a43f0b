"""`curate build` from the command line: bad input rows (fail and skip), sharded outputs, and an
error in a late step that keeps every stage already done."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import polars as pl
from typer.testing import CliRunner

from curate.cli.main import app
from curate.sql import connect
from tests.conftest import QUICKSTART_INPUT

PROBLEMS = [
    '{"id": "a", "problem": "What is 1 + 1?", "answer": "2"}',
    '{"id": "b", "problem": "What is 2 + 2?", "answer": 4',  # malformed: no closing brace
    '{"id": "c", "problem": "What is 3 + 3?", "answer": "6"}',
]


def problems_spec(tmp_path: Path, on_bad_rows: str) -> Path:
    (tmp_path / "problems.jsonl").write_text("\n".join(PROBLEMS) + "\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "name: probs\n"
        "input:\n"
        "  path: problems.jsonl\n"
        f"  on_bad_rows: {on_bad_rows}\n"
        "  columns: {id: id, prompt: problem, answer: answer}\n"
    )
    return spec


def test_bad_row_fails_the_build_with_file_and_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["build", str(problems_spec(tmp_path, "fail"))])
    assert result.exit_code == 3, result.output
    assert "problems.jsonl:2:" in result.output and "JSON" in result.output
    assert not (tmp_path / "runs" / "probs" / "stages" / "00-input").exists()


def test_skipped_rows_are_counted_and_kept_beside_the_run(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["build", str(problems_spec(tmp_path, "skip"))])
    assert result.exit_code == 0, result.output
    assert "skipped 1 bad row" in result.output
    con = connect(tmp_path / "runs" / "probs")
    assert con.execute("SELECT line FROM rejects").fetchall() == [(2,)]
    assert con.execute("SELECT problem_id FROM pool ORDER BY 1").fetchall() == [("a",), ("c",)]
    manifest = json.loads((tmp_path / "runs" / "probs" / "manifest.json").read_text())
    assert manifest["inputs"][0]["rejected"] == 1


def test_outputs_are_sharded(write_spec: Callable[[str], Path]) -> None:
    spec = write_spec(
        "name: shards\n"
        + QUICKSTART_INPUT
        + "steps:\n  - verify: {method: math}\n"
        + "outputs:\n  sft: {path: out/sft, shard_rows: 300}\n"
    )
    result = CliRunner().invoke(app, ["build", str(spec)])
    assert result.exit_code == 0, result.output
    files = sorted(p.name for p in (spec.parent / "out" / "sft").glob("*.parquet"))
    assert files == [f"train-0000{i}-of-00003.parquet" for i in range(3)]
    rows = pl.read_parquet(spec.parent / "out" / "sft" / "*.parquet")
    assert (
        rows.height == 737
    )  # every trace our verifier judged correct (728 + 9: quickstart README)


def test_a_failing_late_step_keeps_earlier_stages(write_spec: Callable[[str], Path]) -> None:
    spec = write_spec(
        "name: late\n"
        + QUICKSTART_INPUT
        + "steps:\n  - verify: {method: math}\n"
        + "  - select: {where: 'no_such_column > 1'}\n"
    )
    first = CliRunner().invoke(app, ["build", str(spec)])
    assert first.exit_code != 0
    assert "no_such_column" in first.output
    stages = spec.parent / "runs" / "late" / "stages"
    assert (stages / "01-verify" / "stage.json").exists()
    spec.write_text(spec.read_text().replace("no_such_column > 1", "n_correct >= 0"))
    spec.write_text(spec.read_text().replace("  - select:", "  - grade: {}\n  - select:"))
    second = CliRunner().invoke(app, ["build", str(spec)])
    assert second.exit_code == 0, second.output
    assert "01-verify      reused" in second.output


def test_executor_flags_override_the_spec_with_the_same_checks() -> None:
    from curate.errors import SpecError
    from curate.executors import executor_settings
    from curate.schemas.spec import ExecutorSpec

    spec = ExecutorSpec(kind="ray", num_cpus=4, sample_actors=3)
    settings = executor_settings(spec, num_cpus=2, batch_rows=500)
    assert (settings.kind, settings.num_cpus, settings.sample_actors) == ("ray", 2, 3)
    assert settings.batch_rows == 500
    # --executor local sets the spec's Ray-only settings aside ...
    local = executor_settings(spec, kind="local")
    assert (local.kind, local.num_cpus, local.sample_actors) == ("local", None, None)
    # ... but a Ray-only flag given with it is an error, as the key would be
    try:
        executor_settings(spec, kind="local", num_cpus=2)
    except SpecError as exc:
        assert "num_cpus only apply to kind: ray" in str(exc)
    else:
        raise AssertionError("--num-cpus with --executor local was accepted")


def test_a_bad_executor_flag_exits_2_naming_the_flag(write_spec: Callable[[str], Path]) -> None:
    spec = write_spec("name: t\n" + QUICKSTART_INPUT + "steps: []\n")
    result = CliRunner().invoke(app, ["build", str(spec), "--executor", "ray", "--num-cpus", "0"])
    assert result.exit_code == 2
    said = " ".join(result.output.split())
    assert "executor settings on the command line: --num-cpus: Input should be greater" in said
    assert "building" not in said  # refused before anything started
