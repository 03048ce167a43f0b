"""Teacher comparison: per-teacher outcomes, length spread and agreement between teachers in
`curate stats` and `curate report`, on a hand-made pool whose every number is worked out below
and on the real CHAMP example (examples/teacher-comparison: 4 models, 79 problems), checked
against SQL over the run, against `grade`'s per-teacher columns, and in headless Chromium."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from typer.testing import CliRunner

from curate.cli.main import app
from curate.engine import Build
from curate.report import write_report
from curate.spec import load_spec
from curate.sql import connect
from curate.summary import AGREEMENT_DEFINITION, summarize
from tests.chromium import open_page
from tests.conftest import REPO
from tests.test_inspect import PROBE, READY

EXAMPLE = REPO / "examples" / "teacher-comparison"
CHAMP_TEACHERS = ["GPT-3.5", "GPT-4", "GPT-4 Turbo", "PaLM 2 Medium"]


def invoke(*args: str | Path) -> tuple[int, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def stats_json(run: Path) -> dict[str, Any]:
    code, output = invoke("stats", run, "--format", "json")
    assert code == 0, output
    data: dict[str, Any] = json.loads(output)
    return data


def kappa(tt: int, tf: int, ft: int, ff: int) -> float | None:
    """Cohen's kappa from a 2x2 table, the textbook way."""
    n = tt + tf + ft + ff
    p_o = (tt + ff) / n
    p_a, p_b = (tt + tf) / n, (tt + ft) / n
    p_e = p_a * p_b + (1 - p_a) * (1 - p_b)
    return None if p_e == 1 else (p_o - p_e) / (1 - p_e)


# --- a pool small enough to work out by hand --------------------------------------------------

# (problem, reference, teacher, answers); "?" is a trace with no answer (not judged).
HAND: list[tuple[str, int, str, list[int | str]]] = [
    ("p1", 5, "A", [5, 5]),  # A true; B split (1 of 2); C false
    ("p1", 5, "B", [5, 4]),
    ("p1", 5, "C", [4]),
    ("p2", 7, "A", [7]),  # A true; B false (1 of 3); C wrote nothing judgeable
    ("p2", 7, "B", [1, 1, 7]),
    ("p2", 7, "C", ["?"]),
    ("p3", 3, "A", [3]),  # A and B true; C absent
    ("p3", 3, "B", [3]),
    ("p4", 2, "A", [1]),  # A false; B true; C true (2 of 3)
    ("p4", 2, "B", [2]),
    ("p4", 2, "C", [2, 2, 1]),
    ("p5", 6, "A", [6]),  # only A answered
]


@pytest.fixture(scope="module")
def hand_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hand")
    rows = [
        {
            "id": problem,
            "question": f"question {problem}",
            "answer": str(reference),
            "model": teacher,
            "response": "I give up." if answer == "?" else f"Working... The answer is {answer}.",
        }
        for problem, reference, teacher, answers in HAND
        for answer in answers
    ]
    (root / "traces.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "spec.yaml").write_text(
        "name: hand\ninput:\n  path: traces.jsonl\n  columns: {id: id, prompt: question, "
        "answer: answer, model: model, completion: response}\nsteps:\n"
        "  - verify: {method: numeric, extract: answer_is}\n  - grade: {per_teacher: true}\n"
    )
    Build(load_spec(root / "spec.yaml")).run()
    return root / "runs" / "hand"


