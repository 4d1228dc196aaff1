"""The agent: runs every source on its own interval with a timeout, keeps the last good batch, fans out."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from collector.batch import Batch
from collector.clock import Clock, WallClock
from collector.source import NoDataError, Source, SourceError

log = logging.getLogger(__name__)

BatchSink = Callable[[Batch], None]

# A cached batch older than this many intervals is never served as fresh (issue: 3 intervals).
STALE_INTERVALS = 3.0


@dataclass
class SourceState:
    """What the runner knows about one source: health, timing, errors and its last good batch."""

    source: Source
    up: bool = False
    duration_s: float = 0.0
    errors: Counter[str] = field(default_factory=Counter)
    batch: Batch | None = None
    batch_mono: float = 0.0          # scheduler-clock time the batch was taken
    collections: int = 0
    last_error: str = ""

    def fresh_batch(self, now_mono: float) -> Batch | None:
        """The cached batch if the source is up and the batch is at most 3 intervals old."""
        if not self.up or self.batch is None:
            return None
        if now_mono - self.batch_mono > STALE_INTERVALS * self.source.interval:
            return None
        return self.batch


def classify_error(err: BaseException) -> str:
    """The `reason` label for a failed collection."""
    if isinstance(err, TimeoutError):
        return "timeout"
    if isinstance(err, NoDataError):
        return "no_data"
    if isinstance(err, SourceError):
        return err.reason
    return type(err).__name__.lower()


class Agent:
    """Runs sources concurrently; one that hangs or raises never stops or delays the others."""

    def __init__(self, sources: Sequence[Source], clock: Clock | None = None,
                 timer: Clock | None = None) -> None:
        self.clock: Clock = clock or WallClock()      # timestamps (simulated time when simulating)
        self.timer: Clock = timer or WallClock()      # scheduling (the outermost loop's wall clock)
        self.states: dict[str, SourceState] = {}
        for s in sources:
            if s.name in self.states:
                raise ValueError(f"two sources named {s.name!r}")
            self.states[s.name] = SourceState(s)
        self.sinks: list[BatchSink] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.started = asyncio.Event()

    def subscribe(self, sink: BatchSink) -> None:
        """Call `sink(batch)` with every successful batch (recorder, in-memory window, ...)."""
        self.sinks.append(sink)

    async def collect_once(self, state: SourceState) -> Batch | None:
        """Run one collection of one source under its timeout and update its state."""
        src = state.source
        t0 = self.timer.monotonic()
        try:
            batch = await asyncio.wait_for(src.update(self.clock.now_ns()), timeout=src.timeout)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # the boundary: one failing source must never fail the others
            reason = classify_error(err)
            state.errors[reason] += 1
            if state.up or state.collections == 0:
                level = logging.DEBUG if reason == "no_data" else logging.WARNING
                log.log(level, "source %s down (%s): %s", src.name, reason, err)
            state.up = False
            state.batch = None      # its series disappear instead of going stale
            state.last_error = f"{reason}: {err}"
            state.duration_s = self.timer.monotonic() - t0
            state.collections += 1
            return None
        if not state.up and state.collections > 0:
            log.info("source %s recovered", src.name)
        state.up = True
        state.last_error = ""
        state.duration_s = self.timer.monotonic() - t0
        state.batch = batch
        state.batch_mono = t0
        state.collections += 1
        for sink in self.sinks:
            try:
                sink(batch)
            except Exception:
                log.exception("sink failed for batch of %s", src.name)
        return batch

    async def _loop(self, state: SourceState, stop: asyncio.Event) -> None:
        interval = state.source.interval
        next_t = self.timer.monotonic()
        while not stop.is_set():
            await self.collect_once(state)
            next_t += interval
            now = self.timer.monotonic()
            if next_t < now:            # overran: skip missed ticks rather than bursting
                next_t = now + interval - ((now - next_t) % interval)
            await self.timer.sleep(next_t - now)

    async def start(self, stop: asyncio.Event) -> None:
        """Start every source and its polling task."""
        for st in self.states.values():
            try:
                await st.source.start()
            except Exception as err:
                log.warning("source %s failed to start: %s", st.source.name, err)
        self._tasks = [asyncio.create_task(self._loop(st, stop), name=f"source:{name}")
                       for name, st in self.states.items()]
        self.started.set()

    async def wait_first_round(self, timeout: float = 10.0) -> None:
        """Wait until every source has attempted at least one collection."""
        async def _all() -> None:
            while any(st.collections == 0 for st in self.states.values()):
                await asyncio.sleep(0.01)
        await asyncio.wait_for(_all(), timeout)

    async def stop(self) -> None:
        """Cancel polling and close sources."""
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        for st in self.states.values():
            try:
                await st.source.close()
            except Exception as err:
                log.warning("source %s failed to close: %s", st.source.name, err)

    def fresh_batches(self) -> list[tuple[str, Batch]]:
        """The batches that may be served now (up and at most 3 intervals old)."""
        now = self.timer.monotonic()
        out = []
        for name, st in self.states.items():
            b = st.fresh_batch(now)
            if b is not None:
                out.append((name, b))
        return out
