"""The forecaster inside `fleetwatch run --simulate`, scraped by a real Prometheus, and read back from it."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fleetwatch.cli import main
from tests.test_e2e_prometheus import (
    central_config,
    free_port,
    http_get,
    launch_fleetwatch,
    query,
    start_prometheus,
    stop,
    wait_ready,
    wait_until,
)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, str, int]]:
    """fleetwatch at 600x with a power budget, a Prometheus scraping it every second, and a central fleetwatch
    with no local sources (deploy/config/central.yml) that forecasts what that Prometheus holds."""
    tmp = tmp_path_factory.mktemp("energy-live")
    port, pport = free_port(), free_port()
    url = f"http://127.0.0.1:{pport}"
    # Prometheus first: its first scrape (~5 s after start) then overlaps the two fleetwatches' start-up, which
    # overlap each other. The central one looks again every second until Prometheus has its first readings, then
    # every 5 s (should its first look have caught a scrape from before the agent's first round was complete).
    proc, _ = start_prometheus(tmp, {"fleetwatch": [port]}, port=pport)
    procs = []
    try:
        cfg = central_config(tmp / "central.yml", "failure: {enabled: false}\n"
                             f"energy: {{source: '{url}', evaluate_interval: 5s}}\n")
        procs.append(launch_fleetwatch(tmp, "--simulate", "2x4", "--speed", "600", "--seed", "5", "--no-record",
                                       "--power-budget-watts", "4000", port=port))
        procs.append(launch_fleetwatch(tmp, "--config", str(cfg)))
        for p, p_port in procs:
            wait_ready(p, p_port)
        yield port, url, procs[1][1]
    finally:
        stop(*(p for p, _ in procs), proc)


def _families(port: int) -> dict[str, list]:  # type: ignore[type-arg]
    status, body = http_get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    return {f.name: f.samples for f in text_string_to_metric_families(body)}


def test_forecasts_are_served_soon_after_start(live: tuple[int, str, int]) -> None:
    port, _, _ = live

    def fleet_median() -> list:  # type: ignore[type-arg]
        fams = _families(port)
        return [s for s in fams.get("fleetwatch_power_forecast_watts", [])
                if s.labels["scope"] == "fleet" and s.labels["quantile"] == "0.5"]

    med = wait_until(fleet_median, 30, "a fleet power forecast")
    assert {s.labels["horizon"] for s in med} == {"15m", "1h", "24h"}
    assert all(s.value > 0 for s in med)
    fams = _families(port)
    info = [s for s in fams["fleetwatch_forecast_model_info"] if s.labels["scope"] == "fleet"]
    # Minutes of history: a baseline, and the label says why.
    assert info and all(s.labels["fallback"] == "short_history" for s in info)
    probs = [s for s in fams["fleetwatch_power_budget_exceed_probability_ratio"] if s.labels["scope"] == "fleet"]
    assert len(probs) == 3 and all(0.0 <= s.value <= 1.0 for s in probs)
    gpus = {(s.labels["node"], s.labels["gpu"]) for s in fams["fleetwatch_power_forecast_watts"]
            if s.labels["scope"] == "gpu"}
    assert len(gpus) == 8
    energy = [s for s in fams["fleetwatch_energy_forecast_joules"] if s.labels["scope"] == "fleet"
              and s.labels["horizon"] == "24h" and s.labels["quantile"] == "0.5"]
    assert energy and energy[0].value > 0


def test_forecast_from_prometheus(live: tuple[int, str, int], capsys: pytest.CaptureFixture[str]) -> None:
    _, url, _ = live
    wait_until(lambda: query(url, 'fleetwatch_power_forecast_watts{scope="fleet",quantile="0.5"}'), 30,
               "the forecast in Prometheus")
    scrapes = 'count_over_time(fleetwatch_gpu_power_watts{node="node-0",gpu="0"}[1m])'
    wait_until(lambda: sum(float(r["value"][1]) for r in query(url, scrapes)) >= 6, 60, "a few scrapes of GPU power")
    now = time.time()
    assert main(["forecast", "--prometheus", url, "--start", f"{now - 60:.0f}", "--end", f"{now:.0f}",
                 "--step", "2s", "--horizon", "10s", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    fleet = [r for r in doc["forecasts"] if r["series"] == "fleet"]
    assert len(fleet) == 1 and fleet[0]["fallback"] == "short_history" and fleet[0]["power_w_q0.5"] > 0
    assert len({r["series"] for r in doc["forecasts"] if r["scope"] == "gpu"}) == 8


def test_central_service_forecasts_the_fleet_from_prometheus(live: tuple[int, str, int]) -> None:
    """A central fleetwatch with no local sources (deploy/config/central.yml) forecasts what Prometheus holds."""
    _, url, port = live
    wait_until(lambda: query(url, "fleetwatch_gpu_power_watts"), 30, "GPU power in Prometheus")

    def gpus() -> set[tuple[str, str]]:
        return {(s.labels["node"], s.labels["gpu"]) for s in _families(port).get(
            "fleetwatch_power_forecast_watts", []) if s.labels["scope"] == "gpu"}

    assert len(wait_until(lambda: gpus() if len(gpus()) == 8 else set(), 60, "the fleet's forecasts")) == 8


def test_unreachable_prometheus_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    now = time.time()
    code = main(["forecast", "--prometheus", f"http://127.0.0.1:{port}", "--start", f"{now - 60:.0f}",
                 "--end", f"{now:.0f}", "--step", "5s"])
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("fleetwatch: forecast: cannot read") and "Traceback" not in err


def test_config_path_is_documented() -> None:
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    for flag in ("fleetwatch forecast", "fleetwatch backtest", "--power-budget-watts", "--no-forecast", "energy:"):
        assert flag in readme, flag
