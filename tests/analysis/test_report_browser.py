"""The HTML report in a real browser: headless Chromium, driven over the DevTools protocol with aiohttp.

Checks that the page loads with no console errors, exceptions or network requests beyond the file itself,
that every plot is laid out with a visible size and has a title, that the heatmap's embedded raster
actually paints, and takes a full-page screenshot (set FLEETWATCH_REPORT_SCREENSHOT=/path.png to keep a copy).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import itertools
import json
import os
import shutil
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image

from collector.sim.faults import parse_inject
from collector.sim.offline import generate_trace
from fleetwatch.analysis.report import PREDICTOR_SECTIONS, write_report
from tests.conftest import require_tool

# No sandbox (CI containers run as root), no GPU, and nothing that phones home: the page must render offline.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-extensions", "--mute-audio", "--hide-scrollbars")
WIDTH = 1300
STARTUP_TIMEOUT_S = 30.0
LOAD_TIMEOUT_S = 30.0

PLOTS_JS = """
(() => {
  const box = e => { const r = e.getBoundingClientRect(); return {x: r.x + scrollX, y: r.y + scrollY,
                                                                  w: r.width, h: r.height}; };
  const svgs = [...document.querySelectorAll('svg.plot')];
  return {
    sections: [...document.querySelectorAll('main > section')].map(s => s.id),
    plots: svgs.map(s => ({id: s.closest('section').id, box: box(s),
                           title: (s.querySelector(':scope > title') || {}).textContent || '',
                           texts: s.querySelectorAll('text').length,
                           images: [...s.querySelectorAll('image')].map(box)})),
    height: document.documentElement.scrollHeight,
  };
})()
"""


class Cdp:
    """A minimal Chrome DevTools Protocol client: commands by id, events collected in order."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []
        self.loaded = asyncio.Event()
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(msg.data)
            if "id" in data:
                fut = self.pending.pop(data["id"], None)
                if fut is not None and not fut.done():
                    fut.set_result(data)
            else:
                self.events.append(data)
                if data.get("method") == "Page.loadEventFired":
                    self.loaded.set()
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(ConnectionError("DevTools connection closed"))

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Run one command; its result, or AssertionError with the protocol's error."""
        mid = next(self.ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[mid] = fut
        await self.ws.send_json({"id": mid, "method": method, "params": params})
        reply = await asyncio.wait_for(fut, LOAD_TIMEOUT_S)
        assert "error" not in reply, f"{method}: {reply['error']}"
        return reply["result"]

    async def close(self) -> None:
        """Stop reading."""
        self.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.reader


async def _devtools_port(profile: Path, proc: asyncio.subprocess.Process, log: Path) -> int:
    """The port Chromium chose for --remote-debugging-port=0 (it writes it to DevToolsActivePort)."""
    marker = profile / "DevToolsActivePort"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STARTUP_TIMEOUT_S
    while loop.time() < deadline:
        if proc.returncode is not None:
            pytest.fail(f"chromium exited with {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
        with contextlib.suppress(FileNotFoundError, ValueError, IndexError):
            return int(marker.read_text().splitlines()[0])
        await asyncio.sleep(0.05)
    pytest.fail(f"chromium did not open its DevTools port in {STARTUP_TIMEOUT_S} s: "
                f"{log.read_text(errors='replace')[-2000:]}")


def _problems(events: list[dict[str, Any]]) -> list[str]:
    """Console errors, uncaught exceptions, error log entries and requests that leave the page's file."""
    out = []
    for e in events:
        method, p = e.get("method"), e.get("params", {})
        if method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            out.append(f"console.{p['type']}: {[a.get('value', a.get('description')) for a in p.get('args', [])]}")
        elif method == "Runtime.exceptionThrown":
            out.append(f"exception: {p.get('exceptionDetails', {}).get('text')}")
        elif method == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            out.append(f"log: {p['entry'].get('text')} ({p['entry'].get('url', '')})")
        elif method == "Network.requestWillBeSent":
            url = p.get("request", {}).get("url", "")
            if not url.startswith(("file://", "data:")):
                out.append(f"network request: {url}")
        elif method == "Network.loadingFailed":
            out.append(f"load failed: {p.get('errorText')}")
    return out


async def _browse(chromium: str, page_url: str, tmp: Path) -> tuple[dict[str, Any], list[str], bytes, bytes]:
    """Load the page; (layout facts, problems, full-page PNG, heatmap PNG)."""
    profile = tmp / "profile"                               # a fresh profile: no state from other runs
    log = tmp / "chromium.log"
    with log.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            chromium, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
            f"--window-size={WIDTH},900", "about:blank", stdout=asyncio.subprocess.DEVNULL, stderr=err)
    try:
        port = await _devtools_port(profile, proc, log)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/json/list") as resp:
                targets = await resp.json()
            page = next(t for t in targets if t.get("type") == "page")
            async with http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                cdp = Cdp(ws)
                try:
                    for domain in ("Runtime", "Log", "Network", "Page"):
                        await cdp.send(f"{domain}.enable")
                    await cdp.send("Emulation.setDeviceMetricsOverride", width=WIDTH, height=900,
                                   deviceScaleFactor=1, mobile=False)
                    await cdp.send("Page.navigate", url=page_url)
                    await asyncio.wait_for(cdp.loaded.wait(), LOAD_TIMEOUT_S)
                    res = await cdp.send("Runtime.evaluate", expression=PLOTS_JS, returnByValue=True)
                    facts = res["result"]["value"]
                    full = await cdp.send("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                                          clip={"x": 0, "y": 0, "width": WIDTH, "height": facts["height"],
                                                "scale": 1})
                    heat = next(p["box"] for p in facts["plots"] if p["id"] == "temperature")
                    part = await cdp.send("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                                          clip={"x": heat["x"], "y": heat["y"], "width": heat["w"],
                                                "height": heat["h"], "scale": 1})
                    await asyncio.sleep(0.2)                # let late console messages arrive
                    problems = _problems(cdp.events)
                finally:
                    await cdp.close()
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
    return facts, problems, base64.b64decode(full["data"]), base64.b64decode(part["data"])


