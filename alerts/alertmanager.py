"""Delivery to Alertmanager (API v2, POST /api/v2/alerts) through a durable, bounded outbox per Alertmanager.

Every evaluation puts the engine's alerts into each Alertmanager's outbox (one JSON file in the data
directory, written to a temporary name, fsynced and renamed); a delivery loop posts whatever the outbox
holds and removes what the Alertmanager accepted. While an Alertmanager is down or slow the alerts wait on
disk (the latest version of each, keyed by fingerprint) and go out when it returns, also after a restart
of fleetwatch. A resend after a crash may repeat an alert; Alertmanager merges it by fingerprint.

Timestamps: Alertmanager judges `endsAt` by its own wall clock, so the time-to-live of a firing alert
(now + a few evaluation intervals) is wall time; `startsAt` and a resolved alert's `endsAt` are data time
(the injected clock), clamped to the wall clock so that a simulated clock running ahead never sends
alerts from the future.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from collector.batch import Batch
from collector.clock import Clock, WallClock
from collector.fsync import atomic_file

from .engine import PROCESS, Alert

log = logging.getLogger("fleetwatch.alerts")
NS = 10**9
OUTBOX_VERSION = 1
MAX_POST = 500                       # alerts per request


def rfc3339(ns: int) -> str:
    """Unix nanoseconds → RFC 3339 with milliseconds, UTC."""
    return datetime.fromtimestamp(ns / NS, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def check_url(url: str) -> str:
    """An Alertmanager base URL (http or https, a host); ValueError names what is wrong."""
    p = urllib.parse.urlsplit(url)
    if p.scheme not in ("http", "https") or not p.hostname:
        raise ValueError(f"expected an Alertmanager URL like http://alertmanager:9093, got {url!r}")
    try:
        p.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ValueError(f"bad port in Alertmanager URL {url!r}") from None
    return url.rstrip("/")


@dataclass(slots=True)
class _Entry:
    seq: int
    payload: dict[str, Any]


class Outbox:
    """The alerts waiting for one Alertmanager: the latest payload per fingerprint, on disk."""

    def __init__(self, path: Path, max_alerts: int = 10_000, persist_every_s: float = 5.0) -> None:
        self.path = path
        self.max_alerts = max_alerts
        self.persist_every_s = persist_every_s
        self.entries: dict[str, _Entry] = {}
        self.seq = 0
        self.dropped = 0
        self._dirty = False
        self._saved_at = 0.0
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        try:
            doc = json.loads(self.path.read_text())
            if doc.get("version") != OUTBOX_VERSION:
                raise ValueError(f"version {doc.get('version')!r}, expected {OUTBOX_VERSION}")
            for e in doc["entries"]:
                self.entries[str(e["fingerprint"])] = _Entry(int(e["seq"]), dict(e["payload"]))
            self.seq = max((e.seq for e in self.entries.values()), default=0)
        except (OSError, ValueError, KeyError, TypeError) as err:
            # Never lose the evidence: keep the unreadable file aside and start empty.
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            with contextlib.suppress(OSError):
                self.path.rename(aside)
            log.error("alert outbox %s unreadable (%s): moved to %s, starting empty", self.path, err, aside)
            self.entries = {}

    def put(self, payloads: dict[str, dict[str, Any]]) -> None:
        """Replace each fingerprint's payload; persist now when something other than endsAt changed."""
        material = False
        for fp, p in payloads.items():
            old = self.entries.get(fp)
            if old is None or _material(old.payload) != _material(p):
                material = True
            self.seq += 1
            self.entries[fp] = _Entry(self.seq, p)
        if len(self.entries) > self.max_alerts:
            # Full: drop the oldest resolved alerts first (least harm), then the oldest firing ones.
            excess = len(self.entries) - self.max_alerts
            order = sorted(self.entries.items(), key=lambda kv: (not _resolved(kv[1].payload), kv[1].seq))
            for fp, _ in order[:excess]:
                del self.entries[fp]
            self.dropped += excess
            material = True
            log.warning("alert outbox %s full (%d alerts): dropped %d", self.path, self.max_alerts, excess)
        self._dirty = True
        if material or time.monotonic() - self._saved_at >= self.persist_every_s:
            self.save()

    def pending(self) -> list[tuple[str, int, dict[str, Any]]]:
        """What waits to be sent: (fingerprint, sequence, payload)."""
        return [(fp, e.seq, e.payload) for fp, e in self.entries.items()]

    def ack(self, sent: Sequence[tuple[str, int]]) -> None:
        """Remove what was delivered, unless a newer version arrived meanwhile."""
        for fp, seq in sent:
            e = self.entries.get(fp)
            if e is not None and e.seq == seq:
                del self.entries[fp]
        self._dirty = True
        if time.monotonic() - self._saved_at >= self.persist_every_s or not self.entries:
            self.save()

    def save(self) -> None:
        """Write the outbox atomically (temporary file, fsync, rename, fsync of the directory)."""
        if not self._dirty and self.path.exists():
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"version": OUTBOX_VERSION,
               "entries": [{"fingerprint": fp, "seq": e.seq, "payload": e.payload} for fp, e in self.entries.items()]}
        with atomic_file(self.path) as tmp:
            tmp.write_text(json.dumps(doc, separators=(",", ":")))
        self._dirty = False
        self._saved_at = time.monotonic()

    def __len__(self) -> int:
        return len(self.entries)


