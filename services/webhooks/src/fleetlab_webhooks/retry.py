"""When a failed delivery is tried again: exponential backoff with jitter over a day and more."""

from __future__ import annotations

import random
from dataclasses import dataclass

from fleetlab_webhooks.settings import DeliverySettings


@dataclass(frozen=True)
class RetryPolicy:
    """Retry ``n`` (1-based) waits ``min(base * factor^(n-1), max)`` seconds, times a random
    factor in ``[1 - jitter, 1 + jitter]`` so that deliveries failing together spread out."""

    retries: int = 9
    base_s: float = 10.0
    factor: float = 4.0
    max_s: float = 8 * 3600.0
    jitter: float = 0.1

    @classmethod
    def of(cls, settings: DeliverySettings) -> RetryPolicy:
        return cls(
            retries=settings.retries,
            base_s=settings.retry_base_s,
            factor=settings.retry_factor,
            max_s=settings.retry_max_s,
            jitter=settings.retry_jitter,
        )

    def nominal_delay(self, retry: int) -> float:
        """The delay before retry ``retry`` without jitter."""
        return float(min(self.base_s * self.factor ** (retry - 1), self.max_s))

    def delay_after(self, attempts: int, rng: random.Random | None = None) -> float | None:
        """Seconds to wait after ``attempts`` failed attempts; None when no retry is left."""
        if attempts > self.retries:
            return None
        spread = (rng or random).uniform(1 - self.jitter, 1 + self.jitter)
        return self.nominal_delay(attempts) * spread

    def schedule(self) -> list[float]:
        """Every nominal delay, in order."""
        return [self.nominal_delay(n) for n in range(1, self.retries + 1)]
