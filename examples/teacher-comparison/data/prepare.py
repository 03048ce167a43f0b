"""Rebuild `champ_integer_answers.jsonl` from the CHAMP extract in shared/data.

Keeps the 79 CHAMP problems whose reference answer is an integer (their answers can be checked
by rule; the other 191 need a judge model) and writes one row per trace: the problem, the
model, the prompt setting, the solution, the model's one-sentence final answer, and the human
"no mistake" label where CHAMP's annotators read that solution.

The extract holds three prompt settings per model, but "No C w/o H" (no concept, without hint)
is the same request as "0-Shot": for every (problem, model) its prompt, solution and final
answer are byte-identical to the 0-Shot ones (checked below, for all 270 problems). It is left
out, so each model has two traces per problem, 0-Shot and 5-Shot. Run from anywhere:

    python examples/teacher-comparison/data/prepare.py [CHAMP_FOLDER]
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

SOURCE = Path(sys.argv[1] if len(sys.argv) > 1 else "/work/shared/data/champ_multimodel")
TARGET = Path(__file__).with_name("champ_integer_answers.jsonl")
SETTINGS = ["0-Shot", "5-Shot"]
COPY = ("No C w/o H", "0-Shot")  # the first setting repeats the second
MODELS = ["GPT-3.5", "GPT-4", "GPT-4 Turbo", "PaLM 2 Medium"]


def read(name: str) -> list[dict]:
    with (SOURCE / name).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def main() -> None:
    problems = {p["problem_id"]: p for p in read("problems.jsonl")}
    keep = {k for k, p in problems.items() if re.fullmatch(r"-?\d+", p["answer"].strip())}
    labels = {
        (a["problem_id"], a["model"], a["solution"]): a["no_mistake"]
        for a in read("first_wrong_step_annotations.jsonl")
    }
    solutions = {
        (s["problem_id"], s["model"], s["prompt_setting"]): s for s in read("model_solutions.jsonl")
    }
    fields = ("prompt", "solution", "final_answer_summary", "error")
    for (problem_id, model, setting), s in solutions.items():
        if setting == COPY[0]:
            same = solutions[(problem_id, model, COPY[1])]
            assert all(s[f] == same[f] for f in fields), (problem_id, model)
    rows = []
    for problem_id in sorted(keep, key=list(problems).index):  # CHAMP's problem order
        p = problems[problem_id]
        for model in MODELS:
            for setting in SETTINGS:
                s = solutions[(problem_id, model, setting)]
                rows.append(
                    {
                        "problem_id": problem_id,
                        "category": p["category"],
                        "problem": p["problem"],
                        "answer": p["answer"].strip(),
                        "model": model,
                        "prompt_setting": setting,
                        "trace_id": f"{problem_id}:{model}:{setting}",
                        "solution": s["solution"],
                        "final_answer_summary": s["final_answer_summary"],
                        "api_error": s["error"],
                        "human_no_mistake": labels.get((problem_id, model, s["solution"])),
                    }
                )
    with TARGET.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{TARGET}: {len(rows)} traces of {len(keep)} problems")


if __name__ == "__main__":
    main()
