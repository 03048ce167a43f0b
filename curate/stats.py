"""Stage statistics: values that add up (per batch, then per stage) and round-trip through JSON."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class StageStats:
    rows_in: int = 0
    rows_out: int = 0
    dropped_by_reason: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def dropped(self) -> int:
        return sum(self.dropped_by_reason.values())

    def __add__(self, other: StageStats) -> StageStats:
        return StageStats(
            rows_in=self.rows_in + other.rows_in,
            rows_out=self.rows_out + other.rows_out,
            dropped_by_reason=self.dropped_by_reason + other.dropped_by_reason,
            seconds=self.seconds + other.seconds,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "dropped": self.dropped,
            "dropped_by_reason": dict(sorted(self.dropped_by_reason.items())),
            "seconds": round(self.seconds, 3),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StageStats:
        return cls(
            rows_in=int(data["rows_in"]),
            rows_out=int(data["rows_out"]),
            dropped_by_reason=Counter({k: int(v) for k, v in data["dropped_by_reason"].items()}),
            seconds=float(data.get("seconds", 0.0)),
        )
