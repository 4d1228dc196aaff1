"""Import series from a Prometheus server's range-query API into a trace.

Pulls `/api/v1/query_range` for each --match selector over [start, end] in time chunks (so no request
exceeds Prometheus' 11,000 points per series), at most --concurrency requests at once. 5xx answers and
connection errors are retried with exponential backoff; a 4xx answer is an error that shows Prometheus'
own message (a bad selector, too many points). Series map onto the catalogue as in the exposition importer
(native, dcgm-exporter and node_exporter names); the node is the series' `node` or `Hostname` label, else
the host part of `instance`, else --node.

A range query samples each series at start, start + step, ...: the trace gets those evaluation times,
each value the latest sample within Prometheus' lookback window (5 minutes by default), not the raw
scrapes. Use a step equal to the scrape interval to get one row per scrape.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from collector.importers._writer import (
    ImportSummary,
    InputError,
    Reporter,
    TraceWriter,
    parse_duration,
    parse_time,
    progress_bar,
)
from collector.importers.exposition import SeriesMapper

DEFAULT_STEP = "15s"
DEFAULT_CHUNK = "1h"
MAX_POINTS = 11_000          # Prometheus refuses range queries with more points per series


@dataclass(frozen=True, slots=True)
class Request:
    """One range query: a selector over one chunk of time (Unix nanoseconds, both ends included)."""

    selector: str
    start_ns: int
    end_ns: int


def plan_requests(selectors: Sequence[str], start_ns: int, end_ns: int, step_ns: int,
                  chunk_ns: int) -> list[Request]:
    """Split [start, end] into chunks aligned on the step so that no evaluation time is queried twice."""
    if step_ns <= 0:
        raise InputError("--step must be > 0")
    if end_ns < start_ns:
        raise InputError("--end is before --start")
    per_chunk = max(1, min(chunk_ns // step_ns, MAX_POINTS))
    out: list[Request] = []
    for sel in selectors:
        t = start_ns
        while t <= end_ns:
            last = t + min(per_chunk - 1, (end_ns - t) // step_ns) * step_ns   # an evaluation time, <= end
            out.append(Request(sel, t, last))
            t += per_chunk * step_ns
    return out


def _seconds(ns: int) -> str:
    """A Unix time for Prometheus' API, exact to the nanosecond."""
    sec, frac = divmod(ns, 10**9)
    return f"{sec}.{frac:09d}" if frac else str(sec)


def _error_text(body: str) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return body.strip()[:300] or "(empty body)"
    if isinstance(data, dict) and data.get("error"):
        return f"{data.get('errorType', 'error')}: {data['error']}"
    return body.strip()[:300]


def _instance_host(labels: dict[str, str]) -> str | None:
    inst = labels.get("instance")
    if not inst:
        return None
    if inst.startswith("["):                       # [::1]:9400
        return inst[1:].partition("]")[0] or None
    host, sep, port = inst.rpartition(":")
    return host if sep and port.isdigit() else inst


class RangeClient:
    """Range queries against one Prometheus-compatible API: bounded concurrency, retries with backoff."""

    def __init__(self, url: str, step_ns: int = 15 * 10**9, concurrency: int = 4, retries: int = 5,
                 backoff_s: float = 0.5, timeout_s: float = 60.0) -> None:
        if concurrency < 1:
            raise InputError(f"--concurrency must be >= 1, got {concurrency}")
        if retries < 0:
            raise InputError(f"--retries must be >= 0, got {retries}")
        self.url = url.rstrip("/")
        self.step_ns = step_ns
        self.semaphore = asyncio.Semaphore(concurrency)
        self.retries = retries
        self.backoff_s = backoff_s
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)

    def where(self, req: Request) -> str:
        """The request, for error messages."""
        return f"{self.url} query {req.selector!r} [{_seconds(req.start_ns)}, {_seconds(req.end_ns)}]"

    async def fetch(self, session: aiohttp.ClientSession, req: Request) -> dict[str, Any]:
        """One range query's `data`, retrying 5xx answers and connection errors; InputError otherwise."""
        params = {"query": req.selector, "start": _seconds(req.start_ns), "end": _seconds(req.end_ns),
                  "step": _seconds(self.step_ns)}
        endpoint = f"{self.url}/api/v1/query_range"
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                async with self.semaphore, session.get(endpoint, params=params, timeout=self.timeout) as resp:
                    body = await resp.text()
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError) as err:
                last = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
                continue
            if 400 <= status < 500:
                raise InputError(f"{self.where(req)}: Prometheus answered HTTP {status}: {_error_text(body)}")
            if status >= 500:
                last = f"HTTP {status}: {_error_text(body)}"
                continue
            try:
                data = json.loads(body)
            except ValueError:
                raise InputError(f"{self.where(req)}: the answer is not JSON: {body[:200]!r}") from None
            if not isinstance(data, dict) or data.get("status") != "success":
                raise InputError(f"{self.where(req)}: Prometheus reported an error: {_error_text(body)}")
            result = data.get("data")
            if not isinstance(result, dict) or result.get("resultType") != "matrix":
                kind = result.get("resultType") if isinstance(result, dict) else None
                raise InputError(f"{self.where(req)}: expected a matrix result, got {kind!r}")
            return result
        raise InputError(f"{self.where(req)}: failed after {self.retries + 1} attempt(s): {last}")



