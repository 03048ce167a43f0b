"""Open a page in real headless Chromium (Debian's package) and report what a person would see:
console errors, uncaught exceptions, every URL the page requested, values computed in the page,
and a screenshot.

Chromium is driven through the DevTools protocol over `--remote-debugging-pipe` (JSON messages
separated by NUL bytes on file descriptors 3 and 4), the transport Puppeteer uses: no port, no
websocket library, no browser download. `--dump-dom` or `--screenshot` alone cannot tell a page
that threw an error from one that did not; the protocol reports every console message and
exception as an event.

    python -m tests.chromium report.html docs/report.png 1180   # the README screenshot
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-pipe",
]


class ChromiumError(RuntimeError):
    pass


@dataclass
class PageResult:
    errors: list[str] = field(default_factory=list)  # console errors and uncaught exceptions
    console: list[str] = field(default_factory=list)  # every console message, "type: text"
    requests: list[str] = field(default_factory=list)  # every URL the page asked for
    value: Any = None  # what `probe` evaluated to
    screenshot: bytes = b""


class _Pipe:
    """One Chromium process and its DevTools pipe."""

    def __init__(self, user_data_dir: Path) -> None:
        if not os.access(CHROMIUM, os.X_OK):
            raise ChromiumError(
                f"{CHROMIUM} not found: install Debian's chromium (`make chromium`, which runs "
                "`apt-get install -y chromium`)"
            )
        to_child, self._write = os.pipe()
        self._read, from_child = os.pipe()
        # Move the child's ends above 9 so that they never collide with 3 and 4, then bash
        # moves them to fds 3 and 4, where Chromium expects them.
        to_child, from_child = _high_fd(to_child), _high_fd(from_child)
        script = f'exec "$0" "$@" 3<&{to_child} 4>&{from_child} {to_child}<&- {from_child}>&-'
        self.process = subprocess.Popen(
            ["bash", "-c", script, CHROMIUM, *FLAGS, f"--user-data-dir={user_data_dir}"],
            pass_fds=(to_child, from_child),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        os.close(to_child)
        os.close(from_child)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def call(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        session: str | None = None,
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            for reply in self._receive(deadline, method):
                if reply.get("id") == self._next_id:
                    if "error" in reply:
                        raise ChromiumError(f"{method}: {reply['error']}")
                    result: dict[str, Any] = reply.get("result", {})
                    return result
                self.events.append(reply)

    def wait_for(self, event: str, *, session: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for item in self.events[seen:]:
                if item.get("method") == event and item.get("sessionId") == session:
                    return item
            seen = len(self.events)
            self.events.extend(self._receive(deadline, event))

    def _receive(self, deadline: float, waiting_for: str) -> list[dict[str, Any]]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ChromiumError(f"no answer from Chromium in time ({waiting_for})")
            ready, _, _ = select.select([self._read], [], [], left)
            if ready:
                chunk = os.read(self._read, 1 << 20)
                if not chunk:
                    err = self.process.stderr.read().decode() if self.process.stderr else ""
                    raise ChromiumError(f"Chromium exited ({waiting_for}): {err[-2000:]}")
                self._buffer += chunk
        *messages, self._buffer = self._buffer.split(b"\0")
        return [json.loads(m) for m in messages if m]

    def close(self) -> None:
        try:
            if self.process.poll() is None:
                self.call("Browser.close", timeout=5)
        except (ChromiumError, OSError):
            pass
        finally:
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            os.close(self._write)
            os.close(self._read)
            if self.process.stderr:
                self.process.stderr.close()


def _high_fd(fd: int) -> int:
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    os.set_inheritable(moved, True)
    return moved


def _console_text(params: dict[str, Any]) -> str:
    parts = []
    for arg in params.get("args", []):
        parts.append(str(arg.get("value", arg.get("description", arg.get("type")))))
    return " ".join(parts)


def open_page(
    page: Path,
    probe: str,
    *,
    ready: str = "true",
    width: int = 1280,
    height: int = 2000,
    full_page: bool = True,
    timeout: float = 60.0,
) -> PageResult:
    """Load `page` (a local file), wait until the JavaScript expression `ready` is true, then
    evaluate `probe` (its JSON value is returned) and take a screenshot (of the whole page, or
    of the first `height` pixels)."""
    result = PageResult()
    with tempfile.TemporaryDirectory(prefix="curate-chromium-") as profile:
        pipe = _Pipe(Path(profile))
        try:
            target = pipe.call("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = pipe.call("Target.attachToTarget", {"targetId": target, "flatten": True})[
                "sessionId"
            ]
            for domain in ("Runtime", "Log", "Page", "Network"):
                pipe.call(f"{domain}.enable", session=session)
            pipe.call(
                "Emulation.setDeviceMetricsOverride",
                {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
                session=session,
            )
            pipe.call("Page.navigate", {"url": page.resolve().as_uri()}, session=session)
            pipe.wait_for("Page.loadEventFired", session=session, timeout=timeout)
            deadline = time.monotonic() + timeout
            while not _evaluate(pipe, session, f"Boolean({ready})"):
                if time.monotonic() > deadline:
                    raise ChromiumError(f"page never became ready: {ready}")
                time.sleep(0.1)
            result.value = _evaluate(pipe, session, f"JSON.stringify({probe})")
            if isinstance(result.value, str):
                result.value = json.loads(result.value)
            shot = pipe.call(
                "Page.captureScreenshot",
                {"format": "png", "captureBeyondViewport": full_page},
                session=session,
                timeout=timeout,
            )
            result.screenshot = base64.b64decode(shot["data"])
        finally:
            pipe.close()
    for event in pipe.events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled":
            text = f"{params.get('type')}: {_console_text(params)}"
            result.console.append(text)
            if params.get("type") in ("error", "assert"):
                result.errors.append(text)
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            description = details.get("exception", {}).get("description") or details.get("text")
            result.errors.append(f"exception: {description}")
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            text = f"log {entry.get('source')}: {entry.get('text')} {entry.get('url', '')}"
            result.errors.append(text)
        elif method == "Network.requestWillBeSent":
            result.requests.append(params.get("request", {}).get("url", ""))
    return result


def _evaluate(pipe: _Pipe, session: str, expression: str) -> Any:
    reply = pipe.call(
        "Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=session
    )
    if "exceptionDetails" in reply:
        raise ChromiumError(f"{expression}: {reply['exceptionDetails']}")
    return reply.get("result", {}).get("value")


def main(argv: list[str]) -> int:
    page, out = Path(argv[0]), Path(argv[1])
    height = int(argv[2]) if len(argv) > 2 else 2000
    ready = "[...document.querySelectorAll('.js-plotly-plot')].every(p => p.querySelector('svg'))"
    result = open_page(page, "document.title", ready=ready, height=height, full_page=False)
    out.write_bytes(result.screenshot)
    print(f"{out}: {len(result.screenshot):,} bytes; errors: {result.errors or 'none'}")
    return 1 if result.errors else 0


if __name__ == "__main__":
    if not shutil.which("bash"):
        raise SystemExit("bash is needed to hand Chromium its DevTools pipe")
    sys.exit(main(sys.argv[1:]))
