"""Row readers for the input formats: JSONL, CSV and Parquet, one record (a dict) at a time.

Each reader knows the exact place of every row (the 1-based line for JSONL and CSV, where a CSV
record that spans lines is placed at its first line; the 1-based row for Parquet), so a bad row
can be named precisely. A reader yields `(place, record, reason)`: `record` is None when the row
cannot be read at all (invalid JSON, bytes that are not UTF-8, a CSV row with the wrong number of
fields) and `reason` then says why. `raw()` gives the text of the row last yielded, for rejects.

Readers deal in bytes and syntax only; what the columns mean is curate.inputs' business.
"""

from __future__ import annotations

import csv
import io
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.parquet as pq

from curate.errors import InputError

RAW_CHARS = 2000  # raw text kept per rejected row
Row = tuple[int, "dict[str, Any] | None", "str | None"]

_CSV_FIELD_LIMIT = 2**31 - 1  # traces are long; the csv module's default cap is 128 KiB


def json_kind(value: object) -> str:
    """A value's type in JSON words, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def clean_text(text: str) -> str:
    """Text that UTF-8 can hold: undecodable bytes (kept as surrogate escapes) shown as \\xNN,
    lone surrogates (from JSON escapes) as \\uNNNN."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return "".join(_visible(char) for char in text)


def _visible(char: str) -> str:
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:
        return f"\\x{code - 0xDC00:02x}"
    if 0xD800 <= code <= 0xDFFF:
        return f"\\u{code:04x}"
    return char


class RowReader(ABC):
    """Reads one file's rows in order; use as a context manager, then iterate."""

    format: ClassVar[str]

    def __init__(self, path: Path, *, limit: int | None, name: str) -> None:
        self.path = path
        self.name = name  # how messages name the file
        self.limit = limit
        self.rows = 0  # rows seen (good or bad, blank lines not counted)
        self.records = 0  # rows that parsed into a record
        self._selected: list[str] | None = None

    @property
    @abstractmethod
    def columns(self) -> list[str]:
        """The file's columns: known before reading for CSV and Parquet, for JSONL the keys seen
        so far (all of them once iteration is over)."""

    @property
    def columns_known_upfront(self) -> bool:
        return True

    def select(self, columns: list[str]) -> None:
        """Read only these columns where the format allows it (Parquet)."""
        self._selected = columns

    @abstractmethod
    def __iter__(self) -> Iterator[Row]: ...

    @abstractmethod
    def raw(self) -> str:
        """The text of the row last yielded, cut to RAW_CHARS characters."""

    def __enter__(self) -> RowReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def _full(self) -> bool:
        return self.limit is not None and self.rows >= self.limit


