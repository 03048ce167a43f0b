"""The per-request cache: every teacher answer, in one SQLite file (WAL mode), by cache key.

The key (see requests.cache_key) covers provider, model, rendered messages, sampling params
except max_tokens, and the sample index. Each row also keeps the max_tokens it was asked with,
the answer, usage, cost and attempts, and the request itself (messages and params) for audit.

Reuse (`reusable`): an answer is used again when it is not an error and either it finished on
its own within the max_tokens now asked (its completion tokens ≤ max_tokens; when the server
gave no usage, it was asked with a max_tokens ≤ the one now asked), or it was cut (`length`) at
exactly the max_tokens now asked. So raising max_tokens re-asks only the truncated samples and
lowering it re-asks only the answers that would no longer fit. Errors are kept, for audit and
billing, and sent again on the next build; `--refresh` skips lookups and overwrites.

Writes are queued by `put` and committed in one transaction by `flush` (or `take` + `write`, in
a worker thread, as the dispatcher does every 50 ms without holding up its event loop), so a
SIGKILL loses at most that much work, and WAL keeps every committed answer.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from curate.teachers.requests import Answer, Request

SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    key TEXT PRIMARY KEY,
    teacher TEXT NOT NULL,
    model TEXT NOT NULL,
    max_tokens INTEGER NOT NULL,
    seed INTEGER,
    finish_reason TEXT,
    completion TEXT,
    reasoning TEXT,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    billed_prompt_tokens INTEGER NOT NULL,
    billed_completion_tokens INTEGER NOT NULL,
    cost_usd REAL NOT NULL,
    error TEXT,
    attempts INTEGER NOT NULL,
    tries INTEGER NOT NULL,
    created REAL NOT NULL,
    request TEXT NOT NULL
) WITHOUT ROWID
"""
COLUMNS = (
    "key, teacher, model, max_tokens, seed, finish_reason, completion, reasoning, prompt_tokens, "
    "completion_tokens, billed_prompt_tokens, billed_completion_tokens, cost_usd, error, "
    "attempts, tries, created, request"
)
INSERT = f"INSERT OR REPLACE INTO answers ({COLUMNS}) VALUES ({', '.join('?' * 18)})"
LOOKUP_CHUNK = 900  # SQLite's default limit on host parameters is 999 (older builds)


def reusable(
    answer: Answer, max_tokens: int, *, retry_reasons: frozenset[str] = frozenset(), tries: int = 1
) -> bool:
    """Whether a cached answer stands for a request with `max_tokens` now. `retry_reasons` and
    `tries` are the sample step's finish-reason policy: an answer that stopped for a reason the
    step retries, and was tried fewer times than it allows, is asked again."""
    if answer.error is not None:
        return False
    if answer.finish_reason == "length":
        if answer.max_tokens != max_tokens:
            return False
    elif answer.completion_tokens is not None:
        if answer.completion_tokens > max_tokens:
            return False
    elif answer.max_tokens > max_tokens:
        return False
    return not (answer.finish_reason in retry_reasons and answer.tries < tries)


