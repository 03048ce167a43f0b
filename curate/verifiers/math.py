"""Math equivalence with math-verify, run in worker processes with two time bounds.

`check_math(answer, reference, timeout_s)` judges one pair in the calling process. It must run in
a process's main thread: math-verify bounds each parse and comparison with SIGALRM. Both sides
are wrapped as `\\boxed{...}` so math-verify parses the whole string (on the quickstart data this
and `$...$` agree; boxing also survives a `$` inside the answer).

One deliberate change from math-verify's defaults: its unit stripping (`units=True`) deletes a
trailing single letter after a number, so `4t` parses as `4` and "4" would be judged equal to a
reference of "4t". We parse with `units=False` and instead remove trailing unit *text* ourselves
(`100\\text{ square units}` -> `100`, `5 \\text{cm}^2` -> `5`); letters in math stay variables.

`run_math_checks(pairs, workers=..., timeout_s=...)` judges many pairs in a pool of spawned
worker processes, fed in chunks. Each worker reports after every pair, so the parent knows which
pair each worker is on. If one pair runs past `row_limit_s` (computation that SIGALRM cannot
interrupt, such as a long C call), the parent kills that worker, marks that pair "timeout", starts
a fresh worker and hands the rest of the chunk on: one bad pair costs one null verdict, never
the build.
"""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing
import os
import re
import signal
import time
import unicodedata
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

from curate.errors import OperatorError
from curate.verifiers.extract import matching_brace
from curate.verifiers.result import (
    TIMEOUT,
    WORKER_CRASHED,
    Judgement,
    matched,
    unparseable_reference,
)

MATH_VERIFY_VERSION = version("math-verify")
MATH_VERIFIER = f"math-verify {MATH_VERIFY_VERSION}"

# (extracted answer, reference answer)
Pair = tuple[str, str]
# A check run inside a worker: (answer, reference, timeout_s) -> judgement.
CheckFn = Callable[[str, str, int], Judgement]

STARTUP_LIMIT_S = 120.0  # a worker that cannot import math-verify in this long is broken

# -------------------------------------------------------------------------- one check, in-process

_TEXT_UNIT = re.compile(
    r"^(?P<value>.*?[\d}])\s*(?:\\,|\\;|\\!|\\ |~)*\s*"
    r"\\(?:text|mathrm|mbox|textrm|textnormal)\s*\{\s*(?P<unit>[A-Za-z][A-Za-z ]*)\}"
    r"(?:\s*\^\s*(?:\{\s*\d\s*\}|\d))?\s*$"
)
_TIME_OF_DAY = {"am", "pm"}


def strip_text_units(latex: str) -> str:
    """`100\\text{ square units}` -> `100`: drop a trailing `\\text{words}` after a value. Times of
    day ("am", "pm") are kept, as is anything where the text is the whole answer."""
    value = latex.strip()
    match = _TEXT_UNIT.match(value)
    if match is None or not re.search(r"\d", match.group("value")):
        return value
    if match.group("unit").strip().lower().replace(" ", "") in _TIME_OF_DAY:
        return value
    return match.group("value").strip()


_TEXT_COMMAND = re.compile(r"\\(?:text|textbf|textit|textrm|textnormal|mathrm|mathbf|mbox)\s*\{")
_FORMATTING = re.compile(r"\\[!,;: ]|\\q?quad\b|\\left\b|\\right\b|\\displaystyle\b|[\s$~]")


def plain_text_form(latex: str) -> str:
    """The answer with formatting gone: `\\text{..}`-style wrappers unwrapped (their braces
    matched), LaTeX spaces, `$`, whitespace and a final period removed, case-folded.
    `\\text{4:30 p.m.}` and `4:30 \\text{ p.m.}` both give `4:30p.m`. Braces of other
    commands stay, so `\\frac{1}{23}` and `\\frac{12}{3}` stay apart."""
    value = unicodedata.normalize("NFKC", latex)
    while (match := _TEXT_COMMAND.search(value)) is not None:
        close = matching_brace(value, match.end() - 1)
        if close is None:
            break
        value = value[: match.start()] + value[match.end() : close] + value[close + 1 :]
    value = re.sub(r"\\[dt]frac", r"\\frac", value)
    value = _FORMATTING.sub("", value)
    return value.rstrip(".").casefold()


