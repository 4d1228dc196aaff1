"""End to end: Prometheus scrapes a live simulated run and then its replay; both expose the same series."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
from pathlib import Path

from tests.test_e2e_prometheus import free_port, http_get, start_fleetwatch, start_prometheus, stop, wait_until

ROOT = Path(__file__).resolve().parents[1]
PREDICTED = {"fleetwatch_power_forecast_watts", "fleetwatch_gpu_failure_risk"}


def _series(prom: str, job: str) -> set[tuple[tuple[str, str], ...]]:
    q = urllib.parse.quote(f'{{job="{job}",__name__!~"fleetwatch_source_.*|fleetwatch_recorder_.*|up|scrape_.*"}}')
    status, body = http_get(f"{prom}/api/v1/series?match[]={q}&start=0")
    assert status == 200, body
    out = set()
    for s in json.loads(body)["data"]:
        out.add(tuple(sorted((k, v) for k, v in s.items() if k not in ("job", "instance"))))
    return out


def test_replay_is_indistinguishable_for_prometheus(tmp_path: Path) -> None:
    live_port, replay_port = free_port(), free_port()
    prom, url = start_prometheus(tmp_path, {"live": [live_port], "replay": [replay_port]}, interval="500ms")
    try:
        data = tmp_path / "live-data"
        live, _ = start_fleetwatch(tmp_path, "--simulate", "1x2", "--seed", "4", "--data-dir", str(data),
                                   port=live_port, env={"FLEETWATCH_RECORD__FLUSH_INTERVAL": "500ms"})
        try:
            wait_until(lambda: len(_series(url, "live")) > 50, 30, "live series in prometheus")
            # The predictors publish after their first fit, which a cold CI machine can take seconds to
            # import and run: stop the live run only once Prometheus has scraped their outputs.
            wait_until(lambda: {dict(s)["__name__"] for s in _series(url, "live")} >= PREDICTED, 60,
                       "forecast and risk series in prometheus", live)
            time.sleep(2)
        finally:
            stop(live)
        replay = subprocess.Popen(
            [str(Path(live.args[0])), "-m", "fleetwatch.cli", "replay", str(data / "traces"), "--speed", "1",
             "--listen", f"127.0.0.1:{replay_port}", "--no-record"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            live_series = _series(url, "live")
            wait_until(lambda: _series(url, "replay") >= live_series, 60,
                       "replayed series in prometheus", replay)
            assert replay.wait(60) == 0, replay.stdout.read() if replay.stdout else ""
        finally:
            stop(replay)
        live_series, replay_series = _series(url, "live"), _series(url, "replay")
        assert live_series == replay_series, sorted(live_series ^ replay_series)[:5]
        names = {dict(s)["__name__"] for s in live_series}
        assert PREDICTED | {"DCGM_FI_DEV_GPU_TEMP", "fleetwatch_gpu_power_watts", "fleetwatch_gpu_clock_event_active",
                "fleetwatch_infiniband_port_up"} <= names
    finally:
        stop(prom)
