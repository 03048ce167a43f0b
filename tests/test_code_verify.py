"""verify (method: code): real HumanEval problems pass and fail as they should, and traces written
as an attacker would write them (read secrets, open sockets, fork, allocate, write outside their
folder, never return, forge results) are each contained and recorded as a failed verdict with its
reason, while the rest of the batch is judged normally.

The kernel-layer tests run the sandbox with the Python guard switched off, to show that the
layer under it holds on its own; they assert the layer's effect where this machine provides the
layer (Linux with Landlock and seccomp, as on the development box) and its absence otherwise."""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from pydantic import ValidationError

from curate.errors import OperatorError
from curate.inputs import read_input
from curate.operators import StageContext
from curate.verifiers.code import extract_code
from curate.verifiers.sandbox import Limits, isolation, run_sandboxed
from curate.verify import Verify, VerifyParams
from schemas.spec import InputSpec
from tests.conftest import REPO

DATA = REPO / "tests" / "data" / "code_problems"
CANARY = "sk-test-canary"
DOUBLE_META = json.dumps(
    {
        "test": (
            "def check(candidate):\n    assert candidate(2) == 4\n    assert candidate(0) == 0\n"
        ),
        "entry_point": "double",
    }
)
GOOD = "Here it is:\n```python\ndef double(x):\n    return 2 * x\n```\n"


def fenced(code: str) -> str:
    return f"```python\n{code}\n```"


def frame_of(rows: list[tuple[str | None, str | None]], prompt: str = "") -> pl.DataFrame:
    """(completion, problem_meta) rows."""
    return pl.DataFrame(
        {
            "problem_id": [f"p{i}" for i in range(len(rows))],
            "prompt": [prompt] * len(rows),
            "completion": [c for c, _ in rows],
            "reference_answer": [None] * len(rows),
            "problem_meta": [m for _, m in rows],
        },
        schema={
            "problem_id": pl.String,
            "prompt": pl.String,
            "completion": pl.String,
            "reference_answer": pl.String,
            "problem_meta": pl.String,
        },
    )


def verify(frame: pl.DataFrame, **params: Any) -> pl.DataFrame:
    context = StageContext(stage_id="02-verify", workers=4)
    result = Verify(VerifyParams.model_validate({"method": "code", **params}), context=context).run(
        frame
    )
    assert result.dropped.height == 0
    assert result.kept.height == frame.height
    return result.kept


def outcomes(kept: pl.DataFrame) -> list[tuple[bool | None, str, float | None]]:
    return list(
        zip(
            kept["verdict"].to_list(),
            kept["verify_detail"].to_list(),
            kept["score"].to_list(),
            strict=True,
        )
    )


def attack(code: str, **params: Any) -> tuple[bool | None, str, float | None]:
    """Verify one attacking trace next to a correct one; the correct one must still pass."""
    kept = verify(frame_of([(fenced(code), DOUBLE_META), (GOOD, DOUBLE_META)]), **params)
    (verdict, detail, score), good = outcomes(kept)
    assert good == (True, "passed: 2/2 tests", 1.0)
    return verdict, detail, score


def load(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (DATA / name).read_text().splitlines()]


