"""Micro-benchmark of the trace recorder: add() cost per row, flush and merge throughput, bytes per row.

Run: PYTHONPATH=. python bench/bench_recorder.py [--gpus 8] [--seconds 600]
"""

from __future__ import annotations

import argparse
import tempfile
import time

from collector.batch import Batch, gpu_entity
from collector.catalogue import METRICS
from collector.clock import ManualClock
from collector.recorder import Recorder
from collector.trace_io import read_metrics


def main() -> None:
    """Simulate one node recording at 1 Hz and print timings."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--seconds", type=int, default=600, help="simulated seconds of 1 Hz batches")
    args = ap.parse_args()
    gpu_metrics = [m.name for m in METRICS if m.entity == "gpu" and not m.labels]
    gpus = [gpu_entity("node-0", i, f"GPU-{i:04d}", f"00000000:{i:02x}:00.0", "H100", "550")
            for i in range(args.gpus)]
    clock = ManualClock()
    with tempfile.TemporaryDirectory() as d:
        rec = Recorder(d, clock, flush_interval_s=10)
        add_s = flush_s = 0.0
        rows = 0
        for s in range(args.seconds):
            b = Batch("bench", clock.now_ns())
            for g in gpus:
                for i, m in enumerate(gpu_metrics):
                    b.add(m, g, s * 1.0 + i)
            rows += len(b)
            t = time.perf_counter()
            rec.add(b)
            add_s += time.perf_counter() - t
            clock.advance(1)
            if s % 10 == 9:
                t = time.perf_counter()
                rec.flush()
                flush_s += time.perf_counter() - t
        hot_bytes = rec.bytes_written
        t = time.perf_counter()
        rec.rotate()
        merge_s = time.perf_counter() - t
        t = time.perf_counter()
        table = read_metrics(d)
        read_s = time.perf_counter() - t
        print(f"batches: {args.seconds} x {len(b)} readings ({rows} rows offered, {rec.rows_written} recorded)")
        print(f"add():   {add_s / rows * 1e9:8.0f} ns per reading offered")
        print(f"flush(): {flush_s / max(rec.rows_written, 1) * 1e9:8.0f} ns per row "
              f"({flush_s / (args.seconds / 10) * 1e3:.1f} ms per 10 s flush)")
        print(f"merge:   {merge_s * 1e3:8.1f} ms for the segment; read back {table.num_rows} rows "
              f"in {read_s * 1e3:.1f} ms")
        print(f"disk:    {hot_bytes / max(rec.rows_written, 1):8.2f} bytes per row in hot files")


if __name__ == "__main__":
    main()
