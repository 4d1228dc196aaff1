"""The remediation component inside the service: config, token generation, shared port, metrics, CLI."""

from __future__ import annotations

import asyncio
import json
import stat
from pathlib import Path

import aiohttp
import pytest
import yaml

from alerts.remediation.live import RemediationComponent
from fleetwatch.cli import main
from fleetwatch.config import ConfigError, load_config
from fleetwatch.service import build_service, run_service
from tests.alerts.remediation.helpers import alert, command_policy, payload, write_recorder


def _cfg(tmp: Path, **remediation: object) -> object:
    return load_config(None, {"simulate": "1x2", "listen": "127.0.0.1:0", "data_dir": str(tmp / "data"),
                              "record": {"enabled": False}, "remediation": remediation}, environ={})


def _component(svc: object) -> RemediationComponent:
    (comp,) = [c for c in svc.components if c.name == "remediation"]  # type: ignore[attr-defined]
    return comp


def test_disabled_unless_listen_or_enabled(tmp_path: Path) -> None:
    assert not [c for c in build_service(_cfg(tmp_path)).components if c.name == "remediation"]  # type: ignore[arg-type]
    assert not (tmp_path / "data" / "remediation").exists()


async def test_service_generates_token_serves_webhook_and_publishes_metrics(tmp_path: Path) -> None:
    rec = write_recorder(tmp_path)
    (tmp_path / "policy.yml").write_text(yaml.safe_dump(command_policy(rec)))
    cfg = _cfg(tmp_path, listen="127.0.0.1:0", policy_file=str(tmp_path / "policy.yml"), mode="enforce",
               limits={"fleet_nodes": 4, "blast_max_fraction": 0.5})
    svc = build_service(cfg)  # type: ignore[arg-type]
    comp = _component(svc)
    token_path = tmp_path / "data" / "remediation" / "webhook-token"
    assert stat.S_IMODE(token_path.stat().st_mode) == 0o600
    assert any(str(token_path.resolve()) in n and "generated" in n for n in comp.notes())
    stop = asyncio.Event()
    task = asyncio.create_task(run_service(svc, stop, announce=False))
    try:
        for _ in range(100):
            if comp.bound:
                break
            await asyncio.sleep(0.05)
        url = f"http://127.0.0.1:{comp.bound}/alertmanager/webhook"
        token = token_path.read_text().strip()
        async with aiohttp.ClientSession() as s:
            async with s.post(url, json=payload(alert()), headers={"Authorization": f"Bearer {token}"}) as r:
                assert r.status == 200
            async with s.post(url, json=payload(alert())) as r:
                assert r.status == 401
            await comp.remediator.idle()
            await asyncio.sleep(1.2)           # one publish interval
            async with s.get(f"http://127.0.0.1:{svc.exporter.port}/metrics") as r:
                text = await r.text()
        assert 'fleetwatch_remediation_actions_total{node="node-0",action="record",result="ok"} 1' in text
        assert 'fleetwatch_remediation_requests_total{result="unauthorized"} 1' in text
        assert "fleetwatch_remediation_enforcing 1" in text
        assert [c["argv"] for c in map(json.loads, (tmp_path / "calls.jsonl").read_text().splitlines())] == \
            [["node-0", "FleetwatchGpuLost"]]
    finally:
        stop.set()
        await task


async def test_webhook_shares_the_exporters_port_when_told_to(tmp_path: Path) -> None:
    from tests.test_e2e_prometheus import free_port

    port = free_port()
    cfg = load_config(None, {"simulate": "1x1", "listen": f"127.0.0.1:{port}", "data_dir": str(tmp_path),
                             "record": {"enabled": False},
                             "remediation": {"listen": f"0.0.0.0:{port}", "auth_disabled": True}}, environ={})
    svc = build_service(cfg)
    assert _component(svc).shared
    stop = asyncio.Event()
    task = asyncio.create_task(run_service(svc, stop, announce=False))
    try:
        await asyncio.sleep(0.5)
        async with aiohttp.ClientSession() as s:
            async with s.post(f"http://127.0.0.1:{port}/alertmanager/webhook", json=payload(alert())) as r:
                assert r.status == 200
            async with s.get(f"http://127.0.0.1:{port}/metrics") as r:
                assert r.status == 200
    finally:
        stop.set()
        await task