# --------------------------------------------------------------------- real problems
def test_humaneval_canonical_solutions_pass_and_wrong_ones_fail_with_their_scores() -> None:
    problems = load("humaneval_doctests.jsonl")
    wrong = {row["task_id"]: row for row in load("wrong_solutions.jsonl")}
    rows, prompts, expected = [], [], []
    for problem in problems:
        meta = json.dumps({"test": problem["test"], "entry_point": problem["entry_point"]})
        total = problem["test"].count("assert ")
        solution = problem["prompt"] + problem["canonical_solution"]
        rows.append((f"The solution:\n\n{fenced(solution)}\n\nDone.", meta))
        expected.append((True, f"passed: {total}/{total} tests", 1.0))
        bad = wrong[problem["task_id"]]
        rows.append((fenced(bad["solution"]), meta))
        expected.append((False, f"{bad['passes']}/{total} passed", bad["passes"] / total))
        prompts += [problem["prompt"]] * 2
    frame = frame_of(rows).with_columns(pl.Series("prompt", prompts))
    kept = verify(frame)
    got = outcomes(kept)
    for (verdict, detail, score), (want_verdict, want_detail, want_score) in zip(
        got, expected, strict=True
    ):
        assert verdict is want_verdict
        assert score == pytest.approx(want_score)
        if want_verdict:
            assert detail == want_detail
        else:
            assert detail.startswith("test_failed: assert candidate(")
            assert detail.endswith(want_detail)
    assert kept["verifier"].unique().to_list() == ["code-sandbox " + "+".join(isolation())]
    # the extracted code is what ran: the fenced block, not the prose around it
    assert kept["extracted_answer"][0].startswith("from typing import List")


def test_a_jsonl_with_humaneval_fields_reaches_the_tests_through_columns_meta(
    tmp_path: Path,
) -> None:
    """HumanEval's own layout (`test`, `entry_point`) read by `input:` with `meta: [test,
    entry_point]`; the entry point falls back to the prompt's last `def` when not mapped."""
    path = tmp_path / "humaneval.jsonl"
    with path.open("w") as out:
        for problem in load("humaneval_doctests.jsonl"):
            completion = fenced(problem["prompt"] + problem["canonical_solution"])
            out.write(json.dumps({**problem, "completion": completion}) + "\n")
    for meta in (["test", "entry_point"], ["test"]):
        spec = InputSpec.model_validate(
            {
                "path": str(path),
                "columns": {
                    "id": "task_id",
                    "prompt": "prompt",
                    "meta": meta,
                    "completion": "completion",
                },
            }
        )
        frame = read_input(spec, base_dir=tmp_path).frame
        kept = verify(frame, tests_field="test")
        assert kept["verdict"].to_list() == [True] * 9, kept["verify_detail"].to_list()