class JsonlReader(RowReader):
    """One JSON object per line; blank lines are skipped. Lines are split on b"\\n" only, so a
    U+2028 inside a string does not end a line."""

    format = "jsonl"

    def __init__(self, path: Path, *, limit: int | None, name: str) -> None:
        super().__init__(path, limit=limit, name=name)
        self._seen: dict[str, None] = {}
        self._raw = ""

    @property
    def columns(self) -> list[str]:
        return list(self._seen)

    @property
    def columns_known_upfront(self) -> bool:
        return False

    def raw(self) -> str:
        return self._raw.rstrip("\r\n")[:RAW_CHARS]

    def __iter__(self) -> Iterator[Row]:
        # Columns are tracked only while a selected column has not been seen yet: afterwards
        # no "missing column" error can arise, so the per-row bookkeeping stops.
        seen = self._seen
        selected = self._selected
        pending = set(selected) if selected is not None else None
        limit = self.limit
        # json.loads without its two regex passes; any trouble goes the slow way for the message
        scan: Callable[[str, int], tuple[Any, int]]
        scan = json.JSONDecoder().scan_once  # type: ignore[attr-defined]
        offset = 0
        with self.path.open("rb") as handle:
            for number, data in enumerate(handle, 1):
                start = offset
                offset += len(data)
                if data.isspace():
                    continue
                if limit is not None and self.rows >= limit:
                    return
                self.rows += 1
                try:
                    text = data.decode("utf-8")
                except UnicodeDecodeError as error:
                    self._raw = data.decode("utf-8", "backslashreplace")
                    yield number, None, _utf8_reason(data, error, start)
                    continue
                if number == 1 and text.startswith("\ufeff"):
                    text = text[1:]
                self._raw = text
                try:
                    obj, end = scan(text, 0)
                    if end != len(text) and not text[end:].isspace():
                        raise ValueError("extra data")
                except (StopIteration, ValueError, RecursionError):
                    reason, obj = _parse_slowly(text)
                    if reason is not None:
                        yield number, None, reason
                        continue
                if type(obj) is not dict:
                    yield (
                        number,
                        None,
                        f"a JSON {json_kind(obj)}, not an object — expected one JSON object "
                        "per line",
                    )
                    continue
                if "\\u" in text and ("\\ud" in text or "\\uD" in text):
                    # an escape like \ud800 with no partner, in a column that is read
                    lone = _lone_surrogate(
                        obj if selected is None else {k: obj[k] for k in selected if k in obj}
                    )
                    if lone is not None:
                        yield number, None, lone
                        continue
                self.records += 1
                if pending is None or pending:
                    for key in obj:
                        seen.setdefault(key, None)
                    if pending:
                        pending.difference_update(obj)
                yield number, obj, None


def _parse_slowly(text: str) -> tuple[str | None, Any]:
    """json.loads, for its exact error message: (reason, None) or (None, value)."""
    try:
        return None, json.loads(text)
    except json.JSONDecodeError as error:
        return (
            f"invalid JSON ({error.msg}: column {error.colno}) — expected one JSON object per line",
            None,
        )
    except RecursionError:
        return "invalid JSON (nested too deeply) — expected one JSON object per line", None


