"""`sample`'s template per row (`template_by`) and its `round`, exactly: which template each
row's samples get, what a row without a template is told, what a dry run does without the
column; and that a round reads only its own traces, stamps its rows and asks afresh."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from pydantic import ValidationError

from curate.errors import OperatorError
from curate.operators import StageContext
from curate.sample import PLANNED_TOKENS, Sample, SampleParams
from curate.schemas.spec import OpenAITeacher

TEACHERS = {
    "a": OpenAITeacher(provider="openai", model="model-a", base_url="http://127.0.0.1:1/v1"),
}
BANDS = {
    "easy": "Rewrite in at most 80 tokens: {{ completion }}",
    "hard": "Rewrite in at most 250 tokens: {{ completion }}",
}
TRACES = pl.DataFrame(
    {
        "problem_id": ["p1", "p2", "p3"],
        "prompt": ["What is 1 + 1?", "What is 2 + 3?", "What is 3 + 4?"],
        "trace_id": ["t1", "t2", "t3"],
        "completion": ["long one", "long two", "long three"],
        "difficulty": ["easy", "hard", "medium"],
        "round": [1, 2, 2],
        "verdict": [False, False, True],
    }
)


def sampler(tmp_path: Path, **params: object) -> Sample:
    context = StageContext(stage_id="05-sample", base_dir=tmp_path, teachers=TEACHERS)
    return Sample(SampleParams.model_validate({"teachers": ["a"], **params}), context=context)


def users(op: Sample, frame: pl.DataFrame) -> list[str]:
    parents = op._parents(frame)
    samples = op._plan_samples(parents, [(i, "a") for i in range(parents.height)], 0)
    return [s.messages[-1]["content"] for s in samples]


def test_the_rows_value_picks_its_template(tmp_path: Path) -> None:
    op = sampler(
        tmp_path,
        input="trace",
        template_by="difficulty",
        templates={**BANDS, "default": "Rewrite: {{ completion }}"},
        n=2,
    )
    parents = op._parents(TRACES)
    samples = op._plan_samples(parents, [(0, "a"), (1, "a"), (2, "a")], 0)
    assert [s.template_id for s in samples] == ["easy", "easy", "hard", "hard"] + ["default"] * 2
    assert [s.messages[-1]["content"] for s in samples[::2]] == [
        "Rewrite in at most 80 tokens: long one",
        "Rewrite in at most 250 tokens: long two",
        "Rewrite: long three",  # medium has no template of its own
    ]


def test_a_value_without_template_or_default_is_an_error(tmp_path: Path) -> None:
    op = sampler(tmp_path, input="trace", template_by="difficulty", templates=BANDS)
    with pytest.raises(OperatorError, match=r"difficulty 'medium'.*templates: easy, hard"):
        users(op, TRACES)
    missing = sampler(tmp_path, input="trace", template_by="band", templates=BANDS)
    with pytest.raises(OperatorError, match=r"no column 'band'"):
        users(missing, TRACES)


def test_template_by_needs_a_mapping_of_templates() -> None:
    with pytest.raises(ValidationError, match="template_by needs `templates` as a mapping"):
        SampleParams(teachers=["a"], template_by="difficulty", templates=["{{ prompt }}"])


def test_a_dry_run_without_the_column_plans_with_the_default(tmp_path: Path) -> None:
    simulated = TRACES.drop("difficulty").with_columns(pl.lit(100).alias(PLANNED_TOKENS))
    op = sampler(
        tmp_path,
        input="trace",
        template_by="difficulty",
        templates={**BANDS, "default": "Any: {{ completion }}"},
    )
    assert users(op, simulated) == ["Any: long one", "Any: long two", "Any: long three"]


def test_a_round_reads_its_own_traces_stamps_its_rows_and_asks_afresh(tmp_path: Path) -> None:
    fixes = sampler(tmp_path, input="failures", round=2)
    assert fixes._parents(TRACES)["trace_id"].to_list() == ["t2"]  # round 2, verdict false
    rows = fixes.simulate(TRACES)
    new = rows.filter(pl.col("parent_trace_id").is_not_null())
    assert new["round"].to_list() == [2] and new["parent_trace_id"].to_list() == ["t2"]
    problems = TRACES.select("problem_id", "prompt").head(1)
    keys = {}
    for r in (None, 1, 2):
        op = sampler(tmp_path, round=r, seed=0)
        keys[r] = op._plan_samples(problems, [(0, "a")], 0)[0].key
        assert op.simulate(problems)["round"].to_list() == [r or 0]
    assert len(set(keys.values())) == 3  # each round is asked, not answered by another's
    # The same round plans the same key: a rebuild is answered by the cache.
    assert (
        sampler(tmp_path, round=2, seed=0)._plan_samples(problems, [(0, "a")], 0)[0].key
        == (keys[2])
    )