def _material(p: dict[str, Any]) -> tuple[Any, ...]:
    return (p.get("labels"), p.get("annotations"), p.get("startsAt"), _resolved(p))


def _resolved(p: dict[str, Any]) -> bool:
    return bool(p.get("_resolved"))


class AlertmanagerClient:
    """Sends alerts to one or more Alertmanagers, each through its own durable outbox."""

    def __init__(self, urls: Sequence[str], outbox_dir: str | Path, *, ttl_s: float = 60.0,
                 max_alerts: int = 10_000, timeout_s: float = 10.0, generator_url: str = "",
                 wall: Clock | None = None) -> None:
        self.urls = [check_url(u) for u in urls]
        self.ttl_ns = int(ttl_s * NS)
        self.timeout_s = timeout_s
        self.generator_url = generator_url
        self.wall = wall or WallClock()
        outbox_dir = Path(outbox_dir)
        self.outboxes = {u: Outbox(outbox_dir / f"{hashlib.sha256(u.encode()).hexdigest()[:16]}.json", max_alerts)
                         for u in self.urls}
        self.sent = dict.fromkeys(self.urls, 0)
        self.errors = dict.fromkeys(self.urls, 0)
        self.last_error: dict[str, str | None] = dict.fromkeys(self.urls)
        self.wake = asyncio.Event()

    def payload(self, a: Alert) -> dict[str, Any]:
        """One alert in API v2's postableAlert form."""
        wall = self.wall.now_ns()
        starts = min(a.active_at_ns, wall)
        # firing: alive for the TTL unless re-sent; resolved: ended at the resolve time (never in the future)
        ends = max(starts, min(a.resolved_at_ns or wall, wall)) if a.state == "resolved" else wall + self.ttl_ns
        url = self.generator_url or "http://fleetwatch/"
        sep = "&" if "?" in url else "?"
        return {"labels": dict(a.labels), "annotations": dict(a.annotations), "startsAt": rfc3339(starts),
                "endsAt": rfc3339(ends), "generatorURL": f"{url}{sep}alert={urllib.parse.quote(a.name)}",
                "_resolved": a.state == "resolved"}

    def submit(self, alerts: Sequence[Alert]) -> None:
        """Queue the firing and resolved alerts (pending ones are not sent) for every Alertmanager."""
        payloads = {a.fingerprint: self.payload(a) for a in alerts if a.state != "pending"}
        if not payloads:
            return
        for box in self.outboxes.values():
            box.put(payloads)
        self.wake.set()

    async def flush(self, session: aiohttp.ClientSession) -> bool:
        """Try to deliver every outbox once; True when all are empty afterwards."""
        results = await asyncio.gather(*(self._flush_one(session, u) for u in self.urls))
        return all(results)

    async def _flush_one(self, session: aiohttp.ClientSession, url: str) -> bool:
        box = self.outboxes[url]
        pending = box.pending()
        for i in range(0, len(pending), MAX_POST):
            chunk = pending[i:i + MAX_POST]
            body = [{k: v for k, v in p.items() if not k.startswith("_")} for _, _, p in chunk]
            try:
                async with session.post(f"{url}/api/v2/alerts", json=body,
                                        timeout=aiohttp.ClientTimeout(total=self.timeout_s)) as r:
                    text = await r.text()
                    if r.status >= 300:
                        raise RuntimeError(f"HTTP {r.status}: {text[:200]}")
            except (aiohttp.ClientError, TimeoutError, RuntimeError, OSError) as err:
                self.errors[url] += 1
                msg = f"{type(err).__name__}: {err}"
                if self.last_error[url] is None:
                    log.warning("Alertmanager %s: delivery failed (%s); %d alerts wait in the outbox",
                                url, msg, len(box))
                self.last_error[url] = msg
                return False
            box.ack([(fp, seq) for fp, seq, _ in chunk])
            self.sent[url] += len(chunk)
        if self.last_error[url] is not None:
            log.info("Alertmanager %s: delivering again", url)
            self.last_error[url] = None
        return True

    async def run(self, stop: asyncio.Event, retry_s: float = 1.0, max_retry_s: float = 30.0) -> None:
        """Deliver whenever alerts are queued; retry failures with backoff (wall time: a transport concern)."""
        backoff = retry_s
        async with aiohttp.ClientSession() as session:
            while not stop.is_set():
                ok = await self.flush(session)
                backoff = retry_s if ok else min(max_retry_s, backoff * 2)
                self.wake.clear()
                waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self.wake.wait())]
                try:
                    await asyncio.wait(waiters, timeout=None if ok and not self._any_pending() else backoff,
                                       return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for w in waiters:
                        w.cancel()
            self.save()

    def _any_pending(self) -> bool:
        return any(len(b) for b in self.outboxes.values())

    def save(self) -> None:
        """Persist every outbox now (at shutdown)."""
        for box in self.outboxes.values():
            box.save()

    def self_metrics(self, batch: Batch) -> None:
        """Add outbox and delivery metrics to a batch."""
        for u in self.urls:
            b = self.outboxes[u]
            batch.add("fleetwatch_alertmanager_outbox_alerts", PROCESS, float(len(b)), (u,))
            batch.add("fleetwatch_alertmanager_sent_alerts_total", PROCESS, float(self.sent[u]), (u,))
            batch.add("fleetwatch_alertmanager_send_errors_total", PROCESS, float(self.errors[u]), (u,))
            batch.add("fleetwatch_alertmanager_dropped_alerts_total", PROCESS, float(b.dropped), (u,))
