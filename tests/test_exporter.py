"""The HTTP exporter: endpoints, content negotiation, freshness, web-config TLS and basic auth."""

from __future__ import annotations

import asyncio
import base64
import ssl
import subprocess
from pathlib import Path

import aiohttp
import bcrypt
import pytest

from collector.agent import Agent
from collector.exporter import Exporter, wants_openmetrics
from collector.source import SourceError
from collector.webconfig import WebConfigError, load_web_config
from tests.conftest import StaticSource

PROM_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
               "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")


@pytest.mark.parametrize(("accept", "om"), [
    (PROM_ACCEPT, True), ("text/plain;version=0.0.4", False), ("", False), ("*/*", False),
    ("text/plain;q=0.9,application/openmetrics-text;q=0.5", False),
], ids=["prometheus", "text", "none", "any", "text-preferred"])
def test_content_negotiation(accept: str, om: bool) -> None:
    assert wants_openmetrics(accept) is om


async def _serve(exporter: Exporter) -> str:
    port = await exporter.start("127.0.0.1", 0)
    return f"127.0.0.1:{port}"


async def test_metrics_health_ready_and_failed_source_disappears() -> None:
    good = StaticSource("good", value=321.0)
    bad = StaticSource("bad", fail=SourceError("nvml_library_not_found", "libnvidia-ml.so.1: not found"))
    agent = Agent([good, bad])
    exp = Exporter(agent, names="both")
    addr = await _serve(exp)
    try:
        async with aiohttp.ClientSession() as http:
            r = await http.get(f"http://{addr}/readyz")
            assert r.status == 503                      # nothing collected yet
            for st in agent.states.values():
                await agent.collect_once(st)
            r = await http.get(f"http://{addr}/readyz")
            assert r.status == 200 and "down: bad" in await r.text()
            r = await http.get(f"http://{addr}/healthz")
            assert r.status == 200
            r = await http.get(f"http://{addr}/metrics")
            assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            text = await r.text()
            assert 'fleetwatch_gpu_power_watts{node="good"' in text
            assert 'DCGM_FI_DEV_POWER_USAGE{gpu="0"' in text
            assert 'fleetwatch_source_up{source="bad"} 0' in text
            assert 'fleetwatch_source_errors_total{source="bad",reason="nvml_library_not_found"} 1' in text
            assert 'node="bad"' not in text                 # no stale or zero series for a failed source
            r = await http.get(f"http://{addr}/metrics", headers={"Accept": PROM_ACCEPT})
            assert r.headers["Content-Type"].startswith("application/openmetrics-text")
            assert (await r.text()).endswith("# EOF\n")
    finally:
        await exp.stop()


async def test_scrape_is_not_delayed_by_a_hanging_source() -> None:
    hung = StaticSource("hung", interval=0.05, timeout=0.2, hang=60)
    good = StaticSource("good", interval=0.05)
    agent = Agent([hung, good])
    exp = Exporter(agent)
    addr = await _serve(exp)
    stop = asyncio.Event()
    await agent.start(stop)
    try:
        await asyncio.sleep(0.3)
        async with aiohttp.ClientSession() as http:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            r = await http.get(f"http://{addr}/metrics")
            elapsed = loop.time() - t0
            text = await r.text()
        assert elapsed < 0.5, elapsed
        assert 'node="good"' in text and 'fleetwatch_source_up{source="hung"} 0' in text
    finally:
        stop.set()
        await agent.stop()
        await exp.stop()


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def _write_cert(tmp: Path) -> tuple[Path, Path]:
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


async def test_web_config_tls_and_basic_auth(tmp_path: Path) -> None:
    cert, key = _write_cert(tmp_path)
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    wc_path = tmp_path / "web.yml"
    wc_path.write_text(f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n"
                       f"basic_auth_users:\n  prometheus: '{hashed}'\n")
    agent = Agent([StaticSource("good")])
    await agent.collect_once(agent.states["good"])
    exp = Exporter(agent, web_config=load_web_config(wc_path))
    addr = await _serve(exp)
    ctx = ssl.create_default_context(cafile=str(cert))
    try:
        async with aiohttp.ClientSession() as http:
            r = await http.get(f"https://{addr}/metrics", ssl=ctx)
            assert r.status == 401 and "Basic" in r.headers["WWW-Authenticate"]
            r = await http.get(f"https://{addr}/metrics", ssl=ctx, headers=_basic("prometheus", "nope"))
            assert r.status == 401
            r = await http.get(f"https://{addr}/metrics", ssl=ctx, headers=_basic("prometheus", "s3cret"))
            assert r.status == 200 and "fleetwatch_gpu_power_watts" in await r.text()
            with pytest.raises(aiohttp.ClientConnectorError):
                await http.get(f"https://{addr}/metrics")       # self-signed: default verification fails
    finally:
        await exp.stop()


@pytest.mark.parametrize(("content", "needle"), [
    ("tls_server_config:\n  cert_file: /nonexistent.pem\n  key_file: /nonexistent.key\n", "cert_file"),
    ("basic_auth_users:\n  alice: plaintext\n", "basic_auth_users.alice"),
    ("bogus: 1\n", "unknown key"),
    ("- a\n", "mapping"),
], ids=["missing-cert", "not-bcrypt", "unknown-key", "not-mapping"])
def test_web_config_errors_name_the_key(tmp_path: Path, content: str, needle: str) -> None:
    p = tmp_path / "web.yml"
    p.write_text(content)
    with pytest.raises(WebConfigError, match=needle):
        load_web_config(p)
