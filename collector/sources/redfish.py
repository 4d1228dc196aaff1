"""Node power draw from the BMC over Redfish (DMTF DSP0266), with HTTP basic auth.

The chassis is discovered from /redfish/v1/Chassis: the first member whose power resources give a
reading, unless one is configured. The newer EnvironmentMetrics resource (PowerWatts.Reading, Redfish
2020.4+) is preferred; the deprecated Power resource (PowerControl[0].PowerConsumedWatts) is the fallback
that older BMCs (iDRAC 8/9, iLO 5, most Supermicro) still serve. The chosen resource is remembered, so a
steady-state update costs one GET; any error forgets it and the next update discovers again.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from typing import Any

import aiohttp
from yarl import URL

from collector.batch import Batch, Entity
from collector.source import NoDataError, Source, SourceContext, SourceError, register_source

METRIC = "fleetwatch_node_power_watts"
CHASSIS_COLLECTION = "/redfish/v1/Chassis"
ENV_USERNAME = "FLEETWATCH_REDFISH_USERNAME"
ENV_PASSWORD = "FLEETWATCH_REDFISH_PASSWORD"
OPTIONS = ("url", "username", "password", "chassis", "verify_tls", "timeout")
ENVIRONMENT, POWER = "EnvironmentMetrics", "Power"
# Reasons that say the BMC as a whole is unusable: discovery stops at once instead of trying other chassis.
_FATAL = frozenset({"auth", "timeout", "tls", "connection"})


def basic_auth(username: str, password: str) -> str:
    """An HTTP Basic Authorization header value (RFC 7617, UTF-8)."""
    # Built by hand: aiohttp 3.12+ deprecates BasicAuth/auth=, and its replacement is missing from 3.9.
    # aiohttp still drops the Authorization header on a redirect to another origin.
    token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    return f"Basic {token}"


def _bad(field: str, problem: str) -> SourceError:
    return SourceError("bad_response", f"redfish: field {field!r} {problem}")


def _number(value: Any, field: str) -> float | None:
    """A reading as float; None for null (no reading now), bad_response for anything not a number."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(field, f"is not a number: {value!r}")
    return float(value)


def chassis_members(doc: dict[str, Any]) -> list[str]:
    """The chassis paths listed in a ChassisCollection's Members."""
    members = doc.get("Members")
    if not isinstance(members, list):
        raise _bad("Members", "is missing or not a list in the chassis collection")
    paths = []
    for i, member in enumerate(members):
        path = member.get("@odata.id") if isinstance(member, dict) else None
        if not isinstance(path, str):
            raise _bad(f"Members[{i}].@odata.id", "is missing or not a string")
        paths.append(path)
    return paths


