"""A local OpenAI-compatible teacher: an HTTP server on 127.0.0.1 that answers chat completions
from a scripted policy and misbehaves on demand, for tests, examples and benchmarks.

    from curate.local_teacher import LocalTeacher, Faults
    from curate.local_teacher_policies import ReferencePolicy

    policy = ReferencePolicy(answers={"What is 2+2?": "4"})
    with LocalTeacher(policy=policy, faults=Faults(rate_429=0.1), api_key="sk-test") as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="sk-test")
        ...
        server.stats()["faults"]          # {"429": 3, ...}

`LocalTeacher` runs the server in a background thread with its own event loop, so synchronous
code (pytest, a subprocess build) can use it. `curate teacher-server` runs the same server as a
process (see `serve`), which is what benchmarks use so that the server does not share the
client's CPU.

Endpoints:

- `POST /v1/chat/completions`: model, messages, temperature, top_p, max_tokens (or
  max_completion_tokens), seed, n, stop; other keys are ignored. The response has the OpenAI
  shape: id, object, created, model, n choices {index, message {role, content and
  reasoning_content when the policy sends reasoning apart}, finish_reason}, usage. Tokens are
  whitespace-separated words (see `curate.local_teacher_policies`); max_tokens cuts the
  reasoning and content to that many in all and sets finish_reason "length"; a stop sequence
  cuts the content before it.
- `GET /v1/models`: the served model names.
- `GET /stats`, `POST /stats/reset`: counters (see `Stats`); reset also re-seeds the fault draws.
- `GET /faults`, `POST /faults`: the fault settings; POST takes a JSON object of changes.

Faults (`Faults`): a fixed or uniform latency before every answer, then one draw per request
from a seeded RNG picks at most one of: 429 (with Retry-After), 500, a hang longer than any
client timeout, a dropped connection (no response at all), a 200 cut short (finish_reason
"length", every choice cut to half its tokens) or a 200 stopped by the content filter
(finish_reason "content_filter", half the tokens). `fail_next` fails the next K requests;
`die_after` makes the server drop every request after N successful ones (and, as a process,
exit). Each injected fault is counted in /stats under its kind.

With `api_key`, every /v1 request needs `Authorization: Bearer <key>` (401 otherwise). The
control endpoints (/stats, /faults) need no key. Nothing is logged per request.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import json
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from curate.local_teacher_policies import (
    ChatRequest,
    Completion,
    FixedPolicy,
    Policy,
    PromptNotFound,
    apply_stop,
    count_tokens,
    cut_tokens,
    message_text,
    truncate_words,
)

try:
    import orjson

    def dumps(value: Any) -> bytes:
        return orjson.dumps(value)

    loads: Callable[[bytes], Any] = orjson.loads
except ImportError:  # pragma: no cover - orjson is optional

    def dumps(value: Any) -> bytes:
        return json.dumps(value, separators=(",", ":")).encode()

    loads = json.loads

RATE_KINDS = ("429", "500", "timeout", "drop", "truncate", "content_filter")
MAX_N = 128


class Faults(BaseModel):
    """How the server misbehaves. Rates are per request and exclusive: their sum is at most 1."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    latency_s: float | tuple[float, float] = Field(
        0.0, description="delay before every answer: seconds, or [low, high] drawn uniformly"
    )
    rate_429: float = Field(0.0, ge=0, le=1, description="share of requests answered 429")
    retry_after: float | None = Field(
        1.0, ge=0, description="the 429's Retry-After header in seconds (None: no header)"
    )
    rate_500: float = Field(0.0, ge=0, le=1, description="share of requests answered 500")
    rate_timeout: float = Field(
        0.0, ge=0, le=1, description="share of requests that hang for hang_s, then drop"
    )
    hang_s: float = Field(600.0, ge=0, description="how long a timeout fault hangs")
    rate_drop: float = Field(
        0.0, ge=0, le=1, description="share of requests whose connection is closed unanswered"
    )
    rate_truncate: float = Field(
        0.0, ge=0, le=1, description="share of 200s cut to half, finish_reason 'length'"
    )
    rate_content_filter: float = Field(
        0.0, ge=0, le=1, description="share of 200s cut to half, finish_reason 'content_filter'"
    )
    fail_next: int = Field(0, ge=0, description="fail the next K requests with fail_status")
    fail_status: int = Field(500, ge=400, le=599, description="status of fail_next failures")
    die_after: int | None = Field(
        None, ge=0, description="after N successful requests, drop every request (a process exits)"
    )
    seed: int = Field(0, description="seed of the fault and latency draws")

    @field_validator("latency_s")
    @classmethod
    def _latency(cls, value: float | tuple[float, float]) -> float | tuple[float, float]:
        low, high = value if isinstance(value, tuple) else (value, value)
        if not 0 <= low <= high:
            raise ValueError(f"latency_s must be >= 0 (or [low, high], low <= high): {value}")
        return value

    @model_validator(mode="after")
    def _rates(self) -> Faults:
        if sum(self.rates()) > 1 + 1e-9:
            raise ValueError(f"fault rates add up to {sum(self.rates()):.3f}, more than 1")
        return self

    def rates(self) -> tuple[float, ...]:
        """The rates in RATE_KINDS order."""
        return (
            self.rate_429,
            self.rate_500,
            self.rate_timeout,
            self.rate_drop,
            self.rate_truncate,
            self.rate_content_filter,
        )