# ------------------------------------------------------------------------- attacks
def test_environment_secrets_are_not_visible(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", CANARY)
    monkeypatch.setenv("HF_TOKEN", "hf_test_canary")
    steal = "import os\ndef double(x):\n    return os.environ.get('OPENAI_API_KEY', 'none')\n"
    meta = json.dumps({"test": f"assert double(1) == {CANARY!r}\n", "entry_point": "double"})
    parent = "import os\nSECRET = open(f'/proc/{os.getppid()}/environ').read()\n"
    init = "SECRET = open('/proc/1/environ').read()\n"
    shout = "import os\nraise ValueError(os.environ.get('OPENAI_API_KEY'))\n"
    kept = verify(
        frame_of(
            [
                (fenced(steal), meta),
                (fenced(parent + "def double(x):\n    return 2 * x"), DOUBLE_META),
                (fenced(init + "def double(x):\n    return 2 * x"), DOUBLE_META),
                (fenced(shout), DOUBLE_META),
                (GOOD, DOUBLE_META),
            ]
        )
    )
    got = outcomes(kept)
    assert got[0] == (
        False,
        "test_failed: assert double(1) == 'sk-test-canary' (AssertionError); 0/1 passed",
        0.0,
    )
    assert got[1] == (False, f"blocked: env (/proc/{os.getpid()}/environ)", 0.0)
    assert got[2] == (False, "blocked: env (/proc/1/environ)", 0.0)
    assert got[3] == (False, "runtime_error: ValueError: None", 0.0)
    assert got[4][0] is True
    # the canary is only where the problem itself put it: its test, and the test's label
    for column in kept.columns:
        if column not in ("problem_meta", "verify_detail"):
            assert CANARY not in json.dumps(kept[column].to_list(), default=str), column
    assert "hf_test_canary" not in json.dumps(kept.rows(), default=str)
    # what the child sees: a scrubbed environment, HOME and TMPDIR in its own empty folder
    run = run_sandboxed(
        "import os\nreport({'kind': 'env', 'env': dict(os.environ), 'files': os.listdir('.')})",
        None,
        limits=Limits(wall_s=10),
    )
    seen = next(m for m in run.messages if m["kind"] == "env")
    allowed = {"PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "HOME", "TMPDIR", "TMP", "TEMP"}
    assert set(seen["env"]) <= allowed
    assert CANARY not in json.dumps(seen)
    assert seen["env"]["HOME"] == seen["env"]["TMPDIR"]
    assert seen["files"] == []


def test_a_network_socket_is_blocked_and_no_connection_arrives() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(5)
        server.settimeout(0.5)
        port = server.getsockname()[1]
        leak = (
            "import socket\n"
            f"s = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
            "s.sendall(b'leak')\n"
            "def double(x):\n    return 2 * x\n"
        )
        verdict, detail, score = attack(leak)
        assert (verdict, score) == (False, 0.0)
        assert detail.startswith("blocked: network (socket.")
        # the kernel layers alone (no Python guard): the connection still never arrives
        run = run_sandboxed(
            f"import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
            "    report({'kind': 'connected'})\nexcept OSError as exc:\n"
            "    report({'kind': 'refused', 'error': str(exc)})",
            None,
            limits=Limits(wall_s=10),
            python_guard=False,
        )
        kinds = [m["kind"] for m in run.messages]
        if {"netns", "landlock", "seccomp"} & set(run.layers):
            assert kinds == ["layers", "refused"], run.messages
        else:
            assert "connected" in kinds  # no kernel layer here: the guard is the only one
        with pytest.raises(TimeoutError):
            server.accept()


@pytest.mark.parametrize(
    ("code", "what"),
    [
        ("import os\nwhile True:\n    os.fork()", "os.fork"),
        ("import os\nos.system('echo escaped > /tmp/x')", "os.system"),
        ("import subprocess\nsubprocess.run(['sh', '-c', 'true'])", "import _posixsubprocess"),
        ("import pty\npty.fork()", "os.forkpty"),
    ],
)
def test_process_creation_is_blocked(code: str, what: str) -> None:
    verdict, detail, score = attack(code + "\ndef double(x):\n    return 2 * x")
    assert (verdict, detail, score) == (False, f"blocked: fork ({what})", 0.0)


def test_a_fork_bomb_without_the_python_guard_cannot_fork() -> None:
    run = run_sandboxed(
        "import os\nmade = 0\nfor _ in range(200):\n    try:\n        pid = os.fork()\n"
        "    except OSError:\n        continue\n    if pid == 0:\n        os._exit(0)\n"
        "    made += 1\nreport({'kind': 'forks', 'made': made})",
        None,
        limits=Limits(wall_s=20),
        python_guard=False,
    )
    made = next(m["made"] for m in run.messages if m["kind"] == "forks")
    if "seccomp" in run.layers or os.getuid() != 0:  # seccomp, or RLIMIT_NPROC for non-root
        assert made == 0
    assert not run.timed_out


def test_signals_to_other_processes_are_blocked() -> None:
    code = "import os, signal\nos.kill(os.getppid(), signal.SIGCONT)"
    verdict, detail, score = attack(code + "\ndef double(x):\n    return 2 * x")
    assert (verdict, score) == (False, 0.0)
    assert detail == f"blocked: signal (os.kill {os.getpid()})"
    run = run_sandboxed(
        "import os\ntry:\n    os.kill(os.getppid(), 0)\n    report({'kind': 'sent'})\n"
        "except OSError as exc:\n    report({'kind': 'denied', 'error': str(exc)})",
        None,
        limits=Limits(wall_s=10),
        python_guard=False,
    )
    if {"seccomp", "landlock"} & set(run.layers):
        assert [m["kind"] for m in run.messages] == ["layers", "denied"]


def test_without_the_python_guard_a_root_child_has_no_root_powers(tmp_path: Path) -> None:
    """Started by root (as on the development box), the child is uid 0 without capabilities:
    no device node for a disk, no raised limits, no new hostname, no clock change."""
    probes = {
        "mknod": "os.mknod('disk', 0o600 | stat.S_IFBLK, os.makedev(8, 0))",
        "rlimit": "resource.setrlimit(resource.RLIMIT_AS, (-1, -1))",
        "hostname": "socket.sethostname('pwned')",
        "clock": "time.clock_settime(time.CLOCK_REALTIME, 0.0)",
    }
    program = "import os, resource, socket, stat, time\nresults = {}\n"
    for name, call in probes.items():
        program += (
            f"try:\n    {call}\n    results[{name!r}] = 'done'\n"
            f"except (OSError, ValueError) as exc:\n    results[{name!r}] = type(exc).__name__\n"
        )
    program += (
        "caps = [l.split()[1] for l in open('/proc/self/status') if l.startswith('CapEff')]\n"
        "report({'kind': 'probes', 'results': results, 'caps': caps})"
    )
    run = run_sandboxed(program, None, limits=Limits(wall_s=10), python_guard=False)
    found = next(m for m in run.messages if m["kind"] == "probes")
    if "nocaps" in run.layers:
        assert found["caps"] == ["0000000000000000"]
    if "seccomp" in run.layers or "nocaps" in run.layers or os.getuid() != 0:
        assert "done" not in found["results"].values(), found


@pytest.mark.parametrize(
    ("code", "detail"),
    [
        (
            "chunks = []\nwhile True:\n    chunks.append(bytearray(10 ** 7))\n"
            "def double(x):\n    return 2 * x",
            "memory: MemoryError while running the solution (limit 256 MB)",
        ),
        (
            "def double(x):\n    return len(bytearray(10 ** 12)) and 2 * x",
            "memory: MemoryError in assert candidate(2) == 4 (limit 256 MB)",
        ),
    ],
)
def test_unbounded_allocation_is_stopped(code: str, detail: str) -> None:
    started = time.monotonic()
    verdict, got, score = attack(code, memory_mb=256)
    assert (verdict, got, score) == (False, detail, 0.0)
    assert time.monotonic() - started < 20


def test_writes_outside_the_working_directory_are_blocked(tmp_path: Path) -> None:
    target = tmp_path / "escaped.txt"
    keep = tmp_path / "keep.txt"
    keep.write_text("precious")
    cases = [
        (f"open({str(target)!r}, 'w').write('pwned')", f"blocked: write ({target})"),
        (f"import os\nos.remove({str(keep)!r})", f"blocked: write (os.remove {keep})"),
        (
            f"import os\nos.chdir('/')\nopen({str(target)[1:]!r}, 'w')",
            f"blocked: write ({target})",
        ),
    ]
    for code, detail in cases:
        verdict, got, score = attack(code + "\ndef double(x):\n    return 2 * x")
        assert (verdict, got, score) == (False, detail, 0.0)
    assert not target.exists()
    assert keep.read_text() == "precious"
    # its own folder is writable: scratch files there are fine
    scratch = "open('scratch.txt', 'w').write('ok')\ndef double(x):\n    return 2 * x"
    kept = verify(frame_of([(fenced(scratch), DOUBLE_META)]))
    assert outcomes(kept) == [(True, "passed: 2/2 tests", 1.0)]
    # the kernel layer alone stops the write too
    run = run_sandboxed(
        f"try:\n    open({str(target)!r}, 'w').write('pwned')\n    report({{'kind': 'wrote'}})\n"
        "except OSError as exc:\n    report({'kind': 'denied', 'error': str(exc)})",
        None,
        limits=Limits(wall_s=10),
        python_guard=False,
    )
    if "landlock" in run.layers:
        assert [m["kind"] for m in run.messages] == ["layers", "denied"]
        assert not target.exists()


def test_ordinary_solutions_are_not_blocked() -> None:
    """Much of the standard library, module-level classes that look their module up, deep
    recursion, temporary files (in the sandbox's own TMPDIR), logging and stderr output."""
    code = (
        "import sys, math, collections, itertools, functools, heapq, bisect, re, string\n"
        "import fractions, decimal, statistics, random, datetime, typing, dataclasses, enum\n"
        "import operator, copy, json, hashlib, array, textwrap, queue, threading, io, time\n"
        "import logging, tempfile, pathlib, os, inspect, csv, struct, base64, zlib, difflib\n"
        "from collections import namedtuple\nfrom typing import NamedTuple\n"
        "sys.setrecursionlimit(20000)\nP = namedtuple('P', 'a b')\n"
        "class Q(NamedTuple):\n    a: int\n"
        "@dataclasses.dataclass\nclass D:\n    x: int = 1\n"
        "def depth(n):\n    return 0 if n == 0 else 1 + depth(n - 1)\n"
        "with tempfile.TemporaryDirectory() as d:\n"
        "    pathlib.Path(d, 'f.txt').write_text('hi')\n"
        "logging.getLogger('x').warning('quiet')\nprint('to stderr', file=sys.stderr)\n"
        "def double(x):\n    assert depth(5000) == 5000\n    return D(2).x * x\n"
    )
    kept = verify(frame_of([(fenced(code), DOUBLE_META)]))
    assert outcomes(kept) == [(True, "passed: 2/2 tests", 1.0)]


def test_a_directory_descriptor_outside_cannot_anchor_a_write() -> None:
    code = (
        "import os\nfd = os.open('/usr', os.O_RDONLY)\n"
        "os.open('x', os.O_CREAT | os.O_WRONLY, dir_fd=fd)"
    )
    assert attack(code) == (False, "blocked: read (directory descriptor /usr)", 0.0)
    # a path relative to a descriptor of its own folder is resolved, and ../../x is outside
    code = (
        "import os\nos.mkdir('sub')\nfd = os.open('sub', os.O_RDONLY)\n"
        "os.rename('../../x', 'y', src_dir_fd=fd)"
    )
    outside = Path(tempfile.gettempdir()).resolve() / "x"
    assert attack(code) == (False, f"blocked: write (os.rename {outside})", 0.0)


def test_code_that_never_returns_is_killed_at_the_wall_clock_limit() -> None:
    spin = fenced("while True:\n    pass")
    sleep = fenced("import time\ntime.sleep(10 ** 6)")
    started = time.monotonic()
    kept = verify(
        frame_of([(spin, DOUBLE_META), (sleep, DOUBLE_META), (GOOD, DOUBLE_META)]), timeout_s=2
    )
    elapsed = time.monotonic() - started
    got = outcomes(kept)
    for verdict, detail, score in got[:2]:
        assert (verdict, detail, score) == (
            False,
            "timeout: still running after 2s (wall clock); killed",
            0.0,
        )
    assert got[2] == (True, "passed: 2/2 tests", 1.0)
    assert 2.0 <= elapsed < 2.0 + 3.0  # the two run side by side; slack for a busy 2-core box


def test_forged_results_and_early_exits_do_not_pass() -> None:
    forge = (
        "import json, os, sys\n"
        "fake = json.dumps({'nonce': '0' * 32, 'kind': 'done'}) + '\\n'\n"
        "print(fake)\n"
        "for fd in range(3, 64):\n"
        "    try:\n        os.write(fd, fake.encode())\n    except OSError:\n        pass\n"
        "os._exit(0)\n"
    )
    assert attack(forge) == (
        False,
        "exited_early: exit code 0 before the tests finished",
        0.0,
    )
    assert attack("import sys\nsys.exit(0)") == (False, "runtime_error: SystemExit: 0", 0.0)
    assert attack("import ctypes") == (False, "blocked: native (import ctypes)", 0.0)


def test_other_outcomes() -> None:
    mbpp = json.dumps({"test_list": ["assert double(1) == 2", "assert double(2) == 5"]})
    script = json.dumps({"tests": "x = double(3)\nassert x == 6\nassert double(-1) == -2\n"})
    rows = [
        (fenced("def double(x) return 2 * x"), DOUBLE_META),
        ("I would use multiplication.", DOUBLE_META),
        ("```bash\necho not python\n```", DOUBLE_META),
        (fenced("def twice(x):\n    return 2 * x"), DOUBLE_META),
        (fenced("def double(x):\n    return 2 * x"), json.dumps({"note": "no tests"})),
        (fenced("def double(x):\n    return 2 * x"), None),
        (fenced("def double(x):\n    return 2 * x"), mbpp),
        (fenced("def double(x):\n    return 2 * x"), script),
        (fenced("raise ValueError('bad input')"), DOUBLE_META),
        ("```python\ndef double(x):\n    return 2 * x\n", DOUBLE_META),  # unclosed fence
    ]
    got = outcomes(verify(frame_of(rows)))
    assert got[0][0] is False and got[0][1].startswith("syntax_error: line 1: ")
    assert got[1] == (False, "no_code: no ```python block in the completion", 0.0)
    assert got[2] == got[1]
    assert got[3] == (False, "missing_function: the solution defines no double()", 0.0)
    assert got[4] == (
        None,
        "reference unparseable: no tests in problem_meta (looked for 'tests', 'test', 'test_list')",
        None,
    )
    assert got[5][0] is None and got[5][1].startswith("reference unparseable: no problem_meta")
    assert got[6] == (
        False,
        "test_failed: assert double(2) == 5 (AssertionError); 1/2 passed",
        0.5,
    )
    assert got[7] == (True, "passed: 2/2 tests", 1.0)
    assert got[8] == (False, "runtime_error: ValueError: bad input", 0.0)
    assert got[9] == (True, "passed: 2/2 tests", 1.0)


def test_a_failed_request_is_not_run() -> None:
    frame = frame_of([(None, DOUBLE_META), (GOOD, DOUBLE_META)]).with_columns(
        pl.Series("error", ["timeout after 3 tries", None], dtype=pl.String)
    )
    kept = verify(frame)
    assert outcomes(kept) == [
        (None, "request failed: timeout after 3 tries", None),
        (True, "passed: 2/2 tests", 1.0),
    ]
    assert kept["extracted_answer"][0] is None


def test_regex_extraction_and_a_missing_meta_column() -> None:
    raw = "SOLUTION START\ndef double(x):\n    return x + x\nSOLUTION END"
    kept = verify(
        frame_of([(raw, DOUBLE_META)]),
        extract="regex",
        pattern=r"(?s)SOLUTION START\n(.*?)SOLUTION END",
    )
    assert outcomes(kept) == [(True, "passed: 2/2 tests", 1.0)]
    with pytest.raises(OperatorError, match="problem_meta"):
        verify(frame_of([(GOOD, DOUBLE_META)]).drop("problem_meta"))
    with pytest.raises(ValidationError, match="method: code takes extract"):
        VerifyParams.model_validate({"method": "code", "extract": "boxed"})


def test_extract_code_takes_the_last_python_block() -> None:
    text = (
        "First try:\n```python\nx = 1\n```\nOr in shell:\n```bash\nls\n```\n"
        "Final:\n~~~py\nx = 2\n~~~\n"
    )
    assert extract_code(text) == "x = 2\n"
    assert extract_code("```\nx = 3\n```\n```text\nnot code\n```") == "x = 3\n"
    assert extract_code("```python\nx = 4\n```\n```\nx = 5\n```") == "x = 4\n"
    assert extract_code("no code at all") is None
    assert extract_code("```python\n\n```") is None
    assert extract_code(None) is None