class _TimeoutSpy(logging.Handler):
    """math-verify swallows its own timeouts (it logs a warning and returns False / []); this
    handler notices them so that a timeout reads as "timeout", not as "mismatch"."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.fired = False

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("Timeout during"):
            self.fired = True


_SPY: _TimeoutSpy | None = None


def _spy() -> _TimeoutSpy:
    global _SPY
    if _SPY is None:
        _SPY = _TimeoutSpy()
        mv_logger = logging.getLogger("math_verify")
        mv_logger.addHandler(_SPY)
        mv_logger.setLevel(logging.WARNING)
        mv_logger.propagate = False  # timeouts are reported in verify_detail, not on stderr
    return _SPY


def _parse_config() -> list[Any]:
    from latex2sympy2_extended.latex2sympy2 import NormalizationConfig
    from math_verify import ExprExtractionConfig, LatexExtractionConfig

    normalization = NormalizationConfig(
        basic_latex=True,
        units=False,
        malformed_operators=True,
        nits=True,
        boxed="all",
        equations=False,
    )
    return [LatexExtractionConfig(normalization_config=normalization), ExprExtractionConfig()]


_CONFIG: list[Any] | None = None


def check_math(answer: str, reference: str, timeout_s: int) -> Judgement:
    """math-verify equivalence of one pair; every parse and comparison bounded by `timeout_s`
    seconds (SIGALRM: main thread only). The reference is the gold side of math-verify's
    (asymmetric) comparison."""
    global _CONFIG
    from math_verify import parse, verify

    if _CONFIG is None:
        _CONFIG = _parse_config()
    plain_reference = plain_text_form(reference)
    if plain_reference and plain_text_form(answer) == plain_reference:
        return matched(True)  # the same answer up to formatting (math-verify misses "4:30 p.m.")
    spy = _spy()
    spy.fired = False
    gold = parse(
        f"\\boxed{{{strip_text_units(reference)}}}",
        extraction_config=_CONFIG,
        parsing_timeout=timeout_s,
    )
    if spy.fired:
        return Judgement(None, TIMEOUT)
    if not any(not isinstance(item, str) for item in gold):
        return unparseable_reference(f"math-verify cannot parse {reference[:80]!r}")
    target = parse(
        f"\\boxed{{{strip_text_units(answer)}}}",
        extraction_config=_CONFIG,
        parsing_timeout=timeout_s,
    )
    if spy.fired:
        return Judgement(None, TIMEOUT)
    if not target:
        return matched(False, "answer unparseable")
    ok = verify(gold, target, timeout_seconds=timeout_s)
    if not ok and spy.fired:
        return Judgement(None, TIMEOUT)
    return matched(ok)


# ------------------------------------------------------------------------------ worker processes


def _die_with_parent() -> None:
    """Linux: have the kernel kill this worker when the parent dies (a SIGKILLed build must not
    leave workers behind). Best effort elsewhere."""
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
        parent = multiprocessing.parent_process()
        if parent is not None and os.getppid() != parent.pid:  # the parent was already gone
            os._exit(1)


def _worker_main(conn: Connection, check: CheckFn, timeout_s: int) -> None:
    """Worker loop: receive a chunk [(index, answer, reference), ...], send (index, verdict,
    detail) after each pair; None ends the loop."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    if check is check_math:  # import math-verify before saying ready
        check_math("1", "1", timeout_s)
    conn.send(("ready",))
    while True:
        try:
            chunk = conn.recv()
        except (EOFError, OSError):
            return
        if chunk is None:
            return
        for index, answer, reference in chunk:
            try:
                judgement = check(answer, reference, timeout_s)
            except Exception as exc:  # a bug in one pair must not end the worker
                judgement = Judgement(None, f"error: {type(exc).__name__}: {str(exc)[:120]}")
            try:
                conn.send((index, judgement.verdict, judgement.detail))
            except (BrokenPipeError, OSError):
                return


@dataclass
class _Worker:
    process: BaseProcess
    conn: Connection
    started: float
    ready: bool = False
    chunk: deque[tuple[int, str, str]] = field(default_factory=deque)
    since: float = 0.0  # when the pair at the head of `chunk` started


def default_row_limit(timeout_s: int) -> float:
    """Hard limit for one pair: parse reference, parse answer and compare are each bounded by
    `timeout_s` inside the worker; past this, the worker is presumed stuck."""
    return 4.0 * timeout_s + 2.0


def run_math_checks(
    pairs: Sequence[Pair],
    *,
    workers: int,
    timeout_s: int,
    chunk_size: int | None = None,
    row_limit_s: float | None = None,
    check: CheckFn = check_math,
) -> list[Judgement]:
    """Judge `pairs` (answer, reference) in a pool of `workers` spawned processes; one Judgement
    per pair, in order. Identical pairs are checked once. `check` must be a module-level
    function (it is pickled by name to the workers)."""
    unique: dict[Pair, int] = {}
    for pair in pairs:
        unique.setdefault(pair, len(unique))
    tasks = [(index, answer, reference) for (answer, reference), index in unique.items()]
    if not tasks:
        return []
    n_workers = max(1, min(workers, len(tasks)))
    size = chunk_size or max(1, min(64, math.ceil(len(tasks) / (n_workers * 4))))
    limit = row_limit_s if row_limit_s is not None else default_row_limit(timeout_s)
    results = _Pool(check, timeout_s=timeout_s, row_limit_s=limit).run(
        [tasks[i : i + size] for i in range(0, len(tasks), size)], n_workers
    )
    return [results[unique[pair]] for pair in pairs]


