"""Tests for the Redfish node-power source against a real local aiohttp server shaped like real BMCs."""

from __future__ import annotations

import asyncio
import copy
import shutil
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import BasicAuth, web

from collector.source import REGISTRY, NoDataError, SourceContext, SourceError
from collector.sources import redfish
from collector.sources.redfish import (
    RedfishSource,
    basic_auth,
    chassis_members,
    create,
    environment_reading,
    power_control_reading,
    power_links,
)

NODE = "gpu-node-01"
TS = 1_767_225_600 * 10**9
USER, PASSWORD = "fleetwatch", "s3cret"
CHASSIS = "/redfish/v1/Chassis"

# An older BMC (iDRAC 9 style): one chassis, only the deprecated Power resource.
OLD_BMC: dict[str, Any] = {
    CHASSIS: {
        "@odata.id": CHASSIS, "@odata.type": "#ChassisCollection.ChassisCollection",
        "Members": [{"@odata.id": f"{CHASSIS}/System.Embedded.1"}], "Members@odata.count": 1,
        "Name": "Chassis Collection",
    },
    f"{CHASSIS}/System.Embedded.1": {
        "@odata.id": f"{CHASSIS}/System.Embedded.1", "@odata.type": "#Chassis.v1_14_0.Chassis",
        "Id": "System.Embedded.1", "ChassisType": "RackMount", "Manufacturer": "Dell Inc.",
        "Power": {"@odata.id": f"{CHASSIS}/System.Embedded.1/Power"},
        "Thermal": {"@odata.id": f"{CHASSIS}/System.Embedded.1/Thermal"},
        "PowerState": "On", "Status": {"Health": "OK", "State": "Enabled"},
    },
    f"{CHASSIS}/System.Embedded.1/Power": {
        "@odata.id": f"{CHASSIS}/System.Embedded.1/Power", "@odata.type": "#Power.v1_6_0.Power",
        "Id": "Power", "Name": "Power",
        "PowerControl": [{
            "@odata.id": f"{CHASSIS}/System.Embedded.1/Power#/PowerControl/0", "MemberId": "PowerControl",
            "Name": "System Power Control", "PowerAllocatedWatts": 1834, "PowerCapacityWatts": 1834,
            "PowerConsumedWatts": 427,
            "PowerMetrics": {"AverageConsumedWatts": 419, "IntervalInMin": 1, "MaxConsumedWatts": 612,
                             "MinConsumedWatts": 401},
        }],
        "PowerSupplies": [{"MemberId": "PSU.Slot.1", "PowerInputWatts": 218, "LineInputVoltage": 230}],
    },
}

# A newer OpenBMC (HGX/DGX style): a first chassis without power data, then one with EnvironmentMetrics
# and the deprecated Power resource side by side (the two readings differ to show which one wins).
NEW_BMC: dict[str, Any] = {
    CHASSIS: {
        "@odata.id": CHASSIS, "@odata.type": "#ChassisCollection.ChassisCollection",
        "Members": [{"@odata.id": f"{CHASSIS}/BMC_0"}, {"@odata.id": f"{CHASSIS}/DGX"}],
        "Members@odata.count": 2,
    },
    f"{CHASSIS}/BMC_0": {"@odata.id": f"{CHASSIS}/BMC_0", "@odata.type": "#Chassis.v1_21_0.Chassis",
                         "Id": "BMC_0", "ChassisType": "Module"},
    f"{CHASSIS}/DGX": {
        "@odata.id": f"{CHASSIS}/DGX", "@odata.type": "#Chassis.v1_21_0.Chassis", "Id": "DGX",
        "ChassisType": "RackMount",
        "EnvironmentMetrics": {"@odata.id": f"{CHASSIS}/DGX/EnvironmentMetrics"},
        "Power": {"@odata.id": f"{CHASSIS}/DGX/Power"},
        "Sensors": {"@odata.id": f"{CHASSIS}/DGX/Sensors"},
    },
    f"{CHASSIS}/DGX/EnvironmentMetrics": {
        "@odata.id": f"{CHASSIS}/DGX/EnvironmentMetrics",
        "@odata.type": "#EnvironmentMetrics.v1_3_0.EnvironmentMetrics", "Id": "EnvironmentMetrics",
        "Name": "Chassis Environment Metrics",
        "PowerWatts": {"DataSourceUri": f"{CHASSIS}/DGX/Sensors/total_power", "Reading": 6120.5},
    },
    f"{CHASSIS}/DGX/Power": {
        "@odata.id": f"{CHASSIS}/DGX/Power", "@odata.type": "#Power.v1_7_1.Power",
        "PowerControl": [{"MemberId": "0", "Name": "Chassis Power Control", "PowerConsumedWatts": 6100}],
    },
}