@dataclass
class Stats:
    """Counters of the chat-completions endpoint since start or the last reset.

    requests: received; succeeded: answered 200 with the whole body written; by_status: answers
    by HTTP status; faults: injected faults by kind (RATE_KINDS, fail_next, dead); completions:
    choices returned in 200s; prompt_tokens, completion_tokens: served in 200s (usage's sums)."""

    requests: int = 0
    succeeded: int = 0
    by_status: Counter[int] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    completions: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def snapshot(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "succeeded": self.succeeded,
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "faults": dict(sorted(self.faults.items())),
            "completions": self.completions,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
        }


class BadRequest(ValueError):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def _number(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = data.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, kind)):
        raise BadRequest(f"'{key}' must be a {getattr(kind, '__name__', 'number')}", key)
    return value


def parse_request(body: bytes) -> ChatRequest:
    """The request body as a ChatRequest; BadRequest naming the field when it is malformed."""
    try:
        data = loads(body)
    except ValueError:
        raise BadRequest("the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("'model' is required and must be a string", "model")
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list", "messages")
    if not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages):
        raise BadRequest("each message must be an object with a 'role'", "messages")
    n = _number(data, "n", int) or 1
    if not 1 <= n <= MAX_N:
        raise BadRequest(f"'n' must be between 1 and {MAX_N}", "n")
    key = "max_completion_tokens" if data.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _number(data, key, int)
    if max_tokens is not None and max_tokens < 1:
        raise BadRequest(f"'{key}' must be at least 1", key)
    stop = data.get("stop")
    stops = (stop,) if isinstance(stop, str) else tuple(s for s in stop or () if isinstance(s, str))
    return ChatRequest(
        model=model,
        messages=messages,
        temperature=_number(data, "temperature", (int, float)),
        top_p=_number(data, "top_p", (int, float)),
        max_tokens=max_tokens,
        seed=_number(data, "seed", int),
        n=n,
        stop=stops,
    )


def _error(message: str, kind: str, code: str | None = None, param: str | None = None) -> bytes:
    return dumps({"error": {"message": message, "type": kind, "param": param, "code": code}})