async def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    chromium = require_tool("chromium")
    trace = tmp_path / "trace"
    generate_trace(trace, nodes=2, gpus_per_node=4, days=0.5, seed=1, interval_s=60,
                   injects=[parse_inject(s) for s in ("hbm-degradation@node-0/1+2h", "sudden-off-bus@node-1/0+5h",
                                                      "thermal@node-0/3+1h")])
    out = write_report([trace], tmp_path / "report.html")

    facts, problems, full, heat = await _browse(chromium, out.resolve().as_uri(), tmp_path)

    assert problems == []
    assert facts["sections"] == ["summary", "power", "energy", "temperature", "throttling", "errors",
                                 "unhealthy", *(sid for sid, _, _ in PREDICTOR_SECTIONS)]
    # The report's own five, then any the predictor sections draw (each checked like the others below).
    assert [p["id"] for p in facts["plots"]][:5] == ["power", "energy", "temperature", "throttling", "errors"]
    assert all(p["id"].startswith(tuple(sid for sid, _, _ in PREDICTOR_SECTIONS)) for p in facts["plots"][5:])
    for p in facts["plots"]:
        assert p["box"]["w"] > 300 and p["box"]["h"] > 100, p
        assert p["box"]["x"] + p["box"]["w"] <= WIDTH, p     # fits the page: no horizontal scrolling
        assert p["title"] and p["texts"] > 5, p              # titled, with axis and tick text rendered
    heat_images = next(p["images"] for p in facts["plots"] if p["id"] == "temperature")
    # the heatmap raster (and the colour bar's) laid out with a real size
    assert heat_images and all(b["w"] > 0 and b["h"] > 0 for b in heat_images)
    assert max(b["w"] for b in heat_images) > 300 and max(b["h"] for b in heat_images) > 100

    shot = tmp_path / "report.png"
    shot.write_bytes(full)
    img = Image.open(io.BytesIO(full))
    assert img.size == (WIDTH, facts["height"]) and facts["height"] > 2000
    # The heatmap's embedded PNG must paint: an inferno ramp has many colours, a failed image only a few.
    heat_img = Image.open(io.BytesIO(heat)).convert("RGB")
    assert len(heat_img.getcolors(maxcolors=1 << 16) or range(1 << 16)) > 50
    keep = os.environ.get("FLEETWATCH_REPORT_SCREENSHOT")
    if keep:
        shutil.copyfile(shot, keep)
