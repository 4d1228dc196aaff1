"""The command line as a user runs it: collect --once, simulate, --list-faults, errors and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from collector.sim.faults import FAULT_KINDS
from collector.sim.offline import generate_trace
from collector.trace import METRICS_SCHEMA
from collector.trace_io import read_ground_truth, read_metrics
from fleetwatch.cli import main

ROOT = Path(__file__).resolve().parents[1]


def fleetwatch(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the CLI in a subprocess."""
    return subprocess.run([sys.executable, "-m", "fleetwatch.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def test_collect_once_json_has_every_gpu_reading() -> None:
    res = fleetwatch("collect", "--once", "--simulate", "1x2", "--seed", "3", "--format", "json")
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)
    power = [r for r in rows if r.get("metric") == "fleetwatch_gpu_power_watts"]
    assert len(power) == 2 and all(50 < r["value"] <= 700 and r["unit"] == "watts" for r in power)
    assert {r["node"] for r in power} == {"node-0"}
    assert any(r.get("metric") == "fleetwatch_infiniband_port_up" for r in rows)


def test_collect_once_table(capsys: pytest.CaptureFixture[str]) -> None:
    # main() in this process: the JSON test above already runs `collect --once` as a user does, in a subprocess.
    assert main(["collect", "--once", "--simulate", "1x1"]) == 0
    out = capsys.readouterr().out
    assert "fleetwatch_gpu_temperature_celsius" in out and "celsius" in out


def test_list_faults_names_every_kind() -> None:
    res = fleetwatch("simulate", "--list-faults")
    assert res.returncode == 0
    for kind in FAULT_KINDS:
        assert kind in res.stdout


def test_simulate_writes_a_trace_with_ground_truth(tmp_path: Path) -> None:
    out = tmp_path / "trace"
    res = fleetwatch("simulate", "--nodes", "2", "--gpus", "4", "--days", "1", "--seed", "5", "--interval",
                     "600", "--inject", "hbm-degradation@node-1/2+2h", "-o", str(out))
    assert res.returncode == 0, res.stderr
    files = list((out / "metrics").rglob("*.parquet"))
    assert files and pq.read_schema(files[0]).equals(METRICS_SCHEMA, check_metadata=False)
    table = read_metrics(out, metrics=["fleetwatch_gpu_power_watts"])
    assert table.num_rows == 8 * 144
    gt = read_ground_truth(out)
    assert gt is not None and "hbm-degradation" in gt.column("kind").to_pylist()


def test_bad_config_exits_2_with_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "fw.yml"
    cfg.write_text("collector:\n  gpu:\n    interval: -1s\n")
    res = fleetwatch("collect", "--once", "--config", str(cfg), "--simulate", "1x1")
    assert res.returncode == 2
    assert "collector.gpu.interval" in res.stderr and "'-1s'" in res.stderr


def test_bad_inject_exits_2() -> None:
    res = fleetwatch("simulate", "--nodes", "1", "--gpus", "1", "--inject", "nope@node-0/0+1s", "-o", "/tmp/x")
    assert res.returncode == 2 and "unknown fault kind" in res.stderr


def test_replay_of_a_simulated_trace_runs_to_the_end_and_records(tmp_path: Path) -> None:
    from tests.test_e2e_prometheus import free_port

    out = tmp_path / "trace"
    # The trace in this process (the simulate command has its own test): one interpreter start-up, the replay's.
    generate_trace(out, nodes=1, gpus_per_node=2, days=0.05, seed=0, interval_s=60)
    res = fleetwatch("replay", str(out), "--speed", "2400", "--listen", f"127.0.0.1:{free_port()}",
                     "--data-dir", str(tmp_path / "replayed"))
    assert res.returncode == 0, res.stderr
    assert "replay finished (60 s interval" in res.stdout
    replayed = read_metrics(tmp_path / "replayed" / "traces", metrics=["fleetwatch_gpu_power_watts"])
    assert replayed.num_rows > 0
    assert set(replayed.column("entity").to_pylist()) == set(
        read_metrics(out, metrics=["fleetwatch_gpu_power_watts"]).column("entity").to_pylist())


def test_replay_of_a_non_trace_exits_2(tmp_path: Path) -> None:
    res = fleetwatch("replay", str(tmp_path), "--no-record")
    assert res.returncode == 2 and "no metrics files" in res.stderr
