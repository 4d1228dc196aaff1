"""Prometheus importer: against a real Prometheus scraping `fleetwatch run`, and a scripted server for retries."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from collector.catalogue import MIB
from collector.importers import InputError, import_prometheus_async
from collector.importers.prometheus import Request, _instance_host, plan_requests
from tests.importers.helpers import assert_layout, entities, tree, values
from tests.test_e2e_prometheus import free_port, http_get, start_fleetwatch, start_prometheus, stop, wait_until

S = 10**9


@pytest.fixture(scope="module")
def prometheus_with_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prometheus (Debian package) scraping a simulated 1x2 fleetwatch every 500 ms."""
    tmp_path = tmp_path_factory.mktemp("prometheus")
    fw_port = free_port()
    # Prometheus first: its first scrape (~5 s after start) then overlaps fleetwatch's start-up.
    prom, url = start_prometheus(tmp_path, {"fleetwatch": [fw_port]}, interval="500ms")
    try:
        fw, _ = start_fleetwatch(tmp_path, "--simulate", "1x2", "--seed", "3", "--names", "both", "--no-record",
                                 port=fw_port)
        try:
            yield url
        finally:
            stop(fw)
    finally:
        stop(prom)


def _ns(ts: float) -> int:
    return round(float(ts) * 1000) * 10**6


def query_range(url: str, query: str, start: int, end: int, step: str) -> list[dict[str, Any]]:
    """Prometheus' own answer, for comparison."""
    qs = urllib.parse.urlencode({"query": query, "start": start, "end": end, "step": step})
    status, body = http_get(f"{url}/api/v1/query_range?{qs}")
    data = json.loads(body)
    assert status == 200 and data["status"] == "success", body
    return data["data"]["result"]


async def test_import_from_real_prometheus(prometheus_with_fleet: str, tmp_path: Path) -> None:
    url = prometheus_with_fleet

    def enough() -> bool:
        # successful scrapes (up == 1): Prometheus was started before fleetwatch answered
        r = query_range(url, "sum_over_time(up[30s])", int(time.time()), int(time.time()), "1s")
        return len(r) == 1 and float(r[0]["values"][-1][1]) >= 6

    # Prometheus' first scrape comes after its service discovery's first update, about 5 s after start
    await asyncio.to_thread(wait_until, enough, 60, "six scrapes")
    end = int(time.time())
    start = end - 2
    out = tmp_path / "trace"
    summary = await import_prometheus_async(
        out, url=url, match=["fleetwatch_gpu_temperature_celsius", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_GPU_TEMP",
                             '{__name__=~"fleetwatch_infiniband_port_data_received_bytes_total|up"}'],
        start=str(start), end=str(end), step="500ms", chunk="1s", concurrency=2, progress=False)
    assert summary.files == 4 * 3                # 4 selectors × 5 evaluation times in chunks of 2
    assert summary.skipped == 0 and summary.unknown["up"] == 5
    got = values(out)
    # native series: equal to Prometheus' own answer at every evaluation time
    for s in query_range(url, "fleetwatch_gpu_temperature_celsius", start, end, "0.5"):
        m = s["metric"]
        for ts, v in s["values"]:
            assert got[(m["node"], m["uuid"], "fleetwatch_gpu_temperature_celsius", _ns(ts))] == float(v)
    # dcgm series: mapped onto the native metric and unit
    dcgm = query_range(url, "DCGM_FI_DEV_FB_USED", start, end, "0.5")
    assert len(dcgm) == 2
    for s in dcgm:
        m = s["metric"]
        for ts, v in s["values"]:
            assert got[(m["Hostname"], m["UUID"], "fleetwatch_gpu_framebuffer_used_bytes", _ns(ts))] == \
                float(v) * MIB
    # the same GPU temperature arrived under both names: one row per time, the native value
    temps = [k for k in got if k[2] == "fleetwatch_gpu_temperature_celsius"]
    assert len(temps) == 2 * 5
    ents = entities(out)
    gpus = {k: e for k, e in ents.items() if e["kind"] == "gpu"}
    assert len(gpus) == 2 and {k[0] for k in gpus} == {"node-0"}
    for (node, uuid), e in gpus.items():
        assert e["labels"]["uuid"] == uuid and e["labels"]["model_name"] and e["labels"]["pci_bus_id"]
        assert e["dcgm_labels"]["Hostname"] == node
    assert any(e["kind"] == "ib_port" for e in ents.values())
    assert_layout(out)


async def test_prometheus_4xx_shows_its_message(prometheus_with_fleet: str, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"HTTP 400: bad_data: .*parse error"):
        await import_prometheus_async(tmp_path / "trace", url=prometheus_with_fleet, match=["foo{"], start="-1m",
                                      end="now", step="15s", progress=False)
    assert "trace" not in tree(tmp_path)


# --- a scripted server -----------------------------------------------------------------------------


def _matrix(start: float, end: float, step: float) -> dict[str, Any]:
    n = round((end - start) / step) + 1
    return {"status": "success", "data": {"resultType": "matrix", "result": [{
        "metric": {"__name__": "DCGM_FI_DEV_POWER_USAGE", "UUID": "GPU-a", "gpu": "0", "instance": "gpu-9:9400"},
        "values": [[start + i * step, f"{100 + start + i * step:.3f}"] for i in range(n)],
    }]}}


