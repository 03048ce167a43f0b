"""Spec validation: every error names the YAML line and column, the field, what was expected,
and for unknown names the closest valid one; `curate validate` exits 2 on an invalid spec."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from curate.cli.main import app
from curate.errors import RunDirError, SpecError
from curate.spec import load_spec
from tests.conftest import QUICKSTART, QUICKSTART_INPUT

GOOD = (
    "name: t\n"
    + QUICKSTART_INPUT
    + """\
steps:
  - verify: {method: math}
  - grade: {}
  - prune: {max_tokens: 512, per_problem: 1}
outputs:
  sft: {path: out/sft}
"""
)

WriteSpec = Callable[[str], Path]


def errors_of(path: Path) -> str:
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    return str(caught.value)


def test_good_spec_loads_and_resolves_paths(write_spec: WriteSpec) -> None:
    path = write_spec(GOOD)
    loaded = load_spec(path)
    assert [s.stage_id for s in loaded.steps] == ["01-verify", "02-grade", "03-prune"]
    assert loaded.resolve(loaded.spec.input.path) == path.parent / "data" / "math_cot_100.jsonl"
    assert loaded.run_dir == path.parent / "runs" / "t"


def test_run_dir_may_be_a_uri_and_the_request_cache_must_be_a_path(
    write_spec: WriteSpec, tmp_path: Path
) -> None:
    """run_dir names any fsspec filesystem; the SQLite request cache must stay local (a URI
    would otherwise become a local folder named 's3:/bucket/...')."""
    loaded = load_spec(write_spec(GOOD + "run_dir: memory://bucket/runs/t\n"))
    assert str(loaded.run_dir) == "memory://bucket/runs/t"
    assert loaded.local_dir == loaded.base_dir / ".curate" / loaded.spec.name
    message = errors_of(write_spec(GOOD + "request_cache: s3://bucket/requests.sqlite\n"))
    line = GOOD.count("\n") + 1
    assert f"spec.yaml:{line}:16: request_cache: object-store" in message
    assert "s3://" in message and "SQLite" in message
    loaded = load_spec(write_spec(GOOD + f"run_dir: file://{tmp_path}/runs/t\n"))
    assert loaded.run_dir == tmp_path / "runs" / "t"
    assert loaded.local_dir == loaded.run_dir
    message = errors_of(write_spec(GOOD + "run_dir: sftp://me:hunter2@host/runs/t\n"))
    assert "run_dir: the URI holds a password" in message and "hunter2" not in message


def test_run_dir_uri_without_its_filesystem_package_names_it(write_spec: WriteSpec) -> None:
    loaded = load_spec(write_spec(GOOD + "run_dir: gs://bucket/runs/t\n"))
    with pytest.raises(
        RunDirError,
        match=r"gs://bucket/runs/t: the gs:// filesystem is not "
        r"installed \(.*gcsfs",
    ):
        _ = loaded.run_dir
    loaded = load_spec(write_spec(GOOD + "run_dir: nosuchfs://bucket/runs/t\n"))
    with pytest.raises(RunDirError, match="no fsspec filesystem is known for nosuchfs://"):
        _ = loaded.run_dir


def test_quickstart_spec_is_valid() -> None:
    loaded = load_spec(QUICKSTART / "spec.yaml")
    assert loaded.spec.outputs.preference is not None


def test_on_is_a_key_and_yes_no_are_strings(write_spec: WriteSpec) -> None:
    """YAML 1.1 would read `on:` as the boolean True (and `no` as false); specs use YAML 1.2."""
    text = GOOD.replace(
        "  - verify: {method: math}\n",
        "  - decontaminate: {against: [math500], on: prompt}\n  - verify: {method: math}\n",
    ).replace("name: t\n", "name: no\n")
    loaded = load_spec(write_spec(text))
    assert loaded.spec.name == "no"
    assert loaded.steps[0].params.model_dump()["on"] == "prompt"


def test_spec_hash_ignores_comments_and_layout(write_spec: WriteSpec) -> None:
    first = load_spec(write_spec(GOOD)).spec_hash
    second = load_spec(write_spec("# a comment\n" + GOOD.replace("{}", "{ }"))).spec_hash
    changed = load_spec(write_spec(GOOD.replace("512", "513"))).spec_hash
    assert first == second != changed


def test_unknown_operator_names_line_and_closest(write_spec: WriteSpec) -> None:
    message = errors_of(write_spec(GOOD.replace("- verify:", "- verfy:")))
    assert "spec.yaml:15:5: steps[0]: unknown operator 'verfy' (did you mean 'verify'?)" in message


def test_wrong_type_names_field_expected_and_got(write_spec: WriteSpec) -> None:
    message = errors_of(write_spec(GOOD.replace("per_problem: 1", "per_problem: two")))
    assert "spec.yaml:17:" in message
    assert "steps[2].prune.per_problem" in message
    assert "valid integer" in message and "'two'" in message


def test_unknown_key_suggests_closest(write_spec: WriteSpec) -> None:
    message = errors_of(write_spec(GOOD.replace("  columns:", "  colums:")))
    assert "spec.yaml:6:3: input.colums: unknown key (did you mean 'columns'?)" in message


def test_unknown_operator_param_suggests_closest(write_spec: WriteSpec) -> None:
    message = errors_of(write_spec(GOOD.replace("per_problem:", "per_problm:")))
    assert "steps[2].prune.per_problm: unknown key (did you mean 'per_problem'?)" in message


def test_missing_field_is_named(write_spec: WriteSpec) -> None:
    message = errors_of(write_spec(GOOD.replace("    prompt: question\n", "")))
    assert "input.columns: missing required field 'prompt'" in message
    assert "spec.yaml:6:3:" in message  # points at the mapping that lacks it


def test_yaml_syntax_error_has_position(write_spec: WriteSpec) -> None:
    message = errors_of(write_spec(GOOD.replace("  - grade: {}", "  - grade: {]")))
    assert "spec.yaml:16:13: YAML syntax error" in message


def test_every_problem_is_reported_at_once(write_spec: WriteSpec) -> None:
    text = GOOD.replace("- verify:", "- verfy:").replace("  columns:", "  colums:")
    message = errors_of(write_spec(text))
    assert "invalid spec (3 problems)" in message  # the misspelt key also leaves one missing
    assert (
        "unknown operator 'verfy'" in message and "unknown key (did you mean 'columns'?)" in message
    )
    assert "input: missing required field 'columns'" in message


def test_output_from_must_name_a_stage(write_spec: WriteSpec) -> None:
    message = errors_of(write_spec(GOOD.replace("{path: out/sft}", "{path: out/sft, from: grde}")))
    assert "outputs.sft.from: 'grde' names no step (did you mean 'grade'?)" in message


def test_bad_band_bounds_are_rejected_at_validation(write_spec: WriteSpec) -> None:
    text = GOOD.replace("grade: {}", "grade: {bands: {easy: [0.5, 1.0], hard: [0.0, 0.6]}}")
    message = errors_of(write_spec(text))
    assert "steps[1].grade" in message


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (("- verify:", "- verfy:"), "did you mean 'verify'"),
        (("per_problem: 1", "per_problem: two"), "valid integer"),
        (("  columns:", "  colums:"), "did you mean 'columns'"),
        (("    prompt: question\n", ""), "missing required field 'prompt'"),
        (("  - grade: {}", "  - grade: {]"), "YAML syntax error"),
    ],
)
def test_cli_validate_exits_2_with_the_message(
    write_spec: WriteSpec, change: tuple[str, str], fragment: str
) -> None:
    path = write_spec(GOOD.replace(*change))
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2, result.output
    assert fragment in result.output


def test_cli_validate_ok(write_spec: WriteSpec) -> None:
    result = CliRunner().invoke(app, ["validate", str(write_spec(GOOD))])
    assert result.exit_code == 0, result.output
    assert "01-verify" in result.output


def test_cli_validate_prints_regex_params_as_text(write_spec: WriteSpec) -> None:
    spec = GOOD.replace(
        "- verify: {method: math}", "- verify: {extract: regex, pattern: '([a-z]+)$'}"
    )
    assert spec != GOOD
    result = CliRunner().invoke(app, ["validate", str(write_spec(spec))], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "([a-z]+)$" in result.output  # not swallowed as Rich markup
