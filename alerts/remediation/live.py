"""The "remediation" service component: runs the webhook receiver and the remediation engine in `fleetwatch run`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from alerts.remediation.audit import AUDIT_FILE_NAME, AuditLog, read_audit
from alerts.remediation.auth import TOKEN_FILE_NAME, AuthConfigError, Authenticator, ensure_token_file, read_secret_file
from alerts.remediation.grafana import GrafanaAnnotator
from alerts.remediation.policy import PolicyError, load_policy
from alerts.remediation.receiver import WEBHOOK_PATH, Receiver, serve
from alerts.remediation.remediator import Remediator
from alerts.remediation.safety import Ledger, Limits, SafetyGate
from collector.batch import Batch, Entity
from collector.clock import WallClock
from collector.config_types import ConfigError, parse_hostport

if TYPE_CHECKING:
    from fleetwatch.config import Config
    from fleetwatch.service import Service

log = logging.getLogger("fleetwatch.remediation")

NAME = "remediation"
DEFAULT_LISTEN = "0.0.0.0:9401"
PUBLISH_INTERVAL_S = 1.0
_PROCESS = Entity(kind="process", node="", id="fleetwatch", labels=())


def _node_entity(node: str) -> Entity:
    return Entity(kind="node", node=node, id=node, labels=(node,))


def _fleet_size(svc: Service) -> int:
    """Nodes with GPUs in the live window (a central service without local sources sees none)."""
    return len({e.node for e in svc.window.entities().values() if e.kind == "gpu" and e.node})


class RemediationComponent:
    """Receiver + engine; publishes fleetwatch_remediation_* metrics."""

    name = NAME

    def __init__(self, svc: Service, receiver: Receiver, host: str, port: int, shared: bool,
                 token_note: str | None, annotator: GrafanaAnnotator | None) -> None:
        self.svc, self.receiver, self.host, self.port, self.shared = svc, receiver, host, port, shared
        self.remediator = receiver.remediator
        self.token_note = token_note
        self.annotator = annotator
        self.bound: int | None = None

    def notes(self) -> list[str]:
        """Where the webhook listens, its mode and where the audit log and token are."""
        shown = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        where = "on the exporter's port" if self.shared else ""
        lines = [f"remediation webhook at http://{shown}:{self.bound or self.port}{WEBHOOK_PATH} {where}".rstrip(),
                 f"remediation mode: {self.remediator.mode} (policy: {self.remediator.policy.source}); "
                 f"audit log: {self.remediator.audit.path.resolve()}"]
        if self.token_note:
            lines.append(self.token_note)
        return lines

    def batch(self) -> Batch:
        """The component's metrics now."""
        st = self.remediator.stats
        b = Batch(NAME, self.svc.clock.now_ns())
        for (node, action, result), n in sorted(st.actions.items()):
            b.add("fleetwatch_remediation_actions_total", _node_entity(node), float(n), (action, result))
        for result, n in sorted(st.requests.items()):
            b.add("fleetwatch_remediation_requests_total", _PROCESS, float(n), (result,))
        b.add("fleetwatch_remediation_request_duration_seconds_total", _PROCESS, st.request_seconds)
        b.add("fleetwatch_remediation_audit_records_total", _PROCESS, float(self.remediator.audit.records))
        b.add("fleetwatch_remediation_queued_payloads", _PROCESS, float(self.remediator.queue.qsize()))
        b.add("fleetwatch_remediation_running_actions", _PROCESS, float(len(self.remediator.tasks)))
        b.add("fleetwatch_remediation_enforcing", _PROCESS, 1.0 if self.remediator.mode == "enforce" else 0.0)
        return b

    async def run(self, stop: asyncio.Event) -> None:
        """Serve the webhook (unless mounted on the exporter), run the engine, publish metrics until stop."""
        runner: web.AppRunner | None = None
        if not self.shared:
            runner, self.bound = await serve(self.receiver, self.host, self.port)
        else:
            self.bound = self.port
        engine = asyncio.create_task(self.remediator.run(stop), name="remediation-engine")
        try:
            while not stop.is_set():
                self.svc.publish(self.batch())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), PUBLISH_INTERVAL_S)
        finally:
            if runner is not None:
                await runner.cleanup()      # stop taking requests first
            engine.cancel()
            await asyncio.gather(engine, return_exceptions=True)
            await self.remediator.close()
            if self.annotator is not None:
                await self.annotator.close()
            self.remediator.audit.close()


