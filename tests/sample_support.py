"""What the sampling tests share: the GSM8K problems, a local teacher that answers them, and a
spec writer. The teacher is curate.local_teacher: a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from curate.local_teacher import LocalTeacher
from curate.local_teacher_policies import ReferencePolicy, Style

REPO = Path(__file__).resolve().parents[1]
PROBLEMS = REPO / "tests" / "data" / "gsm8k" / "test_500.jsonl"


def policy(**style: Any) -> ReferencePolicy:
    """Worked answers to the 500 GSM8K problems, ending in \\boxed{answer}."""
    return ReferencePolicy.from_file(
        PROBLEMS, prompt_column="question", answer_column="answer", style=Style(**style)
    )


@contextmanager
def teacher(*, api_key: str | None = None, **faults: Any) -> Iterator[LocalTeacher]:
    style = faults.pop("style", {})
    with LocalTeacher(policy=policy(**style), faults=faults, api_key=api_key) as server:
        yield server


def write_spec(
    root: Path,
    base_url: str,
    *,
    limit: int = 500,
    teacher: str = "",
    sample: str = "n: 4, seed: 0, max_tokens: 400",
    steps: str = "",
    top: str = "",
    name: str = "gsm",
) -> Path:
    """A spec over the first `limit` problems with one teacher 'local' at `base_url`."""
    root.mkdir(parents=True, exist_ok=True)
    text = textwrap.dedent(
        f"""\
        name: {name}
        seed: 1
        input:
          path: {PROBLEMS}
          limit: {limit}
          columns: {{id: id, prompt: question, answer: answer}}
        teachers:
          local: {{provider: openai, model: local-teacher, base_url: '{base_url}',
                  backoff_s: 0.02{", " + teacher if teacher else ""}}}
        """
    )
    text += top
    text += f"steps:\n  - sample: {{teachers: [local], {sample}}}\n{steps}"
    path = root / "spec.yaml"
    path.write_text(text)
    return path
