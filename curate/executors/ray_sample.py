"""`sample` on the Ray executor: requests planned once on the driver, sent from sampler actors.

The Sample operator runs on the driver as under the local executor: it reads the pool, plans
every sample (rendered messages, cache keys), asks the request cache, and builds the rows from
the answers. That is one implementation for both executors, so the rows are the same, in the
same order. Only the sending differs: `RaySender` (the operator's `sender`) spreads the requests
the cache did not answer over sampler actors, each running the local `Dispatcher` (retries,
finish-reason policy, stopping) over its share. The actors' side (Limits, LeasedBucket,
SharedBudget, Outbox, SampleWorker) is curate.executors.ray_sample_actors. Actors start at a
step's first send (about 1.5-2 s on a 2-core machine) and serve its later sends.

- HTTP teachers: `sample_actors` actors (executor setting; default the cluster's CPUs, at most
  8). A teacher's requests are cut into contiguous shares for at most max_concurrency actors,
  and its max_concurrency is split between them, so the endpoint never sees more requests in
  flight than under the local executor. When a teacher's base_url is a loopback address the
  actors are placed on the driver's node (where that address means the same server).
- Rate limits: one `Limits` actor per step holds each teacher's RPM and TPM buckets (the local
  `TokenBucket`). A client in an actor waits on a `LeasedBucket`, which takes tokens from
  Limits in leases of up to LEASE_S (0.1 s) of the teacher's rate divided by its actors, and
  hands back what TPM refunds leave over. That is a round trip per lease, not per request
  (except when one request's TPM charge is larger than a lease), and the actors together can
  run ahead of the rate by at most one lease each.
- Budget: each actor's `SharedBudget` reports its spending to Limits every BUDGET_SYNC_S
  (10 ms) and learns the others'. Sending stops once the build's total (cached answers
  included) reaches budget_usd, as locally; the overshoot is what is in flight (at most
  max_concurrency requests, as locally) plus what the other actors send within one sync
  (measured: 12-16 requests over at max_concurrency 8 on 2 actors, against 6 locally).
- The request cache: actors do not open it. Each actor's Dispatcher records answers into an
  `Outbox`; the driver drains every actor every POLL_S (50 ms) and commits the rows to the one
  SQLite file, as the local dispatcher's flusher does every 50 ms. Why not per-actor files or
  one file shared by the actors: one writer means no lock contention and no SQLite over a
  network file system; actors may run on any node (a vLLM actor on a GPU node that does not
  see the run directory); and a killed driver takes its actors with it, so the cache holds
  exactly what was committed and a re-run sends exactly the requests with no stored answer.
- vLLM teachers: per teacher, actors with num_gpus = tensor_parallel_size (one model load per
  actor, kept for the whole step), as many as its share of the cluster's GPUs allows (shared
  evenly between the step's vLLM teachers) and its requests fill (a chunk each). With fewer
  GPUs than one model needs, no fallback: ExecutorError saying so, since loading the model
  on CPUs is rarely what was meant (`vllm_actors`).

Stopping, as locally: Ctrl-C on the driver is passed to every actor (sending stops, requests in
flight get 5 s; a second Ctrl-C cancels them); the answers received are drained and cached and
the stage is written marked incomplete (exit 130). The budget stops every actor (exit 9, stage
incomplete). A fatal teacher error in one actor (a refused key) stops the others and is raised
as the same error. An actor that dies stops the others; what was drained stays cached and the
step fails with ExecutorError; a re-run resumes.
"""

from __future__ import annotations

import ipaddress
import logging
import signal
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from curate import errors
from curate.errors import CurateError, ExecutorError
from curate.executors.base import ExecutorSettings, StageRun
from curate.executors.ray_sample_actors import Limits, SampleWorker
from curate.operators import Operator
from curate.progress import SilentReporter
from curate.schemas.spec import OpenAITeacher, VLLMTeacher
from curate.storage import AnyPath
from curate.teachers.budget import Budget
from curate.teachers.cache import row_answer
from curate.teachers.dispatch import AnswerStore, FinishPolicy, Outcome
from curate.teachers.requests import Request

if TYPE_CHECKING:
    from curate.executors.ray import RayExecutor
    from curate.sample import Sample

logger = logging.getLogger(__name__)

POLL_S = 0.05  # the driver drains the actors' answers into the cache this often
LEASE_S = 0.1  # a lease holds at most this much of a teacher's rate (divided by its actors)
PROGRESS_S = 10.0
MAX_DEFAULT_ACTORS = 8
ACTOR_THREADS = 4  # run, drain and interrupt of one actor overlap