class Script:
    """An aiohttp server whose answers a test scripts: a list of statuses before the real answer."""

    def __init__(self, failures: list[int], delay: float = 0.0) -> None:
        self.failures = failures
        self.delay = delay
        self.calls = 0
        self.in_flight = 0
        self.max_in_flight = 0

    async def handle(self, request: web.Request) -> web.Response:
        """Answer the next scripted failure, else a matrix for the requested range."""
        self.calls += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
            if self.failures:
                status = self.failures.pop(0)
                return web.json_response({"status": "error", "errorType": "internal", "error": "overloaded"},
                                         status=status)
            q = request.query
            return web.json_response(_matrix(float(q["start"]), float(q["end"]), float(q["step"])))
        finally:
            self.in_flight -= 1


async def _serve(script: Script) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_get("/api/v1/query_range", script.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


async def test_retries_5xx_then_succeeds(tmp_path: Path) -> None:
    script = Script([503, 502])
    runner, url = await _serve(script)
    try:
        out = tmp_path / "trace"
        summary = await import_prometheus_async(out, url=url, match=["DCGM_FI_DEV_POWER_USAGE"], start="1000",
                                                end="1010", step="5", backoff=0.01, progress=False)
    finally:
        await runner.cleanup()
    assert script.calls == 3
    assert values(out) == {("gpu-9", "GPU-a", "fleetwatch_gpu_power_watts", t * S): 100.0 + t
                           for t in (1000, 1005, 1010)}
    assert summary.samples == 3


async def test_gives_up_after_retries_and_leaves_nothing(tmp_path: Path) -> None:
    script = Script([503] * 10)
    runner, url = await _serve(script)
    try:
        with pytest.raises(InputError, match=r"failed after 3 attempt\(s\): HTTP 503: internal: overloaded"):
            await import_prometheus_async(tmp_path / "trace", url=url, match=["x"], start="1000", end="1010",
                                          step="5", retries=2, backoff=0.01, progress=False)
    finally:
        await runner.cleanup()
    assert script.calls == 3
    assert tree(tmp_path) == []


async def test_connection_refused_is_retried_then_an_error(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(InputError, match=r"failed after 2 attempt\(s\): Client"):
        await import_prometheus_async(tmp_path / "trace", url=url, match=["x"], start="1000", end="1010",
                                      step="5", retries=1, backoff=0.01, progress=False)
    assert tree(tmp_path) == []


async def test_4xx_is_not_retried(tmp_path: Path) -> None:
    script = Script([422])
    runner, url = await _serve(script)
    try:
        with pytest.raises(InputError, match=r"HTTP 422: internal: overloaded"):
            await import_prometheus_async(tmp_path / "trace", url=url, match=["x"], start="1000", end="1010",
                                          step="5", backoff=0.01, progress=False)
    finally:
        await runner.cleanup()
    assert script.calls == 1


async def test_concurrency_is_bounded(tmp_path: Path) -> None:
    script = Script([], delay=0.05)
    runner, url = await _serve(script)
    try:
        summary = await import_prometheus_async(tmp_path / "trace", url=url, match=["a", "b"], start="0",
                                                end="99", step="1", chunk="10s", concurrency=3, progress=False)
    finally:
        await runner.cleanup()
    assert script.calls == summary.files == 20
    assert script.max_in_flight == 3
    # both selectors returned the same series: 100 distinct times, no duplicates
    assert summary.samples == 100


@pytest.mark.parametrize(("start", "end", "step", "chunk", "want"), [
    (0, 9, 1, 5, [(0, 4), (5, 9)]),
    (0, 10, 1, 5, [(0, 4), (5, 9), (10, 10)]),
    (0, 9, 2, 5, [(0, 2), (4, 6), (8, 8)]),          # chunk rounds down to whole steps: 2 per request
    (0, 3, 1, 100, [(0, 3)]),
    (5, 5, 1, 5, [(5, 5)]),
], ids=["even", "remainder", "step-2", "one-chunk", "instant"])
def test_plan_requests(start: int, end: int, step: int, chunk: int, want: list[tuple[int, int]]) -> None:
    got = plan_requests(["q"], start * S, end * S, step * S, chunk * S)
    assert got == [Request("q", a * S, b * S) for a, b in want]


def test_plan_requests_rejects_bad_ranges() -> None:
    with pytest.raises(InputError, match="before --start"):
        plan_requests(["q"], 10, 5, 1, 1)
    with pytest.raises(InputError, match="--step"):
        plan_requests(["q"], 0, 5, 0, 1)


@pytest.mark.parametrize(("labels", "host"), [
    ({"instance": "gpu-1:9400"}, "gpu-1"), ({"instance": "[::1]:9400"}, "::1"), ({"instance": "gpu-1"}, "gpu-1"),
    ({}, None)], ids=str)
def test_instance_host(labels: dict[str, str], host: str | None) -> None:
    assert _instance_host(labels) == host


async def test_option_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="--url must start"):
        await import_prometheus_async(tmp_path / "t", url="prom:9090", match=["x"], start="-1h", progress=False)
    with pytest.raises(InputError, match="cannot parse time"):
        await import_prometheus_async(tmp_path / "t", url="http://x", match=["x"], start="soon", progress=False)
    assert tree(tmp_path) == []
