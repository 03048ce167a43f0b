"""Run a Python program, and the untrusted code it executes, in a contained child process.

`run_sandboxed(program, data, limits=...)` starts a fresh interpreter (`python -I -S -B`: no
user site, no site-packages, no bytecode writes), in a network namespace of its own when
`unshare --net` works here (as root, or as a user allowed user namespaces), in a new session, in
an empty temporary working directory that is also its HOME and TMPDIR, with an environment
scrubbed down to PATH and the locale. The child contains itself before it runs anything it was
given (see `curate.verifiers.sandbox_child`: resource limits, Landlock, seccomp, an audit hook).
This process never changes its own limits or state.

The parent enforces the wall clock: when `limits.wall_s` passes, it kills the child's whole
process group. The child reports over a pipe of its own (not stdout, which goes to /dev/null);
messages carry a per-run nonce, and only those come back in `SandboxRun.messages`. At most
`limits.channel_bytes` of messages and the last `limits.stderr_bytes` of stderr are kept.

`isolation()` says which layers this machine provides; `SandboxRun.layers` says which a run had.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import secrets
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curate.errors import OperatorError

CHILD_SOURCE = Path(__file__).with_name("sandbox_child.py").read_text(encoding="utf-8")
EXIT_BLOCKED = 86  # sandbox_child.EXIT_BLOCKED: the guard ended the child
SAFE_ENV_KEYS = ("LANG", "LC_ALL", "LC_CTYPE", "TZ")  # passed on from this process, if set
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass(frozen=True, kw_only=True)
class Limits:
    """What one contained run may use."""

    wall_s: float = 5.0  # wall clock from start, interpreter start-up included
    cpu_s: int | None = None  # CPU seconds (SIGXCPU); default: the wall clock, rounded up, + 1
    memory_mb: int = 1024  # address space
    file_mb: int = 16  # largest file it may write
    open_files: int = 64
    channel_bytes: int = 1 << 20  # messages kept
    stderr_bytes: int = 4096  # tail of stderr kept

    def child(self) -> dict[str, int]:
        cpu = self.cpu_s if self.cpu_s is not None else math.ceil(self.wall_s) + 1
        return {
            "cpu_s": cpu,
            "memory_mb": self.memory_mb,
            "file_mb": self.file_mb,
            "open_files": self.open_files,
        }


@dataclass(frozen=True)
class SandboxRun:
    """How a contained run ended and what it reported."""

    messages: list[dict[str, Any]]  # the child's reports, in order, nonce removed
    returncode: int | None  # negative: killed by that signal
    timed_out: bool  # the wall clock ran out and the parent killed the process group
    wall_s: float
    stderr_tail: str

    @property
    def layers(self) -> tuple[str, ...]:
        """The containment layers the child reported in force (empty if it never got that far)."""
        for message in self.messages:
            if message.get("kind") == "layers":
                return tuple(message.get("layers", ()))
        return ()

    @property
    def blocked(self) -> dict[str, Any] | None:
        """The guard's report of the operation it blocked, if it blocked one."""
        return next((m for m in self.messages if m.get("kind") == "blocked"), None)


