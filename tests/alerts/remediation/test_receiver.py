"""The webhook receiver over real HTTP: auth, size limit, schema validation — a refused request runs nothing."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from alerts.remediation.auth import SIGNATURE_HEADER, AuthConfigError, Authenticator, ensure_token_file
from alerts.remediation.payload import PayloadError, parse_payload
from alerts.remediation.receiver import Receiver
from tests.alerts.remediation.helpers import ThreadedReceiver, alert, payload, post

AUTH = {"Authorization": "Bearer t0ken"}


@pytest.fixture(scope="module")
def rx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedReceiver]:
    r = ThreadedReceiver(tmp_path_factory.mktemp("rx"))
    yield r
    r.close()


def _counts(rx: ThreadedReceiver) -> tuple[int, int]:
    rx.idle()
    return len(rx.rig.audit()), len(rx.rig.calls_made())


def body(**over: object) -> bytes:
    doc = payload(alert(fingerprint=os.urandom(8).hex()))
    doc.update(over)
    return json.dumps(doc).encode()


def test_a_valid_request_is_accepted_and_runs_the_action(rx: ThreadedReceiver) -> None:
    audit0, calls0 = _counts(rx)
    status, resp = post(rx.url, body(), AUTH)
    assert status == 200 and isinstance(resp, dict) and resp["status"] == "accepted"
    audit1, calls1 = _counts(rx)
    assert calls1 == calls0 + 1
    req = [r for r in rx.rig.audit("request") if r["request"] == resp["request"]]
    assert req[0]["result"] == "accepted"
    assert audit1 > audit0


def test_hmac_signature_alone_authenticates(rx: ThreadedReceiver) -> None:
    b = body()
    sig = "sha256=" + hmac.new(b"s3cret", b, hashlib.sha256).hexdigest()
    status, _ = post(rx.url, b, {SIGNATURE_HEADER: sig})
    assert status == 200


@pytest.mark.parametrize(("headers", "why"), [
    ({}, "missing credentials"),
    ({"Authorization": "Bearer wrong"}, "wrong bearer token"),
    ({"Authorization": "Bearer t0ken0"}, "wrong bearer token"),
    ({"Authorization": "Basic dDBrZW4="}, "wrong bearer token"),
    ({"Authorization": "Bearer \u00e9t0ken"}, "wrong bearer token"),
    ({SIGNATURE_HEADER: "sha256=" + "0" * 64}, "wrong HMAC signature"),
    ({SIGNATURE_HEADER: "md5=abc"}, "wrong HMAC signature"),
    ({**AUTH, SIGNATURE_HEADER: "sha256=00"}, "wrong HMAC signature"),   # a bad signature is never ignored
], ids=["none", "wrong", "prefix", "basic", "non-ascii", "wrong-hmac", "wrong-scheme", "token-plus-bad-hmac"])
def test_unauthenticated_requests_are_refused_audited_and_run_nothing(
        rx: ThreadedReceiver, headers: dict[str, str], why: str) -> None:
    audit0, calls0 = _counts(rx)
    hdrs = {k: v.encode("utf-8").decode("latin-1") for k, v in headers.items()}
    status, resp = post(rx.url, body(), hdrs)
    assert status == 401 and isinstance(resp, dict) and why in resp["reason"]
    audit1, calls1 = _counts(rx)
    assert calls1 == calls0 and audit1 == audit0 + 1
    last = rx.rig.audit()[-1]
    assert last["event"] == "request" and last["result"] == "unauthorized" and why in last["reason"]


@pytest.mark.parametrize(("raw", "status", "why"), [
    (b"not json", 400, "not JSON"),
    (b"\xff\xfe", 400, "not JSON"),
    (b"[1, 2]", 400, "must be a JSON object"),
    (body(version="3"), 400, "unsupported payload version '3'"),
    (body(version=4), 400, "unsupported payload version 4"),
    (json.dumps({k: v for k, v in payload().items() if k != "alerts"}).encode(), 400, "alerts: Field required"),
    (body(alerts=[]), 400, "alerts"),
    (body(alerts=[{**alert(), "fingerprint": "ZZ"}]), 400, "fingerprint"),
    (body(alerts=[{**alert(), "status": "maybe"}]), 400, "status"),
    (body(alerts=[{**alert(), "labels": {"node": "n"}}]), 400, "alertname"),
    (body(alerts=[{**alert(), "labels": {"alertname": "X", "bad-name": "v"}}]), 400, "not a valid label name"),
    (body(alerts=[{**alert(), "labels": {"alertname": 7}}]), 400, "labels.alertname"),
    (body(alerts=[{**alert(), "startsAt": "yesterday"}]), 400, "startsAt"),
    (body(truncatedAlerts=-1), 400, "truncatedAlerts"),
    (b"[" * 20000 + b"]" * 20000, 400, "not JSON"),
    (b"x" * (64 * 1024 + 1), 413, "exceeds"),
], ids=["text", "binary", "array", "v3", "int-version", "no-alerts", "empty-alerts", "bad-fingerprint",
        "bad-status", "no-alertname", "bad-label-name", "non-string-label", "bad-time", "negative-truncated",
        "deep-nesting", "too-large"])
def test_bad_bodies_get_4xx_with_the_reason_run_nothing_and_are_audited(
        rx: ThreadedReceiver, raw: bytes, status: int, why: str) -> None:
    audit0, calls0 = _counts(rx)
    got, resp = post(rx.url, raw, AUTH)
    assert got == status, resp
    assert isinstance(resp, dict) and why in resp["reason"]
    audit1, calls1 = _counts(rx)
    assert calls1 == calls0 and audit1 == audit0 + 1
    assert rx.rig.audit()[-1]["http_status"] == status


def test_a_declared_oversized_body_is_refused_before_it_is_read(rx: ThreadedReceiver) -> None:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", rx.port, timeout=10)
    conn.putrequest("POST", "/alertmanager/webhook")
    conn.putheader("Content-Length", str(10**9))
    conn.putheader("Authorization", "Bearer t0ken")
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 413 and "exceeds" in json.loads(resp.read())["reason"]
    conn.close()


def test_other_methods_and_paths_are_4xx(rx: ThreadedReceiver) -> None:
    assert post(rx.url, b"", AUTH, method="GET")[0] == 405
    assert post(rx.url.replace("webhook", "hook"), body(), AUTH)[0] == 404
    assert post(rx.url.replace("/alertmanager/webhook", "/healthz"), b"", method="GET")[0] == 200


def test_token_file_is_generated_once_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "remediation" / "webhook-token"
    token, created = ensure_token_file(path)
    assert created and len(token) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again, created2 = ensure_token_file(path)
    assert again == token and not created2
    path.chmod(0o644)
    with pytest.raises(AuthConfigError, match="chmod 600"):
        ensure_token_file(path)


def test_no_credentials_configured_means_no_authenticator() -> None:
    with pytest.raises(AuthConfigError, match="auth not disabled"):
        Authenticator()
    assert Authenticator(disabled=True).check(None, None, b"") is None


def test_parse_payload_accepts_alertmanagers_own_body() -> None:
    # As Alertmanager 0.27 sends it (notify/webhook), unknown future keys ignored.
    doc = payload(alert(), alert(fingerprint="fedcba9876543210", status="resolved"))
    doc["newKeyFromTheFuture"] = {"x": 1}
    p = parse_payload(json.dumps(doc).encode())
    assert [a.status for a in p.alerts] == ["firing", "resolved"] and p.alerts[0].alertname == "FleetwatchGpuLost"
    with pytest.raises(PayloadError, match="groupKey"):
        parse_payload(json.dumps({k: v for k, v in doc.items() if k != "groupKey"}).encode())


async def test_a_full_queue_answers_429_and_queues_nothing(tmp_path: Path) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from alerts.remediation.audit import AuditLog, read_audit
    from alerts.remediation.policy import Policy
    from alerts.remediation.receiver import Receiver
    from alerts.remediation.remediator import Remediator
    from alerts.remediation.safety import Limits, SafetyGate
    from collector.clock import ManualClock

    rem = Remediator(Policy.empty(), SafetyGate(Limits(), ManualClock()), AuditLog(tmp_path / "a.jsonl"),
                     queue_size=1)           # no engine running: the queue fills up
    client = TestClient(TestServer(Receiver(Authenticator(token=b"t0ken"), rem).app()))
    await client.start_server()
    try:
        first = await client.post("/alertmanager/webhook", data=body(), headers=AUTH)
        second = await client.post("/alertmanager/webhook", data=body(), headers=AUTH)
        assert first.status == 200 and second.status == 429
        assert (await second.json())["reason"] == "remediation queue is full; retry later"
    finally:
        await client.close()
    assert rem.queue.qsize() == 1
    rem.audit.close()
    results = [r["result"] for r in read_audit(tmp_path / "a.jsonl").records]
    assert results == ["accepted", "overloaded"]


async def test_an_accepted_payload_survives_a_stop_before_its_decision(tmp_path: Path) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from alerts.remediation.audit import read_audit
    from tests.alerts.remediation.helpers import Rig

    rig = Rig(tmp_path)                       # enforce mode, the recorder as the action
    client = TestClient(TestServer(Receiver(Authenticator(token=b"t0ken"), rig.rem).app()))
    await client.start_server()
    try:
        resp = await client.post("/alertmanager/webhook", data=body(), headers=AUTH)
        assert resp.status == 200
        rid = (await resp.json())["request"]
    finally:
        await client.close()
    # The engine never ran (as if fleetwatch stopped right after answering): nothing was decided.
    assert rig.calls_made() == [] and rig.audit("decision") == []
    rig.restart()
    recovered = rig.rem.recover(read_audit(rig.audit_path).records)
    assert recovered == [rid]
    stop = asyncio.Event()
    engine = asyncio.create_task(rig.rem.run(stop))
    await rig.rem.idle()
    stop.set()
    await engine
    assert len(rig.calls_made()) == 1
    rig.restart()                             # decided now: a further restart recovers nothing
    assert rig.rem.recover(read_audit(rig.audit_path).records) == []
