"""Rate limits and retry delays for a teacher.

- `TokenBucket`: requests per minute (1 per request) or tokens per minute. It refills at
  rate/60 per second and holds at most one second's worth, so a burst can never exceed the
  per-minute rate. A request larger than that (16k max_tokens under a 60k TPM) is let through
  when the bucket is full and drives it negative: the next requests wait until it refills.
  TPM charges the prompt estimate + max_tokens up front and `refund`s the difference once the
  response's usage is known.
- `retry_delay`: exponential backoff with full jitter (a uniform draw in [0, base·2^attempt],
  capped), or the server's Retry-After when it gives one (plus a little jitter so that the
  requests it turned away do not come back in one burst).

Concurrency is bounded by the dispatcher's worker pool (max_concurrency workers per teacher).

`Limiter` is what a client waits on: a `TokenBucket`, or (under the Ray executor) a lease
from one bucket shared by every sampler actor (curate.executors.ray_sample), which takes
tokens in batches with `TokenBucket.try_take_up_to`.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import Protocol

MAX_DELAY_S = 60.0


class Limiter(Protocol):
    """A rate limit a client waits on before each attempt and refunds what it did not use."""

    async def take(self, amount: float) -> None: ...

    def refund(self, amount: float) -> None: ...


class TokenBucket:
    """A token bucket that refills continuously at `per_minute` / 60 per second."""

    def __init__(self, per_minute: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate)
        self.tokens = self.capacity
        self.clock = clock
        self.stamp = clock()

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def try_take(self, amount: float) -> float:
        """Take `amount` and return 0.0, or take nothing and return the seconds to wait."""
        self._refill()
        need = min(amount, self.capacity)
        if self.tokens >= need:
            self.tokens -= amount
            return 0.0
        return (need - self.tokens) / self.rate

    def try_take_up_to(self, amount: float, most: float) -> tuple[float, float]:
        """Take `amount` as `try_take` does, plus whatever else is there up to `most` in all
        (a lease for a remote client): (tokens taken, 0.0), or (0.0, seconds to wait)."""
        wait = self.try_take(amount)
        if wait > 0.0:
            return 0.0, wait
        extra = min(max(0.0, self.tokens), max(0.0, most - amount))
        self.tokens -= extra
        return amount + extra, 0.0

    async def take(self, amount: float) -> None:
        """Wait until `amount` can be taken, then take it."""
        while True:
            wait = self.try_take(amount)
            if wait <= 0.0:
                return
            await asyncio.sleep(wait)

    def refund(self, amount: float) -> None:
        """Give back tokens charged but not used (never above capacity)."""
        if amount > 0:
            self._refill()
            self.tokens = min(self.capacity, self.tokens + amount)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (a number of seconds; HTTP dates are ignored)."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def retry_delay(
    attempt: int,
    *,
    base_s: float,
    retry_after: float | None = None,
    rng: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait before retry number `attempt` + 1 (attempt 0: the first retry)."""
    if retry_after is not None:
        return min(MAX_DELAY_S, retry_after) + rng() * min(1.0, base_s)
    ceiling = min(MAX_DELAY_S, base_s * 2.0**attempt)
    return rng() * ceiling
