"""The HTTP exporter: /metrics (text 0.0.4 or OpenMetrics by negotiation), /healthz, /readyz."""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable

from aiohttp import web

from collector.agent import Agent
from collector.batch import Batch, Entity
from collector.exposition import (
    OPENMETRICS_CONTENT_TYPE,
    TEXT_CONTENT_TYPE,
    Names,
    Prepared,
    Renderer,
    render_openmetrics,
)
from collector.webconfig import WebConfig

log = logging.getLogger(__name__)


_source_entities: dict[str, Entity] = {}


def _source_entity(name: str) -> Entity:
    e = _source_entities.get(name)
    if e is None:
        e = _source_entities[name] = Entity(kind="source", node="", id=name, labels=(name,))
    return e


def self_batch(agent: Agent) -> Batch:
    """fleetwatch_source_{up,duration_seconds,errors_total} for every source."""
    b = Batch(source="self", ts_ns=agent.clock.now_ns())
    for name, st in agent.states.items():
        ent = _source_entity(name)
        b.add("fleetwatch_source_up", ent, 1.0 if st.up else 0.0)
        b.add("fleetwatch_source_duration_seconds", ent, st.duration_s)
        for reason, n in sorted(st.errors.items()):
            b.add("fleetwatch_source_errors_total", ent, float(n), (reason,))
    return b


def wants_openmetrics(accept: str) -> bool:
    """Content negotiation: OpenMetrics only when the client asks for it ahead of text/plain."""
    best_q, best = -1.0, "text"
    for part in accept.split(","):
        fields = [f.strip() for f in part.split(";")]
        mtype = fields[0].lower()
        q = 1.0
        for f in fields[1:]:
            if f.startswith("q="):
                try:
                    q = float(f[2:])
                except ValueError:
                    q = 0.0
        kind = "om" if mtype == "application/openmetrics-text" else "text" if mtype in (
            "text/plain", "*/*") else None
        if kind and q > best_q:
            best_q, best = q, kind
    return best == "om"


class Exporter:
    """Serves the agent's fresh batches; extra batch providers (predictor, alerts) can be added later."""

    def __init__(self, agent: Agent, names: Names = "both", web_config: WebConfig | None = None) -> None:
        self.agent = agent
        self.renderer = Renderer(names)
        self.web_config = web_config or WebConfig()
        self.providers: list[Callable[[], list[Batch]]] = []
        # batch.source → (its latest batch, that batch's pre-rendered lines)
        self._prepared: dict[str, tuple[Batch, Prepared]] = {}
        agent.subscribe(self._prepare)
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    def _prepare(self, batch: Batch) -> None:
        # Rendering at collection time keeps the scrape itself down to string concatenation.
        self._prepared[batch.source] = (batch, self.renderer.prepare(batch))

    def render_text(self) -> bytes:
        """The text exposition of everything fresh, reusing lines rendered at collection time."""
        preps = []
        for b in self.batches():
            hit = self._prepared.get(b.source)
            preps.append(hit[1] if hit is not None and hit[0] is b else self.renderer.prepare(b))
        return self.renderer.render_prepared(preps)

    def batches(self) -> list[Batch]:
        """Everything to serve now: fresh source batches, self-metrics, extra providers."""
        out = [b for _, b in self.agent.fresh_batches()]
        out.append(self_batch(self.agent))
        for p in self.providers:
            out.extend(p())
        return out

    @web.middleware
    async def _auth(self, request: web.Request, handler: Callable) -> web.StreamResponse:  # type: ignore[type-arg]
        if request.path != "/healthz" and not self.web_config.check_basic_auth(
                request.headers.get("Authorization")):
            return web.Response(status=401, text="Unauthorized\n",
                                headers={"WWW-Authenticate": 'Basic realm="fleetwatch"'})
        resp = await handler(request)
        for k, v in self.web_config.headers.items():
            resp.headers[k] = v
        return resp

    async def handle_metrics(self, request: web.Request) -> web.Response:
        """GET /metrics."""
        if wants_openmetrics(request.headers.get("Accept", "")):
            body, ctype = render_openmetrics(self.renderer, self.batches()), OPENMETRICS_CONTENT_TYPE
        else:
            body, ctype = self.render_text(), TEXT_CONTENT_TYPE
        headers = {"Content-Type": ctype}
        if "gzip" in request.headers.get("Accept-Encoding", "") and len(body) > 1024:
            # Level 1: a 512-GPU exposition is ~17 MB; higher levels cost far more CPU for little gain.
            z = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
            body = z.compress(body) + z.flush()
            headers["Content-Encoding"] = "gzip"
        return web.Response(body=body, headers=headers)

    async def handle_healthz(self, request: web.Request) -> web.Response:
        """GET /healthz: the process serves requests."""
        return web.Response(text="ok\n")

    async def handle_readyz(self, request: web.Request) -> web.Response:
        """GET /readyz: every source has been tried once and at least one is up."""
        states = self.agent.states.values()
        if not states:
            return web.Response(text="ready (no local sources)\n")
        if any(st.collections == 0 for st in states):
            return web.Response(status=503, text="starting: first collection not finished\n")
        if not any(st.up for st in states):
            return web.Response(status=503, text="no source is up\n")
        down = sorted(n for n, st in self.agent.states.items() if not st.up)
        return web.Response(text="ready" + (f" (down: {', '.join(down)})" if down else "") + "\n")

    async def handle_root(self, request: web.Request) -> web.Response:
        """GET /: a landing page, as Prometheus exporters have."""
        rows = "".join(f"<li>{n}: {'up' if st.up else 'down ' + st.last_error}</li>"
                       for n, st in self.agent.states.items())
        html = (f"<html><head><title>fleetwatch</title></head><body><h1>fleetwatch</h1>"
                f'<p><a href="/metrics">Metrics</a> · <a href="/readyz">Ready</a></p><ul>{rows}</ul>'
                "</body></html>")
        return web.Response(text=html, content_type="text/html")

    def app(self) -> web.Application:
        """The aiohttp application."""
        app = web.Application(middlewares=[self._auth])
        app.router.add_get("/metrics", self.handle_metrics)
        app.router.add_get("/healthz", self.handle_healthz)
        app.router.add_get("/readyz", self.handle_readyz)
        app.router.add_get("/", self.handle_root)
        return app

    async def start(self, host: str = "0.0.0.0", port: int = 9400) -> int:
        """Listen; returns the bound port (useful with port 0)."""
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=self.web_config.ssl_context())
        await site.start()
        server = site._server  # aiohttp exposes no public accessor for the bound port
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else port
        return self.port

    async def stop(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
