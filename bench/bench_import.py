"""Benchmark of the CSV and exposition importers: samples/s and bytes per sample, against baselines.

Generates an nvidia-smi --query-gpu log (units in header and values, 8 GPUs interleaved, ~1M samples by
default) and a directory of dcgm-exporter-style snapshots, imports each, and prints throughput next to
a baseline measured in the same run on the same input: pyarrow.csv reading the log (a parse of the
same bytes with no unit stripping, mapping or writing) and prometheus_client's parser alone over the
snapshots. The ratio says what mapping, sorting and writing the trace cost on top of parsing.

Run: PYTHONPATH=. python bench/bench_import.py [--samples 1000000] [--snapshots 200]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import pyarrow.csv as pacsv
from prometheus_client.parser import text_string_to_metric_families

from collector.batch import Batch, gpu_entity
from collector.catalogue import METRICS
from collector.exposition import Renderer
from collector.importers import import_exposition, import_nvidia_smi

FIELDS = [("power.draw", "W", "{:.2f} W"), ("temperature.gpu", None, "{:.0f}"),
          ("temperature.memory", None, "{:.0f}"), ("utilization.gpu", "%", "{:.0f} %"),
          ("utilization.memory", "%", "{:.0f} %"), ("memory.used", "MiB", "{:.0f} MiB"),
          ("memory.free", "MiB", "{:.0f} MiB"), ("clocks.current.sm", "MHz", "{:.0f} MHz"),
          ("clocks.current.memory", "MHz", "{:.0f} MHz"), ("pstate", None, "P{:.0f}"),
          ("clocks_event_reasons.active", None, "0x{:016X}"), ("pcie.link.gen.max", None, "{:.0f}")]
GPUS = 8


def write_csv(path: Path, samples: int) -> int:
    """An nvidia-smi log with about `samples` mapped readings; returns the exact count."""
    mapped = len(FIELDS) - 1            # pcie.link.gen.max is not in the catalogue
    rows = max(1, samples // mapped)
    header = "timestamp, index, uuid, " + ", ".join(f"{n} [{u}]" if u else n for n, u, _ in FIELDS)
    with open(path, "w") as f:
        f.write(header + "\n")
        for r in range(rows):
            t = r // GPUS
            g = r % GPUS
            ts = f"2024/05/01 {12 + t // 3600 % 12:02d}:{t // 60 % 60:02d}:{t % 60:02d}.{g:03d}"
            vals = (300 + (r % 97), 40 + r % 30, 50 + r % 20, r % 101, r % 57, 1000 + r % 80000, 81559 - r % 80000,
                    1980 - r % 500, 2619, r % 9, 1 << (r % 9), 5)
            cells = ", ".join(fmt.format(v) for (_, _, fmt), v in zip(FIELDS, vals, strict=True))
            f.write(f"{ts}, {g}, GPU-{g:08d}-0000-0000-0000-000000000000, {cells}\n")
    return rows * mapped


def write_snapshots(directory: Path, snapshots: int) -> int:
    """dcgm-exporter-style snapshots (8 GPUs, every default dcgm field); returns the mapped samples."""
    gpus = [gpu_entity("node-0", i, f"GPU-{i:08d}-1111-2222-3333-444444444444", f"00000000:{0x18 + i:02X}:00.0",
                       "NVIDIA H100 80GB HBM3", "550.90.07") for i in range(GPUS)]
    metrics = [m for m in METRICS if m.entity == "gpu" and m.dcgm_default and m.record and not m.labels]
    renderer = Renderer("dcgm")
    total = 0
    for s in range(snapshots):
        b = Batch("bench", 0)
        for g in gpus:
            for i, m in enumerate(metrics):
                b.add(m.name, g, 1.5 * s + i + g.labels[1].__len__())
        data = renderer.render_text([b])
        path = directory / f"{s:05d}.prom"
        path.write_bytes(data)
        ns = 1_714_564_800 * 10**9 + s * 15 * 10**9
        os.utime(path, ns=(ns, ns))
        total += len(b)
    return total


def _rate(n: int, seconds: float) -> str:
    rate = n / seconds
    text = f"{rate / 1e6:6.2f} M" if rate >= 1e6 else f"{rate / 1e3:6.1f} k"
    return f"{text} samples/s ({seconds:6.2f} s)"


def main() -> None:
    """Generate the inputs, run importers and baselines, print the figures."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--samples", type=int, default=1_000_000, help="mapped readings in the CSV log")
    ap.add_argument("--snapshots", type=int, default=200, help="exposition snapshots (8 GPUs each)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        log = root / "gpu-log.csv"
        n_csv = write_csv(log, args.samples)
        size = log.stat().st_size

        t = time.perf_counter()
        table = pacsv.read_csv(log, parse_options=pacsv.ParseOptions(delimiter=","))
        base_csv = time.perf_counter() - t
        assert table.num_rows == n_csv // (len(FIELDS) - 1)

        t = time.perf_counter()
        summary = import_nvidia_smi([log], root / "csv-trace", progress=False)
        imp_csv = time.perf_counter() - t
        assert summary.samples == n_csv, (summary.samples, n_csv)

        print(f"nvidia-smi CSV: {n_csv} samples, {table.num_rows} rows, {size / 1e6:.1f} MB of text")
        print(f"  baseline pyarrow.csv.read_csv: {_rate(n_csv, base_csv)}")
        print(f"  fleetwatch import nvidia-smi:  {_rate(n_csv, imp_csv)}  = {imp_csv / base_csv:5.1f}x the baseline")
        print(f"  on disk: {summary.bytes_written / n_csv:.2f} bytes per sample "
              f"(text: {size / n_csv:.1f} bytes per sample)")

        snaps = root / "snaps"
        snaps.mkdir()
        n_exp = write_snapshots(snaps, args.snapshots)
        files = sorted(snaps.iterdir())
        t = time.perf_counter()
        parsed = 0
        for f in files:
            for fam in text_string_to_metric_families(f.read_text()):
                parsed += len(fam.samples)
        base_exp = time.perf_counter() - t
        t = time.perf_counter()
        summary = import_exposition([snaps], root / "exp-trace", progress=False)
        imp_exp = time.perf_counter() - t
        assert summary.samples == n_exp == parsed, (summary.samples, n_exp, parsed)
        print(f"exposition: {n_exp} samples in {len(files)} dcgm-exporter snapshots")
        print(f"  baseline prometheus_client parser: {_rate(parsed, base_exp)}")
        print(f"  fleetwatch import exposition:     {_rate(n_exp, imp_exp)}  = "
              f"{imp_exp / base_exp:5.2f}x the baseline")
        print(f"  on disk: {summary.bytes_written / n_exp:.2f} bytes per sample")


if __name__ == "__main__":
    main()
