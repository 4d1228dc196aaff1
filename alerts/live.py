"""The "alerts" component of `fleetwatch run`: evaluates the rules over the service's live window on the
service clock, publishes its self-metrics, and hands firing and resolved alerts to the Alertmanager client."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from pathlib import Path
from typing import Any

from collector.series_view import SeriesView

from .alertmanager import AlertmanagerClient
from .engine import Alert, Engine
from .rules import Rule, RuleError, load_rules

log = logging.getLogger("fleetwatch.alerts")
OUTBOX_SUBDIR = Path("alerts") / "outbox"


class AlertsComponent:
    """Rule evaluation every `interval` seconds of the service clock, delivery in its own task."""

    name = "alerts"

    def __init__(self, rules: list[Rule], view: SeriesView, clock: Any, publish: Any, *, interval_s: float = 15.0,
                 client: AlertmanagerClient | None = None, power_budget_watts: float | None = None,
                 rules_origin: str = "built-in defaults") -> None:
        self.engine = Engine(rules, power_budget_watts=power_budget_watts)
        self.view = view
        self.clock = clock
        self.publish = publish
        self.interval_s = interval_s
        self.client = client
        self.rules_origin = rules_origin

    def evaluate_once(self) -> list[Alert]:
        """One evaluation at the clock's now: alerts out to the client, self-metrics published."""
        now, alerts = self._evaluate()
        self._hand_over(now, alerts)
        return alerts

    def _evaluate(self) -> tuple[int, list[Alert]]:
        now = self.clock.now_ns()
        return now, self.engine.evaluate(self.view, now)

    def _hand_over(self, now: int, alerts: list[Alert]) -> None:
        # On the event loop's thread: the outbox, its wake-up event and publish() are not thread-safe.
        if self.client is not None:
            self.client.submit(alerts)
        batch = self.engine.self_batch(now, self.name)
        if self.client is not None:
            self.client.self_metrics(batch)
        self.publish(batch)

    async def run(self, stop: asyncio.Event) -> None:
        """Evaluate until stop; the delivery loop runs beside it."""
        delivery = asyncio.create_task(self.client.run(stop)) if self.client is not None else None
        try:
            while not stop.is_set():
                # Rules read the window under its lock: keep the event loop free meanwhile.
                now, alerts = await asyncio.to_thread(self._evaluate)
                self._hand_over(now, alerts)
                with contextlib.suppress(TimeoutError):
                    sleeper = asyncio.ensure_future(self.clock.sleep(self.interval_s))
                    waiter = asyncio.ensure_future(stop.wait())
                    try:
                        await asyncio.wait([sleeper, waiter], return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        sleeper.cancel()
                        waiter.cancel()
        finally:
            if delivery is not None:
                delivery.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await delivery
                self.client.save()

    def notes(self) -> list[str]:
        """Where to look."""
        lines = [f"alerts: {len(self.engine.rules)} rules ({self.rules_origin}) every {self.interval_s:g} s"]
        if self.client is not None:
            lines.append(f"alerts: sending to Alertmanager {', '.join(self.client.urls)} "
                         f"(outbox {next(iter(self.client.outboxes.values())).path.parent})")
        else:
            lines.append("alerts: no Alertmanager configured (--alertmanager URL): alerts stay in /metrics")
        return lines


def build(cfg: Any, svc: Any) -> AlertsComponent | None:
    """The alerts component for `fleetwatch run` (None when alerts.enabled is false)."""
    from collector.config_types import ConfigError, parse_hostport

    ac = cfg.alerts
    if not ac.enabled:
        return None
    try:
        rules = load_rules(ac.rules)
    except RuleError as err:
        raise ConfigError(f"alerts.rules: {err}") from None
    client = None
    if ac.alertmanagers:
        outbox = Path(ac.outbox_dir) if ac.outbox_dir else Path(cfg.data_dir) / OUTBOX_SUBDIR
        base = ac.external_url
        if base is None:
            host, port = parse_hostport(cfg.listen)
            if host in ("0.0.0.0", "::", ""):
                host = socket.gethostname()
            base = f"http://{host}:{port}"
        # endsAt = now + 4 evaluation intervals in wall time, as Prometheus does (resend delay x 4); at
        # --speed X the evaluations come X times as often, so the wall interval is interval / speed.
        speed = float(getattr(svc.clock, "speed", 1.0) or 1.0)
        ttl = max(4 * ac.interval / speed, 60.0)
        client = AlertmanagerClient(ac.alertmanagers, outbox, ttl_s=ttl, max_alerts=ac.outbox_max_alerts,
                                    timeout_s=ac.timeout, generator_url=base.rstrip("/") + "/metrics")
    return AlertsComponent(rules, svc.window, svc.clock, svc.publish, interval_s=ac.interval, client=client,
                           power_budget_watts=ac.power_budget_watts or _energy_budget(cfg),
                           rules_origin=ac.rules or "built-in defaults")


def _energy_budget(cfg: Any) -> float | None:
    """The energy forecaster's fleet budget (energy.budget_watts), when that section exists and sets one."""
    energy = getattr(cfg, "energy", None)
    return getattr(energy, "budget_watts", None)
