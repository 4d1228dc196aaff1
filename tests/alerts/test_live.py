"""The "alerts" component: wiring into the service, configuration, and its run loop on an injected clock."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from alerts.live import OUTBOX_SUBDIR, AlertsComponent, build
from alerts.rules import parse_rules
from collector.batch import Batch
from collector.clock import ManualClock
from collector.series_view import RecentWindow
from fleetwatch.cli import build_parser
from fleetwatch.config import ConfigError, load_config
from fleetwatch.service import COMPONENT_BUILDERS, build_service
from tests.conftest import sample_gpu


def test_alerts_come_after_the_predictors_in_the_service() -> None:
    assert "alerts.live:build" in COMPONENT_BUILDERS
    mine = COMPONENT_BUILDERS.index("alerts.live:build")
    predictors = [i for i, b in enumerate(COMPONENT_BUILDERS) if b.startswith("predictor.")]
    assert all(i < mine for i in predictors), COMPONENT_BUILDERS


def test_config_from_environment_builds_one_outbox_per_alertmanager(tmp_path: Path) -> None:
    env = {"FLEETWATCH_ALERTS__ALERTMANAGERS": "http://am-a:9093,http://am-b:9093/",
           "FLEETWATCH_ALERTS__INTERVAL": "30s"}
    cfg = load_config(None, {"simulate": "1x2", "data_dir": str(tmp_path), "record": {"enabled": False}},
                      environ=env)
    assert cfg.alerts.alertmanagers == ["http://am-a:9093", "http://am-b:9093"] and cfg.alerts.interval == 30
    svc = build_service(cfg)
    (comp,) = [c for c in svc.components if c.name == "alerts"]
    assert comp.client is not None and comp.client.urls == cfg.alerts.alertmanagers
    assert {b.path.parent for b in comp.client.outboxes.values()} == {tmp_path / OUTBOX_SUBDIR}
    assert any("am-a:9093" in line for line in comp.notes())


def test_disabled_alerts_build_nothing_and_bad_values_name_the_key(tmp_path: Path) -> None:
    cfg = load_config(None, {"simulate": "1x1", "alerts": {"enabled": False}})
    assert build(cfg, object()) is None
    with pytest.raises(ConfigError, match=r"alerts.interval = '-5s'"):
        load_config(None, {"alerts": {"interval": "-5s"}})
    with pytest.raises(ConfigError, match=r"alerts\.outbox_max_alerts"):
        load_config(None, {"alerts": {"outbox_max_alerts": 0}})


def test_run_and_replay_take_the_alerting_flags() -> None:
    p = build_parser()
    args = p.parse_args(["run", "--alertmanager", "http://a:9093", "--alertmanager", "http://b:9093",
                         "--rules", "r.yml"])
    assert args.alertmanager == ["http://a:9093", "http://b:9093"] and args.alert_rules == "r.yml"
    args = p.parse_args(["replay", "trace", "--alertmanager", "http://a:9093"])
    assert args.alertmanager == ["http://a:9093"]


async def test_run_loop_evaluates_on_the_service_clock_publishes_and_stops() -> None:
    rules = parse_rules("rules:\n  - alert: Hot\n    kind: threshold\n    metric: fleetwatch_gpu_temperature_celsius\n"
                        "    value: 80\n    for: 45s\n")
    clock = ManualClock()
    window = RecentWindow()
    published: list[Batch] = []
    stop = asyncio.Event()

    def publish(b: Batch) -> None:
        published.append(b)
        # the window keeps getting readings at the clock's time, as the agent would feed it
        r = Batch("gpu", clock.now_ns())
        r.add("fleetwatch_gpu_temperature_celsius", sample_gpu(), 90.0)
        window.add(r)
        if len(published) == 5:
            stop.set()

    comp = AlertsComponent(rules, window, clock, publish, interval_s=15.0)
    start = clock.now_ns()
    await asyncio.wait_for(comp.run(stop), timeout=10)
    assert len(published) == 5
    elapsed = (clock.now_ns() - start) / 1e9        # sleeps of 15 s of the service clock between evaluations
    assert elapsed in (60.0, 75.0)                  # (ManualClock advances when the last, cancelled sleep starts)
    assert all(b.source == "alerts" for b in published)
    (alert,) = comp.engine.alerts()
    assert alert.state == "firing"                                      # 15 s readings, for: 45s → fired
    rows = {(m, x): v for m, _, v, x in published[-1].rows()}
    assert rows[("fleetwatch_alerts_evaluations_total", ())] == 5
