"""Service wiring: real-NVML mode without a GPU, the simulated default, fault injection, bad flags."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from fleetwatch.config import ConfigError, load_config
from fleetwatch.service import build_service, run_service
from tests.conftest import FIXTURES
from tests.test_e2e_prometheus import free_port, start_prometheus
from tests.test_e2e_prometheus import stop as stop_process


async def test_real_mode_without_nvml_reports_gpu_down_and_keeps_running(tmp_path: Path) -> None:
    port = free_port()
    cfg = load_config(overrides={
        "simulate": "off", "listen": f"127.0.0.1:{port}", "data_dir": str(tmp_path), "node": "host-a",
        "proc_root": str(FIXTURES / "proc"), "sys_root": str(FIXTURES / "sys"),
        "record": {"enabled": False}}, environ={})
    svc = build_service(cfg)
    assert svc.mode == "nvml" and svc.simulator is None
    stop = asyncio.Event()
    task = asyncio.create_task(run_service(svc, stop, announce=False))
    try:
        await svc.agent.started.wait()
        await svc.agent.wait_first_round(10)
        gpu = svc.agent.states["gpu"]
        assert not gpu.up and gpu.errors["nvml_library_not_found"] == 1, gpu.errors
        assert svc.agent.states["netdev"].up and svc.agent.states["infiniband"].up
        async with aiohttp.ClientSession() as http:
            text = await (await http.get(f"http://127.0.0.1:{port}/metrics")).text()
            ready = await http.get(f"http://127.0.0.1:{port}/readyz")
        assert 'fleetwatch_source_up{source="gpu"} 0' in text
        assert 'fleetwatch_source_errors_total{source="gpu",reason="nvml_library_not_found"} 1' in text
        assert 'fleetwatch_network_receive_bytes_total{node="host-a",device="eno1"}' in text
        assert "fleetwatch_gpu_" not in text
        assert ready.status == 200 and "gpu" in await ready.text()
    finally:
        stop.set()
        await task


def test_default_without_gpu_is_the_simulated_4x8_fleet(tmp_path: Path) -> None:
    svc = build_service(load_config(overrides={"data_dir": str(tmp_path)}, environ={}))
    assert svc.mode == "simulated 4x8"
    assert any("running the simulated fleet at 4x8" in n for n in svc.notes)
    assert len(svc.simulator.states) == 32
    assert sorted(n for n in svc.agent.states if n.startswith("gpu:")) == [f"gpu:node-{i}" for i in range(4)]


@pytest.mark.parametrize(("inject", "needle"), [
    ("gpu-lost@node-0/7+1s", "GPU 7 out of range"), ("melt@node-0/1+1s", "unknown fault kind"),
    ("gpu-lost@node-0/1+soon", "soon"), ("gpu-lost@node-3/0+1s", "node index 3 out of range"),
], ids=["gpu-out-of-range", "unknown-kind", "bad-delay", "node-out-of-range"])
def test_bad_inject_is_a_config_error(tmp_path: Path, inject: str, needle: str) -> None:
    cfg = load_config(overrides={"simulate": "1x2", "inject": [inject], "data_dir": str(tmp_path)}, environ={})
    with pytest.raises(ConfigError, match=needle):
        build_service(cfg)


async def test_service_compacts_and_applies_retention_on_schedule(tmp_path: Path) -> None:
    from collector.sim.offline import generate_trace
    from collector.trace_io import list_trace_files

    traces = tmp_path / "traces"
    generate_trace(traces, nodes=1, gpus_per_node=1, days=2, seed=1, interval_s=3600)  # January 2026: old
    assert any("date=2026-01-01" in str(p) for p in list_trace_files(traces, "metrics"))
    cfg = load_config(overrides={
        "simulate": "1x1", "listen": f"127.0.0.1:{free_port()}", "data_dir": str(tmp_path),
        "record": {"compact_interval": "1h", "retention_age": "30d"}}, environ={})
    svc = build_service(cfg)
    stop = asyncio.Event()
    task = asyncio.create_task(run_service(svc, stop, announce=False))
    try:
        for _ in range(100):            # the first compaction pass runs at start
            if not any("date=2026-01" in str(p) for p in list_trace_files(traces, "metrics")):
                break
            await asyncio.sleep(0.1)
        assert not any("date=2026-01" in str(p) for p in list_trace_files(traces, "metrics"))
    finally:
        stop.set()
        await task
    assert list_trace_files(traces, "metrics")        # today's recording is kept


async def test_central_config_runs_without_local_sources_and_is_ready(tmp_path: Path) -> None:
    from tests.test_deploy import ROOT as REPO

    port = free_port()
    token = tmp_path / "webhook-token"          # the Secret the deployment mounts
    token.write_text("s3cret\n")
    token.chmod(0o600)
    # An empty Prometheus on loopback for the predictors to read (the file names http://prometheus:9090, which
    # does not resolve here: their reads would retry with backoff, and stopping waits for those threads).
    prom, prom_url = start_prometheus(tmp_path, {})
    try:
        cfg = load_config(REPO / "deploy" / "config" / "central.yml",
                          {"listen": f"127.0.0.1:{port}", "data_dir": str(tmp_path),
                           "energy": {"source": prom_url}, "failure": {"source": prom_url},
                           "remediation": {"listen": f"127.0.0.1:{port}", "token_file": str(token)}}, environ={})
        svc = build_service(cfg)
        assert svc.agent.states == {}
        stop = asyncio.Event()
        task = asyncio.create_task(run_service(svc, stop, announce=False))
        try:
            await svc.agent.started.wait()
            async with aiohttp.ClientSession() as http:
                ready = await http.get(f"http://127.0.0.1:{port}/readyz")
                assert ready.status == 200 and "no local sources" in await ready.text()
                # Alertmanager's webhook is served on the same port and refuses a request without the token.
                hook = await http.post(f"http://127.0.0.1:{port}/alertmanager/webhook", json={})
                assert hook.status == 401
        finally:
            stop.set()
            await task
            # Reads in flight in the predictors' threads finish against the live Prometheus (stopped first, it
            # would make them retry with backoff while the loop's teardown waits for them).
            await asyncio.get_running_loop().shutdown_default_executor()
    finally:
        stop_process(prom)
