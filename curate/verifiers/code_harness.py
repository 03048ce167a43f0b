"""The test runner that runs inside the sandbox: execute a solution, then its tests one by one.

Executed by `curate.verifiers.sandbox_child` with `DATA` = {"code", "tests", "entry_point"}
and `report` in its globals; standard library only. It reports, in order:

- `{"kind": "syntax_error", "detail"}` when the solution does not compile, and stops;
- `{"kind": "bad_tests", "detail"}` when the tests do not compile or contain no test, and stops;
- `{"kind": "plan", "total": n, "separable": bool}`: how many tests will run;
- `{"kind": "runtime_error" | "memory", "detail"}` when executing the solution fails, and stops;
- `{"kind": "missing_function", "detail"}` when HumanEval-style tests need an entry point the
  solution does not define, and stops;
- `{"kind": "test", "index", "ok", "label", "error"}` after each test;
- `{"kind": "done"}` at the end.

How tests are split (so that `score` can be the fraction passed):
- a list of strings: each string is one test (MBPP's `test_list`);
- a string that defines `check(candidate)` (HumanEval): the test module runs first; then each
  top-level statement of `check`'s body that contains an `assert` is one test, run with
  `candidate` bound to the solution's entry point; other statements are set-up and run in order
  (a set-up statement that raises fails the next test and ends the run). If the body cannot be
  run statement by statement (it returns early, say), `check(candidate)` is the one test;
- any other string: each top-level statement containing an `assert` is a test, run in the
  solution's namespace; the others are set-up.
`assert True`-style statements with a constant condition are set-up, not tests.
"""

from __future__ import annotations

import ast
import sys
import types
from collections.abc import Callable
from typing import Any

LABEL_CHARS = 160
ERROR_CHARS = 160

Report = Callable[[dict[str, Any]], None]


class BadTests(Exception):
    """The tests cannot be run: the message says why."""


def label(source: str, node: ast.AST) -> str:
    text = ast.get_source_segment(source, node) or ast.unparse(node)
    first = " ".join(text.strip().splitlines()[0].split()) if text.strip() else ""
    if len(first) > LABEL_CHARS:
        first = first[: LABEL_CHARS - 1] + "…"
    return first


def describe(exc: BaseException) -> str:
    try:
        message = str(exc)
    except BaseException:
        message = ""
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    text = " ".join(text.split())
    return text if len(text) <= ERROR_CHARS else text[: ERROR_CHARS - 1] + "…"


def is_test(node: ast.stmt) -> bool:
    for child in ast.walk(node):
        if isinstance(child, ast.Assert) and not isinstance(child.test, ast.Constant):
            return True
    return False


Step = tuple[bool, str, Any]  # (is a test, label, code object)


def compile_steps(source: str, body: list[ast.stmt], filename: str) -> list[Step]:
    steps = []
    for node in body:
        module = ast.Module(body=[node], type_ignores=[])
        steps.append((is_test(node), label(source, node), compile(module, filename, "exec")))
    return steps


