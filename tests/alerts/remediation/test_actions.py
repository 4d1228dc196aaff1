"""Actions: argv templates, environment, timeouts that kill, the allowlist, and the signed outgoing webhook."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from alerts.remediation.actions import TemplateError, command_env, post_webhook, render_argv, run_command
from alerts.remediation.auth import SIGNATURE_HEADER
from alerts.remediation.policy import PolicyError, build_policy, resolve_executable
from tests.alerts.remediation.helpers import Rig, alert, write_recorder


@pytest.mark.parametrize(("template", "labels", "want"), [
    (["/bin/x", "{node}"], {"node": "n1"}, ["/bin/x", "n1"]),
    (["/bin/x", "nodename={node}"], {"node": "n1"}, ["/bin/x", "nodename=n1"]),
    (["/bin/x", "{a}{b}"], {"a": "$(", "b": ")"}, ["/bin/x", "$()"]),
    (["/bin/x", "{a}"], {"a": "{b}"}, ["/bin/x", "{b}"]),                  # values are never re-expanded
    (["/bin/x", "{a.__class__}"], {"a": "v"}, ["/bin/x", "{a.__class__}"]),  # no attribute lookups
    (["/bin/x", "--reason={a}"], {"a": "-rf"}, ["/bin/x", "--reason=-rf"]),
], ids=["whole", "inside", "two", "no-reexpansion", "no-format-spec", "option-template"])
def test_render_argv(template: list[str], labels: dict[str, str], want: list[str]) -> None:
    assert render_argv(template, labels) == want


@pytest.mark.parametrize(("template", "labels", "error"), [
    (["/bin/x", "{node}"], {}, "needs label 'node'"),
    (["/bin/x", "{a}"], {"a": "--all"}, "would become the option"),
    (["/bin/x", "{a}"], {"a": "x\x00y"}, "NUL"),
], ids=["missing", "option-injection", "nul"])
def test_render_argv_refuses(template: list[str], labels: dict[str, str], error: str) -> None:
    with pytest.raises(TemplateError, match=error):
        render_argv(template, labels)


def test_command_env_passes_labels_but_not_fleetwatchs_own_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETWATCH_REDFISH_PASSWORD", "secret")
    monkeypatch.setenv("PATH", "/usr/bin")
    env = command_env({"node": "n1", "summary": "$(x)"}, {"status": "firing"}, {"K": "v"}, ["PATH"])
    assert env == {"PATH": "/usr/bin", "K": "v", "FLEETWATCH_ALERT_STATUS": "firing",
                   "FLEETWATCH_LABEL_NODE": "n1", "FLEETWATCH_LABEL_SUMMARY": "$(x)"}


async def test_timeout_kills_the_command_and_its_children(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    script = tmp_path / "hang"
    # The command starts a child that would outlive it, then hangs.
    script.write_text(f"#!{sys.executable}\nimport subprocess, sys, time\n"
                      f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
                      f"open({str(pidfile)!r}, 'w').write(str(p.pid))\ntime.sleep(60)\n")
    script.chmod(0o755)
    allow = frozenset({os.path.realpath(script)})
    t0 = time.monotonic()
    out = await run_command([str(script)], {}, 1.5, allow)
    assert out.result == "timeout" and out.transient
    assert time.monotonic() - t0 < 30
    child = int(pidfile.read_text())
    for _ in range(50):
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail(f"child {child} of the timed-out command is still alive")


async def test_timeout_in_the_engine_is_audited(tmp_path: Path) -> None:
    rig = Rig(tmp_path, timeout="1s", retries=0)
    rig.policy_doc["actions"]["record"]["env"]["REC_SLEEP"] = "30"
    rig.restart()
    await rig.send(alert())
    (out,) = rig.audit("outcome")
    assert out["result"] == "timeout" and "killed after 1 s" in out["detail"]


async def test_command_outside_the_allowlist_is_refused_without_running(tmp_path: Path) -> None:
    rec = write_recorder(tmp_path)
    out = await run_command([str(rec)], {"REC_OUT": str(tmp_path / "calls")}, 5, frozenset({"/bin/true"}))
    assert out.result == "refused" and not (tmp_path / "calls").exists()


def test_policy_refuses_executables_outside_the_allowlist(tmp_path: Path) -> None:
    rec = write_recorder(tmp_path)
    doc = {"allowlist": ["/bin/true"], "actions": {"a": {"type": "command", "argv": [str(rec), "{node}"]}},
           "rules": [{"name": "r", "actions": ["a"]}]}
    with pytest.raises(PolicyError, match=r"actions\.a\.argv\[0\].*not in the allowlist"):
        build_policy(doc, "p.yml")
    doc["actions"]["a"]["type"] = "kubectl-cordon"          # presets are checked too (kubectl not allowlisted)
    doc["actions"]["a"].pop("argv")
    with pytest.raises(PolicyError, match="kubectl"):
        build_policy(doc, "p.yml")


@pytest.mark.parametrize(("doc", "error"), [
    ({"actions": {"a": {"type": "command"}}}, "command needs argv"),
    ({"actions": {"a": {"type": "command", "argv": ["{x}"]}}}, "must be a fixed executable"),
    ({"actions": {"a": {"type": "webhook", "url": "ftp://x"}}}, "webhook needs url"),
    ({"actions": {"a": {"type": "shell", "argv": ["/bin/true"]}}}, "actions.a.type"),
    ({"rules": [{"name": "r", "actions": ["nope"]}]}, "unknown action 'nope'"),
    ({"rules": [{"name": "r", "match_re": {"a": "("}, "actions": ["x"]}]}, "invalid regex"),
    ({"allowlist": ["kubectl"]}, "must be an absolute path"),
    ({"surprise": 1}, "unknown key surprise"),
    ([1, 2], "top level must be a mapping"),
], ids=["no-argv", "templated-exe", "bad-url", "bad-type", "unknown-action", "bad-regex", "relative-allow",
        "unknown-key", "not-mapping"])
def test_policy_errors_name_the_field(doc: object, error: str) -> None:
    with pytest.raises(PolicyError, match=error):
        build_policy(doc, "p.yml")


def test_policy_matching_by_labels_xid_action_and_risk() -> None:
    true = resolve_executable("true")
    assert true is not None
    doc = {"allowlist": [true], "actions": {n: {"type": "command", "argv": [true]} for n in "abcd"},
           "rules": [
               {"name": "lost", "match": {"alertname": "FleetwatchGpuLost"}, "actions": ["a"]},
               {"name": "reset", "xid_actions": ["RESET_GPU"], "actions": ["b"], "continue": True},
               {"name": "crit", "xid_severity": ["critical"], "actions": ["c"]},
               {"name": "risk", "min_risk": 0.8, "actions": ["d"]}]}
    pol = build_policy(doc)

    def names(labels: dict[str, str], ann: dict[str, str] | None = None) -> list[str]:
        return [m.action.name for m in pol.match({"alertname": "X", **labels}, ann)]

    assert names({"alertname": "FleetwatchGpuLost"}) == ["a"]
    assert names({"xid": "79"}) == ["c"]                  # XID 79: critical, catalogue action not RESET_GPU
    assert names({"xid": "13"}) == []                     # an application error: warning
    assert names({"xid": "not-a-number"}) == []
    assert names({}, {"risk": "0.93"}) == ["d"] and names({"risk": "0.5"}) == [] and names({"risk": "nan"}) == []


async def _hook_server(statuses: list[int]) -> tuple[TestServer, list[tuple[bytes, dict[str, str]]]]:
    got: list[tuple[bytes, dict[str, str]]] = []

    async def hook(request: web.Request) -> web.Response:
        got.append((await request.read(), dict(request.headers)))
        return web.Response(status=statuses[min(len(got), len(statuses)) - 1])

    app = web.Application()
    app.router.add_post("/hook", hook)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server, got


async def test_webhook_is_signed_over_the_exact_body() -> None:
    server, got = await _hook_server([200])
    try:
        async with aiohttp.ClientSession() as s:
            out = await post_webhook(s, str(server.make_url("/hook")), {"node": "n1", "status": "firing"},
                                     b"k3y", 5)
        assert out.ok
        body, headers = got[0]
        want = "sha256=" + hmac.new(b"k3y", body, hashlib.sha256).hexdigest()
        assert headers[SIGNATURE_HEADER] == want
        assert json.loads(body) == {"node": "n1", "status": "firing"}
    finally:
        await server.close()


async def test_webhook_action_retries_5xx_and_stops_on_4xx(tmp_path: Path) -> None:
    server, got = await _hook_server([503, 502, 200])
    try:
        policy = {"actions": {"hook": {"type": "webhook", "url": str(server.make_url("/hook")), "retries": 3,
                                       "backoff": "20ms"}},
                  "rules": [{"name": "r", "actions": ["hook"]}]}
        rig = Rig(tmp_path, policy=policy)
        await rig.send(alert())
        assert [a["result"] for a in rig.audit("attempt")] == ["failed", "failed", "ok"]
        assert json.loads(got[-1][0])["labels"]["node"] == "node-0"
        await rig.rem.close()
    finally:
        await server.close()
    server, got = await _hook_server([400])
    try:
        policy["actions"]["hook"]["url"] = str(server.make_url("/hook"))
        rig = Rig(tmp_path / "x" if (tmp_path / "x").mkdir() is None else tmp_path, policy=policy)
        await rig.send(alert())
        assert len(got) == 1 and rig.audit("outcome")[0]["result"] == "failed"
        await rig.rem.close()
    finally:
        await server.close()
