"""Shared fixtures: the real quickstart data and a helper that writes a spec beside it."""

from __future__ import annotations

import shutil
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "examples" / "quickstart"
QUICKSTART_DATA = QUICKSTART / "data" / "math_cot_100.jsonl"

QUICKSTART_INPUT = """\
input:
  path: data/math_cot_100.jsonl
  source: qwen25math_math100_x8
  model: qwen2.5-math-instruct
  columns:
    id: idx
    prompt: question
    answer: answer
    system_prompt: system
    completion: response
    label: score
    meta: [level]
"""


@pytest.fixture
def write_spec(tmp_path: Path) -> Callable[[str], Path]:
    """Write spec text (dedented) as tmp_path/spec.yaml, with the quickstart data beside it."""
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(QUICKSTART_DATA, data / QUICKSTART_DATA.name)

    def write(text: str) -> Path:
        path = tmp_path / "spec.yaml"
        path.write_text(textwrap.dedent(text))
        return path

    return write


@pytest.fixture(scope="session")
def quickstart_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The quickstart spec (plus `license: mit`) built once per test session into a temporary
    folder; returns its run directory (outputs are in ../../out). Tests must not change it."""
    from curate.engine import Build
    from curate.spec import load_spec

    root = tmp_path_factory.mktemp("quickstart-run")
    shutil.copytree(QUICKSTART / "data", root / "data")
    spec = (QUICKSTART / "spec.yaml").read_text()
    if "\nlicense:" not in spec:
        spec = spec.replace("\nseed: 7\n", "\nseed: 7\nlicense: mit\n", 1)
    (root / "spec.yaml").write_text(spec)
    Build(load_spec(root / "spec.yaml")).run()
    return root / "runs" / "quickstart"
