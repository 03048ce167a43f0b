"""Prompts for the `sample` operator: templates, system prompts and per-sample settings.

Templates and system prompts are Jinja2 (sandboxed, undefined names are errors) over a row's
columns: `{{ prompt }}`, `{{ reference_answer }}`, `{{ completion }}` of a trace being rewritten,
`{{ difficulty }}`, and `meta`, the row's `problem_meta` JSON as a mapping. Each is given inline
or as a file (a one-line value ending in .j2, .jinja, .jinja2, .txt or .md, relative to the
spec), in a list (ids: the file's stem, else t0, t1, … and s0, s1, …) or a mapping id → text.

Sample j of a problem (j counts from 0 within one try) uses:
- variant `variants[j % len(variants)]`: with `combine: cycle` the j-th template with the j-th
  system prompt (each list cycled on its own); with `cross` every (template, system prompt)
  pair in turn;
- temperature: the value; `list[j % len(list)]`; or a range spread evenly over the n samples
  (`min + (max - min) * j / (n - 1)`);
- seed: base seed + sample index (the index runs on across the tries of `until: verified`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import jinja2
import jinja2.sandbox

from curate.errors import OperatorError

FILE_SUFFIXES = (".j2", ".jinja", ".jinja2", ".txt", ".md")
_ENV = jinja2.sandbox.SandboxedEnvironment(
    undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False
)


def looks_like_file(text: str) -> bool:
    """A template given as a file name rather than inline text."""
    return "\n" not in text and "{" not in text and text.strip().endswith(FILE_SUFFIXES)


def is_template(text: str) -> bool:
    return "{{" in text or "{%" in text or "{#" in text


@dataclass(frozen=True)
class Text:
    """One template or system prompt: its id, text and the file it came from (if any)."""

    id: str
    text: str
    path: Path | None = None


def load_texts(
    given: list[str] | Mapping[str, str] | None, *, prefix: str, base_dir: Path, what: str
) -> list[Text]:
    """Templates (prefix 't') or system prompts ('s') as given in the step's params."""
    if not given:
        return []
    items = list(given.items()) if isinstance(given, Mapping) else [(None, t) for t in given]
    texts = []
    for index, (name, value) in enumerate(items):
        path = None
        if looks_like_file(value):
            path = Path(value).expanduser()
            path = path if path.is_absolute() else (base_dir / path).resolve()
            try:
                body = path.read_text()
            except OSError as exc:
                raise OperatorError(f"{what} file {value!r}: cannot read {path}: {exc}") from None
            text_id = name or path.stem
        else:
            body = value
            text_id = name or f"{prefix}{index}"
        texts.append(Text(id=text_id, text=body, path=path))
    return texts


@dataclass(frozen=True)
class Variant:
    """A template with a system prompt. None template: the row's prompt as it is; None
    system: the row's own system_prompt column, when it has one."""

    template: Text | None
    system: Text | None

    @property
    def template_id(self) -> str | None:
        parts = [t.id for t in (self.template, self.system) if t is not None]
        return "/".join(parts) if parts else None


def make_variants(templates: list[Text], systems: list[Text], combine: str) -> list[Variant]:
    temps: list[Text | None] = list(templates) or [None]
    syss: list[Text | None] = list(systems) or [None]
    if combine == "cross":
        return [Variant(t, s) for t in temps for s in syss]
    count = max(len(temps), len(syss))
    return [Variant(temps[i % len(temps)], syss[i % len(syss)]) for i in range(count)]


class Range(Protocol):
    @property
    def min(self) -> float: ...

    @property
    def max(self) -> float: ...


def temperature_schedule(spec: float | list[float] | Range, n: int) -> list[float]:
    """The temperature of samples 0..n-1 (see the module docstring)."""
    if isinstance(spec, int | float):
        return [float(spec)] * n
    if isinstance(spec, list):
        return [float(spec[j % len(spec)]) for j in range(n)]
    low, high = float(spec.min), float(spec.max)
    if n == 1:
        return [low]
    return [low + (high - low) * j / (n - 1) for j in range(n)]


class Renderer:
    """Renders the messages of a row for a variant; compiled templates are kept."""

    def __init__(self, variants: list[Variant]) -> None:
        self.variants = variants
        self._compiled: dict[str, jinja2.Template] = {}
        for variant in variants:
            for text in (variant.template, variant.system):
                if text is not None and is_template(text.text) and text.text not in self._compiled:
                    try:
                        self._compiled[text.text] = _ENV.from_string(text.text)
                    except jinja2.TemplateSyntaxError as exc:
                        where = text.path or f"'{text.id}'"
                        raise OperatorError(
                            f"template {where}: Jinja2 syntax error on line {exc.lineno}: "
                            f"{exc.message}"
                        ) from None

    def _render(self, text: Text, row: Mapping[str, Any]) -> str:
        compiled = self._compiled.get(text.text)
        if compiled is None:
            return text.text
        try:
            return compiled.render(row)
        except jinja2.UndefinedError as exc:
            names = ", ".join(sorted(k for k in row if not k.startswith("_")))
            raise OperatorError(
                f"template '{text.id}': {exc.message}; the row has: {names}"
            ) from None
        except jinja2.TemplateError as exc:
            raise OperatorError(f"template '{text.id}': {exc}") from None

    def messages(
        self, variant: Variant, row: Mapping[str, Any]
    ) -> tuple[list[dict[str, str]], str | None]:
        """The chat messages for `row`, and the system prompt they carry (if any)."""
        template = variant.template
        user = row["prompt"] if template is None else self._render(template, row)
        system = (
            self._render(variant.system, row)
            if variant.system is not None
            else row.get("system_prompt")
        )
        if system:
            return [
                {"role": "system", "content": system},
                {"role": "user", "content": user},
            ], system
        return [{"role": "user", "content": user}], None


def row_context(row: dict[str, Any]) -> dict[str, Any]:
    """A row's columns for templates, plus `meta` (problem_meta parsed)."""
    meta = row.get("problem_meta")
    parsed: Any = {}
    if isinstance(meta, str) and meta:
        try:
            parsed = json.loads(meta)
        except ValueError:
            parsed = {}
    row["meta"] = parsed if isinstance(parsed, dict) else {}
    return row
