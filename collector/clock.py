"""Injected time: the only place that reads the wall clock is the outermost loop's clock."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    """What sources, the simulator and later the predictor ask for the time."""

    def now_ns(self) -> int:
        """Current time as Unix nanoseconds (UTC)."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin that never goes backwards."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait for `seconds` of this clock's time."""
        ...


class WallClock:
    """Real time."""

    def now_ns(self) -> int:
        """Current Unix time in nanoseconds."""
        return time.time_ns()

    def monotonic(self) -> float:
        """time.monotonic()."""
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        """asyncio.sleep."""
        await asyncio.sleep(max(0.0, seconds))


class ScaledClock:
    """Simulated time that runs `speed` times faster than the wall clock from `start_ns`."""

    def __init__(self, speed: float = 1.0, start_ns: int | None = None) -> None:
        if speed <= 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        self.speed = speed
        self._wall0 = time.monotonic()
        self._start_ns = time.time_ns() if start_ns is None else start_ns

    def now_ns(self) -> int:
        """Simulated Unix nanoseconds."""
        return self._start_ns + int((time.monotonic() - self._wall0) * self.speed * 1e9)

    def restart(self) -> None:
        """Count from start_ns again: the service calls this when it starts running, so that seconds spent
        building it (imports, model loading) do not pass in simulated time before the first reading."""
        self._wall0 = time.monotonic()

    def monotonic(self) -> float:
        """Simulated seconds since start."""
        return (time.monotonic() - self._wall0) * self.speed

    async def sleep(self, seconds: float) -> None:
        """Sleep `seconds` of simulated time."""
        await asyncio.sleep(max(0.0, seconds / self.speed))


class ManualClock:
    """A clock that tests step by hand; sleep() advances it instead of waiting."""

    def __init__(self, start_ns: int = 1_767_225_600 * 10**9) -> None:
        self._ns = start_ns
        self._t0 = start_ns

    def now_ns(self) -> int:
        """The current manual time."""
        return self._ns

    def monotonic(self) -> float:
        """Seconds since creation."""
        return (self._ns - self._t0) / 1e9

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        self._ns += int(seconds * 1e9)

    async def sleep(self, seconds: float) -> None:
        """Advance by `seconds` and yield to the loop once."""
        self.advance(seconds)
        await asyncio.sleep(0)