class FakeBmc:
    """A Redfish service on 127.0.0.1 serving `docs`, with basic auth and per-path faults."""

    def __init__(self, docs: dict[str, Any]) -> None:
        self.docs = copy.deepcopy(docs)
        self.raw: dict[str, bytes] = {}        # path → body served verbatim (malformed payloads)
        self.status: dict[str, int] = {}       # path → error status
        self.hang: set[str] = set()            # paths that answer only once `release` is set
        self.release = asyncio.Event()
        self.requests: list[str] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Serve one GET like a BMC: auth first, then the resource."""
        path = request.path
        self.requests.append(path)
        try:
            auth = BasicAuth.decode(request.headers.get("Authorization", ""))
        except ValueError:
            auth = None
        if auth is None or (auth.login, auth.password) != (USER, PASSWORD):
            return web.json_response({"error": {"code": "Base.1.8.NoValidSession"}}, status=401,
                                     headers={"WWW-Authenticate": 'Basic realm="RedfishService"'})
        if path in self.hang:
            await self.release.wait()
        if path in self.status:
            return web.json_response({"error": {"code": "Base.1.8.InternalError"}}, status=self.status[path])
        if path in self.raw:
            return web.Response(body=self.raw[path], content_type="application/json")
        if path not in self.docs:
            return web.json_response({"error": {"code": "Base.1.8.ResourceMissingAtURI"}}, status=404)
        return web.json_response(self.docs[path], headers={"OData-Version": "4.0"})


async def serve(docs: dict[str, Any], ssl_context: ssl.SSLContext | None = None
                ) -> tuple[FakeBmc, web.AppRunner]:
    """Start a FakeBmc on an ephemeral port."""
    bmc = FakeBmc(docs)
    app = web.Application()
    app.router.add_get("/{tail:.*}", bmc.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    port = runner.addresses[0][1]
    bmc.url = f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}"
    return bmc, runner


async def stop(bmc: FakeBmc, runner: web.AppRunner) -> None:
    """Let hanging handlers finish and stop the server."""
    bmc.release.set()
    await runner.cleanup()


@pytest.fixture
async def old_bmc() -> AsyncIterator[FakeBmc]:
    """A BMC with only the deprecated Power resource."""
    bmc, runner = await serve(OLD_BMC)
    yield bmc
    await stop(bmc, runner)


@pytest.fixture
async def new_bmc() -> AsyncIterator[FakeBmc]:
    """A BMC with EnvironmentMetrics."""
    bmc, runner = await serve(NEW_BMC)
    yield bmc
    await stop(bmc, runner)


def ctx() -> SourceContext:
    """The node's context."""
    return SourceContext(node=NODE)


async def read_once(url: str, **kwargs: Any) -> float:
    """One update through a fresh source; returns the watts."""
    src = RedfishSource(ctx(), url, **{"username": USER, "password": PASSWORD, **kwargs})
    try:
        batch = await src.update(TS)
    finally:
        await src.close()
    return batch.value[0]


async def test_old_bmc_power_control(old_bmc: FakeBmc) -> None:
    src = RedfishSource(ctx(), old_bmc.url, USER, PASSWORD)
    try:
        first = await src.update(TS)
        session = src._session
        old_bmc.docs[f"{CHASSIS}/System.Embedded.1/Power"]["PowerControl"][0]["PowerConsumedWatts"] = 433
        old_bmc.requests.clear()
        second = await src.update(TS + 10**10)
        assert src._session is session  # one ClientSession for the source's life
    finally:
        await src.close()
    assert src._session is None
    assert first.rows()[0][0] == "fleetwatch_node_power_watts" and first.value == [427.0]
    entity = first.entity[0]
    assert (entity.kind, entity.id, entity.labels) == ("node", NODE, (NODE,))
    # The chosen resource is remembered: steady state costs one GET.
    assert second.value == [433.0] and old_bmc.requests == [f"{CHASSIS}/System.Embedded.1/Power"]


