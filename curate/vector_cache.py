"""Per-text vectors (MinHash signatures, sentence embeddings) cached by content hash.

An operator that turns each text into a fixed-width vector asks `VectorCache.vectors` for the
vectors of a column. Texts seen before, under the same `kind` and `settings` (everything that
changes the vector: model, num_perm, shingling, seed), come from the cache; the rest are computed
once per distinct text and appended. The cache lives in the operator's cache folder under the run
directory (`runs/<run>/cache/<operator>/`), which survives a change of the step's params, so
re-running a dedup with a new threshold signs and embeds nothing again.

Storage: under `<cache_dir>/<kind>-<settings hash>/`, a `settings.json` saying what the vectors
are, and one Parquet file per computation with columns `key` (16-byte BLAKE2b of the UTF-8 text)
and `vector` (fixed-size list). Each file is written under a temporary name and renamed, so a
killed run leaves a whole file or none.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from curate.errors import OperatorError


def content_keys(texts: Sequence[str | None]) -> list[bytes]:
    """A 16-byte BLAKE2b digest of each text's UTF-8 bytes (null hashes like the empty text)."""
    return [
        hashlib.blake2b((text or "").encode("utf-8", "surrogatepass"), digest_size=16).digest()
        for text in texts
    ]


def settings_hash(settings: dict[str, Any]) -> str:
    canonical = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class CacheStats:
    """How many distinct texts came from the cache and how many were computed."""

    rows: int
    distinct: int
    from_cache: int
    computed: int


@dataclass(frozen=True)
class VectorCache:
    """Fixed-width vectors per text, of one kind and settings, cached in `folder` (None: off)."""

    folder: Path | None
    kind: str  # "minhash", "embedding": the first part of the folder name
    settings: dict[str, Any]
    width: int
    dtype: np.dtype[Any]

    @property
    def path(self) -> Path | None:
        if self.folder is None:
            return None
        return self.folder / f"{self.kind}-{settings_hash(self.settings)}"

    def vectors(
        self,
        texts: Sequence[str | None],
        compute: Callable[[list[str]], np.ndarray],
    ) -> tuple[np.ndarray, CacheStats]:
        """An array of shape (len(texts), width): row i is the vector of texts[i].

        `compute` gets a list of distinct texts that are not cached and must return an array of
        shape (len(list), width). Repeated texts are computed once."""
        keys = content_keys(texts)
        rows = pl.DataFrame(
            {"key": keys, "row": np.arange(len(keys), dtype=np.int64)},
            schema={"key": pl.Binary, "row": pl.Int64},
        )
        distinct = rows.unique("key", keep="first", maintain_order=True)
        cached_keys, cached_vectors = self._load()
        cached = pl.DataFrame(
            {"key": cached_keys, "cached_row": np.arange(len(cached_keys), dtype=np.int64)},
            schema={"key": pl.Binary, "cached_row": pl.Int64},
        ).unique("key", keep="first")
        found = distinct.join(cached, on="key", how="left")
        missing = found.filter(pl.col("cached_row").is_null())
        hits = found.filter(pl.col("cached_row").is_not_null())

        by_key = np.empty((distinct.height, self.width), dtype=self.dtype)
        distinct_pos = {key: i for i, key in enumerate(distinct["key"].to_list())}
        if hits.height:
            positions = np.fromiter(
                (distinct_pos[k] for k in hits["key"].to_list()), np.int64, hits.height
            )
            by_key[positions] = cached_vectors[hits["cached_row"].to_numpy()]
        if missing.height:
            todo_rows = missing["row"].to_numpy()
            todo_texts = [texts[i] or "" for i in todo_rows]
            computed = np.asarray(compute(todo_texts), dtype=self.dtype)
            if computed.shape != (len(todo_texts), self.width):
                raise OperatorError(
                    f"{self.kind}: computed vectors have shape {computed.shape}, "
                    f"expected ({len(todo_texts)}, {self.width})"
                )
            positions = np.fromiter(
                (distinct_pos[k] for k in missing["key"].to_list()), np.int64, missing.height
            )
            by_key[positions] = computed
            self._append(missing["key"].to_list(), computed)

        # Map every row to its distinct text's vector.
        row_to_distinct = rows.join(
            distinct.with_row_index("distinct_index").select("key", "distinct_index"),
            on="key",
            how="left",
        ).sort("row")["distinct_index"]
        out = by_key[row_to_distinct.to_numpy()]
        stats = CacheStats(
            rows=len(keys),
            distinct=distinct.height,
            from_cache=hits.height,
            computed=missing.height,
        )
        return out, stats

    def _load(self) -> tuple[list[bytes], np.ndarray]:
        path = self.path
        empty = np.empty((0, self.width), dtype=self.dtype)
        if path is None or not path.is_dir():
            return [], empty
        files = sorted(path.glob("part-*.parquet"))
        if not files:
            return [], empty
        table = pa.concat_tables([pq.read_table(f) for f in files])
        keys: list[bytes] = table.column("key").to_pylist()
        values = table.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        return keys, np.asarray(values, dtype=self.dtype).reshape(-1, self.width)

    def _append(self, keys: list[bytes], vectors: np.ndarray) -> None:
        path = self.path
        if path is None:
            return
        path.mkdir(parents=True, exist_ok=True)
        settings_file = path / "settings.json"
        if not settings_file.exists():
            settings_file.write_text(
                json.dumps({"kind": self.kind, **self.settings}, indent=2, default=str) + "\n"
            )
        flat = pa.array(np.ascontiguousarray(vectors).reshape(-1))
        table = pa.table(
            {
                "key": pa.array(keys, type=pa.binary(16)),
                "vector": pa.FixedSizeListArray.from_arrays(flat, self.width),
            }
        )
        name = f"part-{uuid.uuid4().hex}.parquet"
        tmp = path / f".{name}.tmp"
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path / name)
