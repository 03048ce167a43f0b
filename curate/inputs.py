"""Read the input file named by the spec's `input:` into the pool.

`read_input` reads a JSONL, CSV or Parquet file (curate.readers), maps its columns to pool
columns as `input.columns` says, and returns the pool (one row per problem, or one row per trace
when `columns.completion` is mapped) together with the rows it could not use.

Two kinds of trouble:
- file-level (missing file, unknown format, no rows, a mapped column the file does not have):
  always an InputError;
- bad rows (unreadable line, missing or empty prompt, a value of the wrong type, list columns of
  different lengths): with `on_bad_rows: fail` (the default) an InputError naming the first one
  as `file:line: reason`; with `skip` each goes to `rejects` with its reason and reading goes on.

Trace pools made elsewhere: a string `completion` gives one trace per row, a list gives one row
per problem whose traces are exploded (the first row decides which; a row of the other shape is
bad). `sample_index` counts each problem's traces in file order, so it is the list position
for a problem on one row and stays unique when a problem's traces span rows.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import json.encoder
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import polars as pl
import pyarrow as pa

from curate import ids
from curate.errors import InputError
from curate.readers import EXTENSIONS, READERS, RowReader, clean_text, json_kind
from curate.schemas.pool import PROBLEM_COLUMNS, order_columns, pool_field
from curate.schemas.spec import ColumnMap, InputSpec

REJECT_SCHEMA = pa.schema(
    [
        pa.field("source", pa.string()),  # the input file's resolved path
        pa.field("line", pa.int64()),  # 1-based line (JSONL, CSV) or row (Parquet)
        pa.field("reason", pa.string()),
        pa.field("raw", pa.string()),  # the row's text, cut to 2,000 characters
    ]
)

TRACE_ROLE = "teacher"
# Per-trace source columns: in a one-row-per-problem file each may be a list (one item per
# trace) or a single value shared by all the problem's traces.
PER_TRACE_KEYS = ("label", "reasoning", "finish_reason", "model", "trace_id")
# Trace columns the reader always fills; reasoning, finish_reason and source_label only when
# their source column is mapped (an all-null column would claim the input had them).
TRACE_OUTPUT = ["trace_id", "sample_index", "round", "role", "model", "completion"]

_TRUE = frozenset({"true", "1"})
_FALSE = frozenset({"false", "0"})
_HINT = (
    "Set input.on_bad_rows: skip to keep the good rows and write the bad ones, with their "
    "reasons, to rejects."
)


@dataclass(frozen=True)
class InputResult:
    """The pool read from the input file, the rows that could not be used, and the file."""

    frame: pl.DataFrame  # pool columns only, declared types, declared order
    rejects: pl.DataFrame  # columns of REJECT_SCHEMA
    path: Path  # the resolved input file
    sha256: str  # of the whole input file


class _BadRow(Exception):
    """A row that cannot enter the pool; the message is the reason."""


def read_input(spec: InputSpec, *, base_dir: Path) -> InputResult:
    """Read `spec.path` (relative to `base_dir`, the spec file's folder) into the pool."""
    path = resolve_path(spec.path, base_dir)
    if not path.exists():
        raise InputError(
            f"input file not found: {path} (input.path {spec.path!r}, relative to {base_dir})"
        )
    if not path.is_file():
        raise InputError(f"input path is not a file: {path} (input.path {spec.path!r})")
    fmt = input_format(spec, path)
    name = spec.path
    mapped = mapped_columns(spec.columns)
    builder = _PoolBuilder(spec, source=spec.source or path.stem)
    rejects = _Rejects(source=str(path), keep_all=spec.on_bad_rows == "skip")

    with READERS[fmt](path, limit=spec.limit, name=name) as reader:
        if reader.columns_known_upfront:
            if not reader.columns:
                raise _empty(name, path)
            _check_columns(name, mapped, reader.columns, limit=spec.limit)
        reader.select(list(dict.fromkeys(column for _, column in mapped)))
        add = builder.add
        for place, record, reason in reader:
            if record is not None:
                try:
                    add(record, place)
                    continue
                except _BadRow as bad:
                    reason = str(bad)
            rejects.add(place, reason or "unreadable row", reader)

    if reader.rows == 0:
        raise _empty(name, path)
    if not reader.columns_known_upfront and reader.records:
        _check_columns(name, mapped, reader.columns, limit=spec.limit)
    where = _place_format(fmt, name)
    if rejects.count and spec.on_bad_rows == "fail":
        place, reason = rejects.first
        more = (
            f"\n({rejects.count:,} bad rows in all; this is the first.)"
            if rejects.count > 1
            else ""
        )
        raise InputError(f"{where(place)}: {reason}{more}\n{_HINT}")
    if builder.rows == 0:
        shown = "\n".join(f"  {where(p)}: {r}" for p, r in rejects.examples(3))
        raise InputError(
            f"{name}: no usable rows — all {rejects.count:,} rows are bad, starting with:\n{shown}"
        )
    return InputResult(
        frame=builder.frame(),
        rejects=rejects.frame(),
        path=path,
        sha256=file_sha256(path),
    )


def _empty(name: str, path: Path) -> InputError:
    return InputError(f"{name}: the file has no rows ({path}) — expected at least one row")


def resolve_path(path: str, base_dir: Path) -> Path:
    candidate = Path(path).expanduser()
    if not candidate.is_absolute():
        candidate = base_dir / candidate
    return candidate.resolve()


def input_format(spec: InputSpec, path: Path) -> str:
    """`spec.format`, else the format its extension names; InputError when it names none."""
    if spec.format is not None:
        return spec.format
    fmt = EXTENSIONS.get(path.suffix.lower())
    if fmt is None:
        known = ", ".join(sorted(EXTENSIONS))
        raise InputError(
            f"{spec.path}: cannot tell the format from the extension {path.suffix or '(none)'!r}"
            f" (known: {known}); set input.format to one of: jsonl, parquet, csv"
        )
    return fmt


def mapped_columns(columns: ColumnMap) -> list[tuple[str, str]]:
    """(mapping key, source column) for every mapped column, e.g. ("answer", "gt")."""
    pairs: list[tuple[str, str]] = []
    for key in ColumnMap.model_fields:
        value = getattr(columns, key)
        if key == "meta":
            pairs.extend((f"meta[{i}]", column) for i, column in enumerate(value))
        elif value is not None:
            pairs.append((key, value))
    return pairs


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _place_format(fmt: str, name: str) -> Callable[[int], str]:
    if fmt == "parquet":
        return lambda place: f"{name} row {place}"
    return lambda place: f"{name}:{place}"


def _check_columns(
    name: str, mapped: list[tuple[str, str]], existing: list[str], *, limit: int | None
) -> None:
    present = set(existing)
    missing = [(key, column) for key, column in mapped if column not in present]
    if not missing:
        return
    scope = f"the first {limit:,} rows of the file" if limit is not None else "the file"
    problems = []
    for key, column in missing:
        text = f"column {column!r} (columns.{key}) is not in {scope}"
        close = difflib.get_close_matches(column, existing, n=1, cutoff=0.6)
        if close:
            text += f"; did you mean {close[0]!r}?"
        problems.append(text)
    shown = ", ".join(repr(c) for c in existing[:50]) or "(none)"
    if len(existing) > 50:
        shown += f", … ({len(existing) - 50} more)"
    raise InputError(f"{name}: " + "\n".join(problems) + f"\nColumns in the file: {shown}")


class _Rejects:
    """Bad rows: all of them when skipping; only the first and a count when failing."""

    def __init__(self, *, source: str, keep_all: bool) -> None:
        self.source = source
        self.keep_all = keep_all
        self.count = 0
        self.places: list[int] = []
        self.reasons: list[str] = []
        self.raws: list[str] = []

    def add(self, place: int, reason: str, reader: RowReader) -> None:
        self.count += 1
        if self.keep_all or self.count == 1:
            self.places.append(place)
            self.reasons.append(reason)
            self.raws.append(reader.raw())

    @property
    def first(self) -> tuple[int, str]:
        return self.places[0], self.reasons[0]

    def examples(self, n: int) -> list[tuple[int, str]]:
        return list(zip(self.places[:n], self.reasons[:n], strict=True))

    def frame(self) -> pl.DataFrame:
        count = len(self.places)
        table = pa.table(
            [
                pa.array([self.source] * count, pa.string()),
                pa.array(self.places, pa.int64()),
                _strings(self.reasons),
                _strings(self.raws),
            ],
            schema=REJECT_SCHEMA,
        )
        return _frame(table)


def _frame(table: pa.Table) -> pl.DataFrame:
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    return frame


def _strings(values: Sequence[str | None]) -> pa.Array:
    """A string array; text with lone surrogates (from JSON escapes like "\\ud800") is made
    visible rather than failing the whole read."""
    try:
        return pa.array(values, pa.string())
    except UnicodeEncodeError:
        return pa.array([None if v is None else clean_text(v) for v in values], pa.string())


class _PoolBuilder:
    """Turns records into pool columns. `add` checks everything about a row before it appends
    anything, so a bad row leaves nothing behind. Problem-level values are kept once per file
    row and repeated for each of the row's traces at the end."""

    def __init__(self, spec: InputSpec, *, source: str) -> None:
        cm = spec.columns
        self.cm = cm
        self.source = source
        self.default_model = spec.model
        self.where = {key: f"{column!r} (columns.{key})" for key, column in mapped_columns(cm)}
        self.traces = cm.completion is not None
        self.per_trace = [(k, getattr(cm, k)) for k in PER_TRACE_KEYS if getattr(cm, k)]
        self.optional_trace = [(out, key) for out, key in _OPTIONAL_TRACE if getattr(cm, key)]
        self.meta_keys = [(_encode_string(c) + ": ", c) for c in cm.meta]
        self.list_mode: bool | None = None  # completion holds lists (one row per problem)
        self.mode_place = 0
        self.counts: dict[str, int] = {}  # traces seen per problem: the next sample_index
        self.id_cache: dict[str, str] = {}
        self.rows = 0
        # one entry per good file row
        self.problem_id: list[str] = []
        self.source_row: list[int] = []
        self.domain: list[str | None] = []
        self.system_prompt: list[str | None] = []
        self.prompt: list[str] = []
        self.reference_answer: list[str | None] = []
        self.problem_meta: list[str | None] = []
        self.n_traces: list[int] = []
        # one entry per trace
        self.trace_data: dict[str, list[Any]] = {n: [] for n in TRACE_OUTPUT}
        for output, _ in self.optional_trace:
            self.trace_data[output] = []

    def add(self, record: dict[str, Any], place: int) -> None:
        cm = self.cm
        prompt = record.get(cm.prompt)
        if type(prompt) is not str or not prompt or prompt.isspace():
            self._bad_prompt(record, prompt)
        if cm.id is not None:
            problem = self._problem_id(record.get(cm.id))
        else:
            cached = self.id_cache.get(prompt)
            if cached is None:
                if len(self.id_cache) >= 100_000:
                    self.id_cache.clear()
                cached = self.id_cache[prompt] = ids.problem_id(prompt)
            problem = cached
        # record.get(None) is None: an unmapped column reads as null
        answer = record.get(cm.answer)
        if answer is not None and type(answer) is not str:
            answer = self._text(answer, "answer", structured=True)
        domain = record.get(cm.domain)
        if domain is not None and type(domain) is not str:
            domain = self._text(domain, "domain")
        system = record.get(cm.system_prompt)
        if system is not None and type(system) is not str:
            system = self._text(system, "system_prompt")
        meta = self._meta(record) if cm.meta else None
        if self.traces:
            self.n_traces.append(self._add_traces(record, problem, place))
        self.problem_id.append(problem)
        self.source_row.append(place)
        self.domain.append(domain)
        self.system_prompt.append(system)
        self.prompt.append(prompt)
        self.reference_answer.append(answer)
        self.problem_meta.append(meta)
        self.rows += 1

    def _meta(self, record: dict[str, Any]) -> str:
        """The meta columns as a JSON object; the same text json.dumps(..., ensure_ascii=False)
        gives, built by hand for plain values because this runs once per row."""
        parts = []
        for prefix, column in self.meta_keys:
            value = record.get(column)
            kind = type(value)
            if isinstance(value, str):
                parts.append(prefix + _encode_string(value))
            elif value is None:
                parts.append(prefix + "null")
            elif kind is int:
                parts.append(prefix + int.__repr__(value))
            elif kind is bool:
                parts.append(prefix + ("true" if value else "false"))
            else:
                parts.append(prefix + _json(value))
        return "{" + ", ".join(parts) + "}"

    def _bad_prompt(self, record: dict[str, Any], prompt: object) -> NoReturn:
        where = self.where["prompt"]
        if self.cm.prompt not in record:
            raise _BadRow(f"no {where} field — expected the problem text")
        if prompt is None:
            raise _BadRow(f"{where} is null or empty — expected the problem text")
        if not isinstance(prompt, str):
            raise _BadRow(f"{where} is a {json_kind(prompt)} — expected the problem text (string)")
        raise _BadRow(f"{where} is empty — expected the problem text")

    def _problem_id(self, value: object) -> str:
        where = self.where["id"]
        if value is None:
            raise _BadRow(f"{where} is missing or null — expected a problem id")
        if isinstance(value, (bool, list, tuple, dict)):
            raise _BadRow(f"{where} is a {json_kind(value)} — expected a string or integer id")
        text = _scalar_text(value)
        if not text or text.isspace():
            raise _BadRow(f"{where} is empty — expected a problem id")
        return text

    def _text(self, value: object, key: str, *, structured: bool = False) -> str | None:
        if isinstance(value, (list, tuple, dict)):
            if structured:
                return _json(value)
            raise _BadRow(f"{self.where[key]} is a {json_kind(value)} — expected text")
        return _scalar_text(value)

    # -- traces ----------------------------------------------------------------------------
    def _add_traces(self, record: dict[str, Any], problem: str, place: int) -> int:
        """Check the row's traces, then append them; the number of traces."""
        where = self.where["completion"]
        value = record.get(self.cm.completion)
        if value is None:
            raise _BadRow(f"{where} is missing or null — expected the trace text")
        is_list = isinstance(value, (list, tuple))
        if not is_list and type(value) is not str:
            raise _BadRow(
                f"{where} is a {json_kind(value)} — expected a string (one trace per row) or a "
                "list of strings (the traces of one problem)"
            )
        if self.list_mode is not None and is_list != self.list_mode:
            earlier = "a list" if self.list_mode else "a string"
            raise _BadRow(
                f"{where} is a {json_kind(value)} here but {earlier} at row/line "
                f"{self.mode_place} — expected the same shape on every row"
            )
        completions: list[Any] = list(value) if is_list else [value]
        n = len(completions)
        if n == 0:
            raise _BadRow(f"{where} is an empty list — expected at least one trace")
        for i, text in enumerate(completions):
            if type(text) is not str:
                raise _BadRow(f"{where}[{i}] is a {json_kind(text)} — expected a string")
        per_trace = {
            key: self._per_trace(key, record.get(column), n, is_list)
            for key, column in self.per_trace
        }
        # the row is good: from here on nothing raises
        if self.list_mode is None:
            self.list_mode = is_list
            self.mode_place = place
        start = self.counts.get(problem, 0)
        self.counts[problem] = start + n
        models = per_trace.get("model")
        given_ids = per_trace.get("trace_id")
        data = self.trace_data
        for i in range(n):
            model = models[i] if models is not None else None
            if model is None:
                model = self.default_model
            index = start + i
            trace_id = given_ids[i] if given_ids is not None else None
            if trace_id is None:
                trace_id = ids.trace_id(problem, model, 0, index)
            data["trace_id"].append(trace_id)
            data["sample_index"].append(index)
            data["model"].append(model)
            data["completion"].append(completions[i])
        for output, key in self.optional_trace:
            data[output].extend(per_trace[key])
        return n

    def _per_trace(self, key: str, value: object, n: int, is_list: bool) -> list[Any]:
        where = self.where[key]
        if isinstance(value, (list, tuple)):
            if not is_list:
                raise _BadRow(
                    f"{where} is a list but {self.where['completion']} is a string — expected "
                    "one value per trace row"
                )
            if len(value) != n:
                raise _BadRow(
                    f"{where} has {len(value)} items but {self.where['completion']} has {n} — "
                    "list columns must have one item per trace"
                )
            return [self._trace_value(key, item, f"{where}[{i}]") for i, item in enumerate(value)]
        if key == "trace_id" and n > 1 and value is not None:
            raise _BadRow(
                f"{where} is a single {json_kind(value)} but {self.where['completion']} has {n} "
                "traces — expected a list with one id per trace"
            )
        return [self._trace_value(key, value, where)] * n

    def _trace_value(self, key: str, value: object, where: str) -> Any:
        if key == "label":
            return _label(value, where)
        if value is None or type(value) is str:
            return value
        if isinstance(value, (list, tuple, dict)):
            raise _BadRow(f"{where} is a {json_kind(value)} — expected text")
        return _scalar_text(value)

    # -- result ----------------------------------------------------------------------------
    def frame(self) -> pl.DataFrame:
        rows = self.rows
        columns: dict[str, pa.Array] = {
            "problem_id": _strings(self.problem_id),
            "source": pa.array([self.source] * rows, pa.string()),
            "source_row": pa.array(self.source_row, pa.int64()),
            "domain": _strings(self.domain),
            "system_prompt": _strings(self.system_prompt),
            "prompt": _strings(self.prompt),
            "reference_answer": _strings(self.reference_answer),
            "problem_meta": _strings(self.problem_meta),
        }
        if self.traces:
            repeat = pa.array(np.repeat(np.arange(rows, dtype=np.int64), self.n_traces))
            columns = {name: array.take(repeat) for name, array in columns.items()}
            total = len(repeat)
            data = self.trace_data
            data["round"] = [0] * total
            data["role"] = [TRACE_ROLE] * total
            for name, values in data.items():
                kind = pool_field(name).type
                columns[name] = _strings(values) if kind == pa.string() else pa.array(values, kind)
        names = order_columns(list(columns))
        schema = pa.schema([pa.field(name, pool_field(name).type) for name in names])
        return _frame(pa.table([columns[name] for name in names], schema=schema))


_PROBLEM_NAMES = [
    "problem_id",
    "source",
    "source_row",
    "domain",
    "system_prompt",
    "prompt",
    "reference_answer",
    "problem_meta",
]
assert [f.name for f in PROBLEM_COLUMNS] == _PROBLEM_NAMES, "keep in step with schemas/pool.py"
# (pool column, mapping key) of the trace columns filled only when mapped.
_OPTIONAL_TRACE = [
    ("reasoning", "reasoning"),
    ("finish_reason", "finish_reason"),
    ("source_label", "label"),
]


def _label(value: object, where: str) -> bool | None:
    """True/false from a bool, 0/1, or the strings true/false/1/0 (any case); null stays null."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, float) and math.isnan(value):
        return None  # how a float column writes a missing label
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
    shown = repr(value) if isinstance(value, (str, int, float)) else f"a {json_kind(value)}"
    if len(shown) > 60:
        shown = shown[:57] + "..."
    raise _BadRow(f"{where} is {shown} — expected a label: true/false, 1/0 or null")


def _scalar_text(value: object) -> str | None:
    """A scalar as text: integers without a decimal point (42, not 42.0), NaN as null (how a
    missing number is often written), anything else (dates, decimals) as str() gives it."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if value.is_integer() and abs(value) < 1e16:
            return str(int(value))
        return repr(value)
    if isinstance(value, Decimal):
        if value.is_nan():
            return None
        if value.is_finite() and value == value.to_integral_value():
            return str(int(value))
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return str(value)


def _json_default(value: object) -> Any:
    if isinstance(value, Decimal):
        return _scalar_text(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


_encode_string: Callable[[str], str] = json.encoder.encode_basestring
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, default=_json_default)


def _json(value: object) -> str:
    """Compact-ish JSON text (", " and ": " separators, as json.dumps writes), non-ASCII kept."""
    try:
        return _ENCODER.encode(value)
    except ValueError:  # NaN or infinity somewhere: JSON has no such numbers; write null
        return _ENCODER.encode(_finite(value))


def _finite(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
