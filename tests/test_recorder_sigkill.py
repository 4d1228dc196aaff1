"""SIGKILL the recorder mid-run and check what survives: readable files, a gap-free prefix, little lost."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from collector.clock import WallClock
from collector.recorder import Recorder
from collector.trace_io import list_trace_files, read_metrics

REPO = Path(__file__).resolve().parent.parent
CHILD = Path(__file__).resolve().parent / "helpers_recorder_child.py"
FLUSH_S = 0.2
ROTATE_S = 0.5          # short, so kills also land in segment merges
WRITE_DELAY_S = 0.1     # each write sits half-done on disk this long
# What a kill may lose: the flush interval being buffered, the write in flight (its injected delay
# plus the real write), and scheduling slack on a loaded 2-core runner.
MAX_LOST_S = FLUSH_S + WRITE_DELAY_S + 0.5
SERIES = 4 * 4


def _kill_child(data_dir: Path, rng: random.Random, on_write: int | None) -> tuple[int, bool]:
    """Run the child, SIGKILL it (at a random offset, or right after its on_write-th write starts).

    Returns the wall-clock kill time and whether a temp file was on disk after the kill.
    """
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), str(data_dir), str(FLUSH_S), str(ROTATE_S), str(WRITE_DELAY_S)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "ready", f"child failed to start: {line!r} {proc.stderr.read()}"  # type: ignore[union-attr]
        if on_write is None:
            # Once the second write has started the first is complete, so something must survive;
            # then a random moment (flushes, merges and idle time all get hit).
            for _ in range(2):
                while (line := proc.stdout.readline()) and line.strip() != "W":
                    pass
                assert line, f"child exited early: {proc.stderr.read()}"  # type: ignore[union-attr]
            time.sleep(rng.uniform(0.0, 1.2))
        else:
            writes = 0
            while writes < on_write:
                line = proc.stdout.readline()
                assert line, f"child exited early: {proc.stderr.read()}"  # type: ignore[union-attr]
                writes += line.strip() == "W"
        kill_ns = time.time_ns()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    assert proc.returncode == -signal.SIGKILL
    return kill_ns, any(data_dir.rglob(".tmp-*"))


def _check_prefix(data_dir: Path, kill_ns: int, label: str) -> int:
    """Assert the surviving data is a complete, duplicate-free prefix; returns the batches kept."""
    table = read_metrics(data_dir)
    assert table.num_rows > 0, f"{label}: nothing survived"
    seqs: dict[tuple[str, str], list[int]] = defaultdict(list)
    for ent, met, val in zip(table.column("entity").to_pylist(), table.column("metric").to_pylist(),
                             table.column("value").to_pylist(), strict=True):
        seqs[(ent, met)].append(int(val))
    assert len(seqs) == SERIES, label
    n = max(max(v) for v in seqs.values()) + 1
    for key, values in seqs.items():
        assert sorted(values) == list(range(n)), f"{label}: {key} has gaps or duplicates"
    lost_s = (kill_ns - int(pc_max_ts(table))) / 1e9
    assert lost_s <= MAX_LOST_S, f"{label}: lost {lost_s:.3f} s of data (> {MAX_LOST_S} s)"
    return n


def pc_max_ts(table: pa.Table) -> int:
    """The latest timestamp in a metrics table, as Unix ns."""
    return max(table.column("ts").cast(pa.int64()).to_pylist())


def test_sigkill_leaves_readable_files_and_a_complete_prefix(tmp_path: Path) -> None:
    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    plan: list[int | None] = [None, 3, None, 5, None]  # random offsets and kills mid-write
    tmp_seen = []
    for i, on_write in enumerate(plan):
        label = f"kill {i} (seed {seed}, {'write ' + str(on_write) if on_write else 'random'})"
        data_dir = tmp_path / f"run{i}"
        kill_ns, had_tmp = _kill_child(data_dir, rng, on_write)
        tmp_seen.append(had_tmp)
        # Every file with a final name opens and reads completely.
        for path in data_dir.rglob("*.parquet"):
            if not path.name.startswith(".tmp-"):
                assert pq.read_table(path).num_rows > 0, f"{label}: {path} is empty"
        kept = _check_prefix(data_dir, kill_ns, label)
        # A new recorder cleans the debris and the data reads the same.
        Recorder(data_dir, WallClock())
        assert not any(data_dir.rglob(".tmp-*")), label
        assert len(list_trace_files(data_dir, "metrics")) == len(list((data_dir / "metrics").rglob("*.parquet")))
        assert _check_prefix(data_dir, kill_ns, label) == kept
    assert any(tmp_seen[i] for i, w in enumerate(plan) if w), "no kill landed mid-write"
