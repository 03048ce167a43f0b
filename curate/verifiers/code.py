"""Code verification: run the code in each trace against its problem's tests, contained.

For each row: the code is the last fenced ```python block of the completion (else the last
fenced block without a language; an unclosed final fence counts, so a truncated trace fails to
compile rather than passing silently), or group 1 of the last match of a user pattern. The tests
come from the row's `problem_meta` JSON: `tests_field` (default: the first of "tests", "test",
"test_list" present) holds a string of Python (asserts, or a HumanEval `check(candidate)`
function) or a list of strings (one test each, as in MBPP); `entry_point_field` (default
"entry_point") names the function that `candidate` stands for, and when it is missing the last
`def` in the prompt does. A JSONL with HumanEval's fields gets them there with
`input.columns.meta: [test, entry_point]`.

Each distinct (code, tests, entry point) runs once, in the sandbox (`curate.verifiers.sandbox`),
with `workers` of them at a time. Verdict true when every test passes. `score` is the fraction of
tests passed (tests are run one by one, see `code_harness`); 1/0 when the tests are a single
`check(candidate)` that cannot be split; 0 when the code is blocked, does not compile, fails
before the tests or is missing. `verify_detail` starts with the reason:

    passed: 7/7 tests            test_failed: <first failing test> (<error>); 5/7 passed
    timeout: ...                 memory: ...                    syntax_error: line 3: ...
    blocked: network|fork|write|read|env|signal|native (<what>)
    runtime_error: ...           missing_function: ...          no_code: ...
    crashed: SIGSEGV ...         exited_early: ...              (all of these: verdict false)
    reference unparseable: ...   sandbox error: ...             (verdict null: not judged)

What a pass does not prove: the tests run in the same interpreter as the solution, so a
solution written to game them (returning an object whose `__eq__` is always true, or walking
the interpreter's frames to reach the harness's reporting function) can pass; the sandbox
contains what code can do to the machine, not what it can do to its own verdict. Printing a
fake result, writing to stray descriptors or exiting early (`os._exit(0)`, `sys.exit()`) all
fail. Only the standard library is importable (the child runs with `-I -S`).
"""

from __future__ import annotations

import re
import signal
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

from curate.verifiers.extract import last_regex
from curate.verifiers.meta import meta_field
from curate.verifiers.result import REFERENCE_UNPARSEABLE
from curate.verifiers.sandbox import Limits, SandboxRun, isolation, run_sandboxed
from curate.verifiers.scored import Scored

HARNESS_SOURCE = Path(__file__).with_name("code_harness.py").read_text(encoding="utf-8")
DEFAULT_TESTS_FIELDS = ("tests", "test", "test_list")
PYTHON_LANGS = frozenset({"python", "py", "python3", "py3"})

PASSED = "passed"
TEST_FAILED = "test_failed"
TIMEOUT = "timeout"
MEMORY = "memory"
SYNTAX_ERROR = "syntax_error"
BLOCKED = "blocked"
RUNTIME_ERROR = "runtime_error"
MISSING_FUNCTION = "missing_function"
NO_CODE = "no_code"
CRASHED = "crashed"
EXITED_EARLY = "exited_early"
SANDBOX_ERROR = "sandbox error"

_FENCE = re.compile(
    r"^[ \t]*(?P<fence>`{3,}|~{3,})[ \t]*(?P<lang>[^\s`~]*)[^\n]*\n"
    r"(?P<body>.*?)(?:^[ \t]*(?P=fence)[ \t]*$|\Z)",
    re.M | re.S,
)
_DEF = re.compile(r"^def[ \t]+([A-Za-z_]\w*)[ \t]*\(", re.M)


class CodeTask(NamedTuple):
    """What one sandboxed run needs."""

    code: str
    tests: Any  # str or list[str]
    entry_point: str | None


def extract_code(completion: str | None, pattern: str | None = None) -> str | None:
    """The code to run from one completion; None when there is none."""
    if not completion:
        return None
    text = completion.replace("\r\n", "\n")
    if pattern is not None:
        return last_regex(text, pattern)
    python: str | None = None
    plain: str | None = None
    for match in _FENCE.finditer(text):
        lang = match.group("lang").lower()
        body = match.group("body")
        if lang in PYTHON_LANGS:
            python = body
        elif not lang:
            plain = body
    code = python if python is not None else plain
    return code if code is not None and code.strip() else None


def problem_tests(
    meta: str | None,
    prompt: str | None,
    *,
    tests_field: str | None,
    entry_point_field: str,
) -> tuple[Any, str | None] | str:
    """(tests, entry point) from a row's problem_meta JSON, or why there are none."""
    found = meta_field(
        meta,
        (tests_field,) if tests_field else DEFAULT_TESTS_FIELDS,
        what="tests",
        usable=lambda value: value not in (None, "", []),
    )
    if isinstance(found, str):
        return found
    data, field = found
    tests = data[field]
    if not isinstance(tests, str) and not (
        isinstance(tests, list) and all(isinstance(t, str) for t in tests)
    ):
        return f"problem_meta[{field!r}] is not a string or a list of strings"
    entry = data.get(entry_point_field)
    if not isinstance(entry, str) or not entry.strip():
        names = _DEF.findall(prompt or "")
        entry = names[-1] if names else None
    return tests, entry