def test_hand_pool_teachers(hand_run: Path) -> None:
    stats = stats_json(hand_run)
    teachers = {t["model"]: t for t in stats["teachers"]}
    got = {
        name: tuple(t[k] for k in ("traces", "judged", "correct", "problems", "solved", "split"))
        for name, t in teachers.items()
    }
    assert got == {
        "A": (6, 6, 5, 5, 4, 0),
        "B": (7, 7, 4, 4, 2, 1),
        "C": (5, 4, 2, 2, 1, 0),
    }
    # A alone solves p2: B fails it and C has no judged trace of it. p1 does not count (B is
    # split, not false), nor p5 (nobody else answered).
    assert {n: t["solved_only"] for n, t in teachers.items()} == {"A": 1, "B": 0, "C": 0}
    assert teachers["A"]["accuracy"] == pytest.approx(5 / 6)
    # lengths: ceil(chars / 4) of each completion, quartiles interpolated (quantile_cont)
    frame = pl.DataFrame(
        {"n": [len(f"Working... The answer is {a}.") for a in (5, 4, 1, 1, 7, 3, 2)]}
    )
    b_lengths = frame.select(((pl.col("n") + 3) // 4).alias("x"))["x"]
    assert teachers["B"]["length"]["median"] == b_lengths.median()
    assert teachers["B"]["length"]["q3"] == b_lengths.quantile(0.75, interpolation="linear")
    assert teachers["C"]["length_correct"]["n"] == 2


def test_hand_pool_agreement(hand_run: Path) -> None:
    stats = stats_json(hand_run)
    agreement = stats["teacher_agreement"]
    assert agreement["definition"] == AGREEMENT_DEFINITION
    pairs = {(p["a"], p["b"]): p for p in agreement["pairs"]}
    counts = {
        k: (p["problems"], p["agree"], p["both_solved"], p["a_only"], p["b_only"], p["neither"])
        for k, p in pairs.items()
    }
    # A-B on p2 (T, F), p3 (T, T), p4 (F, T); A-C on p1 (T, F), p4 (F, T); B-C on p4 only
    # (B is split on p1, C has no verdict on p2).
    assert counts == {
        ("A", "B"): (3, 1, 1, 1, 1, 0),
        ("A", "C"): (2, 0, 0, 1, 1, 0),
        ("B", "C"): (1, 1, 1, 0, 0, 0),
    }
    assert pairs[("A", "B")]["agreement"] == pytest.approx(1 / 3)
    assert pairs[("A", "B")]["kappa"] == pytest.approx(-0.5)  # p_o 1/3, p_e 5/9
    assert pairs[("A", "C")]["kappa"] == pytest.approx(-1.0)
    assert pairs[("B", "C")]["kappa"] is None  # both always solve: p_e = 1
    code, output = invoke("stats", hand_run)
    assert code == 0, output
    assert "agreement between teachers" in output and "-0.5" in output


# --- the CHAMP example, end to end ------------------------------------------------------------


@pytest.fixture(scope="module")
def champ_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("teacher-comparison")
    shutil.copy(EXAMPLE / "spec.yaml", root / "spec.yaml")
    (root / "data").mkdir()
    shutil.copy(EXAMPLE / "data" / "champ_integer_answers.jsonl", root / "data")
    Build(load_spec(root / "spec.yaml")).run()
    return root / "runs" / "teacher-comparison"


def test_champ_teachers_match_sql(champ_run: Path) -> None:
    stats = stats_json(champ_run)
    con = connect(champ_run)
    teachers = {t["model"]: t for t in stats["teachers"]}
    assert list(teachers) == CHAMP_TEACHERS
    rows = con.execute(
        "SELECT model, count(*), count(verdict), count_if(verdict), "
        "count(*) FILTER (WHERE drop_stage IS NULL) FROM traces GROUP BY 1"
    ).fetchall()
    assert {r[0]: r[1:] for r in rows} == {
        n: (t["traces"], t["judged"], t["correct"], t["kept"]) for n, t in teachers.items()
    }
    # per (problem, teacher) majorities, from the columns `grade` wrote with per_teacher
    majorities = con.execute(
        "SELECT model, count(*), count_if(2 * c > j), count_if(2 * c = j) FROM (SELECT DISTINCT "
        "problem_id, model, teacher_n_correct AS c, teacher_n_judged AS j FROM stage_grade "
        "WHERE teacher_n_judged > 0) GROUP BY 1"
    ).fetchall()
    assert {r[0]: r[1:] for r in majorities} == {
        n: (t["problems"], t["solved"], t["split"]) for n, t in teachers.items()
    }
    # length spread: recomputed with Polars from the traces' token counts (prune counted them)
    frame = con.sql(
        "SELECT model, completion_tokens + reasoning_tokens AS x, verdict FROM traces"
    ).pl()
    for name, t in teachers.items():
        x = frame.filter(pl.col("model") == name)["x"]
        assert t["length"]["n"] == x.len()
        assert t["length"]["mean"] == pytest.approx(x.mean())
        for key, q in (("q1", 0.25), ("median", 0.5), ("q3", 0.75), ("p90", 0.9)):
            assert t["length"][key] == pytest.approx(x.quantile(q, interpolation="linear")), key
        correct = frame.filter((pl.col("model") == name) & pl.col("verdict"))["x"]
        assert t["length_correct"]["median"] == pytest.approx(correct.median())
    # the numbers the example's README states
    turbo = teachers["GPT-4 Turbo"]
    assert (turbo["judged"], turbo["correct"], turbo["solved"], turbo["solved_only"]) == (
        147,
        82,
        34,
        3,
    )
    assert sum(t["kept"] for t in teachers.values()) == 58 and teachers["GPT-4"]["kept"] == 36
    assert teachers["GPT-4 Turbo"]["length"]["median"] > 2 * teachers["GPT-4"]["length"]["median"]


def test_champ_agreement_matches_sql(champ_run: Path) -> None:
    stats = stats_json(champ_run)
    con = connect(champ_run)
    # majority verdicts from grade's per-teacher columns; pairs counted with NOT EXISTS-free
    # filters, kappa computed here from the 2x2 counts
    rows = con.execute(
        """
        WITH m AS (SELECT DISTINCT problem_id, model, teacher_n_correct * 2 > teacher_n_judged
                          AS s FROM stage_grade
                   WHERE teacher_n_judged > 0 AND teacher_n_correct * 2 <> teacher_n_judged)
        SELECT x.model, y.model, count_if(x.s AND y.s), count_if(x.s AND NOT y.s),
               count_if(NOT x.s AND y.s), count_if(NOT x.s AND NOT y.s)
        FROM m x, m y WHERE x.problem_id = y.problem_id AND x.model < y.model GROUP BY 1, 2
        """
    ).fetchall()
    expected = {(r[0], r[1]): r[2:] for r in rows}
    pairs = {(p["a"], p["b"]): p for p in stats["teacher_agreement"]["pairs"]}
    assert set(pairs) == set(expected) and len(pairs) == 6
    for key, (tt, tf, ft, ff) in expected.items():
        p = pairs[key]
        assert (p["both_solved"], p["a_only"], p["b_only"], p["neither"]) == (tt, tf, ft, ff)
        assert p["problems"] == tt + tf + ft + ff and p["agree"] == tt + ff
        assert p["kappa"] == pytest.approx(kappa(tt, tf, ft, ff))
    gpt4 = pairs[("GPT-4", "GPT-4 Turbo")]
    assert (gpt4["problems"], gpt4["agree"], round(gpt4["kappa"], 2)) == (41, 33, 0.61)
    # solved only by one teacher: every other teacher that judged the problem fails it
    only = con.execute(
        """
        WITH m AS (SELECT problem_id, model, CASE WHEN 2 * count_if(verdict) > count(verdict)
                   THEN true WHEN 2 * count_if(verdict) < count(verdict) THEN false END AS s
                   FROM traces GROUP BY ALL HAVING count(verdict) > 0)
        SELECT model, count(*) FROM m x WHERE s
          AND EXISTS (SELECT 1 FROM m y WHERE y.problem_id = x.problem_id AND y.model <> x.model)
          AND NOT EXISTS (SELECT 1 FROM m y WHERE y.problem_id = x.problem_id
                          AND y.model <> x.model AND y.s IS DISTINCT FROM false)
        GROUP BY 1
        """
    ).fetchall()
    solved_only = {t["model"]: t["solved_only"] for t in stats["teachers"]}
    assert solved_only == {m: dict(only).get(m, 0) for m in CHAMP_TEACHERS}


def test_champ_verdicts_are_meaningful(champ_run: Path) -> None:
    """The example's regex reads the number the final-answer sentence states: hand-checked
    traces, and the human 'no mistake' labels CHAMP ships for some of them."""
    con = connect(champ_run)
    checked = {
        "P_Combinatorics_30:GPT-4:5-Shot": ("2,001,000", True),  # "will have 2,001,000 terms"
        "P_Combinatorics_31:PaLM 2 Medium:0-Shot": ("120", True),  # "$8! - 1260 - 6720 = 120$"
        "P_Number-Theory_17:GPT-4 Turbo:5-Shot": ("7744", True),  # "is 7744, which is 88 sq."
        "P_Polynomial_50:GPT-3.5:5-Shot": ("-5", True),  # "... at x=-1 is a=-5"
        "P_Number-Theory_32:PaLM 2 Medium:5-Shot": ("2", True),  # "3^105 + 4^105 = 2 mod 11"
        "P_Inequality_7:GPT-4 Turbo:0-Shot": ("3/2", False),  # "is 3/2, which occurs when"
        "P_Combinatorics_5:PaLM 2 Medium:0-Shot": ("210", False),  # "is $\boxed{210}$"
        "P_Polynomial_41:GPT-4 Turbo:5-Shot": ("80", False),  # "is \( n = 80 \)"
        "P_Inequality_15:GPT-4:0-Shot": ("2*√[3*(a*b*c)^2].", False),  # an expression
        "P_Polynomial_25:GPT-3.5:5-Shot": (None, None),  # "There are no values of n ..."
    }
    rows = con.execute(
        "SELECT trace_id, extracted_answer, verdict FROM stage_verify WHERE trace_id IN "
        f"({', '.join('?' * len(checked))})",
        list(checked),
    ).fetchall()
    assert {r[0]: (r[1], r[2]) for r in rows} == checked
    labels = con.execute(
        "SELECT source_label, verdict, count(*) FROM stage_verify "
        "WHERE source_label IS NOT NULL GROUP BY ALL"
    ).fetchall()
    # every solution CHAMP's annotators found free of mistakes is judged correct; 17 with a
    # flawed step still reach the right number
    assert {(r[0], r[1]): r[2] for r in labels} == {
        (True, True): 10,
        (False, True): 17,
        (False, False): 41,
        (False, None): 10,
    }


def test_champ_report_in_chromium(champ_run: Path, tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    summary = write_report(champ_run, page)
    assert summary.teacher_agreement.pairs
    probe = PROBE.replace(
        "text: div.innerText,",
        "text: div.innerText, cells: div.querySelectorAll('g.hm image').length, "
        "labels: div.querySelectorAll('.heatmap-label').length,",
    )
    result = open_page(page, probe, ready=READY)
    assert result.errors == [], result.errors
    # nothing fetched: the page itself, and the heatmap's pixels as an inline data: image
    assert {url.split(":", 1)[0] for url in result.requests} == {"file", "data"}
    plots = result.value["plots"]
    assert plots["teachers"]["points"] == 4
    assert plots["teacher-length"]["boxes"] == 8  # all and correct, per teacher
    assert plots["agreement"]["cells"] == 1 and plots["agreement"]["labels"] == 12  # 4x4 - diag
    assert "κ 0.61" in plots["agreement"]["text"]
    text = page.read_text()
    assert "Agreement between teachers" in text and "solved only" in text


def test_summary_of_the_example_names_every_teacher(champ_run: Path) -> None:
    summary = summarize(champ_run)
    assert [t.model for t in summary.teachers] == CHAMP_TEACHERS
    assert all(t.length is not None and t.length.p90 >= t.length.median for t in summary.teachers)
