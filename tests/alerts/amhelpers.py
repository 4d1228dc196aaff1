"""A real Alertmanager (Debian's prometheus-alertmanager) on a loopback port, stoppable and restartable."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from tests.conftest import require_tool
from tests.test_e2e_prometheus import free_port, http_get, stop, wait_until

AM_CONFIG = """route:
  receiver: default
  group_wait: 1h
receivers:
  - name: default
"""


class RealAlertmanager:
    """One Alertmanager process; stop() and start() keep its port and storage (a restart, not a new one)."""

    def __init__(self, tmp: Path, config: str = AM_CONFIG) -> None:
        self.binary = require_tool("prometheus-alertmanager")
        self.dir = tmp / "alertmanager"
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "am.yml").write_text(config)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> RealAlertmanager:
        self.proc = subprocess.Popen(
            [self.binary, f"--config.file={self.dir / 'am.yml'}", f"--storage.path={self.dir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--cluster.listen-address="],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wait_until(lambda: http_get(self.url + "/-/ready")[0] == 200, 60, "alertmanager ready", self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None

    def alerts(self, **filters: str) -> list[dict[str, Any]]:
        """GET /api/v2/alerts (active ones, as Alertmanager lists them)."""
        q = "&".join(f"filter={k}%3D%22{v}%22" for k, v in filters.items())
        status, body = http_get(f"{self.url}/api/v2/alerts" + (f"?{q}" if q else ""))
        assert status == 200, body
        return list(json.loads(body))