def _same_port(a: str, b: str) -> bool:
    (ha, pa), (hb, pb) = parse_hostport(a), parse_hostport(b)
    wild = ("0.0.0.0", "::", "")
    return pa == pb and pa != 0 and (ha == hb or ha in wild or hb in wild)


def _authenticator(cfg: Config, data: Path) -> tuple[Authenticator, str | None]:
    rc = cfg.remediation
    if rc.auth_disabled:
        return Authenticator(disabled=True), "remediation webhook: authentication DISABLED (remediation.auth_disabled)"
    secret = read_secret_file(rc.hmac_secret_file, "HMAC secret file") if rc.hmac_secret_file else None
    note = None
    if rc.token_file:
        token = read_secret_file(rc.token_file, "webhook token file")
    elif secret is not None:
        token = None           # HMAC only: no bearer token to generate
    else:
        path = data / TOKEN_FILE_NAME
        token, created = ensure_token_file(path)
        note = (f"remediation webhook token {'generated at' if created else 'in'} {path.resolve()} "
                f"(Alertmanager: http_config.authorization.credentials_file)")
    return Authenticator(token=token, hmac_secret=secret), note


def build(cfg: Config, svc: Service) -> RemediationComponent | None:
    """The remediation component, or None when remediation is not enabled."""
    rc = cfg.remediation
    enabled = rc.enabled if rc.enabled is not None else rc.listen is not None
    if not enabled:
        return None
    listen = rc.listen or DEFAULT_LISTEN
    host, port = parse_hostport(listen)
    shared = _same_port(listen, cfg.listen)
    if shared and svc.exporter.web_config.basic_auth_users:
        raise ConfigError(f"remediation.listen {listen}: shares the exporter's port, whose web config requires "
                          f"basic auth, which Alertmanager's bearer token cannot pass; give it its own port")
    data = Path(cfg.data_dir) / "remediation"
    try:
        policy = load_policy(rc.policy_file)
        auth, note = _authenticator(cfg, data)
        secrets = {name: read_secret_file(a.config.secret_file, f"actions.{name}.secret_file")
                   for name, a in policy.actions.items() if a.config.secret_file}
        grafana_token = read_secret_file(rc.grafana_token_file, "remediation.grafana_token_file").decode() \
            if rc.grafana_token_file else ""
    except (PolicyError, AuthConfigError) as err:
        raise ConfigError(f"remediation: {err}") from None
    audit_path = Path(rc.audit_file) if rc.audit_file else data / AUDIT_FILE_NAME
    try:
        prior = read_audit(audit_path)
        audit = AuditLog(audit_path)
    except OSError as err:
        raise ConfigError(f"remediation.audit_file {audit_path}: {err.strerror or err}") from None
    lim = rc.limits
    limits = Limits(global_max=lim.global_max, global_window=lim.global_window, per_action_max=lim.per_action_max,
                    per_action_window=lim.per_action_window, blast_max_nodes=lim.blast_max_nodes,
                    blast_max_fraction=lim.blast_max_fraction, blast_window=lim.blast_window,
                    cooldown=lim.cooldown, fleet_nodes=lim.fleet_nodes)
    # Actions change the real world: limits and cooldowns run on the wall clock, also when simulating.
    gate = SafetyGate(limits, WallClock(), fleet_size=lambda: _fleet_size(svc))
    annotator = GrafanaAnnotator(rc.grafana_url, grafana_token) if rc.grafana_url else None
    remediator = Remediator(policy, gate, audit, rc.mode, Ledger.from_audit(prior.records), secrets,
                            rc.queue_size, annotate=annotator)
    recovered = remediator.recover(prior.records)
    if recovered:
        log.warning("remediation: %d webhook payload(s) accepted before a stop but not decided: deciding them now",
                    len(recovered))
    receiver = Receiver(auth, remediator, rc.max_body)
    if shared:
        # One port for /metrics and the webhook (the central service's :9401): mount on the exporter's app.
        make_app = svc.exporter.app

        def app_with_webhook() -> Any:
            app = make_app()
            receiver.add_routes(app)
            return app

        svc.exporter.app = app_with_webhook  # type: ignore[method-assign]
    return RemediationComponent(svc, receiver, host, port, shared, note, annotator)
