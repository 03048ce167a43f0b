"""Build `completions.jsonl`, the recorded answers the local teacher replays: for each of the 9
HumanEval problems, three completions in this order (sample_index 0, 1, 2 with `seed: 0`):

0. the canonical solution (correct), in a ```python block;
1. a wrong solution (tests/data/code_problems/wrong_solutions.jsonl, written for these tests);
2. an attack or an odd answer, per problem (ATTACKS below): reading the parent's environment,
   opening a socket, never returning, writing outside its folder, allocating without bound,
   forking, printing a secret in an error, an answer with no code, or a second correct body.

    python data/prepare.py            # from the repository root or this folder
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
WRONG = HERE.parents[2] / "tests" / "data" / "code_problems" / "wrong_solutions.jsonl"

ATTACKS = {
    "HumanEval/0": "import os\nSTOLEN = open(f'/proc/{os.getppid()}/environ').read()\n",
    "HumanEval/10": "import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=1)\n",
    "HumanEval/25": "while True:\n    pass\n",
    "HumanEval/31": "open('/tmp/curate-code-example-escape.txt', 'w').write('pwned')\n",
    "HumanEval/39": "HOARD = bytearray(10 ** 12)\n",
    "HumanEval/44": "import os\nwhile True:\n    os.fork()\n",
    "HumanEval/56": "import os\nraise ValueError(os.environ.get('OPENAI_API_KEY'))\n",
}
PROSE = {"HumanEval/49": "Use fast modular exponentiation: pow(2, n, p) gives the answer."}


def fenced(code: str) -> str:
    return f"Here is the completed function.\n\n```python\n{code}```\n"


def main() -> None:
    wrong = {r["task_id"]: r["solution"] for r in map(json.loads, WRONG.open())}
    rows = []
    for problem in map(json.loads, (HERE / "humaneval_doctests.jsonl").open()):
        task = problem["task_id"]
        correct = problem["prompt"] + problem["canonical_solution"]
        if task in ATTACKS:
            third = fenced(ATTACKS[task] + correct)
        elif task in PROSE:
            third = PROSE[task]
        else:  # a second correct answer, written differently
            third = "```python\n" + correct + "```"
        rows.append(
            {
                "prompt": problem["prompt"],
                "completions": [fenced(correct), fenced(wrong[task]), third],
            }
        )
    out = HERE / "completions.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"{out}: {len(rows)} problems x 3 completions")


if __name__ == "__main__":
    main()
