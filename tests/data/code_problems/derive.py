"""Derive humaneval_doctests.jsonl and wrong_solutions.jsonl from the shared HumanEval copy.

Run from the repository root: python tests/data/code_problems/derive.py
Reads ../shared/data/rephrase_contamination/HumanEval.jsonl (prompt + canonical solution as one
`text` field; HumanEval's hidden tests are not in it). For the chosen problems it splits the text
after the last docstring into `prompt` and `canonical_solution` and turns the docstring's `>>>`
examples into a HumanEval-style `check(candidate)` test."""

from __future__ import annotations

import json
import re
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[4] / "shared/data/rephrase_contamination/HumanEval.jsonl"
HERE = Path(__file__).parent
CHOSEN = [0, 10, 25, 31, 39, 44, 49, 55, 56]

# Wrong bodies written for these tests (not from any dataset), with the doctests each passes.
WRONG = {
    0: ("    return False\n", 1, "always False"),
    10: ("    return string + string[::-1]\n", 1, "mirrors the whole string"),
    25: (
        "    fact, i = [], 2\n    while n > 1:\n        if n % i == 0:\n"
        "            fact.append(i)\n            while n % i == 0:\n                n //= i\n"
        "        i += 1\n    return fact\n",
        1,
        "distinct prime factors, no multiplicity",
    ),
    31: ("    return n % 2 == 1\n", 6, "odd means prime"),
    39: (
        "    found, k = 0, 1\n    while True:\n        k += 1\n"
        "        if all(k % d for d in range(2, k)):\n            found += 1\n"
        "            if found == n:\n                return k\n",
        3,
        "n-th prime, not n-th prime Fibonacci number",
    ),
    44: (
        '    ret = ""\n    while x > 0:\n        ret = ret + str(x % base)\n'
        "        x //= base\n    return ret\n",
        2,
        "digits in reverse order",
    ),
    49: ("    return (2 ** n) % p if n else 0\n", 4, "wrong for n = 0"),
    55: ("    if n < 2:\n        return 1\n    return fib(n - 1) + fib(n - 2)\n", 1, "fib(0) = 1"),
    56: ("    return brackets.count('<') == brackets.count('>')\n", 3, "counts, ignores order"),
}


def split(text: str) -> tuple[str, str, str]:
    last = [m.start() for m in re.finditer(r"^def ", text, re.M)][-1]
    quote = re.search(r"\"\"\"|'''", text[last:])
    assert quote is not None
    close = text.find(quote.group(0), last + quote.end())
    cut = text.find("\n", close) + 1
    name = re.match(r"def (\w+)", text[last:])
    assert name is not None
    return text[:cut], text[cut:], name.group(1)


def doctest_check(prompt: str, name: str) -> str:
    doc = prompt[[m.start() for m in re.finditer(r"^def ", prompt, re.M)][-1] :]
    lines = ["def check(candidate):"]
    for call, expected in re.findall(r">>> (.+)\n\s*(.+)", doc):
        call = re.sub(rf"\b{name}\(", "candidate(", call.strip())
        lines.append(f"    assert {call} == {expected.strip()}")
    return "\n".join(lines) + "\n"


def main() -> None:
    rows = [json.loads(line) for line in SOURCE.read_text().splitlines()]
    problems, wrong = [], []
    for index in CHOSEN:
        prompt, solution, name = split(rows[index]["text"])
        task_id = f"HumanEval/{index}"
        problems.append(
            {
                "task_id": task_id,
                "prompt": prompt,
                "canonical_solution": solution,
                "test": doctest_check(prompt, name),
                "entry_point": name,
            }
        )
        body, passes, why = WRONG[index]
        wrong.append({"task_id": task_id, "solution": prompt + body, "passes": passes, "why": why})
    with (HERE / "humaneval_doctests.jsonl").open("w") as out:
        out.writelines(json.dumps(row) + "\n" for row in problems)
    with (HERE / "wrong_solutions.jsonl").open("w") as out:
        out.writelines(json.dumps(row) + "\n" for row in wrong)


if __name__ == "__main__":
    main()
