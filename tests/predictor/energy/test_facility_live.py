"""Measured facility power end to end: a real Prometheus scrapes a PDU exposition and fleetwatch; fleetwatch
queries the PDU's power back from it and publishes facility power, PUE now and forecast."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from predictor.energy.facility import FacilityMeter, FacilityQueryError
from tests.test_e2e_prometheus import (
    free_port,
    http_get,
    launch_fleetwatch,
    query,
    serve_exposition,
    start_prometheus,
    stop,
    wait_ready,
    wait_until,
)

PDU = 'pdu_input_power_watts{pdu="a"} 7000\npdu_input_power_watts{pdu="b"} 6000\n'
FACILITY_W = 13000.0          # more than 8 simulated GPUs can draw, so PUE > 1
QUERY = "sum(pdu_input_power_watts)"


def _env(prom_url: str) -> dict[str, str]:
    return {"FLEETWATCH_ENERGY__FACILITY_POWER_QUERY": QUERY, "FLEETWATCH_ENERGY__FACILITY_SOURCE": prom_url,
            # Look again every second: the PDU's first scrape may land after the first forecast.
            "FLEETWATCH_ENERGY__EVALUATE_INTERVAL": "1s"}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int, str]]:
    """A PDU exposition, Prometheus scraping it and fleetwatch, fleetwatch reading the PDU from Prometheus, and
    a second fleetwatch whose facility Prometheus does not answer."""
    tmp = tmp_path_factory.mktemp("facility")
    pdu = serve_exposition(PDU)
    pport = free_port()
    url = f"http://127.0.0.1:{pport}"
    # Both start together (their imports overlap); Prometheus only once they run, so that fleetwatch first counts
    # failures to reach it, then "no data" until its first scrape of the PDU.
    fw, port = launch_fleetwatch(tmp, "--simulate", "2x4", "--seed", "3", "--no-record", env=_env(url))
    dead, dead_port = launch_fleetwatch(tmp, "--simulate", "1x2", "--seed", "3", "--no-record",
                                        env=_env(f"http://127.0.0.1:{free_port()}"))
    proc = None
    try:
        wait_ready(fw, port)
        wait_ready(dead, dead_port)
        proc, _ = start_prometheus(tmp, {"fleetwatch": [port], "pdu": [pdu.server_port]}, port=pport)
        yield port, dead_port, url
    finally:
        stop(*(p for p in (proc, fw, dead) if p is not None))
        pdu.shutdown()


def _samples(port: int, name: str) -> list:  # type: ignore[type-arg]
    status, body = http_get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    return [s for f in text_string_to_metric_families(body) for s in f.samples if s.name == name]


def _fleet(port: int, name: str) -> list:  # type: ignore[type-arg]
    return [s for s in _samples(port, name) if s.labels.get("scope") == "fleet"]


def test_facility_power_pue_and_its_forecast(site: tuple[int, int, str]) -> None:
    port, _, _ = site
    wait_until(lambda: _fleet(port, "fleetwatch_facility_power_watts"), 60, "facility power")
    status, body = http_get(f"http://127.0.0.1:{port}/metrics")       # one scrape: one evaluation's numbers
    assert status == 200
    fams = {f.name: f.samples for f in text_string_to_metric_families(body)}

    def fleet(name: str) -> list:  # type: ignore[type-arg]
        return [s for s in fams.get(name, []) if s.labels.get("scope") == "fleet"]

    facility = fleet("fleetwatch_facility_power_watts")
    assert len(facility) == 1 and facility[0].value == pytest.approx(FACILITY_W)
    assert facility[0].labels == {"scope": "fleet", "node": "", "gpu": ""}
    pue = fleet("fleetwatch_pue_ratio")
    assert len(pue) == 1
    # PUE now is facility over IT power: the fleet's GPU power as the last reading (a second ago) had it.
    gpus = sum(s.value for s in fams["fleetwatch_gpu_power_watts"])
    assert FACILITY_W / pue[0].value == pytest.approx(gpus, rel=0.1) and pue[0].value > 1.0
    ahead = {s.labels["horizon"]: s for s in fleet("fleetwatch_pue_forecast_ratio")}
    assert set(ahead) == {"15m", "1h", "24h"}
    # Minutes of history: the PUE model is the current ratio, and the label says so.
    assert {s.labels["method"] for s in ahead.values()} == {"current_ratio"}
    assert all(s.value == pytest.approx(pue[0].value) for s in ahead.values())
    # Facility energy is priced: the fleet's cost is its IT energy × PUE × the default 0.15 per kWh.
    energy = {s.labels["horizon"]: s.value for s in fleet("fleetwatch_energy_forecast_joules")
              if s.labels["quantile"] == "0.5"}
    cost = {s.labels["horizon"]: s.value for s in fleet("fleetwatch_energy_forecast_cost")
            if s.labels["quantile"] == "0.5"}
    for h in ("1h", "24h"):
        assert cost[h] == pytest.approx(energy[h] / 3.6e6 * 0.15 * pue[0].value, rel=1e-6)


def _errors(port: int) -> dict[str, float]:
    return {s.labels["reason"]: s.value for s in _samples(port, "fleetwatch_source_errors_total")
            if s.labels["source"] == "energy"}


def test_failures_before_prometheus_answered_stop_counting(site: tuple[int, int, str]) -> None:
    port, _, _ = site
    wait_until(lambda: _fleet(port, "fleetwatch_facility_power_watts"), 60, "facility power")
    before = _errors(port)
    assert set(before) == {"facility_query", "facility_no_data"}
    time.sleep(3)                                   # three more evaluations, each reading the facility meter
    assert _errors(port) == before and _fleet(port, "fleetwatch_facility_power_watts")


def test_unreachable_facility_source_leaves_it_forecasts_alone(site: tuple[int, int, str]) -> None:
    _, port, _ = site

    def failed() -> float:
        return sum(s.value for s in _samples(port, "fleetwatch_source_errors_total")
                   if s.labels["source"] == "energy" and s.labels["reason"] == "facility_query")

    assert wait_until(failed, 60, "a counted facility query failure") >= 1
    assert [s for s in _fleet(port, "fleetwatch_power_forecast_watts") if s.labels["quantile"] == "0.5"]
    for name in ("fleetwatch_facility_power_watts", "fleetwatch_pue_ratio", "fleetwatch_pue_forecast_ratio"):
        assert not _samples(port, name), name


def test_meter_names_what_is_wrong_with_a_query(site: tuple[int, int, str]) -> None:
    _, _, url = site
    wait_until(lambda: query(url, QUERY), 30, "the PDU in Prometheus")
    now = time.time_ns()
    ok = FacilityMeter(url, QUERY, 5.0, 3600.0)
    ok.read(now - 60 * 10**9, now)
    assert ok.latest(now, 30 * 10**9) == pytest.approx(FACILITY_W)
    cases = [("pdu_input_power_watts", "facility_query", "2 series"),
             ("sum(no_such_metric_watts)", "facility_no_data", "no data"),
             ("sum(pdu_input_power_watts", "facility_query", "HTTP 400")]
    for q, reason, words in cases:
        with pytest.raises(FacilityQueryError) as err:
            FacilityMeter(url, q, 5.0, 3600.0).read(now - 60 * 10**9, now)
        assert err.value.reason == reason and words in str(err.value) and q in str(err.value)


def test_facility_keys_are_documented() -> None:
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    for key in ("facility_power_query", "facility_source", "fleetwatch_facility_power_watts", "current_ratio"):
        assert key in readme, key
