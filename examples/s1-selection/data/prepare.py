"""Build `gsm8k_gpt3_pool.jsonl` from GSM8K's GPT-3 solutions (openai/grade-school-math,
`example_model_solutions.jsonl`): the first 400 test problems, one row per (problem, model) for
three models: the two finetuned generators, GPT-3 6B and 175B (the reference models whose
solved problems s1 drops), and the 175B verifier-selected best-of-100 (the traces to keep).

    python data/prepare.py /work/shared/data/gsm8k_gpt3_solutions/example_model_solutions.jsonl

Rows: `id` (gsm8k-test-LINE), `question`, `answer` (the number after `A:` in ground_truth),
`steps` (calculator annotations `<<...>>` in the reference solution, as `1-2`, `3`, `4`, `5+`:
the stratum, since GSM8K has no subject labels), `model`, `solution`, `is_correct` (shipped)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

MODELS = ("6b_finetuning", "175b_finetuning", "175b_verification")
PROBLEMS = 400


def steps(ground_truth: str) -> str:
    n = ground_truth.count("<<")
    return "1-2" if n <= 2 else "5+" if n >= 5 else str(n)


def main(source: Path, out: Path) -> None:
    rows = []
    for line, text in enumerate(source.read_text().splitlines()[:PROBLEMS], start=1):
        problem = json.loads(text)
        answer = problem["ground_truth"].rsplit("A:", 1)[1].strip()
        for model in MODELS:
            rows.append(
                {
                    "id": f"gsm8k-test-{line}",
                    "question": problem["question"],
                    "answer": answer,
                    "steps": steps(problem["ground_truth"]),
                    "model": model,
                    "solution": problem[model]["solution"],
                    "is_correct": problem[model]["is_correct"],
                }
            )
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    print(f"{out}: {len(rows)} traces of {PROBLEMS} problems")


if __name__ == "__main__":
    default = "/work/shared/data/gsm8k_gpt3_solutions/example_model_solutions.jsonl"
    here = Path(__file__).resolve().parent
    main(Path(sys.argv[1] if len(sys.argv) > 1 else default), here / "gsm8k_gpt3_pool.jsonl")
