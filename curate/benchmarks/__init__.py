"""Benchmark sets that `decontaminate` checks a pool against: the built-in ones shipped as package
data (see data/README.md for sources and licences) and any JSONL, CSV or Parquet file with a text
column.

A benchmark is a name and a frame of items with string columns `id` and `text`. Items whose text
is null or blank are left out (they cannot leak anything); ids must be present and unique, since
`contaminated_with` names an item as `<benchmark>:<id>`.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import polars as pl

from curate.errors import InputError
from curate.readers import EXTENSIONS, READERS, json_kind

# name -> what it is (rows are checked by the tests against the shipped files)
BUILTIN: dict[str, str] = {
    "math500": "MATH-500: the 500-problem MATH test subset of 'Let's Verify Step by Step'",
    "aime24": "AIME 2024, parts I and II (30 problems)",
    "aime25": "AIME 2025, parts I and II (30 problems)",
    "amc23": "AMC 12 2023, A and B (40 problems)",
    "gsm8k": "GSM8K test split (1,319 problems)",
}


@dataclass(frozen=True)
class Benchmark:
    """A named set of benchmark items: `items` has string columns `id` and `text`."""

    name: str
    items: pl.DataFrame
    origin: str  # "built-in" or the file it was read from

    @property
    def height(self) -> int:
        return self.items.height


def builtin_path(name: str) -> Path:
    """The packaged JSONL file of built-in benchmark `name`."""
    if name not in BUILTIN:
        raise KeyError(unknown_builtin(name))
    resource = resources.files(__name__) / "data" / f"{name}.jsonl"
    return Path(str(resource))


def unknown_builtin(name: str) -> str:
    return (
        f"'{name}' is not a built-in benchmark; built-in: {', '.join(BUILTIN)}. "
        "For a file, give {path: FILE, text: COLUMN, id: COLUMN}"
    )


def load_builtin(name: str) -> Benchmark:
    """A built-in benchmark by name (KeyError naming the built-in ones for an unknown name)."""
    path = builtin_path(name)
    items = _read(path, text_column="text", id_column="id", shown=f"built-in benchmark {name}")
    return Benchmark(name=name, items=items, origin="built-in")


def load_file(
    path: Path,
    *,
    text_column: str = "text",
    id_column: str | None = None,
    name: str | None = None,
) -> Benchmark:
    """A benchmark from a JSONL, CSV or Parquet file. Without `id_column` an item's id is its
    0-based row number. `name` defaults to the file's stem."""
    items = _read(path, text_column=text_column, id_column=id_column, shown=str(path))
    return Benchmark(name=name or path.stem, items=items, origin=str(path))


def _read(path: Path, *, text_column: str, id_column: str | None, shown: str) -> pl.DataFrame:
    if not path.is_file():
        raise InputError(f"benchmark file {shown} does not exist")
    fmt = EXTENSIONS.get(path.suffix.lower())
    if fmt is None:
        raise InputError(
            f"benchmark file {shown}: cannot tell the format from '{path.suffix}'; "
            f"expected one of {', '.join(sorted(EXTENSIONS))}"
        )
    wanted = [text_column] + ([id_column] if id_column else [])
    ids: list[str] = []
    texts: list[str | None] = []
    with READERS[fmt](path, limit=None, name=f"benchmark file {shown}") as reader:
        if reader.columns_known_upfront:
            _check_columns(shown, wanted, reader.columns)
        reader.select(wanted)
        for place, record, reason in reader:
            where = f"benchmark file {shown}, {'line' if fmt != 'parquet' else 'row'} {place}"
            if record is None:
                raise InputError(f"{where}: {reason}")
            if not reader.columns_known_upfront:
                _check_columns(shown, wanted, list(record), where=where)
            text = record.get(text_column)
            if text is not None and not isinstance(text, str):
                raise InputError(
                    f"{where}: column '{text_column}' is a {json_kind(text)}, expected a string"
                )
            if id_column is None:
                ids.append(str(len(ids)))
            else:
                value = record.get(id_column)
                if value is None or value == "" or isinstance(value, (dict, list)):
                    kind = "empty" if value == "" else json_kind(value)
                    raise InputError(
                        f"{where}: column '{id_column}' is {kind}, expected an id "
                        "(a string or number)"
                    )
                ids.append(str(value))
            texts.append(text)
        if reader.rows == 0:
            raise InputError(f"benchmark file {shown} has no rows")
    items = pl.DataFrame({"id": ids, "text": texts}, schema={"id": pl.String, "text": pl.String})
    duplicated = items.filter(pl.col("id").is_duplicated())
    if duplicated.height:
        raise InputError(
            f"benchmark file {shown}: id '{duplicated['id'][0]}' appears more than once in "
            f"column '{id_column}'; ids must be unique so that a match names one item"
        )
    return items.filter(pl.col("text").is_not_null() & (pl.col("text").str.strip_chars() != ""))


def _check_columns(shown: str, wanted: list[str], present: list[str], *, where: str = "") -> None:
    missing = [c for c in wanted if c not in present]
    if missing:
        place = where or f"benchmark file {shown}"
        raise InputError(
            f"{place}: no column {', '.join(repr(c) for c in missing)}; "
            f"columns {'in this row' if where else 'present'}: {', '.join(present) or '(none)'}"
        )
