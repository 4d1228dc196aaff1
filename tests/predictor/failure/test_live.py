"""`fleetwatch run` scores every GPU live: an injected fault's GPU gets the highest risk."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fleetwatch.config import ConfigError, load_config
from predictor.failure.live import build
from predictor.failure.modelfile import load
from tests.test_e2e_prometheus import (
    central_config,
    free_port,
    http_get,
    launch_fleetwatch,
    query,
    start_fleetwatch,
    start_prometheus,
    stop,
    wait_ready,
    wait_until,
)


def _risks(port: int) -> tuple[dict[tuple[str, str], float], dict[str, str], list[dict[str, str]]]:
    _, text = http_get(f"http://127.0.0.1:{port}/metrics")
    risk: dict[tuple[str, str], float] = {}
    info: dict[str, str] = {}
    reasons: list[dict[str, str]] = []
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "fleetwatch_gpu_failure_risk":
                risk[(s.labels["node"], s.labels["gpu"])] = s.value
            elif s.name == "fleetwatch_failure_model_info":
                info = dict(s.labels)
            elif s.name == "fleetwatch_gpu_failure_risk_reason":
                reasons.append(dict(s.labels))
    return risk, info, reasons


def test_injected_fault_gpu_has_the_highest_risk(tmp_path: Path) -> None:
    # HBM degradation on node-0 GPU 3, 30 simulated minutes in; its precursors last 20 minutes.
    proc, port = start_fleetwatch(tmp_path, "--simulate", "2x4", "--seed", "3", "--speed", "600",
                                  "--inject", "hbm-degradation@node-0/3+30m")
    try:
        def faulty_on_top() -> bool:
            risk, _, _ = _risks(port)
            if len(risk) < 8:
                return False
            top = risk[("node-0", "3")]
            return all(top > v for k, v in risk.items() if k != ("node-0", "3"))

        wait_until(faulty_on_top, 90, "the faulty GPU's risk above its peers'", proc)
        risk, info, reasons = _risks(port)
        assert all(0.0 <= v <= 1.0 for v in risk.values())
        assert info["kind"] == "anomaly"
        assert any(r["node"] == "node-0" and r["gpu"] == "3" for r in reasons)
    finally:
        stop(proc)
    assert proc.returncode == 0


def test_run_with_a_model_exports_its_version(tmp_path: Path, model_path: Path) -> None:
    proc, port = start_fleetwatch(tmp_path, "--simulate", "1x4", "--speed", "600", "--failure-model",
                                  str(model_path))
    try:
        wait_until(lambda: len(_risks(port)[0]) == 4, 60, "risk of 4 GPUs", proc)
        risk, info, _ = _risks(port)
        assert info["version"] == load(model_path).version and info["kind"] == "supervised"
        assert all(0.0 <= v <= 1.0 for v in risk.values())
        # each GPU's alert level is the model's operating point: its threshold, or the clear level while alerting
        model = load(model_path)
        _, text = http_get(f"http://127.0.0.1:{port}/metrics")
        series = {(s.name.removeprefix("fleetwatch_gpu_failure_"), s.labels["gpu"]): s.value
                  for fam in text_string_to_metric_families(text) for s in fam.samples if "gpu" in s.labels}
        for gpu in "0123":
            r, level = series[("risk", gpu)], series[("risk_threshold", gpu)]
            assert level in (pytest.approx(model.threshold), pytest.approx(model.clear_threshold))
            if r >= model.threshold or r < model.clear_threshold:       # outside the band the state is certain
                assert level == pytest.approx(model.clear_threshold if r >= model.threshold else model.threshold)
    finally:
        stop(proc)


def test_bad_model_file_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "m.joblib"
    bad.write_text("nope")
    cfg = load_config(None, {"failure": {"model": str(bad)}})
    with pytest.raises(ConfigError, match=r"failure\.model: .*m\.joblib"):
        build(cfg, None)
    assert build(load_config(None, {"failure": {"enabled": False}}), None) is None
    with pytest.raises(ConfigError, match="failure"):
        load_config(None, {"failure": {"source": "ftp://x"}})


def test_central_service_scores_the_fleet_from_prometheus(tmp_path: Path) -> None:
    """A central fleetwatch with no local sources (deploy/config/central.yml) scores the GPUs that a real
    Prometheus scrapes from an agent, and explains the agent's faulty GPU by its ECC errors."""
    aport, pport = free_port(), free_port()
    url = f"http://127.0.0.1:{pport}"
    # Prometheus first, then the agent and the central service together: Prometheus' first scrape (~5 s after
    # it starts) and the two start-ups overlap. The central service scores every 2 s, finding no GPUs until
    # Prometheus has the agent's readings.
    prom, _ = start_prometheus(tmp_path, {"agent": [aport]}, port=pport)
    procs = []
    try:
        cfg = central_config(tmp_path / "central.yml",
                             f"energy: {{enabled: false}}\nfailure: {{source: '{url}', interval: 2s, step: 5s}}\n")
        procs.append(launch_fleetwatch(tmp_path, "--simulate", "2x4", "--seed", "3", "--speed", "120", "--no-record",
                                       "--no-forecast", "--inject", "hbm-degradation@node-1/2+4m", port=aport))
        procs.append(launch_fleetwatch(tmp_path, "--config", str(cfg)))
        for p, port in procs:
            wait_ready(p, port)
        central, cport = procs[1]
        wait_until(lambda: query(url, "fleetwatch_gpu_temperature_celsius"), 60, "GPU readings in Prometheus", prom)

        def faulty_ecc_cited() -> bool:
            risk, _, reasons = _risks(cport)
            return len(risk) == 8 and any(r["node"] == "node-1" and r["gpu"] == "2"
                                          and r["reason"].startswith("correctable ECC errors") for r in reasons)

        # The counters' rates computed from Prometheus' answers show the injected fault's rising ECC errors.
        wait_until(faulty_ecc_cited, 90, "the faulty GPU's ECC errors cited, read from Prometheus", central)
        risk, info, _ = _risks(cport)
        assert all(0.0 <= v <= 1.0 for v in risk.values())
        assert info["kind"] == "anomaly"
    finally:
        stop(*(p for p, _ in procs), prom)
