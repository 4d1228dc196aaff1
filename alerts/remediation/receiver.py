"""The Alertmanager webhook receiver (aiohttp): authenticate, bound, validate, audit, enqueue, answer.

POST /alertmanager/webhook takes Alertmanager's webhook payload (version 4). Nothing runs in the request:
an accepted payload is queued for the Remediator and the answer is 200 once its audit record is on disk.
Every refused request is answered 4xx with the reason and leaves an audit record too.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from dataclasses import dataclass, field

from aiohttp import web

from alerts.remediation.auth import SIGNATURE_HEADER, Authenticator
from alerts.remediation.payload import PayloadError, parse_payload
from alerts.remediation.remediator import Remediator

WEBHOOK_PATH = "/alertmanager/webhook"
DEFAULT_MAX_BODY = 1024 * 1024       # Alertmanager's payloads are kilobytes; 1 MiB leaves room for max_alerts: 0


@dataclass
class Receiver:
    """The webhook handlers; mount them on an application with `add_routes`."""

    auth: Authenticator
    remediator: Remediator
    max_body: int = DEFAULT_MAX_BODY
    # Request ids: unique per process start (os.urandom per request is slow on some VMs).
    _ids: itertools.count[int] = field(default_factory=itertools.count)
    _prefix: str = field(default_factory=lambda: f"{int(time.time()):x}-{os.getpid():x}")

    async def _reject(self, request: web.Request, status: int, result: str, reason: str, rid: str,
                      t0: float) -> web.Response:
        await self.remediator.record("request", request=rid, result=result, http_status=status, reason=reason,
                                     remote=request.remote, path=request.path)
        self._count(result, t0)
        return web.json_response({"status": "rejected", "reason": reason, "request": rid}, status=status)

    def _count(self, result: str, t0: float) -> None:
        stats = self.remediator.stats
        stats.requests[result] += 1
        stats.request_seconds += time.perf_counter() - t0

    async def handle_webhook(self, request: web.Request) -> web.Response:
        """POST /alertmanager/webhook."""
        t0 = time.perf_counter()
        rid = f"{self._prefix}-{next(self._ids)}"
        if request.content_length is not None and request.content_length > self.max_body:
            return await self._reject(request, 413, "too_large",
                                      f"body of {request.content_length} bytes exceeds {self.max_body}", rid, t0)
        body = bytearray()
        try:
            async for chunk in request.content.iter_chunked(65536):
                body += chunk
                if len(body) > self.max_body:
                    return await self._reject(request, 413, "too_large",
                                              f"body exceeds {self.max_body} bytes", rid, t0)
        except (ConnectionError, asyncio.IncompleteReadError) as err:
            return await self._reject(request, 400, "bad_request", f"body could not be read: {err}", rid, t0)
        why = self.auth.check(request.headers.get("Authorization"), request.headers.get(SIGNATURE_HEADER),
                              bytes(body))
        if why is not None:
            return await self._reject(request, 401, "unauthorized", why, rid, t0)
        try:
            payload = parse_payload(bytes(body))
        except PayloadError as err:
            return await self._reject(request, 400, "bad_request", str(err), rid, t0)
        if self.remediator.queue.full():
            # Alertmanager retries a failed notification; 429 says "later", not "broken".
            return await self._reject(request, 429, "overloaded", "remediation queue is full; retry later",
                                      rid, t0)
        try:
            # The whole payload goes into the record: once answered 200 it survives a crash, and is decided
            # at the next start if it was not before (Remediator.recover).
            await self.remediator.record(
                "request", request=rid, result="accepted", http_status=200, remote=request.remote,
                group_key=payload.groupKey, status=payload.status, receiver=payload.receiver,
                payload=payload.model_dump(mode="json"))
        except OSError as err:
            # Nothing may act without a record: refuse, and let Alertmanager retry once the disk is back.
            self._count("audit_error", t0)
            return web.json_response({"status": "rejected", "reason": f"audit log unavailable: {err}",
                                      "request": rid}, status=503)
        if not self.remediator.submit(payload, rid):       # filled up while the record was written
            return await self._reject(request, 429, "overloaded", "remediation queue is full; retry later",
                                      rid, t0)
        self._count("accepted", t0)
        return web.json_response({"status": "accepted", "alerts": len(payload.alerts), "request": rid})

    async def handle_healthz(self, request: web.Request) -> web.Response:
        """GET /healthz."""
        return web.Response(text="ok\n")

    def add_routes(self, app: web.Application) -> None:
        """Mount the webhook on an application (its own, or the exporter's when they share a port)."""
        app.router.add_post(WEBHOOK_PATH, self.handle_webhook)

    def app(self) -> web.Application:
        """A stand-alone application: the webhook and /healthz."""
        # aiohttp's own limit stays above ours so that our handler answers with the reason.
        app = web.Application(client_max_size=self.max_body + 1024)
        self.add_routes(app)
        app.router.add_get("/healthz", self.handle_healthz)
        return app


async def serve(receiver: Receiver, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Start the stand-alone receiver; returns its runner and the bound port (useful with port 0)."""
    runner = web.AppRunner(receiver.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server = site._server  # aiohttp exposes no public accessor for the bound port
    sockets = getattr(server, "sockets", None) or []
    return runner, (sockets[0].getsockname()[1] if sockets else port)
