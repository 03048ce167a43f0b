"""Build `tasks.jsonl` from the ReDis task files: the first 5 training problems of each task,
with the paper's rule-generation prompt (config/prompts.json, `generate_rule`) followed by the
problem's demonstrations as `Input: ... / Output: ...` lines.

    python data/prepare.py /work/shared/data/redis_tasks

Rows: `id` (task-idx), `task` (1d_arc, acre, list_func, scan), `prompt`, `train` (the
demonstrations, unchanged). The test pairs of each problem are not used by ReDis's rule
selection and are left out."""

from __future__ import annotations

import json
import sys
from pathlib import Path

FILES = {
    "1d_arc": "1d_arc/1D_arc.jsonl",
    "acre": "acre/acre.jsonl",
    "list_func": "list_func/list_function.jsonl",
    "scan": "scan/scan.jsonl",
}
PER_TASK = 5


def shown(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def main(source: Path, out: Path) -> None:
    prompts = json.loads((source / "prompts.json").read_text())
    rows = []
    for task, name in FILES.items():
        lines = (source / name).read_text().splitlines()[:PER_TASK]
        for line in lines:
            problem = json.loads(line)
            demos = "".join(
                f"Input: {shown(d['input'])}\nOutput: {shown(d['output'])}\n"
                for d in problem["train"]
            )
            rows.append(
                {
                    "id": f"{task}-{problem['idx']}",
                    "task": task,
                    "prompt": prompts[task]["generate_rule"] + demos,
                    "train": problem["train"],
                }
            )
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    print(f"{out}: {len(rows)} problems")


if __name__ == "__main__":
    here = Path(__file__).resolve().parent
    main(
        Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/work/shared/data/redis_tasks"),
        here / "tasks.jsonl",
    )
