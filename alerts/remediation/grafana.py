"""Grafana annotations for remediation decisions (optional): POST /api/annotations, tagged fleetwatch-remediation."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

AUDIT_TAG = "fleetwatch-remediation"     # dashboards/alerts.py shows annotations with this tag


@dataclass
class GrafanaAnnotator:
    """Posts one annotation per remediation decision; best effort (the audit log is the record)."""

    url: str
    token: str
    timeout_s: float = 5.0
    _session: aiohttp.ClientSession | None = field(default=None, repr=False)

    async def __call__(self, text: str, tags: list[str], base: dict[str, Any]) -> None:
        """Annotate now with `text` and tags [fleetwatch-remediation, *tags, node]."""
        if self._session is None:
            self._session = aiohttp.ClientSession()
        all_tags = [AUDIT_TAG, *tags] + ([f"node:{base['node']}"] if base.get("node") else [])
        doc = {"time": int(time.time() * 1000), "tags": all_tags, "text": text}
        async with self._session.post(f"{self.url.rstrip('/')}/api/annotations", json=doc,
                                      headers={"Authorization": f"Bearer {self.token}"},
                                      timeout=aiohttp.ClientTimeout(total=self.timeout_s)) as resp:
            if resp.status >= 300:
                raise RuntimeError(f"Grafana answered HTTP {resp.status}: {(await resp.text())[:200]}")

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None
