"""The agent runner: intervals, timeouts, isolation of failing sources, freshness."""

from __future__ import annotations

import asyncio
import threading
import time

from collector.agent import Agent
from collector.batch import Batch
from collector.source import NoDataError, SourceError, ThreadedSource
from tests.conftest import StaticSource, sample_gpu


async def _run_for(agent: Agent, seconds: float) -> None:
    stop = asyncio.Event()
    await agent.start(stop)
    await asyncio.sleep(seconds)
    stop.set()
    await agent.stop()


async def test_hanging_source_does_not_delay_others() -> None:
    good = StaticSource("good", interval=0.05)
    hung = StaticSource("hung", interval=0.05, timeout=0.2, hang=30)
    agent = Agent([good, hung])
    await _run_for(agent, 0.6)
    assert good.calls >= 8, good.calls                  # kept its 50 ms rhythm
    assert agent.states["good"].up
    assert not agent.states["hung"].up
    assert agent.states["hung"].errors["timeout"] >= 1
    assert [n for n, _ in agent.fresh_batches()] == ["good"]


class BlockingThreadSource(ThreadedSource):
    """A threaded source whose blocking call never returns in time (like a wedged NVML call)."""

    name = "blocking"

    def __init__(self) -> None:
        super().__init__()
        self.interval, self.timeout = 0.05, 0.1
        self.release = threading.Event()

    def collect(self, ts_ns: int) -> Batch:
        """Block the worker thread until released."""
        self.release.wait(5)
        return Batch(self.name, ts_ns)


async def test_blocking_thread_source_times_out_without_blocking_loop() -> None:
    blocking = BlockingThreadSource()
    good = StaticSource("good", interval=0.05)
    agent = Agent([blocking, good])
    t0 = time.monotonic()
    await _run_for(agent, 0.5)
    blocking.release.set()
    assert time.monotonic() - t0 < 2
    st = agent.states["blocking"]
    assert not st.up
    # one timeout, then "busy" while the single worker thread is still stuck: no thread pile-up
    assert st.errors["timeout"] >= 1 and st.errors["busy"] >= 1
    assert good.calls >= 6


async def test_failed_source_series_disappear_and_errors_counted() -> None:
    src = StaticSource("flaky", interval=0.05)
    agent = Agent([src])
    st = agent.states["flaky"]
    await agent.collect_once(st)
    assert st.up and st.batch is not None
    src.fail = SourceError("nvml_library_not_found", "libnvidia-ml.so.1 not found")
    await agent.collect_once(st)
    assert not st.up and st.batch is None
    assert agent.fresh_batches() == []
    assert st.errors == {"nvml_library_not_found": 1}
    src.fail = NoDataError("no GPU")
    await agent.collect_once(st)
    assert st.errors["no_data"] == 1
    src.fail = None
    await agent.collect_once(st)
    assert st.up and len(agent.fresh_batches()) == 1


async def test_stale_batches_are_not_served() -> None:
    src = StaticSource("slow", interval=1.0)
    agent = Agent([src])
    st = agent.states["slow"]
    await agent.collect_once(st)
    assert agent.fresh_batches()
    st.batch_mono -= 3.5       # pretend the last good collection was 3.5 intervals ago
    assert agent.fresh_batches() == []


async def test_sinks_receive_batches_and_a_failing_sink_is_contained() -> None:
    got: list[Batch] = []

    def bad_sink(b: Batch) -> None:
        raise RuntimeError("disk full")

    agent = Agent([StaticSource("s", value=42.0)])
    agent.subscribe(bad_sink)
    agent.subscribe(got.append)
    await agent.collect_once(agent.states["s"])
    assert len(got) == 1 and got[0].value == [42.0]
    assert got[0].entity[0] == sample_gpu("s")