def power_links(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """The (kind, path) power resources a Chassis links to, EnvironmentMetrics first."""
    links = []
    for kind in (ENVIRONMENT, POWER):
        link = doc.get(kind)
        path = link.get("@odata.id") if isinstance(link, dict) else None
        if isinstance(path, str):
            links.append((kind, path))
    return links


def environment_reading(doc: dict[str, Any]) -> float | None:
    """PowerWatts.Reading of an EnvironmentMetrics resource; None when absent or null."""
    power = doc.get("PowerWatts")
    if power is None:
        return None
    if not isinstance(power, dict):
        raise _bad("PowerWatts", "is not an object")
    return _number(power.get("Reading"), "PowerWatts.Reading")


def power_control_reading(doc: dict[str, Any]) -> float | None:
    """PowerControl[0].PowerConsumedWatts of a Power resource; None when the BMC reports null."""
    control = doc.get("PowerControl")
    if not isinstance(control, list) or not control:
        raise _bad("PowerControl", "is missing or empty")
    first = control[0]
    if not isinstance(first, dict) or "PowerConsumedWatts" not in first:
        raise _bad("PowerControl[0].PowerConsumedWatts", "is missing")
    return _number(first["PowerConsumedWatts"], "PowerControl[0].PowerConsumedWatts")


def reading(kind: str, doc: dict[str, Any]) -> float | None:
    """The watts in a resource of the given kind (EnvironmentMetrics or Power)."""
    return environment_reading(doc) if kind == ENVIRONMENT else power_control_reading(doc)


class RedfishSource(Source):
    """Reads the node's power draw from its BMC."""

    name = "redfish"
    interval = 10.0  # BMCs refresh power sensors every few seconds and are slow to answer; spare them

    def __init__(self, ctx: SourceContext, url: str, username: str | None = None, password: str | None = None,
                 chassis: str | None = None, verify_tls: bool = True, timeout: float = 5) -> None:
        base = URL(url)
        if base.scheme not in ("http", "https") or not base.host:
            raise ValueError(f"redfish: url must be http(s)://host[:port], got {url!r}")
        if timeout <= 0:
            raise ValueError(f"redfish: timeout must be > 0, got {timeout!r}")
        self.ctx = ctx
        self.base = base
        self.username = username if username is not None else os.environ.get(ENV_USERNAME)
        self.password = password if password is not None else os.environ.get(ENV_PASSWORD)
        self.chassis = chassis
        self.verify_tls = verify_tls
        self.request_timeout = float(timeout)
        # The runner's deadline sits above ours so that our own, named "timeout" error is what it sees.
        self.timeout = self.request_timeout + 1.0
        self.entity = Entity(kind="node", node=ctx.node, id=ctx.node, labels=(ctx.node,))
        self._session: aiohttp.ClientSession | None = None
        self._target: tuple[str, str] | None = None  # (kind, path) that gave the last reading

    async def start(self) -> None:
        """Open the one ClientSession every request reuses."""
        if self._session is not None:
            return
        headers = {"Accept": "application/json", "OData-Version": "4.0"}
        if self.username:
            headers["Authorization"] = basic_auth(self.username, self.password or "")
        # ssl=False turns certificate verification off (BMCs commonly ship self-signed certificates).
        connector = aiohttp.TCPConnector(ssl=bool(self.verify_tls), limit=2)
        self._session = aiohttp.ClientSession(
            connector=connector, headers=headers, timeout=aiohttp.ClientTimeout(total=self.request_timeout))

    async def close(self) -> None:
        """Close the session."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def update(self, ts_ns: int) -> Batch:
        """Read the node's power draw in watts."""
        if self._session is None:
            await self.start()
        try:
            async with asyncio.timeout(self.request_timeout):
                watts = await self._read()
        except TimeoutError as err:
            self._target = None
            raise SourceError("timeout", f"redfish: {self.base} gave no reading within "
                                         f"{self.request_timeout:g} s") from err
        batch = Batch(source=self.name, ts_ns=ts_ns)
        batch.add(METRIC, self.entity, watts)
        return batch

    async def _read(self) -> float:
        if self._target is None:
            self._target, watts = await self._discover()
            return watts
        kind, path = self._target
        try:
            watts = reading(kind, await self._get(path))
        except SourceError:
            self._target = None
            raise
        if watts is None:
            raise NoDataError(f"redfish: {path} reports no power reading (null)")
        return watts

    async def _discover(self) -> tuple[tuple[str, str], float]:
        if self.chassis:
            candidates = [self.chassis if self.chassis.startswith("/") else f"{CHASSIS_COLLECTION}/{self.chassis}"]
        else:
            candidates = chassis_members(await self._get(CHASSIS_COLLECTION))
        first_error: SourceError | None = None
        for chassis in candidates:
            try:
                links = power_links(await self._get(chassis))
            except SourceError as err:
                if err.reason in _FATAL:
                    raise
                first_error = first_error or err
                continue
            for kind, path in links:
                try:
                    watts = reading(kind, await self._get(path))
                except SourceError as err:
                    if err.reason in _FATAL:
                        raise
                    first_error = first_error or err  # e.g. a 404 or malformed body: try the next one
                    continue
                if watts is not None:
                    return (kind, path), watts
        if first_error is not None:
            raise first_error
        raise NoDataError(f"redfish: no chassis among {candidates} reports a power reading")

    async def _get(self, path: str) -> dict[str, Any]:
        session = self._session
        if session is None:
            raise RuntimeError("redfish: the source was closed")
        url = self.base.join(URL(path))
        try:
            async with session.get(url) as resp:
                if resp.status in (401, 403):
                    raise SourceError("auth", f"redfish: {url} answered {resp.status} {resp.reason}: check "
                                              f"the username and password ({ENV_USERNAME}/{ENV_PASSWORD})")
                if not 200 <= resp.status < 300:
                    raise SourceError(f"http_{resp.status}", f"redfish: {url} answered {resp.status} {resp.reason}")
                body = await resp.read()
        except aiohttp.ClientSSLError as err:
            raise SourceError("tls", f"redfish: TLS with {self.base} failed ({err}); for a self-signed BMC "
                                     "certificate set verify_tls: false") from err
        except TimeoutError as err:
            raise SourceError("timeout", f"redfish: {url} did not answer within {self.request_timeout:g} s") from err
        except aiohttp.ClientError as err:
            raise SourceError("connection", f"redfish: {url}: {err}") from err
        try:
            doc = json.loads(body)
        except ValueError as err:  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
            raise SourceError("bad_response", f"redfish: {url} did not return JSON: {err}") from err
        if not isinstance(doc, dict):
            raise SourceError("bad_response", f"redfish: {url} returned JSON that is not an object")
        return doc


def create(ctx: SourceContext, options: dict[str, Any]) -> RedfishSource:
    """Build the redfish source from its options (url required; credentials may come from the env)."""
    for key in options:
        if key not in OPTIONS:
            raise ValueError(f"redfish: unknown option {key!r} (known: {', '.join(OPTIONS)})")
    url = options.get("url")
    if not isinstance(url, str) or not url:
        raise ValueError("redfish: option 'url' is required (the BMC's base URL, e.g. https://10.0.0.5)")
    for key in ("username", "password", "chassis"):
        if options.get(key) is not None and not isinstance(options[key], str):
            raise ValueError(f"redfish: option {key!r} must be a string")
    verify_tls = options.get("verify_tls", True)
    if not isinstance(verify_tls, bool):
        raise ValueError(f"redfish: option 'verify_tls' must be true or false, got {verify_tls!r}")
    timeout = options.get("timeout", 5)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise ValueError(f"redfish: option 'timeout' must be a positive number of seconds, got {timeout!r}")
    return RedfishSource(ctx, url, options.get("username"), options.get("password"), options.get("chassis"),
                         verify_tls, timeout)


register_source("redfish", False, create, OPTIONS)
