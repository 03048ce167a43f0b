"""examples/student-feedback end to end against the local teacher, scripted as its README
runs `curate teacher-server`: round 2's student fails less (on a subset of round 1's
failures), and the pairs are exactly the teacher's correct corrections over the student
rationales they correct, as many as the script's per-problem draws say."""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl

from curate.engine import Build
from curate.local_teacher import LocalTeacher
from curate.local_teacher_policies import ReferencePolicy, Style, draw
from curate.parquet_io import read_parts
from curate.spec import load_spec

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "student-feedback"
DATA = EXAMPLE / "data" / "gsm8k_train_40.jsonl"
# The README's server: --error-rate 0.05 --spread 1 --model-error student-r1=0.6
# --model-error student-r2=0.2. Spread 1: each problem is all right or all wrong for a model.
RATES = {"teacher": 0.05, "student-r1": 0.6, "student-r2": 0.2}


def policy() -> ReferencePolicy:
    style = Style(error_rate=RATES["teacher"], spread=1.0)
    return ReferencePolicy.from_file(
        DATA,
        prompt_column="question",
        answer_column="answer",
        style=style,
        models={m: style.model_copy(update={"error_rate": r}) for m, r in RATES.items()},
    )


def wrong_for(model: str, prompts: dict[str, str]) -> set[str]:
    """Problems the script makes `model` get wrong (ReferencePolicy.is_wrong with spread 1)."""
    return {
        pid
        for pid, text in prompts.items()
        if draw(text.strip().encode(), b"problem") < RATES[model]
    }


def test_student_feedback_rounds(tmp_path: Path) -> None:
    example = tmp_path / "student-feedback"
    shutil.copytree(EXAMPLE, example, ignore=shutil.ignore_patterns("runs", "out"))
    spec = example / "spec.yaml"
    with LocalTeacher(policy=policy()) as server:
        spec.write_text(spec.read_text().replace("http://127.0.0.1:8000/v1", server.base_url))
        Build(load_spec(spec)).run()
    pool = read_parts(example / "runs" / "student-feedback" / "stages" / "10-r2-pair")
    problems = pl.read_ndjson(DATA)
    prompts = dict(zip(problems["id"], problems["question"], strict=True))

    student = pool.filter(pl.col("role") == "student")
    failed = {
        r: set(student.filter((pl.col("round") == r) & ~pl.col("verdict"))["problem_id"])
        for r in (1, 2)
    }
    assert failed[1] == wrong_for("student-r1", prompts)
    assert failed[2] == wrong_for("student-r2", prompts)
    assert failed[2] < failed[1]  # the round-2 student fails less, only where it failed before
    assert student.group_by("round").len().sort("round")["len"].to_list() == [160, 160]

    # The teacher corrects each wrong rationale of its round once, shown the rationale.
    teacher = pool.filter(pl.col("role") == "teacher")
    wrong = student.filter(~pl.col("verdict"))
    assert sorted(teacher["parent_trace_id"]) == sorted(wrong["trace_id"])
    assert set(teacher["template_id"]) == {"feedback"}

    # Pairs: (teacher's correction, the student rationale it corrects) where the correction is
    # right; the teacher is wrong, by script, on its own problems.
    pairs = pl.read_parquet(example / "out" / "preference" / "*.parquet")
    made = set(zip(pairs["chosen_trace_id"], pairs["rejected_trace_id"], strict=True))
    right = teacher.filter(pl.col("verdict"))
    assert made == set(zip(right["trace_id"], right["parent_trace_id"], strict=True))
    teacher_wrong = wrong_for("teacher", prompts)
    expected = sum(4 * len(failed[r] - teacher_wrong) for r in (1, 2))  # 4 samples a problem
    assert pairs.height == expected > 0
    assert pairs["prompt"].list.len().to_list() == [1] * pairs.height  # the question alone
    by_id = dict(zip(pool["trace_id"], pool["round"], strict=True))
    per_round = [by_id[t] for t in pairs["chosen_trace_id"]]
    assert per_round.count(2) == 4 * len(failed[2] - teacher_wrong)

    sft = pl.read_parquet(example / "out" / "sft" / "*.parquet")
    assert sft.height == right.height  # the teacher's correct rationales of both rounds