def plan(tests: Any, entry_point: str | None) -> tuple[str, list[Step], Any, bool]:
    """(mode, steps, test module code or None, separable). Mode "plain": steps run in the
    solution namespace; "check": a HumanEval test module whose check body was split; "whole":
    one test, `check(candidate)`."""
    if isinstance(tests, list):
        if not all(isinstance(t, str) for t in tests):
            raise BadTests("tests is a list whose items are not all strings")
        steps = []
        for i, text in enumerate(tests):
            try:
                tree = ast.parse(text, filename=f"<test {i}>")
            except SyntaxError as exc:
                raise BadTests(f"test {i} does not compile: {exc.msg}") from None
            steps.append(
                (
                    True,
                    label(text, tree.body[0]) if tree.body else text,
                    compile(tree, f"<test {i}>", "exec"),
                )
            )
        if not steps:
            raise BadTests("the list of tests is empty")
        return "plain", steps, None, len(steps) > 1
    if not isinstance(tests, str):
        raise BadTests(f"tests must be a string or a list of strings, not {type(tests).__name__}")
    try:
        tree = ast.parse(tests, filename="<tests>")
    except SyntaxError as exc:
        raise BadTests(f"tests do not compile: line {exc.lineno}: {exc.msg}") from None
    check = next(
        (
            node
            for node in tree.body
            if isinstance(node, ast.FunctionDef)
            and node.name == "check"
            and len(node.args.args) == 1
        ),
        None,
    )
    if check is None:
        steps = compile_steps(tests, tree.body, "<tests>")
        if not any(is_test for is_test, _, _ in steps):
            raise BadTests("the tests contain no assert statement")
        return "plain", steps, None, sum(s[0] for s in steps) > 1
    if not entry_point:
        raise BadTests("the tests define check(candidate) but no entry_point names the function")
    module = compile(tree, "<tests>", "exec")
    argument = check.args.args[0].arg
    try:
        steps = compile_steps(tests, check.body, "<tests>")
    except SyntaxError:
        steps = []
    if steps and any(s[0] for s in steps) and argument == "candidate":
        return "check", steps, module, sum(s[0] for s in steps) > 1
    whole = compile("check(candidate)", "<tests>", "exec")
    return "whole", [(True, "check(candidate)", whole)], module, False


def module_namespace(name: str) -> dict[str, Any]:
    """The globals of a fresh module registered in sys.modules, so that code which looks its
    module up (dataclasses, pickle, typing) works. Not "__main__": a solution's
    `if __name__ == "__main__":` block, which usually reads stdin, does not run."""
    module = types.ModuleType(name)
    sys.modules[name] = module
    return module.__dict__


def run(data: dict[str, Any], report: Report) -> None:
    code, tests, entry_point = data["code"], data["tests"], data.get("entry_point")
    try:
        solution = compile(code, "<solution>", "exec")
    except (SyntaxError, ValueError) as exc:
        line = getattr(exc, "lineno", None)
        message = getattr(exc, "msg", None) or str(exc)
        report({"kind": "syntax_error", "detail": f"line {line}: {message}" if line else message})
        return
    try:
        mode, steps, module, separable = plan(tests, entry_point)
    except BadTests as exc:
        report({"kind": "bad_tests", "detail": str(exc)})
        return
    total = sum(1 for step in steps if step[0])
    report({"kind": "plan", "total": total, "separable": separable})
    namespace = module_namespace("solution")
    try:
        exec(solution, namespace)
    except MemoryError:
        report({"kind": "memory", "detail": "MemoryError while running the solution"})
        return
    except BaseException as exc:
        report({"kind": "runtime_error", "detail": describe(exc)})
        return
    scope = namespace
    if mode != "plain":
        candidate = namespace.get(entry_point or "")
        if not callable(candidate):
            report(
                {"kind": "missing_function", "detail": f"the solution defines no {entry_point}()"}
            )
            return
        scope = module_namespace("solution_tests")
        try:
            exec(module, scope)
        except BaseException as exc:
            report({"kind": "bad_tests", "detail": f"the test module fails: {describe(exc)}"})
            return
        scope["candidate"] = candidate
    elif entry_point and callable(namespace.get(entry_point)):
        namespace.setdefault("candidate", namespace[entry_point])
    index = 0
    for is_test_step, text, step in steps:
        try:
            exec(step, scope)
        except MemoryError:
            report({"kind": "memory", "detail": f"MemoryError in {text}"})
            return
        except BaseException as exc:
            report(
                {"kind": "test", "index": index, "ok": False, "label": text, "error": describe(exc)}
            )
            if not is_test_step:  # set-up failed: the tests after it cannot run
                report({"kind": "done"})
                return
            index += 1
            continue
        if is_test_step:
            report({"kind": "test", "index": index, "ok": True})
            index += 1
    report({"kind": "done"})


if __name__ == "__curate_harness__":
    run(DATA, report)  # type: ignore[name-defined]  # noqa: F821 - injected by sandbox_child
