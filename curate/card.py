"""The dataset card (README.md) of a published run: a YAML header the Hub reads (configs and
their data files, licence, task categories, size category, tags) and a body that says what the
data is, how it was made, its difficulty and length statistics, how to load it, and the spec.

Every number comes from curate.summary (as in `curate stats` and the report) or the manifest.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from curate.summary import Lengths, Summary

SIZE_CATEGORIES = [
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"),
    (100_000_000, "10M<n<100M"),
    (1_000_000_000, "100M<n<1B"),
]

CONFIG_TEXT = {
    "sft": "one chat-format row per trace: `messages` (system, user, assistant), with "
    "`problem_id`, `trace_id`, `difficulty`, `pass_rate`, token counts, `model` and `verdict`",
    "preference": "one pair per problem: `prompt`, `chosen` and `rejected` message lists, with "
    "their trace ids, `difficulty`, `pass_rate` and token counts",
}


def size_category(rows: int) -> str:
    for limit, name in SIZE_CATEGORIES:
        if rows < limit:
            return name
    return "n>1B"


def card_metadata(
    *, license: str, name: str, configs: dict[str, list[str]], rows: int, tags: list[str]
) -> dict[str, Any]:
    """The YAML header: `configs` maps a config name to its data file patterns (split train)."""
    return {
        "license": license,
        "pretty_name": name,
        "task_categories": ["text-generation"],
        "size_categories": [size_category(rows)],
        "tags": tags,
        "configs": [
            {
                "config_name": kind,
                "data_files": [{"split": "train", "path": pattern} for pattern in patterns],
                **({"default": True} if index == 0 else {}),
            }
            for index, (kind, patterns) in enumerate(configs.items())
        ],
    }


def _n(value: float | int | None, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"


def _len(stats: Lengths | None) -> list[str]:
    if stats is None:
        return ["–"] * 4
    return [_n(stats.mean), _n(stats.median), _n(stats.p90), _n(stats.max)]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return [*lines, ""]


def _compact(value: Any) -> Any:
    """Parameters without their unset (null) entries, at every depth."""
    if isinstance(value, dict):
        return {k: _compact(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_compact(v) for v in value]
    return value


def _step_params(manifest: dict[str, Any], operator: str) -> list[str]:
    return [
        json.dumps(_compact(params), ensure_ascii=False)
        for step in manifest["spec"].get("steps", [])
        for name, params in step.items()
        if name == operator
    ]


def _steps(manifest: dict[str, Any]) -> list[str]:
    lines = []
    for step in manifest["spec"].get("steps", []):
        ((name, params),) = step.items()
        lines.append(f"- `{name}`: `{json.dumps(_compact(params or {}), ensure_ascii=False)}`")
    return lines


def _making_of(manifest: dict[str, Any]) -> list[str]:
    """Sampling and verification, in a sentence each."""
    spec = manifest["spec"]
    sampling = _step_params(manifest, "sample")
    if sampling:
        sampled = "Sampling settings: " + "; ".join(f"`{p}`" for p in sampling) + "."
    else:
        name = spec["input"]["path"].rsplit("/", 1)[-1]
        model = spec["input"].get("model")
        by = f" (written by `{model}`)" if model else ""
        sampled = (
            f"The traces were made elsewhere and imported from `{name}`{by}; no sampling step."
        )
    verifying = _step_params(manifest, "verify")
    verified = (
        "Verifier: `verify` " + "; ".join(f"`{p}`" for p in verifying) + ", which compares each "
        "trace's final answer with the problem's reference answer."
        if verifying
        else "No `verify` step: traces were not checked against reference answers."
    )
    return [sampled, "", verified, ""]


def card_text(
    *,
    repo: str,
    manifest: dict[str, Any],
    summary: Summary,
    spec_text: str,
    configs: dict[str, list[str]],
    license: str,
) -> str:
    spec = manifest["spec"]
    rows = {e.kind: e.rows for e in summary.exports}
    tags = ["curate", "reasoning", "distillation", "synthetic", *configs]
    header = card_metadata(
        license=license, name=spec["name"], configs=configs, rows=sum(rows.values()), tags=tags
    )
    teachers = ", ".join(f"`{t.model}`" for t in summary.teachers) or "none recorded"
    source = spec["input"].get("source") or spec["input"]["path"]
    lines = [
        "---",
        yaml.safe_dump(header, sort_keys=False, allow_unicode=True).rstrip(),
        "---",
        "",
        f"# {spec['name']}",
        "",
        f"Reasoning traces for distillation, curated with `curate` from `{source}`: "
        f"{summary.problems:,} problems and {summary.traces:,} teacher traces went in; "
        + ", ".join(f"{kind} has {rows.get(kind, 0):,} rows" for kind in configs)
        + ".",
        "",
        "## Configs",
        "",
        *_table(
            ["config", "rows", "problems", "what a row is"],
            [
                [f"`{e.kind}`", _n(e.rows), _n(e.problems), CONFIG_TEXT.get(e.kind, "")]
                for e in summary.exports
                if e.kind in configs
            ],
        ),
        "## How to load it",
        "",
        "```python",
        "from datasets import load_dataset",
        "",
        *[f'{kind} = load_dataset("{repo}", "{kind}", split="train")' for kind in configs],
        "```",
        "",
        "## How it was made",
        "",
        f"Teachers (models that wrote the traces): {teachers}.",
        "",
        *_making_of(manifest),
        *_table(
            ["teacher", "traces", "judged", "correct", "accuracy", "mean length"],
            [
                [
                    t.model,
                    _n(t.traces),
                    _n(t.judged),
                    _n(t.correct),
                    _n(t.accuracy),
                    _n(t.mean_length),
                ]
                for t in summary.teachers
            ],
        ),
        "Every step of the build, with its parameters:",
        "",
        *_steps(manifest),
        "",
        "Rows in and out of every stage, and why rows were dropped:",
        "",
        *_table(
            ["stage", "operator", "rows in", "rows out", "dropped", "reasons"],
            [
                [
                    s.stage_id,
                    s.operator,
                    _n(s.rows_in),
                    _n(s.rows_out),
                    _n(s.dropped),
                    ", ".join(f"{k} {v:,}" for k, v in s.dropped_by_reason.items()),
                ]
                for s in summary.stages
            ],
        ),
        "## Difficulty and length",
        "",
        f"A problem's pass rate is the share of its judged traces that were correct; bands are "
        f"ranges of it. Lengths are in {summary.length_unit}.",
        "",
        *_table(
            [
                "band",
                "problems",
                "mean pass rate",
                "traces in",
                "traces kept",
                "mean len (kept)",
                "median",
                "p90",
                "max",
            ],
            [
                [
                    b.name,
                    _n(b.problems),
                    _n(b.mean_pass_rate),
                    _n(b.traces),
                    _n(b.kept),
                    *_len(b.length_kept),
                ]
                for b in summary.bands
            ],
        ),
        "Pass rate per problem:",
        "",
        *_table(
            ["pass rate", *[f"{summary.pass_rates.edges[i]:.1f}+" for i in range(10)]],
            [["problems", *[_n(c) for c in summary.pass_rates.counts]]],
        ),
        "Published rows:",
        "",
        *_table(
            ["config", "by difficulty", "length of", "mean", "median", "p90", "max"],
            [
                [
                    e.kind,
                    ", ".join(f"{k} {v:,}" for k, v in e.by_difficulty.items()),
                    e.length_of,
                    *_len(e.length),
                ]
                for e in summary.exports
                if e.kind in configs
            ],
        ),
        "## Lineage",
        "",
        f"- run `{manifest['run_id']}`, spec hash `{manifest['spec_hash']}`, "
        f"curate {manifest['curate_version']}, Python {manifest['python']}",
        *[
            f"- input `{i['path'].rsplit('/', 1)[-1]}` sha256 `{i['sha256']}`, {i['rows']:,} rows"
            for i in manifest.get("inputs", [])
        ],
        "- libraries: "
        + ", ".join(f"{k} {v}" for k, v in manifest.get("libraries", {}).items() if v),
        "- `curate/manifest.json` in this repository holds the full manifest, "
        "`curate/spec.yaml` the spec.",
        "",
        "## The spec",
        "",
        "```yaml",
        spec_text.rstrip(),
        "```",
        "",
        "## Licence",
        "",
        f"`{license}`, as declared in the spec. Teacher outputs may also be subject to the "
        "terms of the model providers that produced them.",
        "",
    ]
    return "\n".join(lines)