async def test_new_bmc_prefers_environment_metrics(new_bmc: FakeBmc) -> None:
    assert await read_once(new_bmc.url) == 6120.5
    assert f"{CHASSIS}/BMC_0" in new_bmc.requests  # looked at, skipped: no power data
    assert f"{CHASSIS}/DGX/Power" not in new_bmc.requests


async def test_environment_metrics_without_power_falls_back_to_power(new_bmc: FakeBmc) -> None:
    del new_bmc.docs[f"{CHASSIS}/DGX/EnvironmentMetrics"]["PowerWatts"]
    assert await read_once(new_bmc.url) == 6100.0


async def test_configured_chassis_skips_discovery(new_bmc: FakeBmc) -> None:
    assert await read_once(new_bmc.url, chassis="DGX") == 6120.5
    assert CHASSIS not in new_bmc.requests and f"{CHASSIS}/BMC_0" not in new_bmc.requests


async def test_credentials_from_environment(old_bmc: FakeBmc, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(redfish.ENV_USERNAME, USER)
    monkeypatch.setenv(redfish.ENV_PASSWORD, PASSWORD)
    src = RedfishSource(ctx(), old_bmc.url)
    try:
        assert (await src.update(TS)).value == [427.0]
    finally:
        await src.close()


@pytest.mark.parametrize("setup, reason", [
    (lambda bmc: setattr(bmc, "docs", {}), "http_404"),
    (lambda bmc: bmc.status.update({CHASSIS: 401}), "auth"),
    (lambda bmc: bmc.status.update({CHASSIS: 403}), "auth"),
    (lambda bmc: bmc.status.update({CHASSIS: 503}), "http_503"),
    (lambda bmc: bmc.status.update({f"{CHASSIS}/System.Embedded.1/Power": 500}), "http_500"),
], ids=["no-redfish", "401", "403", "503", "power-500"])
async def test_http_errors_map_to_reasons(old_bmc: FakeBmc, setup: Callable[[FakeBmc], object],
                                          reason: str) -> None:
    setup(old_bmc)
    with pytest.raises(SourceError) as info:
        await read_once(old_bmc.url)
    assert info.value.reason == reason


async def test_wrong_password_is_auth(old_bmc: FakeBmc) -> None:
    with pytest.raises(SourceError, match="username and password") as info:
        await read_once(old_bmc.url, password="wrong")
    assert info.value.reason == "auth"


POWER = f"{CHASSIS}/System.Embedded.1/Power"


@pytest.mark.parametrize("path, body, field", [
    (POWER, b"<html>Login</html>", "did not return JSON"),
    (POWER, b"[1, 2]", "not an object"),
    (POWER, b'{"PowerControl": [{"Name": "System Power Control"}]}', "PowerControl[0].PowerConsumedWatts"),
    (POWER, b'{"PowerControl": [{"PowerConsumedWatts": "427 W"}]}', "PowerControl[0].PowerConsumedWatts"),
    (POWER, b'{"Voltages": []}', "PowerControl"),
    (CHASSIS, b'{"Name": "Chassis Collection"}', "Members"),
], ids=["html", "array", "no-consumed-watts", "string-watts", "no-power-control", "no-members"])
async def test_malformed_bodies_are_bad_response(old_bmc: FakeBmc, path: str, body: bytes, field: str) -> None:
    old_bmc.raw[path] = body
    with pytest.raises(SourceError) as info:
        await read_once(old_bmc.url)
    assert info.value.reason == "bad_response" and field in str(info.value)


async def test_bad_environment_reading_names_the_field(new_bmc: FakeBmc) -> None:
    new_bmc.raw[f"{CHASSIS}/DGX/EnvironmentMetrics"] = b'{"PowerWatts": {"Reading": "n/a"}}'
    new_bmc.status[f"{CHASSIS}/DGX/Power"] = 404
    with pytest.raises(SourceError, match=r"PowerWatts\.Reading") as info:
        await read_once(new_bmc.url)
    assert info.value.reason == "bad_response"


async def test_null_reading_is_no_data(old_bmc: FakeBmc) -> None:
    old_bmc.docs[POWER]["PowerControl"][0]["PowerConsumedWatts"] = None  # e.g. the host is powered off
    with pytest.raises(NoDataError, match="power reading"):
        await read_once(old_bmc.url)


async def test_error_on_remembered_resource_triggers_rediscovery(old_bmc: FakeBmc) -> None:
    src = RedfishSource(ctx(), old_bmc.url, USER, PASSWORD)
    try:
        await src.update(TS)
        old_bmc.status[POWER] = 500
        with pytest.raises(SourceError, match="500"):
            await src.update(TS + 1)
        del old_bmc.status[POWER]
        old_bmc.requests.clear()
        assert (await src.update(TS + 2)).value == [427.0]
    finally:
        await src.close()
    assert old_bmc.requests[0] == CHASSIS


async def test_slow_bmc_times_out(old_bmc: FakeBmc) -> None:
    old_bmc.hang.add(POWER)
    with pytest.raises(SourceError) as info:
        await read_once(old_bmc.url, timeout=0.2)
    assert info.value.reason == "timeout"


async def test_connection_refused() -> None:
    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(SourceError) as info:
        await read_once(f"http://127.0.0.1:{port}")
    assert info.value.reason == "connection"


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, made with the openssl CLI."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("the openssl CLI is needed to make a self-signed certificate (apt-get install openssl)")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    return cert, key


@pytest.mark.parametrize("verify_tls", [True, False], ids=["verify-on", "verify-off"])
async def test_self_signed_certificate_needs_verify_off(self_signed: tuple[Path, Path], verify_tls: bool) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*self_signed)
    bmc, runner = await serve(OLD_BMC, ssl_context=context)
    try:
        assert bmc.url.startswith("https://")
        if verify_tls:
            with pytest.raises(SourceError, match="verify_tls") as info:
                await read_once(bmc.url)
            assert info.value.reason == "tls" and bmc.requests == []
        else:
            assert await read_once(bmc.url, verify_tls=False) == 427.0
    finally:
        await stop(bmc, runner)


