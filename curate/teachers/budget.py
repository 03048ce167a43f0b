"""Cost: what tokens cost at a teacher's prices, and the build's spending against `budget_usd`.

The budget counts what the traces of this build cost: answers reused from the cache at what
they cost when they were bought, plus everything paid for in this build (failed-but-billed
attempts included). Sending stops once that reaches the budget; requests already in flight
finish, so a build overshoots by at most one batch (max_concurrency requests). A re-run with a
higher budget resumes from the cache, where nothing paid for is lost.
"""

from __future__ import annotations

from dataclasses import dataclass

MTOK = 1_000_000


def token_cost(
    prompt_tokens: float, completion_tokens: float, *, input_usd: float, output_usd: float
) -> float:
    """US dollars for the tokens at prices per million input and output tokens."""
    return (prompt_tokens * input_usd + completion_tokens * output_usd) / MTOK


@dataclass
class Budget:
    """Spending of one build, shared by its sample steps. `limit_usd` None: no limit."""

    limit_usd: float | None = None
    reused_usd: float = 0.0  # cost of cached answers used by this build
    spent_usd: float = 0.0  # paid in this build

    @property
    def total_usd(self) -> float:
        return self.reused_usd + self.spent_usd

    @property
    def exhausted(self) -> bool:
        return self.limit_usd is not None and self.total_usd >= self.limit_usd

    def reuse(self, usd: float) -> None:
        self.reused_usd += usd

    def spend(self, usd: float) -> None:
        self.spent_usd += usd