@functools.cache
def netns_prefix() -> tuple[str, ...]:
    """The command prefix that gives the child a network namespace without interfaces (only a
    loopback that is down), or () where none works here. Probed once per process."""
    exe = shutil.which("unshare")
    if exe is None or not sys.platform.startswith("linux"):
        return ()
    for prefix in ((exe, "--net"), (exe, "--net", "--map-root-user")):
        try:
            done = subprocess.run(
                [*prefix, sys.executable, "-I", "-S", "-c", "pass"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=_child_env("/"),
                timeout=30,
                check=False,
            )
        except (OSError, subprocess.SubprocessError):
            continue
        if done.returncode == 0:
            return prefix
    return ()


@functools.cache
def isolation() -> tuple[str, ...]:
    """The layers a contained run has on this machine, e.g. ("netns", "rlimits", "landlock",
    "seccomp", "nocaps", "audit"); probed once per process with a trivial program.
    OperatorError when no contained child can start at all."""
    run = run_sandboxed("pass", None, limits=Limits(wall_s=30.0))
    if not run.layers:
        tail = run.stderr_tail.strip()[-500:] or "(no output)"
        raise OperatorError(
            f"the code sandbox could not start a contained Python child ({sys.executable}; "
            f"exit code {run.returncode}, timed out: {run.timed_out}): {tail}"
        )
    return run.layers


def _child_env(workdir: str) -> dict[str, str]:
    env = {key: os.environ[key] for key in SAFE_ENV_KEYS if key in os.environ}
    env.setdefault("LANG", "C.UTF-8")
    env["PATH"] = DEFAULT_PATH
    env.update(HOME=workdir, TMPDIR=workdir, TMP=workdir, TEMP=workdir)
    return env


def run_sandboxed(
    program: str,
    data: Any,
    *,
    limits: Limits,
    python_guard: bool = True,
    kernel_guards: bool = True,
) -> SandboxRun:
    """Run `program` (Python source, executed with `DATA` = `data` and a `report(dict)` function
    in its globals) in a contained child process; see the module docstring.

    `python_guard` and `kernel_guards` exist so that tests can show each layer holding on its
    own; a verifier always runs with both."""
    if os.name != "posix":
        raise OperatorError(
            "running code in the sandbox needs a POSIX system (Linux, or macOS with fewer "
            f"layers); this is {sys.platform}"
        )
    workdir = tempfile.mkdtemp(prefix="curate-sandbox-")
    read_end, write_end = os.pipe()
    nonce = secrets.token_hex(16)
    prefix = netns_prefix()
    payload = json.dumps(
        {
            "channel_fd": write_end,
            "nonce": nonce,
            "limits": limits.child(),
            "netns": bool(prefix),
            "kernel": kernel_guards,
            "guard": python_guard,
            "program": program,
            "data": data,
        }
    ).encode()
    started = time.monotonic()
    try:
        try:
            process = subprocess.Popen(
                [*prefix, sys.executable, "-I", "-S", "-B", "-c", CHILD_SOURCE],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                cwd=workdir,
                env=_child_env(workdir),
                pass_fds=(write_end,),
                start_new_session=True,
            )
        finally:
            os.close(write_end)
        try:
            assert process.stdin is not None
            with contextlib.suppress(BrokenPipeError, OSError):
                process.stdin.write(payload)
            with contextlib.suppress(BrokenPipeError, OSError):
                process.stdin.close()
            channel, stderr = _collect(process, read_end, started + limits.wall_s, limits)
            timed_out = _finish(process, started + limits.wall_s)
        finally:
            if process.returncode is None:  # an exception above: never leave the child behind
                _kill_group(process)
                process.wait()
    finally:
        os.close(read_end)
        _remove_tree(workdir)
    return SandboxRun(
        messages=_messages(channel, nonce),
        returncode=process.returncode,
        timed_out=timed_out,
        wall_s=time.monotonic() - started,
        stderr_tail=stderr[-limits.stderr_bytes :].decode("utf-8", "replace"),
    )


def _collect(
    process: subprocess.Popen[bytes], channel_fd: int, deadline: float, limits: Limits
) -> tuple[bytes, bytes]:
    """Read the channel and stderr until both close or the deadline passes; keep bounded
    amounts (the rest is read and dropped, so the child never blocks on a full pipe)."""
    assert process.stderr is not None
    channel = bytearray()
    stderr = bytearray()
    with selectors.DefaultSelector() as selector:
        selector.register(channel_fd, selectors.EVENT_READ, "channel")
        selector.register(process.stderr.fileno(), selectors.EVENT_READ, "stderr")
        open_streams = 2
        while open_streams:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            for key, _ in selector.select(timeout=remaining):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fd)
                    open_streams -= 1
                elif key.data == "channel":
                    if len(channel) < limits.channel_bytes:
                        channel += chunk[: limits.channel_bytes - len(channel)]
                else:
                    stderr += chunk
                    if len(stderr) > 2 * limits.stderr_bytes:
                        del stderr[: -limits.stderr_bytes]
    process.stderr.close()
    return bytes(channel), bytes(stderr)


def _finish(process: subprocess.Popen[bytes], deadline: float) -> bool:
    """Wait for the child to exit until the deadline; then kill its process group, whose id
    cannot be reused while the (unreaped) leader exists, and reap it. True: it timed out."""
    if not hasattr(os, "waitid"):  # macOS: no waitid; a reaped leader's group may linger
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _kill_group(process)
            process.wait()
            return True
        return False
    timed_out = False
    delay = 0.0005
    while True:
        try:
            info = os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            info = None
            break
        if info is not None:
            break
        if time.monotonic() >= deadline:
            timed_out = True
            break
        time.sleep(delay)
        delay = min(delay * 2, 0.02)
    _kill_group(process)
    process.wait()
    return timed_out


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        process.kill()


def _messages(channel: bytes, nonce: str) -> list[dict[str, Any]]:
    messages = []
    for line in channel.splitlines():
        try:
            message = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            continue
        if isinstance(message, dict) and message.pop("nonce", None) == nonce:
            messages.append(message)
    return messages


def _remove_tree(path: str) -> None:
    """Delete the working directory, whatever permissions the child left on what it made."""

    def retry(function: Any, target: str, _exc: Any) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(target), stat.S_IRWXU)
            os.chmod(target, stat.S_IRWXU)
            function(target)

    shutil.rmtree(path, onerror=retry)
