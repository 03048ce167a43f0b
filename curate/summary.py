"""The numbers people look at, computed once from a run's manifest and Parquet (through the SQL
views of curate.sql): `curate stats` prints them, `curate report` plots them and the dataset
card of `curate publish` states them, so the three can never disagree.

Trace length is `completion_tokens + reasoning_tokens` where a stage counted them (`prune`),
and the project's approximation `ceil(chars / 4)` of completion and reasoning where none did.
A trace's band is its problem's `difficulty` (rows dropped before grading count in their
problem's band when the problem was graded later, and as `ungraded` otherwise).

Teachers (`teachers`, `teacher_agreement`): a teacher is a value of the `model` column, the same
grouping `grade` uses with `per_teacher: true`. Every trace that entered the run counts, kept or
dropped later, so a teacher is judged on what it wrote, not on what the filters kept; a trace
counts as judged when its verdict is not null. A teacher's *verdict on a problem* is the
majority of its judged traces of that problem: true when more than half are correct, false when
fewer than half, none ("split") on an exact tie. Then, for each pair of teachers (A, B), over
the problems on which both have a verdict: `agreement` is the share of them where the two
verdicts are equal, and `kappa` is Cohen's κ = (p_o - p_e) / (1 - p_e), p_o that share and
p_e = a·b + (1 - a)(1 - b) with a and b the shares of those problems A and B solve (null when
p_e = 1: both always say the same thing, so chance explains all of it). A teacher's
`solved_only` counts problems its verdict is true while every other teacher that judged the
problem (at least one did) has verdict false. All of it is computed in DuckDB.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from curate.run import Run, open_run
from curate.sql import connect, stage_view_names
from curate.tokens import APPROX_LABEL, CHARS_PER_TOKEN

UNGRADED = "ungraded"
PASS_RATE_BINS = 10  # histogram bins of width 0.1 over [0, 1]; the last bin includes 1.0
SAMPLES_PER_VERDICT = 2  # sample traces per band and verdict (correct / not) in the report


@dataclass(frozen=True)
class StageRow:
    stage_id: str
    operator: str
    rows_in: int
    rows_out: int
    dropped: int
    dropped_by_reason: dict[str, int]


@dataclass(frozen=True)
class DropRow:
    stage_id: str
    reason: str
    rows: int
    example: str | None  # one drop_detail, of the row with the smallest id


@dataclass(frozen=True)
class Lengths:
    n: int
    total: int
    mean: float
    min: int
    q1: float
    median: float
    q3: float
    p90: float
    max: int


@dataclass(frozen=True)
class PassRates:
    problems: int  # problems with a pass rate
    mean: float | None
    median: float | None
    edges: list[float]
    counts: list[int]  # problems per bin [edges[i], edges[i+1]); the last bin includes 1.0


@dataclass(frozen=True)
class Band:
    name: str
    problems: int
    mean_pass_rate: float | None
    traces: int  # trace rows of the band's problems that entered the run
    kept: int  # of those, in the pool
    length_all: Lengths | None
    length_kept: Lengths | None


@dataclass(frozen=True)
class Teacher:
    model: str
    traces: int  # trace rows of this model that entered the run, kept or dropped
    judged: int  # traces with a verdict
    correct: int
    accuracy: float | None  # correct / judged
    mean_length: float | None  # of all its traces (length.mean)
    median_length: float | None
    kept: int  # of its traces, in the last stage's pool
    problems: int  # problems with at least one judged trace of it
    solved: int  # problems its majority verdict is true on
    split: int  # problems with as many correct as wrong judged traces: no verdict
    solved_only: int  # problems it solves and every other teacher that judged fails
    length: Lengths | None  # all its traces
    length_correct: Lengths | None  # its traces with verdict true


AGREEMENT_DEFINITION = (
    "A teacher is a value of `model`; every trace that entered the run counts, kept or dropped. "
    "A teacher's verdict on a problem is the majority of its judged traces of it: true when more "
    "than half are correct, false when fewer than half, none (split) on a tie. For a pair (a, b): "
    "problems = problems on which both have a verdict; agree = those where the verdicts are "
    "equal; agreement = agree / problems; both_solved, a_only, b_only, neither split them by "
    "verdict; kappa = Cohen's kappa (p_o - p_e) / (1 - p_e) over them, p_o = agreement, "
    "p_e = pa*pb + (1-pa)*(1-pb) with pa, pb the shares a and b solve; null when p_e = 1. "
    "A teacher's solved_only = problems its verdict is true while every other teacher that "
    "judged the problem (at least one) has verdict false."
)


@dataclass(frozen=True)
class TeacherPair:
    a: str  # the first teacher, in name order
    b: str
    problems: int  # problems on which both have a majority verdict
    agree: int  # of those, the verdicts are equal
    agreement: float | None  # agree / problems
    kappa: float | None  # Cohen's kappa over the same problems; null when undefined
    both_solved: int
    a_only: int  # a's verdict true, b's false
    b_only: int
    neither: int


@dataclass(frozen=True)
class TeacherAgreement:
    definition: str
    pairs: list[TeacherPair]  # every pair with at least one problem both have a verdict on


@dataclass(frozen=True)
class DedupStage:
    stage_id: str
    rows: int  # rows with a dup_cluster at that stage (kept and dropped)
    clusters: int
    sizes: dict[int, int]  # cluster size -> number of clusters
    note: str | None = None  # why there are no sizes, when there are none


@dataclass(frozen=True)
class ExportStats:
    kind: str  # sft or preference
    rows: int
    problems: int
    by_difficulty: dict[str, int]
    length: Lengths | None  # sft: the trace; preference: the chosen response
    length_of: str


@dataclass(frozen=True)
class Summary:
    name: str
    run_id: str | None
    finished: bool
    missing: list[str] | None
    status: str | None  # a sentence when the run is unfinished or stages are missing
    length_unit: str
    problems: int
    traces: int
    kept: int
    stages: list[StageRow]
    outputs: dict[str, int]  # export kind -> rows
    drops: list[DropRow]
    pass_rates: PassRates
    bands: list[Band]
    teachers: list[Teacher]
    teacher_agreement: TeacherAgreement
    dedup: list[DedupStage]  # empty: no dedup step in this run
    exports: list[ExportStats]

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = dataclasses.asdict(self)
        for stage in data["dedup"]:
            stage["sizes"] = {str(k): v for k, v in stage["sizes"].items()}
        return data


class _Q:
    """Small helpers over one connection: typed fetches and column checks."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con
        self._columns: dict[str, set[str]] = {}

    def columns(self, view: str) -> set[str]:
        if view not in self._columns:
            rows = self.con.execute(f"DESCRIBE {view}").fetchall()
            self._columns[view] = {r[0] for r in rows}
        return self._columns[view]

    def rows(self, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
        return self.con.execute(sql, params or []).fetchall()

    def one(self, sql: str, params: list[Any] | None = None) -> tuple[Any, ...]:
        row = self.con.execute(sql, params or []).fetchone()
        assert row is not None
        return row


def length_expr(columns: set[str]) -> str | None:
    """SQL for a trace's length in tokens over a relation with these columns; None if no text."""

    def approx(column: str) -> str:
        return f"coalesce(ceil(length({column}) / {CHARS_PER_TOKEN}), 0)::BIGINT"

    if "completion" not in columns and "completion_tokens" not in columns:
        return None
    counted = (
        "completion_tokens + coalesce(reasoning_tokens, 0)"
        if {"completion_tokens", "reasoning_tokens"} <= columns
        else "completion_tokens"
        if "completion_tokens" in columns
        else "NULL"
    )
    estimated = " + ".join(approx(c) for c in ("completion", "reasoning") if c in columns) or "NULL"
    return f"coalesce({counted}, {estimated})::BIGINT"


LENGTH_AGGREGATES = (
    "count(x), sum(x), avg(x), min(x), quantile_cont(x, 0.25), median(x), "
    "quantile_cont(x, 0.75), quantile_cont(x, 0.9), max(x)"
)


def _lengths(q: _Q, relation: str, expr: str, where: str = "true") -> Lengths | None:
    row = q.one(
        f"SELECT {LENGTH_AGGREGATES} "
        f"FROM (SELECT {expr} AS x FROM {relation} WHERE {where}) WHERE x IS NOT NULL"
    )
    return _to_lengths(row)


def _lengths_by(
    q: _Q, relation: str, key: str, expr: str, where: str = "true"
) -> dict[Any, Lengths]:
    """`_lengths` for each value of the SQL expression `key`, in one grouped query."""
    rows = q.rows(
        f"SELECT k, {LENGTH_AGGREGATES} FROM (SELECT {key} AS k, {expr} AS x "
        f"FROM {relation} WHERE {where}) WHERE x IS NOT NULL GROUP BY k"
    )
    found = {r[0]: _to_lengths(r[1:]) for r in rows}
    return {k: v for k, v in found.items() if v is not None}


def _to_lengths(row: tuple[Any, ...]) -> Lengths | None:
    if not row[0]:
        return None
    n, total, mean, low, q1, median, q3, p90, high = row
    return Lengths(
        n=int(n),
        total=int(total),
        mean=float(mean),
        min=int(low),
        q1=float(q1),
        median=float(median),
        q3=float(q3),
        p90=float(p90),
        max=int(high),
    )


def _length_unit(q: _Q) -> str:
    labels = []
    if "tokenizer" in q.columns("traces"):
        labels = [r[0] for r in q.rows("SELECT DISTINCT tokenizer FROM traces ORDER BY 1") if r[0]]
    if not labels or labels == [APPROX_LABEL]:
        return f"tokens ({APPROX_LABEL})"
    return f"tokens ({', '.join(labels)}; {APPROX_LABEL} where not counted)"


def _stage_rows(run: Run) -> list[StageRow]:
    return [
        StageRow(
            stage_id=s["stage_id"],
            operator=s["operator"],
            rows_in=s["stats"]["rows_in"],
            rows_out=s["stats"]["rows_out"],
            dropped=s["stats"]["dropped"],
            dropped_by_reason=dict(s["stats"]["dropped_by_reason"]),
        )
        for s in run.stages
    ]


def _drops(q: _Q) -> list[DropRow]:
    if "drop_reason" not in q.columns("dropped"):
        return []
    key = "coalesce(trace_id, problem_id)" if "trace_id" in q.columns("dropped") else "problem_id"
    rows = q.rows(
        f"SELECT drop_stage, drop_reason, count(*), arg_min(drop_detail, {key}) "
        "FROM dropped GROUP BY ALL ORDER BY 1, 3 DESC, 2"
    )
    return [DropRow(stage_id=r[0], reason=r[1], rows=int(r[2]), example=r[3]) for r in rows]


def _pass_rates(q: _Q) -> PassRates:
    edges = [round(i / PASS_RATE_BINS, 10) for i in range(PASS_RATE_BINS + 1)]
    counts = [0] * PASS_RATE_BINS
    if "pass_rate" not in q.columns("problems"):
        return PassRates(problems=0, mean=None, median=None, edges=edges, counts=counts)
    rows = q.rows(
        f"SELECT least(floor(pass_rate * {PASS_RATE_BINS}), {PASS_RATE_BINS - 1})::INT AS bin, "
        "count(*) FROM problems WHERE pass_rate IS NOT NULL GROUP BY 1"
    )
    for index, count in rows:
        counts[index] = int(count)
    n, mean, median = q.one(
        "SELECT count(pass_rate), avg(pass_rate), median(pass_rate) FROM problems"
    )
    return PassRates(
        problems=int(n),
        mean=None if mean is None else float(mean),
        median=None if median is None else float(median),
        edges=edges,
        counts=counts,
    )


def _band_order(run: Run, names: list[str]) -> list[str]:
    declared: list[str] = []
    for stage in run.stages:
        if stage["operator"] == "grade":
            declared = list(stage["params"].get("bands") or {})
    ordered = [b for b in declared if b in names]
    rest = sorted(n for n in names if n not in ordered and n != UNGRADED)
    return ordered + rest + ([UNGRADED] if UNGRADED in names else [])


def _traces_with_band(q: _Q) -> str:
    """A relation: every trace row of the run with its problem's band as `band`."""
    band = "difficulty" if "difficulty" in q.columns("problems") else "NULL::VARCHAR"
    trace = "t.trace_id IS NOT NULL" if "trace_id" in q.columns("traces") else "false"
    return (
        f"(SELECT t.*, coalesce(p.band, '{UNGRADED}') AS band FROM traces t "
        f"LEFT JOIN (SELECT problem_id, {band} AS band FROM problems) p USING (problem_id) "
        f"WHERE {trace})"
    )


def _bands(q: _Q, run: Run, expr: str | None) -> list[Band]:
    band = "difficulty" if "difficulty" in q.columns("problems") else "NULL::VARCHAR"
    rate = "pass_rate" if "pass_rate" in q.columns("problems") else "NULL::DOUBLE"
    per_problem = {
        r[0]: (int(r[1]), r[2])
        for r in q.rows(
            f"SELECT coalesce({band}, '{UNGRADED}'), count(*), avg({rate}) FROM problems GROUP BY 1"
        )
    }
    traces = _traces_with_band(q)
    per_trace = {
        r[0]: (int(r[1]), int(r[2]))
        for r in q.rows(
            f"SELECT band, count(*), count(*) FILTER (WHERE drop_stage IS NULL) "
            f"FROM {traces} GROUP BY 1"
        )
    }
    bands = []
    for name in _band_order(run, list(per_problem)):
        problems, mean_rate = per_problem[name]
        n_traces, n_kept = per_trace.get(name, (0, 0))
        where = f"band = '{name.replace(chr(39), chr(39) * 2)}'"
        bands.append(
            Band(
                name=name,
                problems=problems,
                mean_pass_rate=None if mean_rate is None else float(mean_rate),
                traces=n_traces,
                kept=n_kept,
                length_all=_lengths(q, traces, expr, where) if expr else None,
                length_kept=(
                    _lengths(q, traces, expr, f"{where} AND drop_stage IS NULL") if expr else None
                ),
            )
        )
    return bands


def _teacher_relation(q: _Q) -> str | None:
    """Every trace row that entered the run, with `teacher` and `_verdict` (null when no verify
    stage ran) columns."""
    cols = q.columns("traces")
    if "trace_id" not in cols:
        return None
    model = "coalesce(model, 'unknown')" if "model" in cols else "'unknown'"
    verdict = "verdict" if "verdict" in cols else "NULL::BOOLEAN"
    return (
        f"(SELECT *, {model} AS teacher, {verdict} AS _verdict FROM traces "
        "WHERE trace_id IS NOT NULL)"
    )


def _majority(relation: str) -> str:
    """Per (problem, teacher) with a judged trace: its majority verdict `solved` (null: tie)."""
    return (
        f"(SELECT problem_id, teacher, CASE WHEN 2 * count_if(_verdict) > count(_verdict) THEN "
        "true WHEN 2 * count_if(_verdict) < count(_verdict) THEN false END AS solved "
        f"FROM {relation} GROUP BY ALL HAVING count(_verdict) > 0)"
    )


def _teachers(q: _Q, expr: str | None) -> list[Teacher]:
    relation = _teacher_relation(q)
    if relation is None:
        return []
    length = expr or "NULL::BIGINT"
    rows = q.rows(
        f"SELECT teacher, count(*), count(_verdict), count_if(_verdict), "
        f"count(*) FILTER (WHERE drop_stage IS NULL) FROM {relation} GROUP BY 1 ORDER BY 1"
    )
    majority = _majority(relation)
    outcomes = {
        r[0]: (int(r[1]), int(r[2]), int(r[3]), int(r[4]))
        for r in q.rows(
            f"SELECT teacher, count(*), count_if(solved), count_if(solved IS NULL), "
            f"count_if(solved AND n_judged > 1 AND n_false = n_judged - 1) "
            f"FROM (SELECT *, count(*) OVER w AS n_judged, count_if(NOT solved) OVER w AS "
            f"n_false FROM {majority} WINDOW w AS (PARTITION BY problem_id)) GROUP BY 1"
        )
    }
    lengths = _lengths_by(q, relation, "teacher", length) if expr else {}
    correct = _lengths_by(q, relation, "teacher", length, "_verdict") if expr else {}
    teachers = []
    for r in rows:
        name = r[0]
        problems, solved, split, only = outcomes.get(name, (0, 0, 0, 0))
        spread = lengths.get(name)
        teachers.append(
            Teacher(
                model=name,
                traces=int(r[1]),
                judged=int(r[2]),
                correct=int(r[3]),
                accuracy=(int(r[3]) / int(r[2])) if r[2] else None,
                mean_length=spread.mean if spread else None,
                median_length=spread.median if spread else None,
                kept=int(r[4]),
                problems=problems,
                solved=solved,
                split=split,
                solved_only=only,
                length=spread,
                length_correct=correct.get(name),
            )
        )
    return teachers


def _teacher_agreement(q: _Q) -> TeacherAgreement:
    relation = _teacher_relation(q)
    if relation is None:
        return TeacherAgreement(definition=AGREEMENT_DEFINITION, pairs=[])
    majority = _majority(relation)
    rows = q.rows(
        f"""
        WITH m AS (SELECT * FROM {majority} WHERE solved IS NOT NULL),
        c AS (
            SELECT a.teacher AS a, b.teacher AS b, count(*) AS n,
                   count_if(a.solved AND b.solved) AS tt, count_if(a.solved AND NOT b.solved) AS tf,
                   count_if(NOT a.solved AND b.solved) AS ft,
                   count_if(NOT a.solved AND NOT b.solved) AS ff
            FROM m a JOIN m b ON a.problem_id = b.problem_id AND a.teacher < b.teacher
            GROUP BY ALL),
        k AS (
            SELECT *, (tt + ff) / n AS p_o,
                   ((tt + tf) / n) * ((tt + ft) / n) + ((ft + ff) / n) * ((tf + ff) / n) AS p_e
            FROM c)
        SELECT a, b, n, tt + ff, p_o, CASE WHEN p_e < 1 THEN (p_o - p_e) / (1 - p_e) END,
               tt, tf, ft, ff
        FROM k ORDER BY a, b
        """
    )
    pairs = [
        TeacherPair(
            a=r[0],
            b=r[1],
            problems=int(r[2]),
            agree=int(r[3]),
            agreement=float(r[4]),
            kappa=None if r[5] is None else float(r[5]),
            both_solved=int(r[6]),
            a_only=int(r[7]),
            b_only=int(r[8]),
            neither=int(r[9]),
        )
        for r in rows
    ]
    return TeacherAgreement(definition=AGREEMENT_DEFINITION, pairs=pairs)


def _dedup(q: _Q, run: Run) -> list[DedupStage]:
    views = stage_view_names([s["stage_id"] for s in run.stages])
    found = []
    for stage in run.stages:
        if stage["operator"] != "dedup":
            continue
        stage_id = stage["stage_id"]
        parts = []
        if "dup_cluster" in q.columns(views[stage_id]):
            parts.append(f"SELECT dup_cluster FROM {views[stage_id]}")
        if "dup_cluster" in q.columns("dropped"):
            parts.append(f"SELECT dup_cluster FROM dropped WHERE drop_stage = '{stage_id}'")
        sizes: dict[int, int] = {}
        if parts:
            members = " UNION ALL ".join(parts)
            rows = q.rows(
                f"SELECT size, count(*) FROM (SELECT dup_cluster, count(*) AS size FROM "
                f"({members}) WHERE dup_cluster IS NOT NULL GROUP BY 1) GROUP BY 1 ORDER BY 1"
            )
            sizes = {int(size): int(count) for size, count in rows}
        found.append(
            DedupStage(
                stage_id=stage_id,
                rows=sum(size * count for size, count in sizes.items()),
                clusters=sum(sizes.values()),
                sizes=sizes,
                note=None if sizes else f"{stage_id} marked no row with a dup_cluster",
            )
        )
    return found


EXPORT_LENGTHS = {
    "sft": ("completion_tokens + coalesce(reasoning_tokens, 0)", "the assistant trace"),
    "preference": ("chosen_tokens", "the chosen response"),
}


def _exports(q: _Q, run: Run) -> list[ExportStats]:
    found = []
    views = {r[0] for r in q.rows("SELECT view_name FROM duckdb_views() WHERE NOT internal")}
    for kind in run.outputs:
        if kind not in views:
            continue
        rows, problems = q.one(f"SELECT count(*), count(DISTINCT problem_id) FROM {kind}")
        by_difficulty = {
            r[0]: int(r[1])
            for r in q.rows(
                f"SELECT coalesce(difficulty, '{UNGRADED}'), count(*) FROM {kind} "
                "GROUP BY 1 ORDER BY 2 DESC, 1"
            )
        }
        expr, of = EXPORT_LENGTHS.get(kind, ("NULL", ""))
        found.append(
            ExportStats(
                kind=kind,
                rows=int(rows),
                problems=int(problems),
                by_difficulty=by_difficulty,
                length=_lengths(q, kind, expr),
                length_of=of,
            )
        )
    return found


def summarize(run_dir: str | Path | Run) -> Summary:
    """Every statistic of a run, from its stage records and its Parquet files."""
    run = run_dir if isinstance(run_dir, Run) else open_run(run_dir)
    q = _Q(connect(run))
    expr = length_expr(q.columns("traces"))
    trace = "trace_id IS NOT NULL" if "trace_id" in q.columns("traces") else "false"
    problems = q.one("SELECT count(*) FROM problems")[0]
    traces, kept = q.one(
        f"SELECT count(*) FILTER (WHERE {trace}), "
        f"count(*) FILTER (WHERE {trace} AND drop_stage IS NULL) FROM traces"
    )
    return Summary(
        name=run.name,
        run_id=run.run_id,
        finished=run.finished,
        missing=run.missing,
        status=run.status_line(),
        length_unit=_length_unit(q),
        problems=int(problems),
        traces=int(traces),
        kept=int(kept),
        stages=_stage_rows(run),
        outputs={kind: int(o.get("rows", 0)) for kind, o in run.outputs.items()},
        drops=_drops(q),
        pass_rates=_pass_rates(q),
        bands=_bands(q, run, expr),
        teachers=_teachers(q, expr),
        teacher_agreement=_teacher_agreement(q),
        dedup=_dedup(q, run),
        exports=_exports(q, run),
    )


def sample_traces(run: Run, per_verdict: int = SAMPLES_PER_VERDICT) -> list[dict[str, Any]]:
    """A few traces per band, up to `per_verdict` correct and as many not correct, picked by
    the md5 of their trace id (stable across runs and machines), with their fate."""
    q = _Q(connect(run))
    cols = q.columns("traces")
    if "trace_id" not in cols:
        return []
    expr = length_expr(cols) or "NULL::BIGINT"

    def col(name: str, kind: str = "VARCHAR") -> str:
        return f"t.{name}" if name in cols else f"NULL::{kind}"

    traces = _traces_with_band(q)
    verdict = col("verdict", "BOOLEAN")
    rows = q.con.execute(
        f"SELECT band, problem_id, trace_id, {col('model')} AS model, prompt, "
        f"{col('reference_answer')} AS reference_answer, "
        f"{col('extracted_answer')} AS extracted_answer, {verdict} AS verdict, "
        f"{col('completion')} AS completion, {expr} AS length, drop_stage, drop_reason, "
        f"drop_detail FROM (SELECT *, row_number() OVER (PARTITION BY band, "
        f"coalesce({verdict}, false) ORDER BY md5(trace_id)) AS pick FROM {traces} t) t "
        f"WHERE pick <= {int(per_verdict)} ORDER BY band, verdict DESC NULLS LAST, md5(trace_id)"
    )
    names = [d[0] for d in rows.description]
    picked = [dict(zip(names, r, strict=True)) for r in rows.fetchall()]
    bands = _band_order(run, sorted({p["band"] for p in picked}))
    order = {name: i for i, name in enumerate(bands)}
    return sorted(picked, key=lambda p: order[p["band"]])
