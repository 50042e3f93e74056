"""The jobs a simulation is fed: a burst, a steady rate, or recorded arrivals."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Workload:
    """``images`` jobs: all at t=0 (``rate_per_second`` None), at a steady rate from
    t=0, or at the given ``arrivals`` ((seconds, count), e.g. what a producer sent)."""

    images: int
    rate_per_second: float | None = None
    arrivals: tuple[tuple[float, int], ...] = field(default=())

    def __post_init__(self) -> None:
        if self.images < 1:
            raise ValueError("a workload needs at least one image")
        if self.rate_per_second is not None and self.rate_per_second <= 0:
            raise ValueError("the rate must be positive")
        if self.arrivals:
            if sum(n for _, n in self.arrivals) != self.images:
                raise ValueError("the arrivals must add up to the images")
            if any(t < 0 or n < 0 for t, n in self.arrivals):
                raise ValueError("arrivals need times and counts of at least 0")

    @classmethod
    def burst(cls, images: int) -> Workload:
        return cls(images)

    @classmethod
    def recorded(cls, arrivals: Sequence[tuple[float, int]]) -> Workload:
        ordered = tuple(sorted((float(t), int(n)) for t, n in arrivals))
        return cls(sum(n for _, n in ordered), arrivals=ordered)

    @property
    def last_arrival(self) -> float:
        if self.arrivals:
            return self.arrivals[-1][0]
        if self.rate_per_second is None:
            return 0.0
        step = max(1.0, 1.0 / self.rate_per_second)
        return math.floor((self.images - 1) / self.rate_per_second / step + 1e-9) * step

    def chunks(self) -> Iterator[tuple[float, int]]:
        """(time, count) in time order. A rate is chunked per second (or per job when
        jobs are further apart): job j arrives at j / rate, in its chunk's start."""
        if self.arrivals:
            yield from ((t, n) for t, n in self.arrivals if n)
            return
        if self.rate_per_second is None:
            yield 0.0, self.images
            return
        rate = self.rate_per_second
        step = max(1.0, 1.0 / rate)
        sent, k = 0, 0
        while sent < self.images:
            # jobs j with j / rate < (k + 1) * step, i.e. j < (k + 1) * step * rate
            upto = min(self.images, math.ceil((k + 1) * step * rate - 1e-9))
            if upto > sent:
                yield k * step, upto - sent
                sent = upto
            k += 1