class TeacherServer:
    """The server's state and request handlers; `app()` makes the aiohttp application.

    Its methods run on the event loop that serves it (LocalTeacher forwards calls there)."""

    def __init__(
        self,
        *,
        policy: Policy | None = None,
        faults: Faults | Mapping[str, Any] | None = None,
        api_key: str | None = None,
        models: list[str] | None = None,
        on_death: Callable[[], None] | None = None,
    ) -> None:
        self.policy: Policy = policy if policy is not None else FixedPolicy()
        self.api_key = api_key
        self._auth = f"Bearer {api_key}" if api_key is not None else None
        self.models = models
        self.on_death = on_death
        self.stats = Stats()
        self.faults = Faults()
        self.rng = random.Random(0)
        self.fail_remaining = 0
        self.dead = False
        self._ids = itertools.count(1)
        initial = faults.model_dump() if isinstance(faults, Faults) else dict(faults or {})
        self.set_faults(**initial)

    # --- control -----------------------------------------------------------------------------

    def set_faults(self, **changes: Any) -> Faults:
        """Change some fault settings (the others are kept); re-seeds the draws and sets the
        fail_next counter. Raises pydantic.ValidationError on a bad value."""
        self.faults = Faults.model_validate({**self.faults.model_dump(), **changes})
        self.rng = random.Random(self.faults.seed)
        self.fail_remaining = self.faults.fail_next
        return self.faults

    def reset(self) -> None:
        """Zero the counters, revive a dead server and re-seed the draws."""
        self.stats = Stats()
        self.dead = False
        self.rng = random.Random(self.faults.seed)
        self.fail_remaining = self.faults.fail_next

    def model_names(self) -> list[str]:
        return self.models or self.policy.model_names() or ["local-teacher"]

    # --- HTTP ----------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024**2)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_get("/v1/models", self.list_models)
        app.router.add_get("/stats", self.get_stats)
        app.router.add_post("/stats/reset", self.post_reset)
        app.router.add_get("/faults", self.get_faults)
        app.router.add_post("/faults", self.post_faults)
        return app

    async def _send(
        self,
        request: web.Request,
        status: int,
        body: bytes,
        headers: Mapping[str, str] | None = None,
    ) -> web.StreamResponse:
        response = web.Response(
            body=body, status=status, content_type="application/json", headers=headers
        )
        await response.prepare(request)
        await response.write_eof()
        self.stats.by_status[status] += 1
        return response

    async def _drop(self, request: web.Request) -> web.StreamResponse:
        """Close the connection without answering; the handler ends when aiohttp cancels it."""
        if request.transport is not None:
            request.transport.abort()
        await asyncio.sleep(3600)
        raise ConnectionResetError("dropped on purpose")  # pragma: no cover

    def _draw(self) -> str | None:
        u = self.rng.random()
        for kind, rate in zip(RATE_KINDS, self.faults.rates(), strict=True):
            if u < rate:
                return kind
            u -= rate
        return None

    def _latency(self) -> float:
        latency = self.faults.latency_s
        if isinstance(latency, tuple):
            return self.rng.uniform(*latency)
        return latency

    async def chat(self, request: web.Request) -> web.StreamResponse:
        stats = self.stats
        stats.requests += 1
        if self._auth is not None and request.headers.get("Authorization") != self._auth:
            return await self._send(
                request,
                401,
                _error("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
            )
        try:
            chat = parse_request(await request.read())
        except BadRequest as exc:
            body = _error(str(exc), "invalid_request_error", None, exc.param)
            return await self._send(request, 400, body)
        if self.models is not None and chat.model not in self.models:
            missing = f"The model '{chat.model}' does not exist."
            body = _error(missing, "invalid_request_error", "model_not_found", "model")
            return await self._send(request, 404, body)
        if self.dead:
            stats.faults["dead"] += 1
            return await self._drop(request)
        if self.fail_remaining > 0:
            self.fail_remaining -= 1
            stats.faults["fail_next"] += 1
            body = _error("failing on purpose (fail_next)", "server_error")
            return await self._send(request, self.faults.fail_status, body)
        kind = self._draw()
        latency = self._latency()
        if latency > 0:
            await asyncio.sleep(latency)
        if kind is not None:
            stats.faults[kind] += 1
            if kind == "429":
                retry = self.faults.retry_after
                headers = {"Retry-After": f"{retry:g}"} if retry is not None else None
                body = _error("Rate limit reached (injected).", "requests", "rate_limit_exceeded")
                return await self._send(request, 429, body, headers)
            if kind == "500":
                body = _error("The server had an error (injected).", "server_error")
                return await self._send(request, 500, body)
            if kind == "timeout":
                await asyncio.sleep(self.faults.hang_s)
                return await self._drop(request)
            if kind == "drop":
                return await self._drop(request)
        try:
            completions = [self.policy.complete(chat, i) for i in range(chat.n)]
        except PromptNotFound as exc:
            body = _error(str(exc), "invalid_request_error", "prompt_not_found", "messages")
            return await self._send(request, 400, body)
        if kind in ("truncate", "content_filter"):
            reason = "length" if kind == "truncate" else "content_filter"
            completions = [_halve(c, reason) for c in completions]
        choices = []
        completion_tokens = 0
        for i, completion in enumerate(completions):
            if chat.stop:
                completion = apply_stop(completion, chat.stop)
            if chat.max_tokens is not None:
                completion = cut_tokens(completion, chat.max_tokens)
            completion_tokens += count_tokens(completion.content)
            message: dict[str, Any] = {"role": "assistant", "content": completion.content}
            if completion.reasoning is not None:
                message["reasoning_content"] = completion.reasoning
                completion_tokens += count_tokens(completion.reasoning)
            choices.append(
                {
                    "index": i,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": completion.finish_reason,
                }
            )
        prompt_tokens = sum(count_tokens(message_text(m)) for m in chat.messages)
        body = dumps(
            {
                "id": f"chatcmpl-local-{next(self._ids):x}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": chat.model,
                "choices": choices,
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
                "system_fingerprint": "local-teacher",
            }
        )
        response = await self._send(request, 200, body)
        stats.succeeded += 1
        stats.completions += len(choices)
        stats.prompt_tokens += prompt_tokens
        stats.completion_tokens += completion_tokens
        if self.faults.die_after is not None and stats.succeeded >= self.faults.die_after:
            if not self.dead and self.on_death is not None:
                asyncio.get_running_loop().call_soon(self.on_death)
            self.dead = True
        return response

    async def list_models(self, request: web.Request) -> web.StreamResponse:
        if self._auth is not None and request.headers.get("Authorization") != self._auth:
            body = _error("Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
            return web.Response(body=body, status=401, content_type="application/json")
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": "curate-local-teacher"}
            for name in self.model_names()
        ]
        return web.Response(
            body=dumps({"object": "list", "data": data}), content_type="application/json"
        )

    async def get_stats(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=dumps(self.stats.snapshot()), content_type="application/json")

    async def post_reset(self, request: web.Request) -> web.StreamResponse:
        self.reset()
        return web.Response(body=dumps(self.stats.snapshot()), content_type="application/json")

    async def get_faults(self, request: web.Request) -> web.StreamResponse:
        return web.Response(
            body=self.faults.model_dump_json().encode(), content_type="application/json"
        )

    async def post_faults(self, request: web.Request) -> web.StreamResponse:
        try:
            changes = loads(await request.read())
            if not isinstance(changes, dict):
                raise ValueError("expected a JSON object of fault settings")
            self.set_faults(**changes)
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            return web.Response(
                body=_error(str(exc), "invalid_request_error"),
                status=400,
                content_type="application/json",
            )
        return await self.get_faults(request)


def _halve(completion: Completion, reason: str) -> Completion:
    """The completion cut to half of its tokens (reasoning first), with `reason`."""
    total = count_tokens(completion.reasoning) + count_tokens(completion.content)
    cut = cut_tokens(completion, max(total // 2, 1) if total > 1 else 0)
    if cut is completion:  # nothing to cut (an empty answer): still mark the reason
        return Completion(truncate_words(completion.content, 0), completion.reasoning, reason)
    return Completion(cut.content, cut.reasoning, reason)


async def start_site(server: TeacherServer, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Start serving on host:port (0 picks a free port); returns the runner and the port."""
    runner = web.AppRunner(
        server.app(), access_log=None, handler_cancellation=True, shutdown_timeout=1.0
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    address = runner.addresses[0]
    return runner, int(address[1])


class LocalTeacher:
    """The teacher server in a background thread with its own event loop.

    Use as a context manager (or call start() and stop()). `base_url` is what an OpenAI client
    takes; stats(), reset() and set_faults() are safe to call from any thread."""

    def __init__(
        self,
        *,
        policy: Policy | None = None,
        faults: Faults | Mapping[str, Any] | None = None,
        api_key: str | None = None,
        models: list[str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.server = TeacherServer(policy=policy, faults=faults, api_key=api_key, models=models)
        self.host = host
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI-style base URL, e.g. http://127.0.0.1:PORT/v1."""
        return f"{self.url}/v1"

    def start(self) -> LocalTeacher:
        started: concurrent.futures.Future[int] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._serve, args=(started,), name="local-teacher", daemon=True
        )
        self._thread.start()
        self.port = started.result(timeout=30)
        return self

    def _serve(self, started: concurrent.futures.Future[int]) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            runner, port = loop.run_until_complete(start_site(self.server, self.host, self.port))
        except BaseException as exc:
            started.set_exception(exc)
            loop.close()
            return
        started.set_result(port)
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(runner.cleanup())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            self._stopped.set()

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
        self._loop = None

    def __enter__(self) -> LocalTeacher:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _on_loop(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run fn on the server's loop and return its result (or raise its exception)."""
        if self._loop is None:
            return fn(*args, **kwargs)
        done: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def call() -> None:
            try:
                done.set_result(fn(*args, **kwargs))
            except BaseException as exc:
                done.set_exception(exc)

        self._loop.call_soon_threadsafe(call)
        return done.result(timeout=30)

    def stats(self) -> dict[str, Any]:
        """The counters (see Stats), as /stats returns them."""
        return self._on_loop(lambda: self.server.stats.snapshot())

    def reset(self) -> None:
        """Zero the counters, revive a dead server and re-seed the fault draws."""
        self._on_loop(self.server.reset)

    def set_faults(self, **changes: Any) -> Faults:
        """Change fault settings at run time (see Faults); returns the settings now in force."""
        return self._on_loop(self.server.set_faults, **changes)


def serve(
    server: TeacherServer,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    announce: Callable[[str], None] = print,
) -> int:
    """Serve in this process until SIGINT or SIGTERM (or death by die_after). Calls
    announce(base_url) once listening. Returns 0 on a signal, 3 after dying on purpose."""

    async def main() -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        died = False

        def die() -> None:
            nonlocal died
            died = True
            loop.call_later(0.05, stop.set)  # let the last answer leave first

        server.on_death = die
        runner, bound = await start_site(server, host, port)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        announce(f"http://{host}:{bound}/v1")
        try:
            await stop.wait()
        finally:
            await runner.cleanup()
        return 3 if died else 0

    return asyncio.run(main())