def judge_code(
    completions: Sequence[str | None],
    metas: Sequence[str | None],
    prompts: Sequence[str | None],
    *,
    pattern: str | None,
    tests_field: str | None,
    entry_point_field: str,
    limits: Limits,
    workers: int,
) -> tuple[list[str | None], list[Scored]]:
    """The code found in each row and its judgement, in row order."""
    codes = [extract_code(text, pattern) for text in completions]
    out: list[Scored | None] = [None] * len(codes)
    tasks: dict[CodeTask, list[int]] = {}
    for i, (code, meta, prompt) in enumerate(zip(codes, metas, prompts, strict=True)):
        found = problem_tests(
            meta, prompt, tests_field=tests_field, entry_point_field=entry_point_field
        )
        if isinstance(found, str):
            out[i] = Scored(None, f"{REFERENCE_UNPARSEABLE}: {found}", None)
        elif code is None:
            where = "match of the pattern" if pattern else "```python block"
            out[i] = Scored(False, f"{NO_CODE}: no {where} in the completion", 0.0)
        else:
            tests, entry = found
            key = CodeTask(code, tuple(tests) if isinstance(tests, list) else tests, entry)
            tasks.setdefault(key, []).append(i)
    if tasks:
        isolation()  # a sandbox that cannot start fails the step here, once, with the reason
        unique = list(tasks)
        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(unique)))) as pool:
            results = pool.map(lambda task: run_code(task, limits=limits), unique)
            for task, scored in zip(unique, results, strict=True):
                for i in tasks[task]:
                    out[i] = scored
    return codes, [s if s is not None else Scored(None, SANDBOX_ERROR, None) for s in out]


def run_code(task: CodeTask, *, limits: Limits) -> Scored:
    """Run one task in the sandbox and judge how it went."""
    tests = list(task.tests) if isinstance(task.tests, tuple) else task.tests
    data = {"code": task.code, "tests": tests, "entry_point": task.entry_point}
    return judge_run(run_sandboxed(HARNESS_SOURCE, data, limits=limits), limits)


def judge_run(run: SandboxRun, limits: Limits) -> Scored:
    """A sandbox run's messages and exit, as a verdict, detail and score."""
    by_kind: dict[str, dict[str, Any]] = {}
    passed = 0
    failure: dict[str, Any] | None = None
    for message in run.messages:
        kind = str(message.get("kind"))
        by_kind.setdefault(kind, message)
        if kind == "test":
            if message.get("ok") is True:
                passed += 1
            elif failure is None:
                failure = message
    total = int(by_kind.get("plan", {}).get("total", 0) or 0)
    fraction = passed / total if total else 0.0

    def fail(detail: str, score: float = fraction) -> Scored:
        return Scored(False, detail, score)

    blocked = run.blocked
    if blocked is not None:
        return fail(f"{BLOCKED}: {blocked.get('blocked')} ({blocked.get('what')})", 0.0)
    if "bad_tests" in by_kind:
        return Scored(None, f"{REFERENCE_UNPARSEABLE}: {by_kind['bad_tests'].get('detail')}", None)
    if "syntax_error" in by_kind:
        return fail(f"{SYNTAX_ERROR}: {by_kind['syntax_error'].get('detail')}", 0.0)
    if "layers" not in by_kind:
        last = run.stderr_tail.strip().splitlines()[-1:] or [f"exit code {run.returncode}"]
        return Scored(None, f"{SANDBOX_ERROR}: {last[0][:200]}", None)
    if run.timed_out:
        return fail(f"{TIMEOUT}: still running after {limits.wall_s:g}s (wall clock); killed")
    if run.returncode == -signal.SIGXCPU:
        return fail(f"{TIMEOUT}: CPU time limit of {limits.child()['cpu_s']}s")
    if "memory" in by_kind or ("done" not in by_kind and "MemoryError" in run.stderr_tail):
        detail = by_kind.get("memory", {}).get("detail", "MemoryError")
        return fail(f"{MEMORY}: {detail} (limit {limits.memory_mb} MB)")
    if "runtime_error" in by_kind:
        return fail(f"{RUNTIME_ERROR}: {by_kind['runtime_error'].get('detail')}", 0.0)
    if "missing_function" in by_kind:
        return fail(f"{MISSING_FUNCTION}: {by_kind['missing_function'].get('detail')}", 0.0)
    if "done" in by_kind:
        if total and passed == total:
            return Scored(True, f"{PASSED}: {passed}/{total} tests", 1.0)
        if failure is None:
            return fail(f"{TEST_FAILED}: no test ran; 0/{total} passed")
        return fail(
            f"{TEST_FAILED}: {failure.get('label')} ({failure.get('error')}); "
            f"{passed}/{total} passed"
        )
    if run.returncode is not None and run.returncode < 0:
        try:
            name = signal.Signals(-run.returncode).name
        except ValueError:
            name = f"signal {-run.returncode}"
        return fail(f"{CRASHED}: {name} before the tests finished")
    return fail(f"{EXITED_EARLY}: exit code {run.returncode} before the tests finished")


def code_verifier_name() -> str:
    """What goes in the `verifier` column: the method and the sandbox layers in force here,
    e.g. "code-sandbox netns+rlimits+landlock+seccomp+audit"."""
    return f"code-sandbox {'+'.join(isolation())}"
