"""`fleetwatch analyze` as a user runs it: every output format, filters, and errors with exit code 2."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from fleetwatch.cli import main
from tests.analysis.tracefiles import (
    DAY0,
    POWER,
    TEMP,
    UTIL,
    S,
    series,
    uuid_of,
    write_entities,
    write_events,
    write_metrics,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "trace"
    rows = []
    for n in range(2):
        for i in range(2):
            u = uuid_of(n, i)
            rows += series(f"node-{n}", u, POWER, [100 + 10 * i] * 13, step_s=600)
            rows += series(f"node-{n}", u, UTIL, [0.5] * 13, step_s=600)
            rows += series(f"node-{n}", u, TEMP, [40 + n + i] * 13, step_s=600)
    write_metrics(out, rows)
    write_events(out, [(DAY0 + 60 * S, "node-1", uuid_of(1, 1), "xid", 79, "off the bus")])
    write_entities(out, [(n, i) for n in range(2) for i in range(2)])
    return out


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["analyze", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_table_is_human_readable(trace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, str(trace))
    lines = out.splitlines()
    assert code == 0
    assert lines[0].split()[:4] == ["NODE", "GPU", "UUID", "SAMPLES"]
    assert len(lines) == 1 + 4 + 1
    assert lines[-1].startswith("total: 4 GPU(s), ") and "1 XID event(s)" in lines[-1]
    assert "2026-01-01T00:00:00Z → 2026-01-01T02:00:00Z" in lines[-1]


def test_json_contract(trace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, str(trace), "--format", "json", "--gpu", "node-1/1")
    (rec,) = json.loads(out)
    assert code == 0
    assert (rec["node"], rec["gpu"], rec["uuid"]) == ("node-1", 1, uuid_of(1, 1))
    assert rec["start"] == "2026-01-01T00:00:00Z" and rec["end"] == "2026-01-01T02:00:00Z"
    assert rec["samples"] == 13 and rec["xid_count"] == 1 and rec["power_mean_w"] == 110
    assert rec["energy_kwh"] == pytest.approx(110 * 7200 / 3.6e6)
    assert rec["retired_pages"] is None


def test_csv_by_node_with_windows_to_a_file(trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dest = tmp_path / "nodes.csv"
    code, out, _ = run(capsys, str(trace), "--format", "csv", "--by", "node", "--window", "1h", "-o", str(dest))
    assert code == 0 and out == ""
    rows = list(csv.DictReader(io.StringIO(dest.read_text())))
    assert [(r["node"], r["window_start"]) for r in rows] == [
        ("node-0", "2026-01-01T00:00:00Z"), ("node-0", "2026-01-01T01:00:00Z"), ("node-0", "2026-01-01T02:00:00Z"),
        ("node-1", "2026-01-01T00:00:00Z"), ("node-1", "2026-01-01T01:00:00Z"), ("node-1", "2026-01-01T02:00:00Z")]
    assert float(rows[0]["power_mean_w"]) == 210 and rows[0]["gpus"] == "2"
    assert rows[0]["retired_pages"] == ""


def test_parquet_needs_an_output_file(trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, str(trace), "--format", "parquet")
    assert code == 2 and "--format parquet needs -o FILE" in err
    dest = tmp_path / "out.parquet"
    code, _, _ = run(capsys, str(trace), "--format", "parquet", "-o", str(dest), "--node", "node-0",
                     "--start", "2026-01-01T01:00:00Z", "--end", str(DAY0 // S + 7200))
    t = pq.read_table(dest)
    assert code == 0 and t.num_rows == 2 and set(t.column("node").to_pylist()) == {"node-0"}
    assert t.column("samples").to_pylist() == [6, 6]


@pytest.mark.parametrize(("args", "message"), [
    (["/no/such/trace"], "analyze: /no/such/trace: no such trace directory"),
    (["{trace}", "--window", "soon"], "analyze: expected a duration"),
    (["{trace}", "--start", "yesterday"], "analyze: bad time 'yesterday'"),
    (["{trace}", "--gpu", "node-7/0"], "no GPU 0 on node 'node-7'"),
    (["{trace}", "--start", "2026-01-02", "--end", "2026-01-01"], "empty time range"),
], ids=["missing-trace", "bad-window", "bad-time", "unknown-gpu", "empty-range"])
def test_errors_exit_2_with_a_message(trace: Path, capsys: pytest.CaptureFixture[str], args: list[str],
                                      message: str) -> None:
    code, out, err = run(capsys, *(a.format(trace=trace) for a in args))
    assert code == 2 and out == "" and message in err


def test_console_entry_point(trace: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "fleetwatch.cli", "analyze", str(trace), "--by", "node"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[0].split()[:3] == ["NODE", "GPUS", "SAMPLES"]
    assert "total: 2 node(s)" in res.stdout