@pytest.mark.parametrize(("remediation", "error"), [
    ({"listen": "127.0.0.1:0", "policy_file": "/nonexistent/policy.yml"}, "cannot read policy file"),
    ({"listen": "127.0.0.1:0", "token_file": "/nonexistent/token"}, "webhook token file /nonexistent/token"),
    ({"listen": "nowhere"}, "expected HOST:PORT"),
    ({"listen": "127.0.0.1:0", "mode": "yolo"}, "remediation.mode"),
    ({"limits": {"blast_max_fraction": 2}}, "remediation.limits.blast_max_fraction"),
], ids=["policy", "token", "listen", "mode", "fraction"])
def test_config_errors_name_the_key(tmp_path: Path, remediation: dict[str, object], error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        build_service(_cfg(tmp_path, **remediation))  # type: ignore[arg-type]


def test_cli_check_policy_and_audit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rec = write_recorder(tmp_path)
    good = tmp_path / "good.yml"
    good.write_text(yaml.safe_dump(command_policy(rec)))
    assert main(["remediation", "check-policy", str(good)]) == 0
    assert "OK: 1 actions, 1 rules" in capsys.readouterr().out
    bad = tmp_path / "bad.yml"
    bad.write_text("actions: {a: {type: command}}\n")
    assert main(["remediation", "check-policy", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fleetwatch: remediation check-policy:") and "command needs argv" in err
    assert main(["remediation", "audit", str(tmp_path / "none")]) == 1
    assert "no audit log" in capsys.readouterr().err
    (tmp_path / "remediation").mkdir()
    (tmp_path / "remediation" / "audit.jsonl").write_text('{"seq":1,"event":"request","result":"accepted"}\n{"se')
    assert main(["remediation", "audit", str(tmp_path), "--format", "json"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["result"] == "accepted" and "1 damaged line" in out.err


def test_run_flags_map_onto_the_config() -> None:
    from fleetwatch.cli import _overrides, build_parser

    args = build_parser().parse_args(["run", "--receiver-listen", "127.0.0.1:9999", "--remediation-mode",
                                      "enforce", "--remediation-policy", "p.yml"])
    assert _overrides(args)["remediation"] == {"listen": "127.0.0.1:9999", "mode": "enforce", "policy_file": "p.yml"}


async def test_decisions_become_grafana_annotations(tmp_path: Path) -> None:
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    from alerts.remediation.grafana import AUDIT_TAG, GrafanaAnnotator
    from tests.alerts.remediation.helpers import Rig, model

    got: list[tuple[str, dict]] = []

    async def annotations(request: web.Request) -> web.Response:
        got.append((request.headers["Authorization"], await request.json()))
        return web.json_response({"id": len(got), "message": "Annotation added"})

    app = web.Application()
    app.router.add_post("/api/annotations", annotations)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        rig = Rig(tmp_path, mode="dry-run")
        annotator = GrafanaAnnotator(str(server.make_url("/")), "sa-token")
        rig.rem.annotate = annotator
        await rig.rem.process(model(alert()), "r1")
        await rig.rem.idle()
        await annotator.close()
    finally:
        await server.close()
    ((auth, doc),) = got
    assert auth == "Bearer sa-token"
    assert doc["tags"] == [AUDIT_TAG, "record", "dry_run", "node:node-0"] and "node-0" in doc["text"]


def test_readme_documents_the_flags_and_every_config_key() -> None:
    from fleetwatch.config import RemediationConfig

    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    for flag in ("--receiver-listen", "--remediation-mode", "--remediation-policy", "check-policy",
                 "remediation audit", "bench.bench_receiver"):
        assert flag in readme, flag
    block = readme[readme.index("remediation:                  # every key"):]
    documented = yaml.safe_load(block[:block.index("```")])["remediation"]
    assert RemediationConfig.model_validate(documented) == RemediationConfig()
    assert set(documented) == set(RemediationConfig.model_fields)
