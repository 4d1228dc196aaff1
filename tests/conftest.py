"""Shared fixtures: small sources and GPU entities for agent and exporter tests."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from collector.batch import Batch, Entity, gpu_entity
from collector.source import Source

FIXTURES = Path(__file__).parent / "fixtures"


def require_tool(name: str) -> str:
    """Path of a tool the test command installs; its absence fails the test (never a skip)."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: `make test` installs it (apt-get install prometheus "
                    f"prometheus-alertmanager); run the README's test command")
    return path


def sample_gpu(node: str = "node-0", index: int = 0) -> Entity:
    """A GPU entity with realistic identity labels."""
    return gpu_entity(node, index, f"GPU-0000000{index}-1111-2222-3333-444444444444",
                      f"00000000:{0x18 + index:02X}:00.0", "NVIDIA H100 80GB HBM3", "550.90.07")


class StaticSource(Source):
    """A source returning a fixed reading, or raising / hanging on demand."""

    def __init__(self, name: str, value: float = 1.0, interval: float = 0.05, timeout: float = 0.5,
                 fail: Exception | None = None, hang: float = 0.0) -> None:
        self.name, self.value, self.interval, self.timeout = name, value, interval, timeout
        self.fail, self.hang = fail, hang
        self.calls = 0

    async def update(self, ts_ns: int) -> Batch:
        """One batch with a power reading for one GPU."""
        self.calls += 1
        if self.hang:
            await asyncio.sleep(self.hang)
        if self.fail is not None:
            raise self.fail
        b = Batch(self.name, ts_ns)
        b.add("fleetwatch_gpu_power_watts", sample_gpu(self.name), self.value)
        return b
