"""Builders for webhook payloads, a recording test command, and a wired Remediator for the remediation tests."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from alerts.remediation.audit import AuditLog, read_audit
from alerts.remediation.payload import WebhookPayload
from alerts.remediation.policy import build_policy
from alerts.remediation.remediator import Remediator
from alerts.remediation.safety import Ledger, Limits, SafetyGate
from collector.clock import ManualClock

# Records its argv and FLEETWATCH_* environment as one JSON line in $REC_OUT, then exits with $REC_EXIT
# (or, with $REC_FAIL_FIRST=N, with 75 for the first N calls), after sleeping $REC_SLEEP seconds.
RECORDER = """#!{python}
import json, os, sys, time
out = os.environ["REC_OUT"]
with open(out, "a") as f:
    f.write(json.dumps({{"argv": sys.argv[1:], "env": {{k: v for k, v in os.environ.items()
                                                     if k.startswith("FLEETWATCH_")}}, "pid": os.getpid()}}) + "\\n")
n = sum(1 for _ in open(out))
time.sleep(float(os.environ.get("REC_SLEEP", "0")))
if n <= int(os.environ.get("REC_FAIL_FIRST", "0")):
    sys.exit(75)
sys.exit(int(os.environ.get("REC_EXIT", "0")))
"""


def write_recorder(dir_: Path) -> Path:
    """An executable script that records how it was called."""
    path = dir_ / "record-action"
    path.write_text(RECORDER.format(python=sys.executable))
    path.chmod(0o755)
    return path


def recorded(out: Path) -> list[dict[str, Any]]:
    """The calls the recorder saw."""
    return [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []


def alert(fingerprint: str = "0123456789abcdef", status: str = "firing", node: str = "node-0",
          starts: str = "2026-01-01T00:00:00Z", **labels: str) -> dict[str, Any]:
    """One webhook alert."""
    return {"status": status, "labels": {"alertname": "FleetwatchGpuLost", "node": node, **labels},
            "annotations": {"summary": "GPU lost"}, "startsAt": starts,
            "endsAt": "0001-01-01T00:00:00Z" if status == "firing" else "2026-01-01T01:00:00Z",
            "generatorURL": "http://fleetwatch:9400/", "fingerprint": fingerprint}


def payload(*alerts: dict[str, Any], status: str | None = None) -> dict[str, Any]:
    """A version-4 webhook body."""
    alerts = alerts or (alert(),)
    return {"version": "4", "groupKey": '{}:{alertname="FleetwatchGpuLost"}', "truncatedAlerts": 0,
            "status": status or alerts[0]["status"], "receiver": "fleetwatch", "groupLabels": {},
            "commonLabels": {}, "commonAnnotations": {}, "externalURL": "http://alertmanager:9093",
            "alerts": list(alerts)}


def model(*alerts: dict[str, Any]) -> WebhookPayload:
    """A validated payload."""
    return WebhookPayload.model_validate(payload(*alerts))


def command_policy(recorder: Path, argv: list[str] | None = None, undo: bool = True, **action: Any) -> dict[str, Any]:
    """A policy whose one rule sends every Fleetwatch* alert to the recorder."""
    act: dict[str, Any] = {"type": "command", "argv": argv or [str(recorder), "{node}", "{alertname}"],
                           "env": {"REC_OUT": str(recorder.parent / "calls.jsonl")}, "timeout": "10s",
                           "backoff": "50ms", **action}
    if undo:
        act["undo"] = [str(recorder), "undo", "{node}"]
    return {"allowlist": [str(recorder)], "actions": {"record": act},
            "rules": [{"name": "all", "match_re": {"alertname": "Fleetwatch.*"}, "actions": ["record"]}]}


class Rig:
    """A Remediator over a real policy, gate, audit log and recorder, with a manual clock."""

    def __init__(self, tmp: Path, mode: str = "enforce", limits: Limits | None = None,
                 policy: dict[str, Any] | None = None, **action: Any) -> None:
        self.tmp = tmp
        self.recorder = write_recorder(tmp)
        self.calls = tmp / "calls.jsonl"
        self.policy_doc = policy or command_policy(self.recorder, **action)
        (tmp / "policy.yml").write_text(yaml.safe_dump(self.policy_doc))
        self.clock = ManualClock()
        self.limits = limits or Limits(global_max=100, per_action_max=100, blast_max_nodes=100,
                                       blast_max_fraction=1.0, cooldown=0.0, fleet_nodes=10)
        self.audit_path = tmp / "audit.jsonl"
        self.mode = mode
        self.rem = self._build()

    def _build(self) -> Remediator:
        prior = read_audit(self.audit_path).records
        return Remediator(build_policy(self.policy_doc, "test-policy"), SafetyGate(self.limits, self.clock),
                          AuditLog(self.audit_path), self.mode, Ledger.from_audit(prior))  # type: ignore[arg-type]

    def restart(self) -> None:
        """A new Remediator on the same audit log (as after a restart of fleetwatch)."""
        self.rem.audit.close()
        self.rem = self._build()

    async def send(self, *alerts: dict[str, Any], request: str = "req") -> None:
        """Process one payload and wait for its actions."""
        await self.rem.process(model(*alerts), request)
        await self.rem.idle()

    def calls_made(self) -> list[dict[str, Any]]:
        """What the recorder was called with."""
        return recorded(self.calls)

    def audit(self, event: str | None = None) -> list[dict[str, Any]]:
        """The audit records (of one event kind)."""
        recs = read_audit(self.audit_path).records
        return [r for r in recs if event is None or r["event"] == event]


def clean_env() -> dict[str, str]:
    """os.environ without FLEETWATCH_* (a developer's settings must not leak into a test)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("FLEETWATCH_")}


class ThreadedReceiver:
    """The real receiver and engine (enforce mode, recorder action) on a loopback port, in a thread's loop."""

    def __init__(self, tmp: Path, token: bytes | None = b"t0ken", hmac_secret: bytes | None = b"s3cret",
                 max_body: int = 64 * 1024) -> None:
        import asyncio
        import threading

        from alerts.remediation.auth import Authenticator
        from alerts.remediation.receiver import Receiver, serve

        self.rig = Rig(tmp)
        self.token, self.secret = token, hmac_secret
        self.loop = asyncio.new_event_loop()
        self.stop_event: asyncio.Event | None = None

        async def start() -> int:
            self.stop_event = asyncio.Event()
            self.receiver = Receiver(Authenticator(token=token, hmac_secret=hmac_secret), self.rig.rem, max_body)
            self.runner, port = await serve(self.receiver, "127.0.0.1", 0)
            self.engine = asyncio.ensure_future(self.rig.rem.run(self.stop_event))
            return port

        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.port = asyncio.run_coroutine_threadsafe(start(), self.loop).result(10)
        self.url = f"http://127.0.0.1:{self.port}/alertmanager/webhook"

    def idle(self) -> None:
        """Wait until queued payloads and their actions are done."""
        import asyncio

        asyncio.run_coroutine_threadsafe(self.rig.rem.idle(), self.loop).result(30)

    def close(self) -> None:
        """Stop the server and the loop."""
        import asyncio

        async def stop() -> None:
            assert self.stop_event is not None
            self.stop_event.set()
            await self.runner.cleanup()
            await self.engine
            await self.rig.rem.close()
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in rest:              # connection handlers the server left behind
                t.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.rig.rem.audit.close()


def post(url: str, body: bytes, headers: dict[str, str] | None = None, method: str = "POST",
         timeout: float = 10.0) -> tuple[int, dict[str, Any] | str]:
    """A raw HTTP request with http.client (any body, any headers); (status, JSON or text)."""
    import http.client
    import urllib.parse

    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        conn.request(method, u.path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    try:
        return resp.status, json.loads(data)
    except ValueError:
        return resp.status, data.decode(errors="replace")


def dry_run_receiver_env(tmp: Path, port: int) -> dict[str, str]:
    """Environment for a `fleetwatch run` whose receiver (dry-run, no auth, loopback) cordons any alert's node."""
    policy = tmp / "remediation-policy.yml"
    policy.write_text(yaml.safe_dump({"allowlist": ["/bin/true"],
                                      "actions": {"cordon": {"type": "command", "argv": ["/bin/true", "{node}"]}},
                                      "rules": [{"name": "all", "actions": ["cordon"]}]}))
    return {"FLEETWATCH_REMEDIATION__LISTEN": f"127.0.0.1:{port}", "FLEETWATCH_REMEDIATION__AUTH_DISABLED": "true",
            "FLEETWATCH_REMEDIATION__POLICY_FILE": str(policy), "FLEETWATCH_REMEDIATION__LIMITS__FLEET_NODES": "2",
            "FLEETWATCH_REMEDIATION__LIMITS__BLAST_MAX_FRACTION": "0.5"}


def send_alert(port: int, node: str = "node-0") -> None:
    """POST one firing alert for `node` to a receiver on loopback; fails unless it is accepted."""
    status, resp = post(f"http://127.0.0.1:{port}/alertmanager/webhook",
                        json.dumps(payload(alert(node=node))).encode(), {"Content-Type": "application/json"})
    assert status == 200, resp