class _Pool:
    """Worker processes with a watchdog: a pair that overruns `row_limit_s` kills its worker."""

    def __init__(self, check: CheckFn, *, timeout_s: int, row_limit_s: float) -> None:
        self.n_workers = 1
        self.check = check
        self.timeout_s = timeout_s
        self.row_limit_s = row_limit_s
        self.context = multiprocessing.get_context("spawn")
        self.workers: list[_Worker] = []

    def _start(self) -> _Worker:
        parent_end, child_end = self.context.Pipe(duplex=True)
        process = self.context.Process(
            target=_worker_main,
            args=(child_end, self.check, self.timeout_s),
            name="curate-verify",
            daemon=True,
        )
        process.start()
        child_end.close()
        worker = _Worker(process=process, conn=parent_end, started=time.monotonic())
        self.workers.append(worker)
        return worker

    def _stop(self, worker: _Worker, *, kill: bool) -> None:
        if worker in self.workers:
            self.workers.remove(worker)
        if kill:
            worker.process.kill()
        else:
            with contextlib.suppress(BrokenPipeError, OSError):
                worker.conn.send(None)
        worker.process.join(timeout=None if kill else 2.0)
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join()
        worker.conn.close()

    def run(self, chunks: list[list[tuple[int, str, str]]], n_workers: int) -> dict[int, Judgement]:
        results: dict[int, Judgement] = {}
        pending: deque[list[tuple[int, str, str]]] = deque(chunks)
        self.n_workers = n_workers
        try:
            while pending or any(w.chunk for w in self.workers):
                self._give_work(pending)
                self._collect(results, pending)
        finally:
            for worker in list(self.workers):
                self._stop(worker, kill=bool(worker.chunk) or not worker.ready)
        return results

    def _give_work(self, pending: deque[list[tuple[int, str, str]]]) -> None:
        """Start workers while there is work for them (replacing failed ones); feed idle ones."""
        idle = sum(1 for w in self.workers if not w.chunk)
        for _ in range(min(len(pending) - idle, self.n_workers - len(self.workers))):
            self._start()
        for worker in list(self.workers):
            if worker.ready and not worker.chunk and pending:
                chunk = pending.popleft()
                try:
                    worker.conn.send(chunk)
                except OSError:  # died while idle: nothing of its own is lost
                    pending.appendleft(chunk)
                    self._stop(worker, kill=True)
                    continue
                worker.chunk = deque(chunk)
                worker.since = time.monotonic()

    def _deadline(self, worker: _Worker) -> float:
        if not worker.ready:
            return worker.started + STARTUP_LIMIT_S
        return worker.since + self.row_limit_s if worker.chunk else math.inf

    def _collect(
        self, results: dict[int, Judgement], pending: deque[list[tuple[int, str, str]]]
    ) -> None:
        now = time.monotonic()
        watched = [w for w in self.workers if not w.ready or w.chunk]
        if not watched:
            return
        wait_s = max(0.0, min(self._deadline(w) for w in watched) - now)
        ready_conns = wait([w.conn for w in watched], timeout=wait_s)
        now = time.monotonic()
        for worker in watched:
            if worker.conn in ready_conns:
                self._receive(worker, results, pending, now)
            elif now >= self._deadline(worker):
                self._fail(worker, results, pending, TIMEOUT)

    def _receive(
        self,
        worker: _Worker,
        results: dict[int, Judgement],
        pending: deque[list[tuple[int, str, str]]],
        now: float,
    ) -> None:
        while worker.conn.poll():
            try:
                message = worker.conn.recv()
            except (EOFError, OSError):
                self._fail(worker, results, pending, WORKER_CRASHED)
                return
            if message == ("ready",):
                worker.ready = True
                continue
            index, verdict, detail = message
            results[index] = Judgement(verdict, detail)
            if worker.chunk and worker.chunk[0][0] == index:
                worker.chunk.popleft()
            worker.since = now

    def _fail(
        self,
        worker: _Worker,
        results: dict[int, Judgement],
        pending: deque[list[tuple[int, str, str]]],
        why: str,
    ) -> None:
        """The worker is stuck or dead: its current pair gets a null verdict, the rest of its
        chunk goes back to the front of the queue, and a fresh worker takes its place."""
        if not worker.ready:
            self._stop(worker, kill=True)
            code = worker.process.exitcode
            raise OperatorError(
                "verify: a math-verify worker process failed to start "
                f"({'timed out' if code is None or code < 0 else f'exit code {code}'}). "
                "Workers are started with multiprocessing's 'spawn' method, which imports the "
                "main script again: if you call curate from a script of your own, put that call "
                "under `if __name__ == '__main__':`"
            )
        self._stop(worker, kill=True)
        if worker.chunk:
            index = worker.chunk.popleft()[0]
            results[index] = Judgement(None, why)
        if worker.chunk:
            pending.appendleft(list(worker.chunk))
        worker.chunk.clear()
