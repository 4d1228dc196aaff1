"""Shared fixtures: small simulated traces with injected faults whose precursors last hours."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector.sim.faults import FaultSpec
from collector.sim.offline import generate_trace

# Faults with precursors of hours (not the seconds-long demo defaults), spread over nodes and days.
KINDS = ("hbm-degradation", "gpu-lost", "nvlink")


def injected(n: int, nodes: int, gpus: int, days: float, offset: int = 0) -> list[FaultSpec]:
    """n faults on distinct GPUs, onsets spread over the trace, leads of 6-14 h."""
    out = []
    for i in range(n):
        slot = (i * 5 + offset) % (nodes * gpus)
        onset = 8 * 3600.0 + (i * 7919.0 * 3.3) % ((days - 1.2) * 86400.0 - 8 * 3600.0)
        out.append(FaultSpec(kind=KINDS[i % len(KINDS)], node=slot // gpus, gpu=slot % gpus, delay_s=onset,
                             lead_s=(6 + (i % 5) * 2) * 3600.0))
    return out


@pytest.fixture(scope="session")
def train_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8x8 GPUs, 4 days at 15 min, 14 injected faults with precursors."""
    out = tmp_path_factory.mktemp("failure") / "train"
    generate_trace(out, 8, 8, 4.0, seed=11, interval_s=900, fault_rate=1.0, injects=injected(14, 8, 8, 4.0))
    return out


@pytest.fixture(scope="session")
def test_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another fleet (other seed, other faulty GPUs), for evaluation."""
    out = tmp_path_factory.mktemp("failure") / "test"
    generate_trace(out, 6, 8, 4.0, seed=23, interval_s=900, fault_rate=1.0,
                   injects=injected(8, 6, 8, 4.0, offset=2))
    return out


@pytest.fixture(scope="session")
def model_path(tmp_path_factory: pytest.TempPathFactory, train_trace: Path) -> Path:
    """A model trained by the CLI on train_trace."""
    from fleetwatch.cli import main

    out = tmp_path_factory.mktemp("failure-model") / "model.joblib"
    assert main(["train", str(train_trace), "-o", str(out)]) == 0
    return out