class PrometheusImporter:
    """Fetches range queries and adds their series to a TraceWriter."""

    def __init__(self, writer: TraceWriter, summary: ImportSummary, reporter: Reporter, url: str,
                 node: str | None = None, step_ns: int = 15 * 10**9, concurrency: int = 4, retries: int = 5,
                 backoff_s: float = 0.5, timeout_s: float = 60.0) -> None:
        self.client = RangeClient(url, step_ns, concurrency, retries, backoff_s, timeout_s)
        self.writer = writer
        self.summary = summary
        self.reporter = reporter
        self.url = self.client.url
        self.mapper = SeriesMapper(node)
        self.step_ns = step_ns
        self._known: set[tuple[str, str]] = set()

    def _where(self, req: Request) -> str:
        return self.client.where(req)

    async def fetch(self, session: aiohttp.ClientSession, req: Request) -> dict[str, Any]:
        """One range query's `data` (see RangeClient.fetch)."""
        return await self.client.fetch(session, req)

    def add_result(self, req: Request, result: dict[str, Any]) -> None:
        """Map one range query's series and add their samples."""
        where = self._where(req)
        n = 0
        for series in result.get("result") or []:
            labels = {str(k): str(v) for k, v in (series.get("metric") or {}).items()}
            name = labels.pop("__name__", "")
            values = series.get("values") or []
            try:
                m = self.mapper.map(name, labels, fallback_node=_instance_host(labels))
            except ValueError as err:
                self.reporter.bad(f"{where}: series {name}{labels}: {err}")
                continue
            if isinstance(m, str):
                self.summary.unknown[m or "(no metric name)"] += len(values)
                continue
            ts_list: list[int] = []
            val_list: list[float] = []
            ok = True
            for i, point in enumerate(values):
                try:
                    ts_s, text = point
                    ts_list.append(round(float(ts_s) * 1000) * 10**6)   # Prometheus times are milliseconds
                    val_list.append(m.convert(float(text)))
                except (TypeError, ValueError):
                    self.reporter.bad(f"{where}: series {name}{labels}: sample {i}: cannot parse {point!r}")
                    ok = False
                    break
            if not ok:
                continue
            key = (m.entity.node, m.entity.id)
            if key not in self._known:
                self._known.add(key)
                self.writer.add_entity(m.entity)
            s = self.writer.series(m.entity.node, m.entity.id, m.metric, m.rank)
            for ts, v in zip(ts_list, val_list, strict=True):
                if math.isnan(v):
                    self.summary.missing += 1
                    continue
                s.ts.append(ts)
                s.values.append(v)
                n += 1
        self.writer.added(n)

    async def run(self, requests: Sequence[Request], progress: bool = True) -> None:
        """Fetch every request (bounded concurrency) and add each result as it arrives."""
        bar = progress_bar(len(requests), "prometheus", unit="req") if progress else None
        async with aiohttp.ClientSession() as session:
            async def one(req: Request) -> tuple[Request, dict[str, Any]]:
                return req, await self.fetch(session, req)

            tasks = [asyncio.ensure_future(one(r)) for r in requests]
            try:
                for done in asyncio.as_completed(tasks):
                    req, result = await done
                    self.add_result(req, result)
                    self.summary.files += 1
                    if bar is not None:
                        bar.update(1)
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                if bar is not None:
                    bar.close()


async def import_prometheus_async(output: str | os.PathLike[str], *, url: str, match: Sequence[str], start: str,
                                  end: str = "now", step: str = DEFAULT_STEP, chunk: str = DEFAULT_CHUNK,
                                  concurrency: int = 4, retries: int = 5, backoff: float = 0.5,
                                  timeout: float = 60.0, on_error: str = "fail", node: str | None = None,
                                  progress: bool = True) -> ImportSummary:
    """Import the series matching `match` over [start, end] from Prometheus at `url` into the trace."""
    if not match:
        raise InputError("at least one --match selector is needed")
    if not url.startswith(("http://", "https://")):
        raise InputError(f"--url must start with http:// or https://, got {url!r}")
    now = time.time_ns()
    start_ns, end_ns = parse_time(start, now), parse_time(end, now)
    step_ns, chunk_ns = parse_duration(step), parse_duration(chunk)
    requests = plan_requests(match, start_ns, end_ns, step_ns, chunk_ns)
    summary = ImportSummary(kind="prometheus")
    reporter = Reporter(summary, on_error)
    with TraceWriter(output) as writer:
        importer = PrometheusImporter(writer, summary, reporter, url, node=node, step_ns=step_ns,
                                      concurrency=concurrency, retries=retries, backoff_s=backoff,
                                      timeout_s=timeout)
        await importer.run(requests, progress=progress)
        writer.commit(summary)
    return summary


def import_prometheus(output: str | os.PathLike[str], **kwargs: Any) -> ImportSummary:
    """Blocking wrapper of import_prometheus_async (for the command line)."""
    return asyncio.run(import_prometheus_async(output, **kwargs))
