"""`rounds:` blocks: expanded into ordinary stages whose ids say the round, validated once with
errors at their YAML line, a teacher swapped per round, the `round` column, and resume (a
second build reuses every stage; adding a round or swapping round 2's teacher re-runs only
what it changes)."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import polars as pl
import pytest

from curate.engine import Build
from curate.errors import SpecError
from curate.local_teacher import LocalTeacher
from curate.local_teacher_policies import ReferencePolicy, Style
from curate.parquet_io import read_parts
from curate.sample import SampleParams
from curate.spec import load_spec
from tests.sample_support import PROBLEMS

BODY = """\
        - sample: {teachers: [student], role: student, n: 2, seed: 0, max_tokens: 400}
        - verify: {method: numeric}
        - sample: {teachers: [teacher], input: failures, role: teacher, max_tokens: 400}
        - verify: {method: numeric}
        - pair: {by: verdict, chosen_role: teacher, rejected_role: student, link: parent,
                 group: [problem_id, round]}
"""


def write(
    root: Path,
    base_url: str = "http://127.0.0.1:1/v1",
    *,
    count: int = 2,
    students: str = "[s1, s2]",
    body: str = BODY,
    after: str = "  - select: {where: \"role = 'teacher'\"}\n",
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    head = textwrap.dedent(
        f"""\
        name: rounds
        input:
          path: {PROBLEMS}
          limit: 12
          columns: {{id: id, prompt: question, answer: answer}}
        teachers:
          s1: {{provider: openai, model: student-1, base_url: '{base_url}'}}
          s2: {{provider: openai, model: student-2, base_url: '{base_url}'}}
          s3: {{provider: openai, model: student-3, base_url: '{base_url}'}}
          teacher: {{provider: openai, model: teacher, base_url: '{base_url}'}}
        steps:
          - select: {{where: "prompt IS NOT NULL"}}
          - rounds:
              count: {count}
              teachers: {{student: {students}}}
              steps:
        """
    )
    path = root / "spec.yaml"
    path.write_text(head + textwrap.indent(body, "  ") + after)
    return path


def test_a_block_expands_round_by_round_with_ids_that_say_the_round(tmp_path: Path) -> None:
    loaded = load_spec(write(tmp_path))
    assert [s.stage_id for s in loaded.steps] == [
        "01-select",
        "02-r1-sample",
        "03-r1-verify",
        "04-r1-sample",
        "05-r1-verify",
        "06-r1-pair",
        "07-r2-sample",
        "08-r2-verify",
        "09-r2-sample",
        "10-r2-verify",
        "11-r2-pair",
        "12-select",
    ]
    assert [s.round for s in loaded.steps] == [None, *[1] * 5, *[2] * 5, None]
    samples = [s.params for s in loaded.steps if isinstance(s.params, SampleParams)]
    assert [(p.teachers, p.round, p.input) for p in samples] == [
        (["s1"], 1, "problem"),
        (["teacher"], 1, "failures"),
        (["s2"], 2, "problem"),
        (["teacher"], 2, "failures"),
    ]
    assert loaded.steps[1].yaml_loc == ("steps", 1, "rounds", "steps", 0, "sample")
    assert loaded.step_named("11-r2-pair").round == 2


def test_an_error_in_the_body_is_reported_once_at_its_line(tmp_path: Path) -> None:
    body = BODY.replace("n: 2,", "n: 0,")
    with pytest.raises(SpecError) as caught:
        load_spec(write(tmp_path, body=body))
    assert caught.value.problems == [
        f"{tmp_path / 'spec.yaml'}:17:61: steps[1].rounds.steps[0].sample.n: Input should be "
        "greater than or equal to 1 (got 0)"
    ]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {"students": "[s1]"},
            r"spec.yaml:15:\d+: steps\[1\].rounds.teachers: .*give one teacher per round \(2\)",
        ),
        (
            {"students": "[s1, s9]"},
            r"spec.yaml:15:\d+: steps\[1\].rounds.teachers.student\[1\]: teacher 's9' "
            r"\(round 2\) is not declared \(did you mean 's3'\?\)",
        ),
        (
            {"body": BODY.replace("[student]", "[s1]")},
            r"spec.yaml:15:\d+: steps\[1\].rounds.teachers.student: no step of the body names",
        ),
        (
            {"body": BODY.replace("n: 2,", "n: 2, round: 3,")},
            r"spec.yaml:17:\d+: steps\[1\].rounds.steps\[0\].sample.round: set by the rounds",
        ),
        (
            {"body": BODY + "        - rounds: {count: 2, steps: [{verify: {}}]}\n"},
            r"spec.yaml:23:\d+: steps\[1\].rounds.steps\[5\]: unknown operator 'rounds'.*"
            r"rounds blocks do not nest",
        ),
        (
            {"body": BODY.replace("[teacher]", "[teachr]")},
            r"spec.yaml:19:\d+: steps\[1\].rounds.steps\[2\].sample.teachers: teacher 'teachr' "
            r"is not declared",
        ),
        ({"count": 0}, r"steps\[1\].rounds.count: Input should be greater than or equal to 1"),
    ],
)
def test_block_errors_name_the_yaml_line(
    tmp_path: Path, change: dict[str, object], expected: str
) -> None:
    with pytest.raises(SpecError) as caught:
        load_spec(write(tmp_path, **change))  # type: ignore[arg-type]
    problems = caught.value.problems
    assert len(problems) == 1, problems
    assert re.search(expected, problems[0]), problems


def policy() -> ReferencePolicy:
    """Students that get better (each a subset of the last one's failures), a good teacher."""
    per_problem = {"spread": 1.0}
    return ReferencePolicy.from_file(
        PROBLEMS,
        prompt_column="question",
        answer_column="answer",
        style=Style(error_rate=0.0, **per_problem),
        models={
            "student-1": Style(error_rate=0.7, **per_problem),
            "student-2": Style(error_rate=0.3, **per_problem),
            "student-3": Style(error_rate=0.1, **per_problem),
        },
    )


def statuses(manifest: dict[str, object]) -> dict[str, str]:
    return {s["stage_id"]: s["status"] for s in manifest["stages"]}  # type: ignore[attr-defined]


def test_rounds_build_stamp_the_round_and_resume_stage_by_stage(tmp_path: Path) -> None:
    with LocalTeacher(policy=policy()) as server:
        spec = write(tmp_path, server.base_url)
        first = Build(load_spec(spec)).run()
        assert set(statuses(first).values()) == {"ran"}
        stages = tmp_path / "runs" / "rounds" / "stages"
        pool = read_parts(stages / "11-r2-pair")
        by_round = pool.group_by("round", "role", "model").len().sort("round", "role").rows()
        failed = {  # problems each round's student got wrong (spread 1: all samples or none)
            r: set(
                pool.filter(
                    (pl.col("round") == r) & ~pl.col("verdict") & (pl.col("role") == "student")
                )["problem_id"]
            )
            for r in (1, 2)
        }
        assert failed[2] < failed[1] and failed[2]  # round 2's student fails less, a subset
        assert by_round == [
            (1, "student", "student-1", 24),
            (1, "teacher", "teacher", 2 * len(failed[1])),
            (2, "student", "student-2", 24),
            (2, "teacher", "teacher", 2 * len(failed[2])),
        ]
        # Every teacher row corrects a student row of its own round; each made one pair.
        teacher = pool.filter(pl.col("role") == "teacher")
        parents = pool.select("trace_id", pl.col("round").alias("parent_round"))
        linked = teacher.join(parents, left_on="parent_trace_id", right_on="trace_id")
        assert linked.height == teacher.height
        assert (linked["round"] == linked["parent_round"]).all()
        assert teacher["won_pairs"].to_list() == [1] * teacher.height
        requests = server.stats()["requests"]

        again = Build(load_spec(spec)).run()
        assert set(statuses(again).values()) == {"reused"}

        # A third round (its own student) reuses the first two rounds' stages.
        spec = write(tmp_path, server.base_url, count=3, students="[s1, s2, s3]")
        third = statuses(Build(load_spec(spec)).run())
        assert [k for k, v in third.items() if v == "reused"] == list(statuses(again))[:12]
        assert [k for k, v in third.items() if v == "ran"] == [
            "12-r3-sample",
            "13-r3-verify",
            "14-r3-sample",
            "15-r3-verify",
            "16-r3-pair",
            "17-select",
        ]
        # Swapping round 2's student re-runs from round 2 on; round 1 is reused.
        spec = write(tmp_path, server.base_url, count=3, students="[s1, s3, s3]")
        swapped = statuses(Build(load_spec(spec)).run())
        assert [k for k, v in swapped.items() if v == "reused"] == [
            "00-input",
            "01-select",
            "02-r1-sample",
            "03-r1-verify",
            "04-r1-sample",
            "05-r1-verify",
            "06-r1-pair",
        ]
        assert server.stats()["requests"] > requests