def _lone_surrogate(value: Any, where: str = "") -> str | None:
    """A reason if a string in the value holds a lone surrogate (valid JSON, not valid text)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as error:
            char = value[error.start]
            place = f" in {where}" if where else ""
            return (
                f"not valid Unicode: a lone surrogate escape \\u{ord(char):04x}{place} — expected "
                "text that UTF-8 can hold"
            )
        return None
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        inner = f"{where}[{key!r}]" if where else repr(key)
        found = _lone_surrogate(item, inner)
        if found is not None:
            return found
    return None


def _utf8_reason(data: bytes, error: UnicodeDecodeError, line_start: int) -> str:
    bad = data[error.start : error.end].hex(" ")
    return (
        f"not valid UTF-8: byte(s) 0x{bad} at byte offset {error.start} of the line "
        f"(offset {line_start + error.start} in the file) — expected UTF-8 text"
    )


class CsvReader(RowReader):
    """A header line, then one record per row (quoted fields may span lines). Empty cells read
    as null. Rows are placed at the line they start on."""

    format = "csv"

    def __init__(self, path: Path, *, limit: int | None, name: str) -> None:
        super().__init__(path, limit=limit, name=name)
        self._handle: io.TextIOWrapper | None = None
        self._reader: Any = None
        self._header: list[str] = []
        self._fields: list[str] = []
        self._old_limit = 0

    def __enter__(self) -> CsvReader:
        self._handle = self.path.open(encoding="utf-8-sig", errors="surrogateescape", newline="")
        self._old_limit = csv.field_size_limit(_CSV_FIELD_LIMIT)  # put back by _close
        self._reader = csv.reader(self._handle)
        try:
            for fields in self._reader:
                if _blank(fields):
                    continue
                self._header = fields
                break
        except csv.Error as error:
            self._close()
            raise InputError(
                f"{self.name}:{self._reader.line_num}: cannot read the CSV header: {error}"
            ) from error
        bad = next((h for h in self._header if _has_escape(h)), None)
        if bad is not None:
            self._close()
            raise InputError(
                f"{self.name}:{self._reader.line_num}: the CSV header is not valid UTF-8 "
                f"(column {clean_text(bad)!r}) — expected UTF-8 text"
            )
        repeated = sorted({h for h in self._header if self._header.count(h) > 1})
        if repeated:
            self._close()
            raise InputError(
                f"{self.name}:{self._reader.line_num}: the CSV header names "
                f"{', '.join(map(repr, repeated))} more than once — expected unique column names"
            )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._close()

    def _close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
            csv.field_size_limit(self._old_limit)

    @property
    def columns(self) -> list[str]:
        return list(self._header)

    def raw(self) -> str:
        out = io.StringIO()
        csv.writer(out, lineterminator="").writerow(self._fields)
        return clean_text(out.getvalue()[:RAW_CHARS])

    def __iter__(self) -> Iterator[Row]:
        reader = self._reader
        header = self._header
        width = len(header)
        if not header:
            return
        previous = reader.line_num
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as error:
                raise InputError(
                    f"{self.name}:{previous + 1}: cannot parse the CSV: {error}"
                ) from error
            number = previous + 1
            previous = reader.line_num
            if _blank(fields):
                continue
            if self._full():
                return
            self.rows += 1
            self._fields = fields
            if len(fields) != width:
                yield (
                    number,
                    None,
                    f"{len(fields)} field(s) where the header has {width} — expected one value "
                    "per column (check the quoting)",
                )
                continue
            try:
                "".join(fields).encode("utf-8")
            except UnicodeEncodeError:
                yield number, None, _csv_utf8_reason(header, fields)
                continue
            self.records += 1
            yield (
                number,
                {h: (v if v != "" else None) for h, v in zip(header, fields, strict=True)},
                None,
            )


def _blank(fields: list[str]) -> bool:
    return not fields or (len(fields) == 1 and not fields[0].strip())


def _has_escape(text: str) -> bool:
    try:
        text.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def _csv_utf8_reason(header: list[str], fields: list[str]) -> str:
    for name, value in zip(header, fields, strict=True):
        for position, char in enumerate(value):
            if 0xDC80 <= ord(char) <= 0xDCFF:
                return (
                    f"not valid UTF-8: byte 0x{ord(char) - 0xDC00:02x} in column {name!r} at "
                    f"character {position} of the value — expected UTF-8 text"
                )
    return "not valid UTF-8 — expected UTF-8 text"


class ParquetReader(RowReader):
    """Rows of a Parquet file, in batches; only the selected columns are read."""

    format = "parquet"
    batch_rows = 65_536

    def __init__(self, path: Path, *, limit: int | None, name: str) -> None:
        super().__init__(path, limit=limit, name=name)
        try:
            self._file = pq.ParquetFile(path)
        except (pa.ArrowException, OSError) as error:
            raise InputError(f"{name}: cannot read the file as Parquet: {error}") from error
        self._names = list(self._file.schema_arrow.names)
        self._record: dict[str, Any] = {}

    @property
    def columns(self) -> list[str]:
        return list(self._names)

    def raw(self) -> str:
        text = json.dumps(self._record, ensure_ascii=False, default=str)
        return clean_text(text[:RAW_CHARS])

    def __iter__(self) -> Iterator[Row]:
        columns = self._selected if self._selected is not None else self._names
        size = self.batch_rows if self.limit is None else min(self.batch_rows, self.limit)
        try:
            batches = self._file.iter_batches(batch_size=size, columns=columns)
            for batch in batches:
                for record in batch.to_pylist():
                    if self._full():
                        return
                    self.rows += 1
                    self.records += 1
                    self._record = record
                    yield self.rows, record, None
        except pa.ArrowException as error:
            raise InputError(
                f"{self.name}: cannot read the Parquet data after row {self.rows}: {error}"
            ) from error


READERS: dict[str, type[RowReader]] = {
    "jsonl": JsonlReader,
    "csv": CsvReader,
    "parquet": ParquetReader,
}
EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet"}