def sample_on_ray(
    executor: RayExecutor,
    operator: Operator,
    *,
    source: AnyPath,
    out: AnyPath,
    metadata: dict[str, str],
    reporter: SilentReporter,
) -> StageRun:
    """Run a teacher-calling step on the driver, its requests sent from sampler actors."""
    from curate.executors.local import LocalExecutor
    from curate.sample import Sample

    local = LocalExecutor(batch_rows=executor.settings.batch_rows)
    step = f"step '{operator.context.stage_id}' ({operator.name})"
    if not isinstance(operator, Sample):
        logger.info("%s runs on the driver: it calls teachers", step)
        return local.run_stage(
            operator, source=source, out=out, metadata=metadata, reporter=reporter
        )
    logger.info("%s: planned on the driver, requests sent from Ray sampler actors", step)
    sender = RaySender(executor.ray, executor.settings, operator)
    operator.sender = sender
    try:
        return local.run_stage(
            operator, source=source, out=out, metadata=metadata, reporter=reporter
        )
    finally:
        operator.sender = None
        sender.close()


def vllm_actors(
    name: str,
    *,
    tensor_parallel_size: int,
    gpus: float,
    teachers: int,
    requests: int,
    chunk_size: int,
) -> int:
    """How many actors (num_gpus = tensor_parallel_size each, one model load each) serve a
    vLLM teacher: as many models as its even share of the cluster's GPUs holds (`teachers`
    vLLM teachers in the step), no more than its requests fill (a chunk each). ExecutorError
    when not one model fits: there is no CPU fallback."""
    share = int(gpus) // max(1, teachers)
    fits = share // tensor_parallel_size
    if fits < 1:
        if int(gpus) < 1:
            where = "the Ray cluster has no GPUs"
        elif teachers > 1:
            where = (
                f"the Ray cluster has {int(gpus)} GPU(s), {share} for each of the step's "
                f"{teachers} vllm teachers"
            )
        else:
            where = f"the Ray cluster has {int(gpus)} GPU(s)"
        raise ExecutorError(
            f"teacher '{name}' (provider vllm, tensor_parallel_size {tensor_parallel_size}) "
            f"needs {tensor_parallel_size} GPU(s) per model on Ray, but {where}. Add GPU "
            "nodes to the cluster, lower tensor_parallel_size, or run the build with "
            "--executor local on a machine with GPUs"
        )
    return max(1, min(fits, -(-requests // chunk_size)))


# --- on the driver -----------------------------------------------------------------------


@dataclass
class _Job:
    """One actor's share of one send."""

    actor: Any
    requests: list[Request] = field(default_factory=list)
    teachers: dict[str, OpenAITeacher] = field(default_factory=dict)
    leases: dict[tuple[str, str], float] = field(default_factory=dict)


def _split(items: list[Request], parts: int) -> list[list[Request]]:
    """`parts` contiguous shares whose sizes differ by at most one."""
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for k in range(parts):
        stop = start + size + (1 if k < extra else 0)
        out.append(items[start:stop])
        start = stop
    return out


def _loopback(base_url: str | None) -> bool:
    host = urllib.parse.urlsplit(base_url or "").hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _rebuild(kind: str, message: str) -> Exception:
    """An actor's error as the driver raises it: the same curate error class and message."""
    cls = getattr(errors, kind, None)
    if isinstance(cls, type) and issubclass(cls, CurateError):
        exc = cls.__new__(cls)
        Exception.__init__(exc, message)
        return exc
    return ExecutorError(f"a sampler actor failed: {kind}: {message}")


class RaySender:
    """The Sample operator's sender under the Ray executor (see the module docstring). Actors
    are started at the first send and kept for the step's later sends (until: verified)."""

    def __init__(self, ray: Any, settings: ExecutorSettings, operator: Sample) -> None:
        self.ray = ray
        self.settings = settings
        self.stage = operator.context.stage_id
        self.teachers = {name: operator.teacher(name) for name in operator.params.teachers}
        self.tag = f"{self.stage}-{uuid.uuid4().hex[:8]}"
        self.limits: Any = None
        self.http: list[Any] = []
        self.vllm: dict[str, list[Any]] = {}
        self.sends = 0
        self._actors = 0
        self._worker_cls: Any = None

    def close(self) -> None:
        actors = [*self.http, *(a for pool in self.vllm.values() for a in pool)]
        if self.limits is not None:
            actors.append(self.limits)
        for actor in actors:
            try:
                self.ray.kill(actor)
            except Exception:  # already gone
                logger.debug("could not kill a sampler actor", exc_info=True)
        self.http, self.vllm, self.limits = [], {}, None

    # --- actors ----------------------------------------------------------------------------

    def _worker(self, **options: Any) -> Any:
        if self._worker_cls is None:
            self._worker_cls = self.ray.remote(SampleWorker)
        self._actors += 1
        name = f"curate-sampler-{self.tag}-{self._actors}"
        cls = self._worker_cls.options(max_concurrency=ACTOR_THREADS, name=name, **options)
        return cls, self._actors

    def _limits(self) -> Any:
        if self.limits is None:
            rates = {
                name: (t.rpm, t.tpm)
                for name, t in self.teachers.items()
                if isinstance(t, OpenAITeacher)
            }
            remote = self.ray.remote(Limits).options(name=f"curate-limits-{self.tag}")
            self.limits = remote.remote(rates)
        return self.limits

    def _http_pool(self) -> list[Any]:
        if not self.http:
            cpus = int(self.ray.cluster_resources().get("CPU", 1))
            count = self.settings.sample_actors or max(1, min(cpus, MAX_DEFAULT_ACTORS))
            options: dict[str, Any] = {}
            if any(
                _loopback(t.base_url)
                for t in self.teachers.values()
                if isinstance(t, OpenAITeacher)
            ):
                from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

                node = self.ray.get_runtime_context().get_node_id()
                options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node, soft=False)
            for _ in range(count):
                cls, index = self._worker(**options)
                self.http.append(cls.remote(index, self._limits(), {}))
        return self.http

    def _vllm_pool(self, name: str, requests: int) -> list[Any]:
        if name not in self.vllm:
            teacher = self.teachers[name]
            assert isinstance(teacher, VLLMTeacher)
            count = vllm_actors(
                name,
                tensor_parallel_size=teacher.tensor_parallel_size,
                gpus=self.ray.cluster_resources().get("GPU", 0),
                teachers=sum(isinstance(t, VLLMTeacher) for t in self.teachers.values()),
                requests=requests,
                chunk_size=teacher.chunk_size,
            )
            pool = []
            for _ in range(count):
                cls, index = self._worker(num_gpus=teacher.tensor_parallel_size)
                pool.append(cls.remote(index, self._limits(), {name: teacher}))
            self.vllm[name] = pool
        return self.vllm[name]

    def _jobs(self, requests: list[Request]) -> tuple[list[_Job], dict[str, str]]:
        """Each actor's share of the requests, and the API keys its clients need."""
        from curate.teachers.openai_client import api_key

        by_teacher: dict[str, list[Request]] = {}
        for request in requests:
            by_teacher.setdefault(request.teacher, []).append(request)
        keys: dict[str, str] = {}
        jobs: dict[int, _Job] = {}  # by id of the actor handle
        order = 0
        for name, share in by_teacher.items():
            teacher = self.teachers[name]
            if isinstance(teacher, OpenAITeacher):
                key = api_key(name, teacher)  # unset: TeacherError now, as locally
                if key is not None:
                    keys[name] = key
                pool = self._http_pool()
                count = min(len(pool), teacher.max_concurrency, len(share))
                for k, part in enumerate(_split(share, count)):
                    actor = pool[(order + k) % len(pool)]  # teachers start on different actors
                    job = jobs.setdefault(id(actor), _Job(actor))
                    job.requests.extend(part)
                    width = teacher.max_concurrency // count
                    width += k < teacher.max_concurrency % count
                    job.teachers[name] = teacher.model_copy(update={"max_concurrency": width})
                    for kind, rate in (("rpm", teacher.rpm), ("tpm", teacher.tpm)):
                        if rate:
                            job.leases[(name, kind)] = max(1.0, rate / 60.0 * LEASE_S / count)
                order += count
            else:
                pool = self._vllm_pool(name, len(share))
                for actor, part in zip(pool, _split(share, len(pool)), strict=True):
                    jobs.setdefault(id(actor), _Job(actor)).requests.extend(part)
        return [job for job in jobs.values() if job.requests], keys

    # --- sending ---------------------------------------------------------------------------

    def send(
        self,
        requests: list[Request],
        *,
        cache: AnswerStore | None,
        budget: Budget,
        policy: FinishPolicy,
        log: Callable[[str], None] | None,
    ) -> Outcome:
        say = log or (lambda line: logger.info("%s: %s", self.stage, line))
        jobs, keys = self._jobs(requests)
        self.sends += 1
        send = self.sends
        refs = [
            job.actor.run.remote(
                send,
                job.requests,
                teachers=job.teachers,
                keys={name: keys[name] for name in job.teachers if name in keys},
                leases=job.leases,
                policy=policy,
                limit_usd=budget.limit_usd,
                base_usd=budget.total_usd,
            )
            for job in jobs
        ]
        split = " + ".join(f"{len(job.requests):,}" for job in jobs)
        say(f"{len(requests):,} request(s) to {len(jobs)} sampler actor(s): {split}")
        outcome = Outcome()
        summaries, failure = self._collect(jobs, refs, send, cache, outcome, say)
        for summary in summaries:
            outcome.requests_sent += summary.get("requests_sent", 0)
            outcome.attempts += summary.get("attempts", 0)
            outcome.unsent += summary.get("unsent", 0)
            outcome.interrupted |= bool(summary.get("interrupted"))
            outcome.budget_stopped |= bool(summary.get("budget_stopped"))
            budget.spend(summary.get("spent_usd", 0.0))
        if failure is not None:
            raise failure
        return outcome

    def _collect(
        self,
        jobs: list[_Job],
        refs: list[Any],
        send: int,
        cache: AnswerStore | None,
        outcome: Outcome,
        say: Callable[[str], None],
    ) -> tuple[list[dict[str, Any]], Exception | None]:
        """Drain the actors into the cache until every run returned; pass Ctrl-C on."""
        ray = self.ray
        pending = dict(enumerate(refs))
        summaries: list[dict[str, Any]] = []
        failure: Exception | None = None
        total = sum(len(job.requests) for job in jobs)
        signals = [0, 0]  # Ctrl-C received, passed on

        def stop_all() -> None:
            for index in pending:
                jobs[index].actor.interrupt.remote(send)

        def on_sigint(signum: int, frame: object) -> None:
            signals[0] += 1

        restore = _catch_sigint(on_sigint)
        last_log = time.monotonic()
        try:
            while pending:
                ready, _ = ray.wait(
                    list(pending.values()), num_returns=len(pending), timeout=POLL_S
                )
                while signals[1] < signals[0]:  # each Ctrl-C passed on: the second cancels
                    if not signals[1]:
                        say(
                            "interrupted: sending stops; waiting for the requests in flight "
                            "(Ctrl-C again to stop at once)"
                        )
                    signals[1] += 1
                    outcome.interrupted = True
                    stop_all()
                drains = {index: jobs[index].actor.drain.remote() for index in pending}
                for index, ref in drains.items():
                    try:
                        self._store(ray.get(ref), cache, outcome)
                    except ray.exceptions.RayActorError as exc:
                        pending.pop(index)
                        failure = failure or ExecutorError(
                            f"step '{self.stage}': a sampler actor died ({_first_line(exc)}); "
                            "the answers it sent are cached, build again to resume"
                        )
                        stop_all()
                for index in [i for i, ref in pending.items() if ref in ready]:
                    try:
                        summary = ray.get(pending.pop(index))
                    except ray.exceptions.RayActorError as exc:
                        failure = failure or ExecutorError(
                            f"step '{self.stage}': a sampler actor died ({_first_line(exc)})"
                        )
                        stop_all()
                        continue
                    summaries.append(summary)
                    if summary.get("error") is not None and failure is None:
                        failure = _rebuild(*summary["error"])
                        stop_all()  # as a fatal error stops the local dispatcher
                if time.monotonic() - last_log >= PROGRESS_S:
                    last_log = time.monotonic()
                    say(
                        f"{len(outcome.answers):,} sample(s) answered so far, {total:,} "
                        f"request(s) sent from {len(jobs)} sampler actor(s)"
                    )
        finally:
            restore()
        return summaries, failure

    @staticmethod
    def _store(rows: list[tuple[Any, ...]], cache: AnswerStore | None, outcome: Outcome) -> None:
        if not rows:
            return
        if cache is not None:
            cache.write(rows)  # one transaction, committed before the next poll
        for row in rows:
            key, answer = row_answer(row)
            outcome.answers[key] = answer


def _catch_sigint(handler: Callable[[int, Any], None]) -> Callable[[], None]:
    """Handle Ctrl-C with `handler` (main thread only); returns the undo."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.signal(signal.SIGINT, handler)

    def restore() -> None:
        signal.signal(signal.SIGINT, previous)

    return restore


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