def answer_row(key: str, request: Request, answer: Answer, *, model: str) -> tuple[Any, ...]:
    """The stored row of one answer, in COLUMNS order; stamps `answer.created` (now)."""
    answer.created = time.time()
    audit = json.dumps(
        {
            "messages": request.messages,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "seed": request.seed,
            "n": request.n,
        },
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return (
        key,
        request.teacher,
        model,
        answer.max_tokens,
        answer.seed,
        answer.finish_reason,
        answer.completion,
        answer.reasoning,
        answer.prompt_tokens,
        answer.completion_tokens,
        answer.billed_prompt_tokens,
        answer.billed_completion_tokens,
        answer.cost_usd,
        answer.error,
        answer.attempts,
        answer.tries,
        answer.created,
        audit,
    )


def row_answer(row: tuple[Any, ...]) -> tuple[str, Answer]:
    """The key and answer of a row made by `answer_row` (rows that come from a Ray sampler
    actor, see curate.executors.ray_sample)."""
    return row[0], Answer(
        max_tokens=row[3],
        seed=row[4],
        finish_reason=row[5],
        completion=row[6],
        reasoning=row[7],
        prompt_tokens=row[8],
        completion_tokens=row[9],
        billed_prompt_tokens=row[10],
        billed_completion_tokens=row[11],
        cost_usd=row[12],
        error=row[13],
        attempts=row[14],
        tries=row[15],
        created=row[16],
    )


class RequestCache:
    """One SQLite file of answers. Not thread-safe: one dispatcher owns it at a time."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        if readonly:  # a plan (validate, --dry-run) must not create or change the file
            uri = f"{path.resolve().as_uri()}?mode=ro"
            self.db = sqlite3.connect(uri, uri=True, isolation_level=None)
            self.db.execute("PRAGMA busy_timeout=30000")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")  # WAL: a process kill loses no commit
            self.db.execute("PRAGMA busy_timeout=30000")
            self.db.execute(SCHEMA)
        self._pending: list[tuple[Any, ...]] = []
        self.written = 0

    def close(self) -> None:
        self.flush()
        self.db.close()

    def __enter__(self) -> RequestCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- reading -------------------------------------------------------------------------

    def lookup(self, keys: Iterable[str]) -> dict[str, Answer]:
        """The stored answers of those keys that have one."""
        wanted = list(dict.fromkeys(keys))
        found: dict[str, Answer] = {}
        for start in range(0, len(wanted), LOOKUP_CHUNK):
            chunk = wanted[start : start + LOOKUP_CHUNK]
            marks = ",".join("?" * len(chunk))
            rows = self.db.execute(
                "SELECT key, max_tokens, seed, finish_reason, completion, reasoning, "
                "prompt_tokens, completion_tokens, billed_prompt_tokens, "
                "billed_completion_tokens, cost_usd, error, attempts, tries, created "
                f"FROM answers WHERE key IN ({marks})",
                chunk,
            )
            for row in rows:
                found[row[0]] = Answer(
                    max_tokens=row[1],
                    seed=row[2],
                    finish_reason=row[3],
                    completion=row[4],
                    reasoning=row[5],
                    prompt_tokens=row[6],
                    completion_tokens=row[7],
                    billed_prompt_tokens=row[8],
                    billed_completion_tokens=row[9],
                    cost_usd=row[10],
                    error=row[11],
                    attempts=row[12],
                    tries=row[13],
                    created=row[14],
                )
        return found

    def count(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM answers").fetchone()[0])

    def rows(self) -> Iterator[dict[str, Any]]:
        """Every stored row as a dict (for audits and tests)."""
        cursor = self.db.execute(f"SELECT {COLUMNS} FROM answers ORDER BY key")
        names = [d[0] for d in cursor.description]
        for row in cursor:
            yield dict(zip(names, row, strict=True))

    # --- writing -------------------------------------------------------------------------

    def put(self, key: str, request: Request, answer: Answer, *, model: str) -> None:
        """Queue one answer; `flush` commits the queue."""
        self._pending.append(answer_row(key, request, answer, model=model))

    @property
    def pending(self) -> int:
        return len(self._pending)

    def flush(self) -> int:
        """Commit every queued answer in one transaction; returns how many."""
        return self.write(self.take())

    def take(self) -> list[tuple[Any, ...]]:
        """The queued rows, leaving the queue empty (for `write` in another thread)."""
        rows, self._pending = self._pending, []
        return rows

    def write(self, rows: list[tuple[Any, ...]]) -> int:
        """Commit rows taken from the queue in one transaction. May run in a worker thread
        while the event loop goes on queueing, one write at a time."""
        if not rows:
            return 0
        with self.db:  # BEGIN … COMMIT
            self.db.execute("BEGIN")
            self.db.executemany(INSERT, rows)
        self.written += len(rows)
        return len(rows)
