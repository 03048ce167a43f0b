"""Where a run directory lives: a local folder, or any fsspec filesystem URI (`s3://`, `gs://`,
`az://`, `memory://`, ...) that every worker can reach.

A run path is a `pathlib.Path` for a local folder (a plain path or `file://`) and a
`upath.UPath` (universal-pathlib: the pathlib API over an fsspec filesystem) for a URI, so the
engine, the executors and every reader join, list and read run paths the same way; the few
operations that differ are here: writing and opening Parquet (a local file is fsynced, a remote
one is streamed through the filesystem), removing a folder, writing a small JSON file in one
piece, and checking that a URI can be reached before a build writes to it. Credentials and
endpoints come from the filesystem's own configuration (environment variables such as
AWS_ENDPOINT_URL / AWS_PROFILE, or fsspec's config files), never from the spec, so they never
reach a manifest or a log.

Object stores have no atomic rename, so a remote stage is committed differently from a local one
(see `parquet_io.atomic_dir`): a local stage is written in a temporary folder renamed into place;
a remote stage prefix has its commit marker (`stage.json`, or `manifest.json` for an export
folder) deleted first, then the rest of the old prefix, then the new files are written in place
and the marker last. Every reader asks for the marker, so a killed build leaves nothing that is
read as a complete stage.

What cannot live on an object store stays local, beside the spec in `.curate/<name>/` (see
`local_state_dir`): the SQLite request cache (unless the spec names `request_cache`), the vector
caches of dedup steps, and the lock that stops two builds from this machine sharing a run.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, TypeAlias

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from upath import UPath

from curate.errors import RunDirError

AnyPath: TypeAlias = Path | UPath

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def uri_protocol(value: str) -> str | None:
    """'s3' for 's3://bucket/x'; None for a plain path."""
    match = _SCHEME.match(value)
    return match.group(1).lower() if match else None


def is_uri(value: str | os.PathLike[str]) -> bool:
    """A URI of a filesystem other than the local one (file:// is a path)."""
    protocol = uri_protocol(str(value))
    return protocol is not None and protocol not in ("file", "local")


def is_remote(path: AnyPath) -> bool:
    return not isinstance(path, Path)


def local_path(value: str) -> str:
    """A `file://` URI as the path it names; anything else unchanged."""
    return value[len("file://") :] if uri_protocol(value) == "file" else value


def run_path(value: str | os.PathLike[str] | UPath) -> AnyPath:
    """The run path `value` names: an absolute local Path, or a UPath for a URI. A URI whose
    protocol has no fsspec implementation installed fails here, naming the package."""
    if isinstance(value, UPath) and not isinstance(value, Path):
        value.fs.invalidate_cache()
        return value
    text = str(value)
    protocol = uri_protocol(text)
    if protocol is None or not is_uri(text):
        return Path(local_path(text)).expanduser().resolve()
    try:
        fsspec.get_filesystem_class(protocol)
    except ImportError as exc:  # fsspec knows the protocol; its package is missing
        raise RunDirError(
            f"{text}: the {protocol}:// filesystem is not installed ({exc}); install that "
            "package in this environment (and on every Ray worker)"
        ) from None
    except ValueError:
        raise RunDirError(
            f"{text}: no fsspec filesystem is known for {protocol}:// (see "
            "https://filesystem-spec.readthedocs.io for the protocols and their packages)"
        ) from None
    path = UPath(text)
    path.fs.invalidate_cache()  # listings cached by an earlier use may predate other writers
    return path


def check_reachable(root: AnyPath) -> None:
    """Fail fast, naming the URI, when a remote run directory cannot be reached: its bucket
    (or top folder) does not exist, or the filesystem refuses or cannot be contacted."""
    if not is_remote(root):
        return
    assert isinstance(root, UPath)
    fs, path = root.fs, root.path.rstrip("/")
    top = path.split("/", 1)[0]
    try:
        if fs.exists(path) or fs.exists(top):
            return
    except Exception as exc:
        raise RunDirError(f"{root}: cannot reach this run directory ({exc})") from None
    raise RunDirError(
        f"{root}: cannot reach this run directory: '{top}' does not exist (create the bucket "
        "or folder first, or check the credentials and endpoint the filesystem uses)"
    )


def glob(folder: AnyPath, pattern: str) -> list[AnyPath]:
    """The paths in `folder` matching `pattern`, sorted by name."""
    found: list[AnyPath] = list(folder.glob(pattern))
    return sorted(found, key=str)


def make_dirs(path: AnyPath) -> None:
    """The folder `path` and its parents (a no-op under a bucket of an object store)."""
    if isinstance(path, Path):
        path.mkdir(parents=True, exist_ok=True)
    else:
        path.fs.makedirs(path.path, exist_ok=True)


def remove_tree(path: AnyPath, *, first: tuple[str, ...] = ()) -> None:
    """Remove the folder `path` and all under it, if it exists; the files named in `first`
    go before the rest (a remote stage's commit marker, so a removal cut short leaves nothing
    that reads as complete)."""
    if isinstance(path, Path):
        import shutil

        shutil.rmtree(path, ignore_errors=True)
        return
    fs = path.fs
    for name in first:
        marker = f"{path.path.rstrip('/')}/{name}"
        if fs.exists(marker):
            fs.rm(marker)
    if fs.exists(path.path):
        fs.rm(path.path, recursive=True)
    fs.invalidate_cache(path.path)


def remove_file(path: AnyPath) -> None:
    if isinstance(path, Path):
        path.unlink()
    else:
        path.fs.rm(path.path)


def write_text(path: AnyPath, text: str) -> None:
    """A small text file written whole: a local one under a temporary name, then renamed; a
    remote one in one upload (an object appears whole or not at all)."""
    if isinstance(path, Path):
        import uuid

        tmp = path.with_name(f".tmp-{path.name}-{uuid.uuid4().hex[:8]}")
        tmp.write_text(text)
        os.replace(tmp, path)
    else:
        path.write_text(text)


def write_parquet(path: AnyPath, table: pa.Table, **options: Any) -> None:
    """`table` as one Parquet file at `path` (pyarrow's write options); a local file is
    fsynced, so a stage renamed into place holds its bytes after a crash."""
    if isinstance(path, Path):
        pq.write_table(table, path, **options)
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
    else:
        with path.open("wb") as handle:
            pq.write_table(table, handle, **options)


def parquet_file(path: AnyPath | str) -> pq.ParquetFile:
    """A Parquet file opened for reading its metadata, row groups or batches."""
    if isinstance(path, str | Path):
        return pq.ParquetFile(path)
    return pq.ParquetFile(path.open("rb"))


def read_table(path: AnyPath) -> pa.Table:
    return parquet_file(path).read()


def local_state_dir(spec_dir: Path, name: str) -> Path:
    """The local folder of a run whose directory is remote: `.curate/<name>/` beside the spec."""
    return spec_dir / ".curate" / name
