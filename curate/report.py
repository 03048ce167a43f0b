"""`curate report`: one self-contained HTML page with the plots people look at, drawn from
curate.summary (the numbers `curate stats` prints and the dataset card states).

Plotting library: Plotly. Its Python package ships plotly.js, which is inlined once into the
page, so the file opens with no network (no CDN, no fonts or map tiles fetched for these chart
kinds) and still gives hover values, zoom and toggling traces, which a static image does not.
It has no native dependencies (matplotlib needs a compiled backend and renders static images;
Vega-Altair needs vl-convert, a large binary, to inline its JavaScript). Figures are built from
summary numbers, never raw rows: box plots use precomputed quartiles, so the page stays the
same size for a thousand traces or ten million.
"""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from curate.run import Run, open_run
from curate.summary import Lengths, Summary, sample_traces, summarize

COMPLETION_CHARS = 1500  # of each sample trace shown in the table
PROMPT_CHARS = 400
PLOT_IDS = (
    "funnel",
    "drops",
    "pass-rate",
    "length",
    "teachers",
    "teacher-length",
    "agreement",
    "dedup",
)

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1100px;
padding:24px;color:#1b1f24}
h1{margin:0 0 4px}h2{margin:28px 0 8px;border-bottom:1px solid #d0d7de;padding-bottom:4px}
.sub{color:#57606a}.warn{background:#fff8c5;border:1px solid #d4a72c;padding:8px 12px;
border-radius:6px}.kpis{display:flex;gap:12px;flex-wrap:wrap;margin:16px 0}
.kpi{border:1px solid #d0d7de;border-radius:6px;padding:8px 14px}.kpi b{display:block;
font-size:20px}.grid{display:grid;grid-template-columns:1fr 1fr;gap:12px}
.plot{min-height:340px;border:1px solid #d0d7de;border-radius:6px}
.note{display:flex;align-items:center;justify-content:center;color:#57606a}
table{border-collapse:collapse;width:100%;margin:6px 0}td,th{border:1px solid #d0d7de;
padding:4px 8px;text-align:left;vertical-align:top}th{background:#f6f8fa}
td.n{text-align:right;font-variant-numeric:tabular-nums}
pre{white-space:pre-wrap;margin:4px 0;font-size:12px;max-height:320px;overflow:auto}
.ok{color:#1a7f37;font-weight:600}.bad{color:#cf222e;font-weight:600}
.caption{color:#57606a;font-size:12px;margin:4px 0 0}
@media (max-width:800px){.grid{grid-template-columns:1fr}}
"""

PLOT_CONFIG = {"displaylogo": False, "responsive": True, "displayModeBar": False}


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value))


def _num(value: float | int | None, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"


def _figure_html(plot_id: str, data: list[Any], layout: dict[str, Any]) -> str:
    import plotly.graph_objects as go

    base = {"margin": {"l": 60, "r": 20, "t": 56, "b": 50}, "title": {"x": 0.02}}
    title = layout.pop("title", None)
    figure = go.Figure(data=data, layout={**base, **layout})
    if title is not None:
        figure.update_layout(title_text=title)
    body: str = figure.to_html(
        full_html=False, include_plotlyjs=False, div_id=f"plot-{plot_id}", config=PLOT_CONFIG
    )
    return f'<div class="plot" data-plot="{plot_id}">{body}</div>'


def _note(plot_id: str, text: str) -> str:
    return f'<div class="plot note" data-plot="{plot_id}" id="plot-{plot_id}">{_e(text)}</div>'


def funnel_plot(summary: Summary) -> str:
    import plotly.graph_objects as go

    if not summary.stages:
        return _note("funnel", "no stage finished")
    labels = [f"{s.stage_id}" for s in summary.stages]
    values = [s.rows_out for s in summary.stages]
    for kind, rows in summary.outputs.items():
        labels.append(f"→ {kind}")
        values.append(rows)
    trace = go.Funnel(y=labels, x=values, textinfo="value", marker={"color": "#0969da"})
    title = "Rows out of each stage" + (", then exports" if summary.outputs else "")
    return _figure_html("funnel", [trace], {"title": title})


def drops_plot(summary: Summary) -> str:
    import plotly.graph_objects as go

    if not summary.drops:
        return _note("drops", "no row was dropped")
    stages = list(dict.fromkeys(d.stage_id for d in summary.drops))
    reasons = list(dict.fromkeys(d.reason for d in summary.drops))
    data = [
        go.Bar(
            name=reason,
            y=[d.stage_id for d in summary.drops if d.reason == reason],
            x=[d.rows for d in summary.drops if d.reason == reason],
            orientation="h",
        )
        for reason in reasons
    ]
    return _figure_html(
        "drops",
        data,
        {
            "title": "What each stage dropped, by reason",
            "barmode": "stack",
            "xaxis": {"title": "rows dropped"},
            "yaxis": {"autorange": "reversed", "categoryorder": "array", "categoryarray": stages},
            "legend": {"orientation": "h", "y": -0.25},
        },
    )


def pass_rate_plot(summary: Summary) -> str:
    import plotly.graph_objects as go

    rates = summary.pass_rates
    if not rates.problems:
        return _note("pass-rate", "no pass rates: no grade stage among the stages present")
    edges = rates.edges
    labels = [
        f"{edges[i]:.1f}–{edges[i + 1]:.1f}" + ("]" if i == len(edges) - 2 else ")")
        for i in range(len(edges) - 1)
    ]
    trace = go.Bar(x=labels, y=rates.counts, marker={"color": "#8250df"}, name="problems")
    return _figure_html(
        "pass-rate",
        [trace],
        {
            "title": f"Pass rate per problem ({rates.problems:,} problems)",
            "xaxis": {"title": "pass rate [from, to)"},
            "yaxis": {"title": "problems"},
        },
    )


def _box(name: str, bands: Sequence[str], stats: Sequence[Lengths | None], color: str) -> Any:
    import plotly.graph_objects as go

    keep = [(b, s) for b, s in zip(bands, stats, strict=True) if s is not None]
    return go.Box(
        name=name,
        x=[b for b, _ in keep],
        q1=[s.q1 for _, s in keep],
        median=[s.median for _, s in keep],
        q3=[s.q3 for _, s in keep],
        lowerfence=[s.min for _, s in keep],
        upperfence=[s.max for _, s in keep],
        mean=[s.mean for _, s in keep],
        marker={"color": color},
    )


def length_plot(summary: Summary) -> str:
    bands = [b for b in summary.bands if b.length_all is not None]
    if not bands:
        return _note("length", "no trace lengths: the run has no traces yet")
    names = [b.name for b in bands]
    data = [
        _box("all traces", names, [b.length_all for b in bands], "#9a6700"),
        _box("kept", names, [b.length_kept for b in bands], "#1a7f37"),
    ]
    return _figure_html(
        "length",
        data,
        {
            "title": "Trace length by difficulty band",
            "boxmode": "group",
            "yaxis": {"title": summary.length_unit},
        },
    )


def teacher_plot(summary: Summary) -> str:
    import plotly.graph_objects as go

    teachers = [t for t in summary.teachers if t.accuracy is not None]
    if not teachers:
        return _note("teachers", "no verdicts: no verify stage among the stages present")
    largest = max(t.traces for t in teachers)
    trace = go.Scatter(
        x=[t.mean_length for t in teachers],
        y=[t.accuracy for t in teachers],
        text=[t.model for t in teachers],
        customdata=[[t.traces, t.judged] for t in teachers],
        mode="markers+text",
        textposition="bottom center",
        marker={
            "size": [14 + 26 * (t.traces / largest) ** 0.5 for t in teachers],
            "color": "#0969da",
        },
        hovertemplate="%{text}<br>accuracy %{y:.3f}<br>mean length %{x:.0f}"
        "<br>%{customdata[0]} traces, %{customdata[1]} judged<extra></extra>",
    )
    return _figure_html(
        "teachers",
        [trace],
        {
            "title": "Per teacher: accuracy vs mean trace length",
            "xaxis": {
                "title": f"mean length, {summary.length_unit}",
                "range": [0, 1.2 * max(t.mean_length or 0 for t in teachers) + 1],
            },
            "yaxis": {"title": "accuracy (correct / judged)", "range": [-0.05, 1.1]},
        },
    )


def teacher_length_plot(summary: Summary) -> str:
    teachers = [t for t in summary.teachers if t.length is not None]
    if not teachers:
        return _note("teacher-length", "no trace lengths: the run has no traces yet")
    names = [t.model for t in teachers]
    data = [_box("all traces", names, [t.length for t in teachers], "#9a6700")]
    if any(t.length_correct is not None for t in teachers):
        data.append(_box("correct", names, [t.length_correct for t in teachers], "#1a7f37"))
    return _figure_html(
        "teacher-length",
        data,
        {
            "title": "Trace length per teacher",
            "boxmode": "group",
            "yaxis": {"title": summary.length_unit},
        },
    )


def agreement_plot(summary: Summary) -> str:
    """Heatmap of the share of problems on which two teachers' majority verdicts agree."""
    import plotly.graph_objects as go

    pairs = summary.teacher_agreement.pairs
    if not pairs:
        why = (
            "one teacher: nothing to compare"
            if len(summary.teachers) < 2
            else "no problem has a verdict from two teachers"
        )
        return _note("agreement", f"agreement between teachers: {why}")
    names = sorted({p.a for p in pairs} | {p.b for p in pairs})
    index = {name: i for i, name in enumerate(names)}
    z: list[list[float | None]] = [[None] * len(names) for _ in names]
    text = [["" for _ in names] for _ in names]
    for p in pairs:
        kappa = "–" if p.kappa is None else f"{p.kappa:.2f}"
        label = f"{p.agreement:.2f}<br>κ {kappa}<br>n {p.problems}"
        for i, j in ((index[p.a], index[p.b]), (index[p.b], index[p.a])):
            z[i][j] = p.agreement
            text[i][j] = label
    trace = go.Heatmap(
        z=z,
        x=names,
        y=names,
        text=text,
        texttemplate="%{text}",
        hovertemplate="%{y} × %{x}<br>agreement %{z:.3f}<extra></extra>",
        zmin=0,
        zmax=1,
        colorscale="Blues",
        colorbar={"title": {"text": "agreement"}},
    )
    return _figure_html(
        "agreement",
        [trace],
        {
            "title": "Agreement between teachers (majority verdicts per problem)",
            "yaxis": {"autorange": "reversed"},
        },
    )


def dedup_plot(summary: Summary) -> str:
    import plotly.graph_objects as go

    if not summary.dedup:
        return _note("dedup", "no dedup step in this run")
    data = [
        go.Bar(name=d.stage_id, x=[str(k) for k in d.sizes], y=list(d.sizes.values()))
        for d in summary.dedup
        if d.sizes
    ]
    if not data:
        return _note("dedup", "; ".join(d.note or "" for d in summary.dedup))
    return _figure_html(
        "dedup",
        data,
        {
            "title": "Dedup cluster sizes",
            "xaxis": {"title": "rows in the cluster", "type": "category"},
            "yaxis": {"title": "clusters"},
            "barmode": "group",
        },
    )


def _table(header: Sequence[str], rows: Sequence[Sequence[object]], numeric: set[int]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="n">{_e(c)}</td>' if i in numeric else f"<td>{_e(c)}</td>"
            for i, c in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _tables(summary: Summary) -> str:
    stages = _table(
        ["stage", "operator", "rows in", "rows out", "dropped"],
        [(s.stage_id, s.operator, s.rows_in, s.rows_out, s.dropped) for s in summary.stages],
        {2, 3, 4},
    )
    drops = (
        _table(
            ["stage", "reason", "rows", "example detail"],
            [(d.stage_id, d.reason, d.rows, d.example) for d in summary.drops],
            {2},
        )
        if summary.drops
        else "<p>No row was dropped.</p>"
    )
    bands = _table(
        [
            "band",
            "problems",
            "mean pass rate",
            "traces",
            "kept",
            "median length (all)",
            "median length (kept)",
            "tokens kept",
        ],
        [
            (
                b.name,
                b.problems,
                _num(b.mean_pass_rate),
                b.traces,
                b.kept,
                _num(b.length_all.median if b.length_all else None),
                _num(b.length_kept.median if b.length_kept else None),
                _num(b.length_kept.total if b.length_kept else None),
            )
            for b in summary.bands
        ],
        {1, 2, 3, 4, 5, 6, 7},
    )
    return (
        f"<h2>Stages</h2>{stages}<h3>What each filter dropped and why</h3>{drops}"
        f"<h2>Difficulty bands</h2>{bands}<h2>Teachers</h2>{_teacher_tables(summary)}"
    )


def _teacher_tables(summary: Summary) -> str:
    def spread(lengths: Lengths | None) -> str:
        if lengths is None:
            return "–"
        return f"{_num(lengths.median)} ({_num(lengths.q1)}–{_num(lengths.q3)})"

    teachers = _table(
        [
            "teacher",
            "traces",
            "judged",
            "correct",
            "accuracy",
            "problems",
            "solved",
            "split",
            "solved only",
            "mean length",
            "median (q1–q3)",
            "p90",
            "median correct",
            "kept",
        ],
        [
            (
                t.model,
                t.traces,
                t.judged,
                t.correct,
                _num(t.accuracy),
                t.problems,
                t.solved,
                t.split,
                t.solved_only,
                _num(t.mean_length),
                spread(t.length),
                _num(t.length.p90 if t.length else None),
                _num(t.length_correct.median if t.length_correct else None),
                t.kept,
            )
            for t in summary.teachers
        ],
        set(range(1, 14)),
    )
    pairs = summary.teacher_agreement.pairs
    if not pairs:
        return teachers
    agreement = _table(
        [
            "teacher a",
            "teacher b",
            "problems",
            "agree",
            "agreement",
            "κ",
            "both solved",
            "a only",
            "b only",
            "neither",
        ],
        [
            (
                p.a,
                p.b,
                p.problems,
                p.agree,
                _num(p.agreement),
                _num(p.kappa, 2),
                p.both_solved,
                p.a_only,
                p.b_only,
                p.neither,
            )
            for p in pairs
        ],
        set(range(2, 10)),
    )
    return (
        f'{teachers}<h3>Agreement between teachers</h3><p class="caption">'
        f"{_e(summary.teacher_agreement.definition)}</p>{agreement}"
    )


def _clip(text: object, limit: int) -> str:
    value = "" if text is None else str(text)
    return value if len(value) <= limit else value[:limit] + f"… [{len(value) - limit:,} more]"


def _samples(run: Run) -> str:
    picked = sample_traces(run)
    if not picked:
        return "<p>No traces in this run yet.</p>"
    rows = []
    for p in picked:
        verdict = p["verdict"]
        mark = (
            '<span class="ok">correct</span>'
            if verdict is True
            else '<span class="bad">incorrect</span>'
            if verdict is False
            else "not judged"
        )
        fate = (
            "kept"
            if p["drop_stage"] is None
            else f"dropped at {p['drop_stage']}: {p['drop_reason']} ({p['drop_detail'] or ''})"
        )
        rows.append(
            f"<tr><td>{_e(p['band'])}</td><td>{_e(p['problem_id'])}<br>"
            f"<small>{_e(p['trace_id'])}</small></td><td>{mark}<br>answer "
            f"<code>{_e(p['extracted_answer'])}</code>, reference "
            f"<code>{_e(p['reference_answer'])}</code></td>"
            f'<td class="n">{_e(p["length"])}</td><td>{_e(fate)}</td>'
            f"<td><details><summary>{_e(_clip(p['prompt'], 120))}</summary>"
            f"<pre>{_e(_clip(p['prompt'], PROMPT_CHARS))}</pre><pre>"
            f"{_e(_clip(p['completion'], COMPLETION_CHARS))}</pre></details></td></tr>"
        )
    head = "".join(
        f"<th>{h}</th>"
        for h in ("band", "problem / trace", "verdict", "length", "fate", "prompt and trace")
    )
    return (
        f'<table id="samples"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
    )


def render(run: Run, summary: Summary) -> str:
    """The report page for a run and its summary, as one HTML string."""
    from plotly.offline import get_plotlyjs

    warn = f'<p class="warn" id="status">{_e(summary.status)}</p>' if summary.status else ""
    kpis = [
        ("problems", summary.problems),
        ("traces", summary.traces),
        ("traces kept", summary.kept),
        *[(f"{kind} rows", rows) for kind, rows in summary.outputs.items()],
    ]
    kpi_html = "".join(f'<div class="kpi"><b>{v:,}</b>{_e(k)}</div>' for k, v in kpis)
    plots = [
        funnel_plot(summary),
        drops_plot(summary),
        pass_rate_plot(summary),
        length_plot(summary),
        teacher_plot(summary),
        teacher_length_plot(summary),
        agreement_plot(summary),
        dedup_plot(summary),
    ]
    made = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>curate report: {_e(summary.name)}</title>
<style>{CSS}</style>
<script>{get_plotlyjs()}</script>
</head><body>
<h1>{_e(summary.name)}</h1>
<p class="sub">run {_e(summary.run_id or "unknown")} · {_e(run.root)} · report made {made} ·
lengths in {_e(summary.length_unit)}</p>
{warn}
<div class="kpis">{kpi_html}</div>
<div class="grid">{"".join(plots)}</div>
<p class="caption">Boxes show quartiles, whiskers the minimum and maximum, the dashed line the
mean. A band's traces are all trace rows of its problems; kept ones are in the final pool.</p>
{_tables(summary)}
<h2>Sample traces per band</h2>
<p class="caption">Up to two correct and two other traces per band, picked by the md5 of their
trace id, with what happened to them.</p>
{_samples(run)}
</body></html>
"""


def write_report(run_dir: str | Path, output: str | Path) -> Summary:
    """Write the report of a run to `output` (atomically); returns the summary it shows."""
    run = open_run(run_dir)
    summary = summarize(run)
    page = render(run, summary)
    target = Path(output)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".tmp-{target.name}")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(target)
    return summary
