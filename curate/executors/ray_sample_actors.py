"""The actor side of `sample` on Ray (curate.executors.ray_sample describes the whole).

- `Limits`: one actor per step holding each HTTP teacher's RPM and TPM buckets (the local
  `TokenBucket`) and the sampler actors' spending against budget_usd.
- `LeasedBucket`: a client's rate limit in a sampler actor; tokens are leased from Limits in
  batches and what TPM refunds leave over goes back.
- `SharedBudget`: a sampler actor's view of the build's spending, its own plus the others'
  as Limits reports them every BUDGET_SYNC_S.
- `Outbox`: the AnswerStore a sampler actor's Dispatcher records answers into; the driver
  drains it into the request cache.
- `SampleWorker`: the sampler actor: the local Dispatcher over its share of the requests.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from curate.schemas.spec import OpenAITeacher, VLLMTeacher
from curate.teachers.budget import Budget
from curate.teachers.cache import answer_row
from curate.teachers.dispatch import Dispatcher, FinishPolicy
from curate.teachers.limits import TokenBucket
from curate.teachers.requests import Answer, Request

BUDGET_SYNC_S = 0.01  # actors exchange their spending this often when budget_usd is set


class Limits:
    """The limits every sampler actor of one step shares (run as one Ray actor): each HTTP
    teacher's RPM and TPM buckets, and the actors' spending against budget_usd."""

    def __init__(self, rates: dict[str, tuple[int | None, int | None]]) -> None:
        self.buckets: dict[tuple[str, str], TokenBucket] = {}
        for name, (rpm, tpm) in rates.items():
            if rpm:
                self.buckets[(name, "rpm")] = TokenBucket(rpm)
            if tpm:
                self.buckets[(name, "tpm")] = TokenBucket(tpm)
        self.spent: dict[tuple[int, int], float] = {}  # by (send, actor)

    def lease(self, teacher: str, kind: str, need: float, most: float) -> tuple[float, float]:
        """(tokens granted, between need and most), or (0.0, seconds to wait)."""
        return self.buckets[(teacher, kind)].try_take_up_to(need, most)

    def refund(self, teacher: str, kind: str, amount: float) -> None:
        self.buckets[(teacher, kind)].refund(amount)

    def spend(self, send: int, actor: int, total_usd: float) -> float:
        """Record what `actor` has spent in send `send`; returns what all its actors spent
        (the driver's budget holds what earlier sends spent)."""
        self.spent[(send, actor)] = total_usd
        return sum(usd for (s, _), usd in self.spent.items() if s == send)


async def _result(ref: Any) -> Any:
    """Await a Ray object ref from any event loop."""
    return await asyncio.wrap_future(ref.future())


class LeasedBucket:
    """A client's RPM or TPM limit in a sampler actor (a teachers.limits.Limiter): tokens leased
    from the step's Limits actor, at most `lease` more than a request needs at a time."""

    def __init__(self, limits: Any, teacher: str, kind: str, lease: float) -> None:
        self.limits = limits
        self.teacher = teacher
        self.kind = kind
        self.lease = lease
        self.tokens = 0.0
        self._lock: asyncio.Lock | None = None

    async def take(self, amount: float) -> None:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:  # one lease asked at a time; the others wait for its tokens
            while self.tokens < amount:
                need = amount - self.tokens
                granted, wait = await _result(
                    self.limits.lease.remote(self.teacher, self.kind, need, max(need, self.lease))
                )
                self.tokens += granted
                if not granted:
                    await asyncio.sleep(wait)
            self.tokens -= amount

    def refund(self, amount: float) -> None:
        """Keep up to a lease of what a request did not use; give the rest back."""
        if amount <= 0:
            return
        self.tokens += amount
        surplus = self.tokens - self.lease
        if surplus > 0:
            self.tokens -= surplus
            self.limits.refund.remote(self.teacher, self.kind, surplus)

    def release(self) -> None:
        """Give back every token left (the send is over)."""
        if self.tokens > 0:
            self.limits.refund.remote(self.teacher, self.kind, self.tokens)
        self.tokens = 0.0


class SharedBudget(Budget):
    """A sampler actor's view of the build's budget: what the build had spent before this send
    (`reused_usd`), this actor's spending, and the other actors' as Limits last told it."""

    def __init__(
        self, *, limit_usd: float | None, base_usd: float, limits: Any, send: int, actor: int
    ) -> None:
        super().__init__(limit_usd=limit_usd, reused_usd=base_usd)
        self.limits = limits
        self.send = send
        self.actor = actor
        self.others_usd = 0.0

    @property
    def exhausted(self) -> bool:
        return (
            self.limit_usd is not None
            and self.reused_usd + self.others_usd + self.spent_usd >= self.limit_usd
        )

    def sync(self, ray: Any) -> None:
        mine = self.spent_usd
        total = ray.get(self.limits.spend.remote(self.send, self.actor, mine))
        self.others_usd = total - mine


class Outbox:
    """A sampler actor's AnswerStore: the Dispatcher queues and commits rows here (as it would
    to the request cache), and the driver drains the committed rows into the cache."""

    def __init__(self) -> None:
        self._pending: list[tuple[Any, ...]] = []
        self._ready: list[tuple[Any, ...]] = []
        self._lock = threading.Lock()

    def put(self, key: str, request: Request, answer: Answer, *, model: str) -> None:
        self._pending.append(answer_row(key, request, answer, model=model))

    @property
    def pending(self) -> int:
        return len(self._pending)

    def take(self) -> list[tuple[Any, ...]]:
        rows, self._pending = self._pending, []
        return rows

    def write(self, rows: list[tuple[Any, ...]]) -> int:
        with self._lock:
            self._ready.extend(rows)
        return len(rows)

    def flush(self) -> int:
        return self.write(self.take())

    def drain(self) -> list[tuple[Any, ...]]:
        with self._lock:
            rows, self._ready = self._ready, []
        return rows


def _describe(exc: BaseException | None) -> tuple[str, str] | None:
    return None if exc is None else (type(exc).__name__, str(exc))


class SampleWorker:
    """One sampler actor: the local Dispatcher over its share of a step's requests. A vLLM
    actor loads its model once, when it starts."""

    def __init__(self, index: int, limits: Any, vllm: dict[str, VLLMTeacher]) -> None:
        self.index = index
        self.limits = limits
        self.outbox = Outbox()
        self.models: dict[str, Any] = {}
        self.failed: tuple[str, str] | None = None
        self._lock = threading.Lock()
        self._send = 0
        self._dispatcher: Dispatcher | None = None
        self._interrupts: dict[int, int] = {}
        try:
            from curate.teachers.vllm_client import VLLMClient

            for name, teacher in vllm.items():
                self.models[name] = VLLMClient(name, teacher)
        except Exception as exc:  # reported by `run`, with its type, to the driver
            self.failed = _describe(exc)

    def run(
        self,
        send: int,
        requests: list[Request],
        *,
        teachers: dict[str, OpenAITeacher],
        keys: dict[str, str],
        leases: dict[tuple[str, str], float],
        policy: FinishPolicy,
        limit_usd: float | None,
        base_usd: float,
    ) -> dict[str, Any]:
        """Send `requests` (HTTP teachers in `teachers`, with this actor's max_concurrency;
        vLLM teachers loaded here); answers go to the outbox. Returns the outcome's counts."""
        import ray

        from curate.teachers.openai_client import OpenAIClient

        summary: dict[str, Any] = {"error": self.failed, "spent_usd": 0.0}
        if self.failed is not None:
            return summary
        buckets = {
            (name, kind): LeasedBucket(self.limits, name, kind, lease)
            for (name, kind), lease in leases.items()
        }
        clients: dict[str, Any] = {name: self.models[name] for name in self.models}
        for name, teacher in teachers.items():
            limits = (buckets.get((name, "rpm")), buckets.get((name, "tpm")))
            clients[name] = OpenAIClient(name, teacher, limits=limits, key=keys.get(name))
        budget = SharedBudget(
            limit_usd=limit_usd, base_usd=base_usd, limits=self.limits, send=send, actor=self.index
        )
        dispatcher = Dispatcher(clients=clients, cache=self.outbox, budget=budget, policy=policy)
        with self._lock:
            self._send, self._dispatcher = send, dispatcher
            for _ in range(self._interrupts.get(send, 0)):  # asked for before this run began
                dispatcher.interrupt()
        done = threading.Event()
        syncer = None
        if limit_usd is not None:

            def sync() -> None:
                while not done.wait(BUDGET_SYNC_S):
                    budget.sync(ray)

            budget.sync(ray)
            syncer = threading.Thread(target=sync, name="budget-sync", daemon=True)
            syncer.start()
        error: BaseException | None = None
        try:
            dispatcher.run(requests)
        except Exception as exc:  # a refused key (TeacherError), or a bug
            error = exc
        finally:
            done.set()
            if syncer is not None:
                syncer.join()
                budget.sync(ray)
            for bucket in buckets.values():
                bucket.release()
            with self._lock:
                self._dispatcher = None
        outcome = dispatcher.outcome
        summary.update(
            error=_describe(error),
            spent_usd=budget.spent_usd,
            requests_sent=outcome.requests_sent,
            attempts=outcome.attempts,
            unsent=outcome.unsent,
            interrupted=outcome.interrupted,
            budget_stopped=outcome.budget_stopped,
        )
        return summary

    def drain(self) -> list[tuple[Any, ...]]:
        """The answers committed since the last drain, as request-cache rows."""
        return self.outbox.drain()

    def interrupt(self, send: int) -> None:
        """Ctrl-C for send `send` (it may not have begun yet)."""
        with self._lock:
            self._interrupts[send] = self._interrupts.get(send, 0) + 1
            if self._send == send and self._dispatcher is not None:
                self._dispatcher.interrupt()
