"""Child process for the SIGKILL test: records synthetic batches until it is killed.

Usage: python helpers_recorder_child.py DATA_DIR FLUSH_S ROTATE_S WRITE_DELAY_S

Every batch carries its sequence number as the value of every reading, so the parent can check that what
survives is a gap-free prefix. Writes are slowed down to mimic a slow disk: each Parquet write first
leaves a half-written file at the temp path, prints "W" and sleeps WRITE_DELAY_S, which lets the parent
kill the process while a temp file is on disk.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from collector import recorder as recorder_mod
from collector.batch import Batch, gpu_entity
from collector.clock import WallClock
from collector.recorder import Recorder

METRICS = ("fleetwatch_gpu_temperature_celsius", "fleetwatch_gpu_power_watts",
           "fleetwatch_gpu_utilization_ratio", "fleetwatch_gpu_sm_clock_hertz")
BATCH_PERIOD_S = 0.01


def _slow_write(delay: float) -> Any:
    """A pq.write_table that leaves a partial file behind for `delay` seconds before writing."""
    real = pq.write_table

    def write_table(table: Any, where: Any, **kwargs: Any) -> None:
        Path(where).write_bytes(b"PAR1" + b"\0" * 100)  # what a cut-short write looks like
        print("W", flush=True)
        time.sleep(delay)
        real(table, where, **kwargs)

    return write_table


async def main(data_dir: str, flush_s: float, rotate_s: float, delay: float) -> None:
    """Record batches at BATCH_PERIOD_S forever."""
    recorder_mod.pq.write_table = _slow_write(delay)  # type: ignore[attr-defined]
    clock = WallClock()
    rec = Recorder(data_dir, clock, flush_interval_s=flush_s, rotate_interval_s=rotate_s)
    gpus = [gpu_entity("node-k", i, f"GPU-kill-{i:04d}", f"00000000:{0x18 + i:02x}:00.0",
                       "NVIDIA H100 80GB HBM3", "550.54.15") for i in range(4)]
    stop = asyncio.Event()
    task = asyncio.create_task(rec.run(stop))
    print("ready", flush=True)
    seq = 0
    while not task.done():
        batch = Batch("synthetic", clock.now_ns())
        for g in gpus:
            for m in METRICS:
                batch.add(m, g, seq)
        rec.add(batch)
        seq += 1
        await asyncio.sleep(BATCH_PERIOD_S)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])))
