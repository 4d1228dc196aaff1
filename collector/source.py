"""The source interface, the source registry and the errors sources raise."""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from collector.batch import Batch
from collector.clock import Clock, WallClock


class NoDataError(Exception):
    """The source has nothing to read here (no GPU, file missing, not configured); not a failure storm."""

    reason = "no_data"


class SourceError(Exception):
    """A source failed with a short machine-readable reason (used as the errors_total `reason` label)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class SourceContext:
    """What a source factory gets: node identity, filesystem roots, time, and the simulator if any."""

    node: str
    clock: Clock = field(default_factory=WallClock)
    proc_root: str = "/proc"
    sys_root: str = "/sys"
    rootfs: str = "/"
    simulator: Any = None  # collector.sim.engine.FleetSim when simulating


class Source(ABC):
    """One thing the agent reads. `update` returns a Batch or raises."""

    name: str = "source"
    interval: float = 1.0
    timeout: float = 5.0

    @abstractmethod
    async def update(self, ts_ns: int) -> Batch:
        """Collect one batch stamped `ts_ns`."""

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Open resources (threads, handles)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources."""


class ThreadedSource(Source):
    """A source whose reads block (NVML, files): `collect` runs on the source's own worker thread.

    The worker is a daemon thread, so a call wedged in a hung driver never blocks process exit. A call still
    running from an earlier, timed-out update is not stacked: the next update fails with reason "busy"
    until it returns, so one hung read holds one thread, not one per interval.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[int, concurrent.futures.Future[Batch]] | None] = queue.SimpleQueue()
        self._worker: threading.Thread | None = None
        self._inflight: concurrent.futures.Future[Batch] | None = None

    @abstractmethod
    def collect(self, ts_ns: int) -> Batch:
        """Blocking collection of one batch."""

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            ts_ns, fut = job
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(self.collect(ts_ns))
            except BaseException as err:
                fut.set_exception(err)

    async def update(self, ts_ns: int) -> Batch:
        """Run `collect` on the source's worker thread."""
        if self._inflight is not None and not self._inflight.done():
            raise SourceError("busy", f"{self.name}: previous collection still running")
        if self._worker is None or not self._worker.is_alive():
            self._worker = threading.Thread(target=self._work, name=f"source:{self.name}", daemon=True)
            self._worker.start()
        fut: concurrent.futures.Future[Batch] = concurrent.futures.Future()
        self._inflight = fut
        self._jobs.put((ts_ns, fut))
        return await asyncio.wrap_future(fut)

    async def close(self) -> None:
        """Stop the worker thread without waiting for a hung call."""
        self._jobs.put(None)


SourceFactory = Callable[[SourceContext, dict[str, Any]], Source]


@dataclass(frozen=True)
class Registration:
    """A registered source kind."""

    name: str
    default_enabled: bool
    factory: SourceFactory
    options: tuple[str, ...] = ()


REGISTRY: dict[str, Registration] = {}


def register_source(name: str, default_enabled: bool, factory: SourceFactory,
                    options: tuple[str, ...] = ()) -> None:
    """Register a source kind; config keys become collector.<name>.enabled / .<option>."""
    REGISTRY[name] = Registration(name, default_enabled, factory, options)
