"""Generated reference files are current, and every command, operator and parameter has help."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from curate.cli.main import app
from curate.cli.ops import field_rows, parameter_rows, reference_markdown
from curate.registry import get_operator, operator_names
from curate.schemas.spec import spec_json_schema
from tests.conftest import REPO

COMMANDS = [
    "build",
    "validate",
    "ops",
    "sql",
    "shell",
    "stats",
    "report",
    "publish",
    "schema",
    "teacher-server",
]


def test_spec_json_schema_file_is_current() -> None:
    on_disk = json.loads((REPO / "schemas" / "spec.schema.json").read_text())
    assert on_disk == spec_json_schema(), "run `make docs` to regenerate"


def test_operator_reference_is_current() -> None:
    on_disk = (REPO / "docs" / "reference.md").read_text()
    assert on_disk == reference_markdown() + "\n", "run `make docs`"


def test_schema_lists_every_operator_as_a_step() -> None:
    variants = spec_json_schema()["properties"]["steps"]["items"]["oneOf"]
    names = sorted(next(iter(v["properties"])) for v in variants)
    assert names == sorted([*operator_names(), "rounds"])  # rounds: a block of steps


def test_every_spec_key_is_documented() -> None:
    from curate.schemas import spec as models

    for model in (
        models.Spec,
        models.InputSpec,
        models.ColumnMap,
        models.SFTOutput,
        models.PreferenceOutput,
    ):
        for key, _type, _default, description in field_rows(model):
            assert description, f"{model.__name__}.{key} has no description"


@pytest.mark.parametrize("name", operator_names())
def test_every_operator_and_parameter_is_documented(name: str) -> None:
    op = get_operator(name)
    assert op.describe(), f"{name} has no docstring"
    assert op.version and op.scope
    for parameter, _type, _default, description in parameter_rows(name):
        assert description, f"{name}.{parameter} has no description"


def test_help_lists_every_command() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in COMMANDS:
        assert command in result.output


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str) -> None:
    result = CliRunner().invoke(app, [command, "--help"])
    assert result.exit_code == 0
    summary = result.output.split("Usage:", 1)[1].splitlines()[2:4]
    assert any(line.strip() for line in summary), result.output


def test_ops_shows_parameters() -> None:
    result = CliRunner().invoke(app, ["ops", "prune"])
    assert result.exit_code == 0
    assert "max_tokens" in result.output and "per_problem" in result.output
    unknown = CliRunner().invoke(app, ["ops", "prnue"])
    assert unknown.exit_code != 0 and "did you mean 'prune'" in unknown.output


def test_ops_prints_bracketed_descriptions_as_text() -> None:
    result = CliRunner().invoke(app, ["ops", "select"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "[medium, hard]" in result.output  # not swallowed as Rich markup
