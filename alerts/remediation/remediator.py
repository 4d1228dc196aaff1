"""The remediation engine: accepted payloads → policy → safety gates → actions (or dry-run) → audit log.

Decisions are taken one alert at a time on the event loop, in arrival order, so the gates count exactly;
the actions then run as tracked background tasks (retried with backoff when the failure is transient), and
every decision, attempt and outcome is one audit record.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp

from alerts.remediation.actions import Outcome, TemplateError, command_env, post_webhook, render_argv, run_command
from alerts.remediation.audit import AuditLog
from alerts.remediation.payload import WebhookAlert, WebhookPayload
from alerts.remediation.policy import Action, Match, Policy
from alerts.remediation.safety import IdemKey, Ledger, SafetyGate

log = logging.getLogger("fleetwatch.remediation")

Mode = Literal["dry-run", "enforce"]
# A target (node name) must look like a host name: it becomes a command argument, and tools such as
# scontrol read "a,b" or "node[1-9]" as several nodes.
TARGET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,252}$")
MAX_BACKOFF_S = 300.0
Annotate = Callable[[str, list[str], dict[str, Any]], Awaitable[None]]


@dataclass
class RemediationStats:
    """Counters published as metrics."""

    actions: Counter[tuple[str, str, str]] = field(default_factory=Counter)    # (node, action, result)
    requests: Counter[str] = field(default_factory=Counter)                    # result
    request_seconds: float = 0.0
    queued: int = 0


class Remediator:
    """Decides and runs actions for accepted webhook payloads."""

    def __init__(self, policy: Policy, gate: SafetyGate, audit: AuditLog, mode: Mode = "dry-run",
                 ledger: Ledger | None = None, webhook_secrets: dict[str, bytes] | None = None,
                 queue_size: int = 1000, annotate: Annotate | None = None) -> None:
        self.policy, self.gate, self.audit, self.mode = policy, gate, audit, mode
        self.ledger = ledger or Ledger()
        self.webhook_secrets = webhook_secrets or {}
        self.queue: asyncio.Queue[tuple[WebhookPayload, str]] = asyncio.Queue(queue_size)
        self.tasks: set[asyncio.Task[Any]] = set()
        self.stats = RemediationStats()
        self.annotate = annotate
        self._session: aiohttp.ClientSession | None = None
        self._busy = 0             # payloads submitted and not yet fully decided
        self._unsynced: set[asyncio.Future[None]] = set()     # noted audit records not yet on disk
        self._side: set[asyncio.Task[None]] = set()           # Grafana annotations being posted

    async def record(self, event: str, **fields: Any) -> None:
        """Append one audit record; returns once it is on disk (the writer thread fsyncs)."""
        await self.audit.append(event, **fields)

    def note(self, event: str, **fields: Any) -> asyncio.Future[None]:
        """Queue one audit record without waiting for its fsync (the future says when it is on disk).

        Decisions are noted, not awaited, so deciding a burst of alerts does not wait for the disk once per
        alert; an action waits for its own decision record before it runs (`_execute`).
        """
        fut = self.audit.submit(event, **fields)
        self._unsynced.add(fut)
        fut.add_done_callback(self._unsynced.discard)
        return fut

    def submit(self, payload: WebhookPayload, request_id: str) -> bool:
        """Queue an accepted payload; False when the queue is full (the receiver answers 429)."""
        try:
            self.queue.put_nowait((payload, request_id))
        except asyncio.QueueFull:
            return False
        self._busy += 1
        self.stats.queued = self.queue.qsize()
        return True

    def recover(self, records: list[dict[str, Any]]) -> list[str]:
        """Queue the accepted payloads of an earlier run that have no decision yet (it stopped in between).

        Returns their request ids. Decisions already taken are not repeated: the ledger knows them.
        """
        decided = {r.get("request") for r in records if r.get("event") == "decision"}
        out = []
        for r in records:
            if r.get("event") != "request" or r.get("result") != "accepted" or r.get("request") in decided:
                continue
            try:
                payload = WebhookPayload.model_validate(r.get("payload"))
            except ValueError as err:
                log.warning("remediation: accepted request %s cannot be recovered: %s", r.get("request"), err)
                continue
            if self.submit(payload, str(r["request"])):
                out.append(str(r["request"]))
        return out

    async def run(self, stop: asyncio.Event) -> None:
        """Take payloads off the queue until stop is set."""
        while not stop.is_set():
            getter = asyncio.ensure_future(self.queue.get())
            stopper = asyncio.ensure_future(stop.wait())
            done, _ = await asyncio.wait({getter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if getter not in done:
                getter.cancel()
                break
            payload, request_id = getter.result()
            self.stats.queued = self.queue.qsize()
            try:
                await self.process(payload, request_id)
            except Exception:   # one bad payload must not stop remediation; it is logged with its request id
                log.exception("remediation: request %s failed", request_id)
            finally:
                self._busy -= 1

    async def idle(self) -> None:
        """Wait until the queue is empty and every started action has finished (tests, shutdown)."""
        while self._busy or self.tasks or self._unsynced or self._side:
            if self.tasks or self._unsynced or self._side:
                await asyncio.gather(*self.tasks, *self._unsynced, *self._side, return_exceptions=True)
            else:
                await asyncio.sleep(0.01)

    async def close(self) -> None:
        """Cancel running actions (their commands are killed) and close the HTTP session."""
        for t in [*self.tasks, *self._side]:
            t.cancel()
        await asyncio.gather(*self.tasks, *self._side, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def process(self, payload: WebhookPayload, request_id: str) -> None:
        """Decide every (alert, action) pair of one payload, in order."""
        for alert in payload.alerts:
            matches = self.policy.match(alert.labels, alert.annotations)
            if not matches:
                self.note("decision", request=request_id, fingerprint=alert.fingerprint,
                          alertname=alert.alertname, status=alert.status, mode=self.mode,
                          result="no_action", reason="no policy rule matches")
                continue
            for m in matches:
                await self._decide(alert, m, request_id)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _decide(self, alert: WebhookAlert, m: Match, request_id: str) -> None:
        action, cfg = m.action, m.action.config
        key: IdemKey = (alert.fingerprint, alert.startsAt.isoformat(), alert.status, action.name)
        target = alert.labels.get(cfg.target, "")
        node = alert.labels.get("node", "")
        base: dict[str, Any] = {
            "request": request_id, "key": list(key), "fingerprint": alert.fingerprint,
            "alertname": alert.alertname, "status": alert.status, "rule": m.rule.name, "action": action.name,
            "type": cfg.type, "target": target, "node": node, "mode": self.mode, "labels": alert.labels,
        }
        undo = alert.status == "resolved"
        if undo:
            base["undo"] = True
        if self.ledger.seen(key):
            self.note("decision", **base, result="duplicate",
                      reason="already decided for this alert fingerprint, start and status")
            return
        if undo:
            await self._decide_undo(alert, m, key, base)
            return
        if not TARGET.match(target):
            await self._refuse(base, f"target label {cfg.target!r} is missing or not a host-like name: {target!r}")
            return
        try:
            argv = render_argv(cfg.argv, alert.labels) if cfg.argv else None
        except TemplateError as err:
            await self._refuse(base, str(err))
            return
        if argv is not None:
            argv[0] = action.executable or argv[0]
        reason = self.gate.admit(action.name, target, cfg.max_per_window, cfg.cooldown)
        if reason is not None:
            await self._refuse(base, reason)
            return
        self.ledger.claim(key)
        what = {"argv": argv} if argv is not None else {"url": cfg.url}
        if self.mode == "dry-run":
            self.note("decision", **base, **what, result="dry_run", reason="dry-run mode: not run")
            self.ledger.ran[(alert.fingerprint, action.name)] = (target, "dry-run")
            self._count(node, action.name, "dry_run")
            await self._annotate(f"dry-run: {action.name} on {target} for {alert.alertname}", base, "dry_run")
            return
        synced = self.note("decision", **base, **what, result="run", reason=f"rule {m.rule.name}")
        self._spawn(self._execute(alert, action, argv, base, synced))

    async def _decide_undo(self, alert: WebhookAlert, m: Match, key: IdemKey, base: dict[str, Any]) -> None:
        action, cfg = m.action, m.action.config
        ran = self.ledger.ran.get((alert.fingerprint, action.name))
        if not m.rule.undo_on_resolved or (cfg.type != "webhook" and not cfg.undo):
            self.note("decision", **base, result="no_action", reason="no undo configured")
            return
        if ran is None:
            self.note("decision", **base, result="no_action",
                      reason="nothing to undo: the firing action did not run")
            return
        target, ran_mode = ran
        base["target"] = target
        self.ledger.claim(key)
        argv = None
        if cfg.undo:
            try:
                argv = render_argv(cfg.undo, {**alert.labels, cfg.target: target})
            except TemplateError as err:
                await self._refuse(base, str(err))
                return
            argv[0] = action.undo_executable or argv[0]
        what = {"argv": argv} if argv is not None else {"url": cfg.url}
        if self.mode == "dry-run" or ran_mode != "enforce":
            # Undo bypasses the gates: it gives back what the firing action took.
            self.note("decision", **base, **what, result="dry_run",
                      reason="dry-run: the firing action was not run either")
            self.ledger.ran.pop((alert.fingerprint, action.name), None)
            self._count(base["node"], action.name, "dry_run")
            return
        synced = self.note("decision", **base, **what, result="run", reason="resolved: undo")
        self._spawn(self._execute(alert, action, argv, base, synced))

    async def _refuse(self, base: dict[str, Any], reason: str) -> None:
        self.note("decision", **base, result="refused", reason=reason)
        self._count(base["node"], base["action"], "refused")
        await self._annotate(f"refused: {base['action']} on {base['target'] or '?'} ({reason})", base, "refused")

    def _count(self, node: str, action: str, result: str) -> None:
        self.stats.actions[(node, action, result)] += 1

    async def _annotate(self, text: str, base: dict[str, Any], result: str) -> None:
        if self.annotate is None:
            return
        annotate = self.annotate

        async def post() -> None:
            try:
                await annotate(text, [base["action"], result], base)
            except Exception as err:   # best effort: a slow or down Grafana must not hold up remediation
                log.warning("remediation: Grafana annotation failed: %s", err)

        task = asyncio.ensure_future(post())
        self._side.add(task)
        task.add_done_callback(self._side.discard)

    async def _attempt(self, alert: WebhookAlert, action: Action, argv: list[str] | None,
                       base: dict[str, Any]) -> Outcome:
        cfg = action.config
        if argv is not None:
            env = command_env(alert.labels, {"status": alert.status, "fingerprint": alert.fingerprint,
                                             "name": alert.alertname, "action": action.name,
                                             "target": base["target"]}, cfg.env, cfg.pass_env)
            return await run_command(argv, env, cfg.timeout, self.policy.allowlist,
                                     tuple(cfg.transient_exit_codes))
        if self._session is None:
            self._session = aiohttp.ClientSession()
        doc = {"action": action.name, "status": alert.status, "fingerprint": alert.fingerprint,
               "alertname": alert.alertname, "labels": alert.labels, "annotations": alert.annotations,
               "startsAt": alert.startsAt.isoformat(), "target": base["target"], "mode": self.mode,
               "sent_at": time.time()}
        return await post_webhook(self._session, cfg.url or "", doc, self.webhook_secrets.get(action.name),
                                  cfg.timeout)

    async def _execute(self, alert: WebhookAlert, action: Action, argv: list[str] | None,
                       base: dict[str, Any], decided: asyncio.Future[None]) -> None:
        # Nothing runs before its decision is on disk: after a crash, the audit log (and so the rebuilt
        # idempotency ledger) knows about every action that may have run.
        await decided
        cfg = action.config
        attempts = cfg.retries + 1
        outcome = Outcome("failed", "not run")
        n = 0
        for n in range(1, attempts + 1):
            outcome = await self._attempt(alert, action, argv, base)
            retry = not (outcome.ok or not outcome.transient or n == attempts)
            delay = min(cfg.backoff * 2 ** (n - 1), MAX_BACKOFF_S) if retry else None
            await self.record("attempt", **base, attempt=n, result=outcome.result, detail=outcome.detail,
                              returncode=outcome.returncode, stdout=outcome.stdout, stderr=outcome.stderr,
                              retry_in_s=delay)
            if delay is None:
                break
            await asyncio.sleep(delay)
        await self.record("outcome", **base, result=outcome.result, attempts=n, detail=outcome.detail)
        fp_action = (alert.fingerprint, action.name)
        if alert.status == "firing" and outcome.ok:
            self.ledger.ran[fp_action] = (base["target"], "enforce")
        elif alert.status == "resolved":
            self.ledger.ran.pop(fp_action, None)
        self._count(base["node"], action.name, outcome.result)
        verb = "undo " if alert.status == "resolved" else ""
        await self._annotate(f"{verb}{action.name} on {base['target']}: {outcome.result} ({outcome.detail})",
                                 base, outcome.result)
