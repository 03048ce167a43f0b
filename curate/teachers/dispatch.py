"""Send requests to their teachers on one event loop, and stop cleanly.

`Dispatcher.run(requests)` runs every teacher at once: an HTTP teacher gets `max_concurrency`
workers that take requests from its queue one at a time (that pool is the concurrency limit);
a vLLM teacher gets one worker that runs chunks in a thread. Each answer is settled as it
arrives: its cost goes to the budget, the finish-reason policy may ask again (with a fresh
seed), and the final answer is queued for the cache, which a flusher commits every 50 ms.

Stopping: before taking a request a worker checks the stop flag, set by
- the budget (`budget.exhausted`): requests in flight finish, nothing new is sent;
- Ctrl-C (SIGINT, handled while the loop runs in the main thread): nothing new is sent,
  requests in flight get `STOP_WAIT_S` seconds, then are cancelled; a second Ctrl-C cancels
  at once;
- a fatal teacher error (401, 403, 404, a missing key) or any other exception in a worker:
  like Ctrl-C, then the error is raised.
In every case the answers received are flushed to the cache before `run` returns, so a re-run
sends only what is left. `interrupt` is Ctrl-C from another thread (a Ray sampler actor is
told by its driver).

`Sender` is the same contract for requests sent somewhere else: the Ray executor spreads a
step's requests over sampler actors, each running a Dispatcher whose answers go to an outbox
(an `AnswerStore`) that the driver drains into the cache (curate.executors.ray_sample).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from curate.teachers.budget import Budget
from curate.teachers.requests import Answer, Request

STOP_WAIT_S = 5.0
FLUSH_S = 0.05
PROGRESS_S = 10.0
# A finish-reason retry asks with seed + SEED_STRIDE (the seeds of samples differ by 1).
SEED_STRIDE = 1_000_003


class HTTPClient(Protocol):
    """An HTTP teacher (openai_client.OpenAIClient): one request at a time per worker."""

    name: str
    model: str
    concurrency: int

    async def complete(self, request: Request, seed: int | None) -> list[Answer]: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class ChunkClient(Protocol):
    """A batch teacher (vllm_client.VLLMClient): a chunk of requests per call, in a thread."""

    name: str
    model: str
    chunk_size: int

    def generate(self, requests: list[Request], seeds: list[int | None]) -> list[list[Answer]]: ...

    async def aclose(self) -> None: ...


class AnswerStore(Protocol):
    """Where answers are recorded as they arrive: the request cache (cache.RequestCache), or a
    Ray sampler actor's outbox. `put` queues, `take` + `write` commit (in a worker thread),
    `flush` commits what is queued."""

    def put(self, key: str, request: Request, answer: Answer, *, model: str) -> None: ...

    @property
    def pending(self) -> int: ...

    def take(self) -> list[tuple[Any, ...]]: ...

    def write(self, rows: list[tuple[Any, ...]]) -> int: ...

    def flush(self) -> int: ...


@dataclass(frozen=True)
class FinishPolicy:
    """Finish reasons to ask again for, and how many answers a sample may get in all."""

    retry: frozenset[str] = frozenset()
    tries: int = 1


@dataclass
class Outcome:
    """What a dispatch did. `answers` holds every sample answered, error answers included."""

    answers: dict[str, Answer] = field(default_factory=dict)
    requests_sent: int = 0
    attempts: int = 0
    interrupted: bool = False
    budget_stopped: bool = False
    unsent: int = 0  # requests never sent (stopped before)


class Sender(Protocol):
    """Sends a step's requests somewhere else than this process's event loop, with the
    Dispatcher's contract: answers recorded in `cache` as they arrive, sending stopped by the
    budget and by Ctrl-C, what happened in the Outcome (curate.executors.ray_sample)."""

    def send(
        self,
        requests: list[Request],
        *,
        cache: AnswerStore | None,
        budget: Budget,
        policy: FinishPolicy,
        log: Callable[[str], None] | None,
    ) -> Outcome: ...


class Dispatcher:
    def __init__(
        self,
        *,
        clients: Mapping[str, HTTPClient | ChunkClient],
        cache: AnswerStore | None,
        budget: Budget,
        policy: FinishPolicy,
        log: Callable[[str], None] | None = None,
        stop_wait_s: float = STOP_WAIT_S,
        flush_s: float = FLUSH_S,
    ) -> None:
        self.clients = clients
        self.cache = cache
        self.budget = budget
        self.policy = policy
        self.log = log
        self.stop_wait_s = stop_wait_s
        self.flush_s = flush_s
        self.outcome = Outcome()
        self._stopping = False
        self._fatal: Exception | None = None
        # answers waiting for a finish-reason retry, with the request that got them
        self._carry: dict[str, tuple[Request, Answer]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._finished = False  # the workers are done: the flusher stops
        self._total = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._interrupts = 0  # asked for by `interrupt` (another thread)
        self._interrupted = 0  # of those, handled on the loop

    # --- entry ---------------------------------------------------------------------------

    def run(self, requests: list[Request]) -> Outcome:
        """Send every request (or as many as the budget and Ctrl-C allow)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self._main(requests))
        with concurrent.futures.ThreadPoolExecutor(1) as pool:  # called from async code
            return pool.submit(asyncio.run, self._main(requests)).result()

    def interrupt(self) -> None:
        """Ctrl-C from another thread: the first stops sending (requests in flight get
        stop_wait_s), the second cancels what is in flight. May come before `run` starts."""
        self._interrupts += 1
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: `run` is over
                loop.call_soon_threadsafe(self._take_interrupts)

    def _take_interrupts(self) -> None:
        while self._interrupted < self._interrupts:
            self._interrupted += 1
            self._on_sigint()

    async def _main(self, requests: list[Request]) -> Outcome:
        self._total = len(requests)
        self._loop = asyncio.get_running_loop()
        self._take_interrupts()  # asked for before the loop ran
        queues: dict[str, deque[Request]] = {}
        for request in requests:
            queues.setdefault(request.teacher, deque()).append(request)
        for name, queue in queues.items():
            client = self.clients[name]
            if isinstance(client, ChunkClient):
                self._tasks.append(asyncio.create_task(self._chunk_worker(client, queue)))
            else:
                width = min(client.concurrency, len(queue))
                self._tasks.extend(
                    asyncio.create_task(self._worker(client, queue)) for _ in range(width)
                )
        flusher = asyncio.create_task(self._flusher())
        restore = self._catch_sigint()
        try:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        finally:
            restore()
            self._finished = True
            await flusher  # lets a write in progress finish: one writer at a time
            for key, (request, answer) in self._carry.items():  # stopped between tries
                self._record(key, request, answer, self.clients[request.teacher].model)
            self._carry.clear()
            if self.cache is not None:
                self.cache.flush()
            for client in self.clients.values():
                await client.aclose()
        self.outcome.unsent = sum(len(q) for q in queues.values())
        if self._fatal is not None:
            raise self._fatal
        return self.outcome

    # --- stopping ------------------------------------------------------------------------

    def _catch_sigint(self) -> Callable[[], None]:
        """Handle Ctrl-C while the loop runs (main thread only); returns the undo."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        loop = asyncio.get_running_loop()
        previous = signal.getsignal(signal.SIGINT)
        try:
            loop.add_signal_handler(signal.SIGINT, self._on_sigint)
        except (NotImplementedError, RuntimeError, ValueError):  # not on this platform
            return lambda: None

        def restore() -> None:
            loop.remove_signal_handler(signal.SIGINT)
            signal.signal(signal.SIGINT, previous)

        return restore

    def _on_sigint(self) -> None:
        if self.outcome.interrupted:
            self._cancel_all()  # a second Ctrl-C: do not wait
            return
        self.outcome.interrupted = True
        if self.log is not None:
            self.log(
                f"interrupted: sending stops; waiting up to {self.stop_wait_s:g}s for the "
                "requests in flight (Ctrl-C again to stop at once)"
            )
        self._stop(wait=True)

    def _stop(self, *, wait: bool) -> None:
        """Send nothing new; with `wait`, cancel what is in flight after stop_wait_s."""
        if not self._stopping:
            self._stopping = True
            if wait:
                asyncio.get_running_loop().call_later(self.stop_wait_s, self._cancel_all)

    def _cancel_all(self) -> None:
        for task in self._tasks:
            task.cancel()

    def _budget_check(self) -> bool:
        """True when sending may go on."""
        if self._stopping:
            return False
        if self.budget.exhausted:
            self.outcome.budget_stopped = True
            self._stopping = True  # in-flight requests finish: they are paid for anyway
            return False
        return True

    # --- workers -------------------------------------------------------------------------

    async def _worker(self, client: HTTPClient, queue: deque[Request]) -> None:
        try:
            while queue and self._budget_check():
                request: Request | None = queue.popleft()
                self.outcome.requests_sent += 1
                while request is not None:
                    answers = await client.complete(request, request.seed)
                    request = self._settle(request, answers, client.model)
        except Exception as exc:  # a refused key, or a bug: stop everything, then raise it
            self._fatal = self._fatal or exc
            self._stop(wait=True)

    async def _chunk_worker(self, client: ChunkClient, queue: deque[Request]) -> None:
        try:
            while queue and self._budget_check():
                chunk = [queue.popleft() for _ in range(min(client.chunk_size, len(queue)))]
                self.outcome.requests_sent += len(chunk)
                results = await asyncio.to_thread(client.generate, chunk, [r.seed for r in chunk])
                for request, answers in zip(chunk, results, strict=True):
                    again = self._settle(request, answers, client.model)
                    if again is not None:
                        queue.appendleft(again)
        except Exception as exc:
            self._fatal = self._fatal or exc
            self._stop(wait=True)

    def _settle(self, request: Request, answers: list[Answer], model: str) -> Request | None:
        """Book each answer (budget, attempts); record it, or return the request that asks
        again for the samples the finish-reason policy retries."""
        policy = self.policy
        again: list[str] = []
        for key, answer in zip(request.keys, answers, strict=True):
            self.budget.spend(answer.cost_usd)
            self.outcome.attempts += answer.attempts
            carried = self._carry.pop(key, None)
            if carried is not None:
                prior = carried[1]
                answer.attempts += prior.attempts
                answer.tries = prior.tries + 1
                answer.billed_prompt_tokens += prior.billed_prompt_tokens
                answer.billed_completion_tokens += prior.billed_completion_tokens
                answer.cost_usd += prior.cost_usd
            if (
                answer.error is None
                and answer.finish_reason in policy.retry
                and answer.tries < policy.tries
                and not self._stopping
            ):
                self._carry[key] = (request, answer)
                again.append(key)
            else:
                self._record(key, request, answer, model)
        if not again:
            return None
        seed = None if request.seed is None else request.seed + SEED_STRIDE
        return Request(
            teacher=request.teacher,
            messages=request.messages,
            temperature=request.temperature,
            top_p=request.top_p,
            max_tokens=request.max_tokens,
            seed=seed,
            keys=again,
            prompt_tokens=request.prompt_tokens,
        )

    def _record(self, key: str, request: Request, answer: Answer, model: str) -> None:
        self.outcome.answers[key] = answer
        if self.cache is not None:
            self.cache.put(key, request, answer, model=model)

    async def _flusher(self) -> None:
        last_log = time.monotonic()
        while not self._finished:
            await asyncio.sleep(self.flush_s)
            if self.cache is not None and self.cache.pending:
                # SQLite writes in a thread (it lets go of the GIL for I/O): the loop goes on
                await asyncio.to_thread(self.cache.write, self.cache.take())
            if self.log is not None and time.monotonic() - last_log >= PROGRESS_S:
                last_log = time.monotonic()
                self.log(self.progress())

    def progress(self) -> str:
        done = self.outcome.requests_sent
        errors = sum(1 for a in self.outcome.answers.values() if a.error is not None)
        return (
            f"{done:,} of {self._total:,} requests sent, {len(self.outcome.answers):,} samples "
            f"answered ({errors:,} failed), ${self.budget.spent_usd:,.4f} spent"
        )