def test_verify_tls_is_on_by_default() -> None:
    assert RedfishSource(ctx(), "https://10.0.0.5").verify_tls is True


def test_basic_auth_header_matches_rfc_7617_example() -> None:
    assert basic_auth("Aladdin", "open sesame") == "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="


def test_parsers_on_literal_documents() -> None:
    assert chassis_members(OLD_BMC[CHASSIS]) == [f"{CHASSIS}/System.Embedded.1"]
    assert power_links(NEW_BMC[f"{CHASSIS}/DGX"]) == [
        ("EnvironmentMetrics", f"{CHASSIS}/DGX/EnvironmentMetrics"), ("Power", f"{CHASSIS}/DGX/Power")]
    assert power_links(NEW_BMC[f"{CHASSIS}/BMC_0"]) == []
    assert environment_reading(NEW_BMC[f"{CHASSIS}/DGX/EnvironmentMetrics"]) == 6120.5
    assert environment_reading({"PowerWatts": {"Reading": None}}) is None
    assert power_control_reading(OLD_BMC[f"{CHASSIS}/System.Embedded.1/Power"]) == 427.0
    with pytest.raises(SourceError, match=r"Members\[0\]\.@odata\.id"):
        chassis_members({"Members": [{"Id": "1"}]})
    with pytest.raises(SourceError, match="PowerConsumedWatts"):
        power_control_reading({"PowerControl": [{"PowerConsumedWatts": True}]})


def test_registered_disabled_by_default() -> None:
    reg = REGISTRY["redfish"]
    assert reg.default_enabled is False and reg.factory is redfish.create
    assert {"url", "username", "password", "chassis", "verify_tls"} <= set(reg.options)


def test_factory_builds_a_source() -> None:
    src = create(ctx(), {"url": "https://bmc-01.mgmt:8443", "username": "u", "password": "p",
                         "chassis": "1", "verify_tls": False, "timeout": 2})
    assert (src.base.host, src.base.port, src.username, src.chassis) == ("bmc-01.mgmt", 8443, "u", "1")
    assert src.verify_tls is False and src.request_timeout == 2.0 and src.timeout > src.request_timeout


@pytest.mark.parametrize("options, key", [
    ({}, "url"),
    ({"url": "ftp://bmc"}, "url"),
    ({"url": "https://bmc", "user": "x"}, "user"),
    ({"url": "https://bmc", "username": 7}, "username"),
    ({"url": "https://bmc", "verify_tls": "no"}, "verify_tls"),
    ({"url": "https://bmc", "timeout": 0}, "timeout"),
], ids=["no-url", "bad-scheme", "unknown-key", "username-not-str", "verify-not-bool", "timeout-zero"])
def test_factory_rejects_bad_options(options: dict[str, Any], key: str) -> None:
    with pytest.raises(ValueError, match=key):
        create(ctx(), options)
