"""Delivery to a real Alertmanager: payload fields, resolve, the durable outbox across outages and restarts."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from alerts.alertmanager import AlertmanagerClient, Outbox
from alerts.live import AlertsComponent
from alerts.rules import parse_rules
from collector.batch import Batch
from collector.clock import ManualClock
from collector.series_view import RecentWindow
from tests.alerts.amhelpers import RealAlertmanager
from tests.conftest import sample_gpu

RULES = parse_rules("""
rules:
  - alert: FleetwatchTestHot
    kind: threshold
    metric: fleetwatch_gpu_temperature_celsius
    value: 80
    labels: {severity: critical, team: "gpu-{{ $labels.node }}"}
    annotations:
      summary: "GPU {{ $labels.gpu }} of {{ $labels.node }} at {{ $value }} C"
      runbook_url: https://example.org/runbooks/hot
""")
GPU = sample_gpu("node-7", 2)


@pytest.fixture(scope="module")
def am(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealAlertmanager]:
    a = RealAlertmanager(tmp_path_factory.mktemp("am")).start()
    yield a
    a.stop()


def component(tmp: Path, urls: list[str], clock: ManualClock, window: RecentWindow | None = None,
              **kw: float) -> AlertsComponent:
    client = AlertmanagerClient(urls, tmp / "outbox", generator_url="http://fw.example:9400/metrics", **kw)
    return AlertsComponent(RULES, window or RecentWindow(), clock, lambda b: None, client=client)


def feed(c: AlertsComponent, temp: float, gpu=GPU) -> None:  # type: ignore[no-untyped-def]
    b = Batch("test", c.clock.now_ns())
    b.add("fleetwatch_gpu_temperature_celsius", gpu, temp)
    c.view.add(b)  # type: ignore[attr-defined]


async def flush(c: AlertsComponent) -> bool:
    assert c.client is not None
    async with aiohttp.ClientSession() as s:
        return await c.client.flush(s)


def ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


async def test_firing_alert_reaches_alertmanager_with_labels_annotations_and_times(
        am: RealAlertmanager, tmp_path: Path) -> None:
    clock = ManualClock(start_ns=time.time_ns() - 60 * 10**9)      # data time a minute behind the wall
    c = component(tmp_path, [am.url], clock, ttl_s=120)
    feed(c, 91)
    (alert,) = c.evaluate_once()
    assert await flush(c)
    (got,) = am.alerts(alertname="FleetwatchTestHot", node="node-7")
    assert got["labels"]["team"] == "gpu-node-7" and got["labels"]["uuid"] == GPU.id
    assert got["labels"]["severity"] == "critical"
    assert got["annotations"] == {"summary": "GPU 2 of node-7 at 91 C", "runbook_url": "https://example.org/runbooks/hot"}
    assert got["fingerprint"] == alert.fingerprint          # our fingerprint is Alertmanager's
    assert got["status"]["state"] == "active"
    assert got["generatorURL"] == "http://fw.example:9400/metrics?alert=FleetwatchTestHot"
    assert abs(ts(got["startsAt"]) - clock.now_ns() / 1e9) < 1.0
    assert 100 < ts(got["endsAt"]) - time.time() <= 121      # now + ttl, wall time
    # resolved: endsAt is the resolve time, and Alertmanager no longer lists it as active
    clock.advance(30)
    feed(c, 50)
    (alert,) = c.evaluate_once()
    assert alert.state == "resolved"
    assert await flush(c)
    assert am.alerts(alertname="FleetwatchTestHot", node="node-7") == []


async def test_outbox_waits_while_alertmanager_is_down_and_delivers_when_it_returns(tmp_path: Path) -> None:
    am = RealAlertmanager(tmp_path).start()
    try:
        clock = ManualClock(start_ns=time.time_ns())
        c = component(tmp_path, [am.url], clock)
        am.stop()
        feed(c, 95)
        c.evaluate_once()
        assert not await flush(c)                               # connection refused: kept
        assert c.client is not None and c.client.errors[am.url] == 1
        box = json.loads(next((tmp_path / "outbox").glob("*.json")).read_text())
        assert [e["payload"]["labels"]["alertname"] for e in box["entries"]] == ["FleetwatchTestHot"]
        clock.advance(15)
        feed(c, 96)
        c.evaluate_once()                                      # the same alert again: one entry, newer
        assert len(c.client.outboxes[am.url]) == 1
        am.start()
        assert await flush(c)
        (got,) = am.alerts(alertname="FleetwatchTestHot")
        assert got["annotations"]["summary"].endswith("at 96 C")
        assert len(c.client.outboxes[am.url]) == 0 and c.client.sent[am.url] == 1
    finally:
        am.stop()


async def test_outbox_survives_a_restart_of_the_component(tmp_path: Path) -> None:
    am = RealAlertmanager(tmp_path).start()
    try:
        clock = ManualClock(start_ns=time.time_ns())
        first = component(tmp_path, [am.url], clock)
        am.stop()
        feed(first, 99)
        first.evaluate_once()
        assert not await flush(first)
        first.client.save()  # type: ignore[union-attr]
        del first                                              # fleetwatch stops with the alert undelivered
        am.start()
        second = component(tmp_path, [am.url], clock)          # same data dir, nothing evaluated yet
        assert len(second.client.outboxes[am.url]) == 1  # type: ignore[union-attr]
        assert await flush(second)
        (got,) = am.alerts(alertname="FleetwatchTestHot")
        assert got["annotations"]["summary"].endswith("at 99 C")
        assert len(second.client.outboxes[am.url]) == 0  # type: ignore[union-attr]
        third = component(tmp_path, [am.url], clock)           # delivered means gone: nothing re-sent
        assert len(third.client.outboxes[am.url]) == 0  # type: ignore[union-attr]
    finally:
        am.stop()


async def test_each_alertmanager_gets_every_alert_even_when_one_is_down(am: RealAlertmanager,
                                                                        tmp_path: Path) -> None:
    from tests.test_e2e_prometheus import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    clock = ManualClock(start_ns=time.time_ns())
    c = component(tmp_path, [am.url, dead], clock)
    gpu = sample_gpu("node-8", 1)
    feed(c, 88, gpu)
    c.evaluate_once()
    assert not await flush(c)
    assert len(am.alerts(alertname="FleetwatchTestHot", node="node-8")) == 1
    assert c.client is not None
    assert len(c.client.outboxes[am.url]) == 0 and len(c.client.outboxes[dead]) == 1
    rows = {(m, x): v for m, _, v, x in _self_rows(c)}
    assert rows[("fleetwatch_alertmanager_outbox_alerts", (dead,))] == 1
    assert rows[("fleetwatch_alertmanager_send_errors_total", (dead,))] == 1
    assert rows[("fleetwatch_alertmanager_sent_alerts_total", (am.url,))] == 1


def _self_rows(c: AlertsComponent) -> list:  # type: ignore[type-arg]
    b = c.engine.self_batch(c.clock.now_ns())
    assert c.client is not None
    c.client.self_metrics(b)
    return b.rows()


async def test_a_slow_alertmanager_times_out_and_keeps_the_alerts(tmp_path: Path) -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(1.5)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/api/v2/alerts", slow)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        url = f"http://127.0.0.1:{port}"
        c = component(tmp_path, [url], ManualClock(start_ns=time.time_ns()), timeout_s=0.3)
        feed(c, 90)
        c.evaluate_once()
        assert not await flush(c)
        assert c.client is not None and len(c.client.outboxes[url]) == 1
        assert "TimeoutError" in (c.client.last_error[url] or "")
    finally:
        await runner.cleanup()


def test_outbox_is_bounded_and_drops_resolved_alerts_first(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.json", max_alerts=3)
    box.put({"r1": {"labels": {"a": "1"}, "_resolved": True}, "f1": {"labels": {"a": "2"}}})
    box.put({"f2": {"labels": {"a": "3"}}, "f3": {"labels": {"a": "4"}}, "f4": {"labels": {"a": "5"}}})
    assert sorted(box.entries) == ["f2", "f3", "f4"] and box.dropped == 2
    again = Outbox(tmp_path / "o.json", max_alerts=3)
    assert sorted(again.entries) == ["f2", "f3", "f4"]


def test_an_unreadable_outbox_is_kept_aside_not_lost(tmp_path: Path) -> None:
    path = tmp_path / "o.json"
    path.write_text("{not json")
    box = Outbox(path)
    assert len(box) == 0
    (aside,) = tmp_path.glob("o.json.corrupt-*")
    assert aside.read_text() == "{not json"


def test_ack_keeps_an_entry_updated_while_it_was_being_sent(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.json")
    box.put({"f": {"labels": {"v": "1"}}})
    (fp, seq, _), = box.pending()
    box.put({"f": {"labels": {"v": "2"}}})                  # a newer version arrives during the POST
    box.ack([(fp, seq)])
    assert box.entries["f"].payload["labels"] == {"v": "2"}
