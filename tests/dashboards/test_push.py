"""`fleetwatch dashboards push` against a fake Grafana serving a recorded HTTP API exchange."""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from dashboards.export import build_all
from dashboards.push import push
from fleetwatch.cli import main

EXCHANGE = json.loads((Path(__file__).parents[1] / "fixtures" / "grafana" / "exchange.json").read_text())
TOKEN = "glsa_test_token"


class FakeGrafana:
    """Answers with the recorded responses; remembers saved dashboards so a second push sees them."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str], Any]] = []
        self.folders = copy.deepcopy(EXCHANGE["GET /api/folders"]["body"])
        self.saved: dict[str, dict[str, Any]] = {}

    def answer(self, method: str, path: str, headers: dict[str, str], body: Any) -> tuple[int, Any]:
        self.requests.append((method, path, headers, body))
        if headers.get("Authorization") != f"Bearer {TOKEN}":
            return EXCHANGE["unauthorized"]["status"], EXCHANGE["unauthorized"]["body"]
        if method == "GET" and path == "/api/folders":
            return 200, self.folders
        if method == "POST" and path == "/api/folders":
            rec = EXCHANGE["POST /api/folders"]
            self.folders.append({"id": 7, "uid": body["uid"], "title": body["title"]})
            return rec["status"], {**rec["body"], "uid": body["uid"], "title": body["title"]}
        if method == "GET" and path.startswith("/api/dashboards/uid/"):
            uid = path.rsplit("/", 1)[1]
            if uid not in self.saved:
                rec = EXCHANGE["GET /api/dashboards/uid/missing"]
                return rec["status"], rec["body"]
            rec = copy.deepcopy(EXCHANGE["GET /api/dashboards/uid/found"]["body"])
            rec["dashboard"] = self.saved[uid]
            return 200, rec
        if method == "POST" and path == "/api/dashboards/db":
            d = body["dashboard"]
            version = self.saved.get(d["uid"], {}).get("version", 0) + 1
            self.saved[d["uid"]] = {**d, "id": 12, "version": version}    # Grafana stores its own id/version
            rec = EXCHANGE["POST /api/dashboards/db"]
            return rec["status"], {**rec["body"], "uid": d["uid"], "version": version}
        return 404, {"message": "not found"}


@pytest.fixture
def grafana() -> Iterator[tuple[str, FakeGrafana]]:
    fake = FakeGrafana()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            n = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(n)) if n else None
            status, out = fake.answer(self.command, self.path.split("?", 1)[0], dict(self.headers), body)
            data = json.dumps(out).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = _serve

        def log_message(self, *args: Any) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", fake
    srv.shutdown()
    srv.server_close()


def test_push_creates_then_reports_unchanged_then_updated(grafana: tuple[str, FakeGrafana]) -> None:
    url, fake = grafana
    models = build_all("native")
    first = push(url, TOKEN, models)
    assert [(r.uid, r.change) for r in first] == [("fleetwatch", "created")] + [(m["uid"], "created")
                                                                                for m in models]
    creates = [r for r in fake.requests if r[:2] == ("POST", "/api/folders")]
    assert creates and creates[0][3] == {"title": "fleetwatch", "uid": "fleetwatch"}
    saves = [r[3] for r in fake.requests if r[:2] == ("POST", "/api/dashboards/db")]
    assert len(saves) == len(models)
    for payload, model in zip(saves, models, strict=True):
        assert payload["overwrite"] is True and payload["folderUid"] == "fleetwatch"
        assert payload["dashboard"]["uid"] == model["uid"] and payload["dashboard"]["id"] is None
        assert payload["dashboard"]["panels"] == model["panels"]
    assert all(h.get("Authorization") == f"Bearer {TOKEN}" for _, _, h, _ in fake.requests)

    fake.requests.clear()
    second = push(url, TOKEN, models)
    assert {r.change for r in second} == {"unchanged"}
    assert not [r for r in fake.requests if r[0] == "POST"]          # nothing re-uploaded

    changed = copy.deepcopy(models)
    changed[2]["title"] += " (edited)"
    third = push(url, TOKEN, changed)
    assert [r.change for r in third].count("updated") == 1 and third[3].change == "updated"
    assert fake.saved[changed[2]["uid"]]["version"] == 2


def test_cli_push_reports_and_fails_on_bad_token(grafana: tuple[str, FakeGrafana],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    url, _ = grafana
    assert main(["dashboards", "push", "--url", url, "--token", TOKEN]) == 0
    out = capsys.readouterr().out
    assert "created   fleetwatch-overview" in out and out.count("created") == 8
    assert main(["dashboards", "push", "--url", url, "--token", "wrong"]) == 1
    assert "401" in capsys.readouterr().err
