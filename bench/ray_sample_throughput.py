"""Requests per second of a `sample` step on the local executor and on the Ray executor (sampler
actors sharing one rate limit, curate.executors.ray_sample), against the same local teacher.

The server is `curate teacher-server --policy fixed` (a constant 200-word completion) in its own
process, with no latency. The step samples the 500 GSM8K test problems n times (4,000 requests
by default) at max_concurrency 64. Rows, each in a fresh run directory (nothing cached):

  local                the local executor, no rate limit
  ray                  Ray, --actors sampler actors, no rate limit
  ray, rpm not binding Ray, rpm 600,000 (10,000/s): every request passes the shared limiter
  local, rpm R         the local executor, rpm R (binding)
  ray, rpm R           Ray, rpm R (binding): the actors together should hold R

Printed per row: the sample stage's seconds (stage.json; on Ray this includes starting the
actors); the sending seconds, from the server's first request to its last (its /stats polled
every 10 ms), and requests per second over those; and the server's count of requests. With a
binding rpm R, the bucket starts full (R/60 requests at once), so the ideal sending time is
(requests - R/60) / (R/60) seconds. One local Ray (--cpus CPUs) is started once for the Ray
rows.

    .venv/bin/python bench/ray_sample_throughput.py [--n 8] [--actors 2] [--rpm 60000]
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROBLEMS = REPO / "tests" / "data" / "gsm8k" / "test_500.jsonl"


def spec(root: Path, base_url: str, *, n: int, rpm: int | None) -> Path:
    root.mkdir(parents=True)
    limit = f", rpm: {rpm}" if rpm else ""
    text = textwrap.dedent(
        f"""\
        name: bench
        input:
          path: {PROBLEMS}
          columns: {{id: id, prompt: question, answer: answer}}
        teachers:
          local: {{provider: openai, model: local-teacher, base_url: '{base_url}',
                  max_concurrency: 64{limit}}}
        steps:
          - sample: {{teachers: [local], n: {n}, seed: 0, max_tokens: 400}}
        """
    )
    path = root / "spec.yaml"
    path.write_text(text)
    return path


def server_requests(url: str, *, reset: bool = False) -> int:
    request = urllib.request.Request(
        f"{url}/stats/reset" if reset else f"{url}/stats", method="POST" if reset else "GET"
    )
    with urllib.request.urlopen(request) as response:
        return int(json.load(response)["requests"])


class Watch:
    """The times of the server's first request and of its `total`-th, from /stats."""

    def __init__(self, url: str, total: int) -> None:
        self.url, self.total = url, total
        self.first = self.last = 0.0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            count, now = server_requests(self.url), time.monotonic()
            if count and not self.first:
                self.first = now
            if count >= self.total:
                self.last = now
                return
            time.sleep(0.01)

    def seconds(self) -> float:
        self.thread.join()
        return self.last - self.first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8, help="samples per problem")
    parser.add_argument("--actors", type=int, default=2, help="sampler actors")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray")
    parser.add_argument("--rpm", type=int, default=60_000, help="the binding rate limit")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import ray

    from curate.engine import Build
    from curate.executors import ExecutorSettings, make_executor
    from curate.spec import load_spec

    command = ["teacher-server", "--policy", "fixed", "--port", "0"]
    server = subprocess.Popen(
        [sys.executable, "-m", "curate.cli.main", *command],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        base_url = server.stdout.readline().strip()
        url = base_url.removesuffix("/v1")
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        rows = [
            ("local", "local", None),
            ("ray", "ray", None),
            ("ray, rpm not binding", "ray", 600_000),
            (f"local, rpm {args.rpm:,}", "local", args.rpm),
            (f"ray, rpm {args.rpm:,}", "ray", args.rpm),
        ]
        print(f"{'row':<24} {'stage s':>8} {'sending s':>10} {'req/s':>8} {'requests':>9}")
        with tempfile.TemporaryDirectory() as tmp:
            for k, (label, kind, rpm) in enumerate(rows):
                path = spec(Path(tmp) / str(k), base_url, n=args.n, rpm=rpm)
                server_requests(url, reset=True)
                watch = Watch(url, 500 * args.n)
                settings = ExecutorSettings(kind=kind, sample_actors=args.actors)  # type: ignore[arg-type]
                manifest = Build(load_spec(path), executor=make_executor(settings)).run()
                seconds = manifest["stages"][1]["stats"]["seconds"]
                sending = watch.seconds()
                sent = server_requests(url)
                print(
                    f"{label:<24} {seconds:>8.2f} {sending:>10.2f} {sent / sending:>8,.0f} "
                    f"{sent:>9,}"
                )
    finally:
        server.terminate()
        server.wait()
        ray.shutdown()


if __name__ == "__main__":
    main()
