"""Deployment files: Prometheus, Alertmanager, systemd, Kubernetes and docker-compose validate offline."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from collector.clock import WallClock
from collector.source import REGISTRY, SourceContext
from fleetwatch.cli import build_parser
from fleetwatch.config import Config, load_config
from fleetwatch.service import _import_sources
from tests.conftest import require_tool

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
K8S_VERSION = "1.30.0"   # oldest Kubernetes release the manifests promise to work with


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=60)


def _k8s_docs() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        out += [(path.name, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return out


def _k8s(kind: str, name: str | None = None) -> dict[str, Any]:
    docs = [d for _, d in _k8s_docs() if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(docs) == 1, f"expected one {kind} {name or ''}, found {len(docs)}"
    return docs[0]


def _check_config(cfg: Config) -> None:
    """Every enabled source block names a registered source and options its factory accepts."""
    _import_sources()
    ctx = SourceContext(node="check", clock=WallClock())
    for name, sc in cfg.collector.items():
        assert name in REGISTRY, f"collector.{name}: no such source (known: {sorted(REGISTRY)})"
        if sc.enabled is not False:
            REGISTRY[name].factory(ctx, sc.options())   # raises ValueError on an unknown or bad option


def _fleetwatch_args(argv: list[str]) -> Any:
    """Parse fleetwatch's arguments with the real parser; a bad flag fails the test instead of exiting."""
    try:
        return build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"fleetwatch rejects the arguments {argv}")


# --- Prometheus -------------------------------------------------------------------------------------------

def test_prometheus_config_passes_promtool() -> None:
    promtool = require_tool("promtool")
    res = subprocess.run([promtool, "check", "config", str(ROOT / "deploy" / "prometheus" / "prometheus.yml")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout + res.stderr


def test_prometheus_config_discovers_agents_and_loads_rules() -> None:
    cfg = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert cfg["rule_files"] == ["rules/*.yml"]
    job = next(j for j in cfg["scrape_configs"] if j["job_name"] == "fleetwatch-agent")
    assert job["honor_labels"] is True   # else the agent's own node label would become exported_node
    files = job["file_sd_configs"][0]["files"]
    assert any((DEPLOY / "prometheus").glob(files[0])), "the file_sd example matches no file"
    assert any(r.get("target_label") == "node" for r in job["relabel_configs"])


def test_recording_rules_pass_promtool() -> None:
    promtool = require_tool("promtool")
    files = sorted((DEPLOY / "prometheus" / "rules").glob("*.yml"))
    assert files
    res = _run(promtool, "check", "rules", *map(str, files))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


def test_prometheusrule_matches_rule_files_and_passes_promtool(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    rule = _k8s("PrometheusRule")
    jsonschema.validate(rule, PROMETHEUSRULE_SCHEMA)
    groups: list[Any] = []
    for f in sorted((DEPLOY / "prometheus" / "rules").glob("*.yml")):
        groups += yaml.safe_load(f.read_text())["groups"]
    assert rule["spec"]["groups"] == groups, "PrometheusRule and deploy/prometheus/rules have drifted apart"
    out = tmp_path / "extracted.yml"
    out.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    res = _run(promtool, "check", "rules", str(out))
    assert res.returncode == 0, res.stdout + res.stderr


# --- Alertmanager -----------------------------------------------------------------------------------------

def test_alertmanager_config_passes_amtool() -> None:
    amtool = require_tool("amtool")
    res = _run(amtool, "check-config", str(DEPLOY / "alertmanager" / "alertmanager.yml"))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


def test_alertmanager_routes_fleetwatch_alerts_to_the_webhook() -> None:
    cfg = yaml.safe_load((DEPLOY / "alertmanager" / "alertmanager.yml").read_text())
    route = cfg["route"]
    assert route["group_by"] == ["alertname", "node"]
    assert {"group_wait", "group_interval", "repeat_interval"} <= route.keys()
    receivers = {r["name"]: r for r in cfg["receivers"]}
    assert route["receiver"] in receivers
    sub = next(r for r in route["routes"] if r["receiver"] == "fleetwatch")
    assert any("Fleetwatch" in m for m in sub["matchers"])
    hook = receivers["fleetwatch"]["webhook_configs"][0]
    assert hook["url"] == "http://fleetwatch:9401/alertmanager/webhook"
    auth = hook["http_config"]["authorization"]
    assert auth["type"] == "Bearer" and auth["credentials_file"] and "credentials" not in auth


# --- systemd ----------------------------------------------------------------------------------------------

def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A systemd unit as {section: {key: [values]}} (keys such as DeviceAllow repeat, so not configparser)."""
    out: dict[str, dict[str, list[str]]] = {}
    section = None
    for lineno, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = out.setdefault(line[1:-1], {})
            continue
        assert section is not None and "=" in line, f"{path.name}:{lineno}: not a unit line: {raw!r}"
        key, _, value = line.partition("=")
        section.setdefault(key.strip(), []).append(value.strip())
    return out


UNITS = {"fleetwatch-agent.service": "agent.yml", "fleetwatch-central.service": "central.yml"}
HARDENING = {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
             "SystemCallFilter": "@system-service", "User": "fleetwatch"}


@pytest.mark.parametrize("unit", sorted(UNITS))
def test_systemd_unit_is_hardened_and_runs_fleetwatch(unit: str) -> None:
    svc = parse_unit(DEPLOY / "systemd" / unit)["Service"]
    for key, want in HARDENING.items():
        assert svc.get(key) == [want], f"{unit}: {key}={svc.get(key)}, want {want}"
    assert set(svc["RestrictAddressFamilies"][0].split()) <= {"AF_INET", "AF_INET6", "AF_UNIX"}
    caps = svc["CapabilityBoundingSet"][0].split()
    assert set(caps) <= {"CAP_SYSLOG"}, f"{unit}: capabilities beyond CAP_SYSLOG: {caps}"
    argv = shlex.split(svc["ExecStart"][0])
    assert Path(argv[0]).name == "fleetwatch" and Path(argv[0]).is_absolute()
    args = _fleetwatch_args(argv[1:])
    assert args.command == "run"
    assert Path(args.config).name == UNITS[unit], "the unit reads a config other than its example"
    cfg = load_config(DEPLOY / "config" / UNITS[unit], environ={})
    # The data directory is the only writable path, so it must be where the config records.
    assert svc["ReadWritePaths"] == [cfg.data_dir]
    assert svc["StateDirectory"] == ["fleetwatch"] and cfg.data_dir == "/var/lib/fleetwatch"


def test_agent_unit_allows_nvidia_devices_only() -> None:
    svc = parse_unit(DEPLOY / "systemd" / "fleetwatch-agent.service")["Service"]
    assert svc["DevicePolicy"] == ["closed"]
    allowed = [v.split()[0] for v in svc["DeviceAllow"]]
    assert "/dev/nvidiactl" in allowed and any(a.startswith("char-nvidia") for a in allowed)
    assert "PrivateDevices" not in svc and "ProtectKernelLogs" not in svc   # both would hide what it reads
    assert svc["SupplementaryGroups"] == ["video"]


def test_systemd_units_pass_systemd_analyze(tmp_path: Path) -> None:
    analyze = require_tool("systemd-analyze")
    # verify insists that ExecStart's binary exists: point it at one that does, arguments unchanged.
    for unit in UNITS:
        text = (DEPLOY / "systemd" / unit).read_text()
        (tmp_path / unit).write_text(text.replace("/usr/local/bin/fleetwatch", "/bin/true"))
    res = _run(analyze, "verify", "--man=no", *(str(tmp_path / u) for u in UNITS))
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stderr.strip() == "", res.stderr   # unknown keys and bad values are only warnings


# --- example configs --------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", sorted((DEPLOY / "config").glob("*.yml")), ids=lambda p: p.name)
def test_example_configs_load(path: Path) -> None:
    cfg = load_config(path, environ={})
    assert cfg.simulate == "off", "a deployed service must never fall back to the simulator"
    _check_config(cfg)


# --- Kubernetes -------------------------------------------------------------------------------------------

def test_core_manifests_match_kubernetes_schemas() -> None:
    crds = {"ServiceMonitor", "PrometheusRule"}
    docs = _k8s_docs()
    assert {d["kind"] for _, d in docs} >= {"DaemonSet", "Deployment", "Service", "ConfigMap"} | crds
    for name, doc in docs:
        if doc["kind"] in crds:
            continue
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as err:
            pytest.fail(f"{name} {doc['kind']}: {err.message} at {list(err.path)}")


def test_servicemonitor_selects_the_agent_service() -> None:
    sm = _k8s("ServiceMonitor")
    jsonschema.validate(sm, SERVICEMONITOR_SCHEMA)
    svc = _k8s("Service", "fleetwatch-agent")
    assert svc["spec"]["clusterIP"] == "None"
    labels = svc["metadata"]["labels"]
    assert sm["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert sm["metadata"]["namespace"] in sm["spec"]["namespaceSelector"]["matchNames"]
    ports = {p["name"] for p in svc["spec"]["ports"]}
    assert all(ep["port"] in ports for ep in sm["spec"]["endpoints"])


def test_agent_daemonset_reads_the_host_and_its_configmap(tmp_path: Path) -> None:
    ds = _k8s("DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True and pod["runtimeClassName"] == "nvidia"
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    (c,) = pod["containers"]
    env = {e["name"]: e for e in c["env"]}
    assert env["NVIDIA_VISIBLE_DEVICES"]["value"] == "all"
    assert env["FLEETWATCH_NODE"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["resources"]["limits"] and c["resources"]["requests"]
    assert {p["containerPort"] for p in c["ports"]} == {9400}
    args = _fleetwatch_args(c["args"])
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    cm = _k8s("ConfigMap", "fleetwatch-agent")
    conf_file = Path(args.config)
    assert str(conf_file.parent) in mounts
    (tmp_path / "agent.yml").write_text(cm["data"][conf_file.name])
    cfg = load_config(tmp_path / "agent.yml", environ={"FLEETWATCH_NODE": "gpu-node-01"})
    _check_config(cfg)
    assert cfg.listen.endswith(":9400") and cfg.node == "gpu-node-01"
    volumes = {v["name"]: v for v in pod["volumes"]}
    for root, host in ((cfg.proc_root, "/proc"), (cfg.sys_root, "/sys")):
        m = mounts[root]
        assert m["readOnly"] is True and volumes[m["name"]]["hostPath"]["path"] == host
    assert cfg.data_dir in mounts


def test_central_deployment_serves_the_webhook_port(tmp_path: Path) -> None:
    dep = _k8s("Deployment", "fleetwatch")
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    args = _fleetwatch_args(c["args"])
    cm = _k8s("ConfigMap", "fleetwatch-central")
    (tmp_path / "central.yml").write_text(cm["data"][Path(args.config).name])
    cfg = load_config(tmp_path / "central.yml", environ={})
    _check_config(cfg)
    port = int(cfg.listen.rpartition(":")[2])
    assert {p["containerPort"] for p in c["ports"]} == {port}
    svc = _k8s("Service", "fleetwatch")   # the host name in alertmanager.yml's webhook URL
    assert svc["spec"]["ports"][0]["port"] == port == 9401
    assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()


# --- docker compose ---------------------------------------------------------------------------------------

def test_compose_stack_is_complete_and_its_mounts_exist() -> None:
    # Docker does not run on the development machines: check the file, not the running stack.
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"fleetwatch", "prometheus", "alertmanager", "grafana"}
    ports = {name: {p.split(":")[-1] for p in s.get("ports", [])} for name, s in services.items()}
    assert ports == {"fleetwatch": {"9400"}, "prometheus": {"9090"}, "alertmanager": {"9093"},
                     "grafana": {"3000"}}
    args = _fleetwatch_args(services["fleetwatch"]["command"])
    assert args.simulate and args.listen.endswith(":9400")
    targets = yaml.safe_load((DEPLOY / "prometheus" / "targets" / "agents.yml").read_text())
    assert "fleetwatch:9400" in targets[0]["targets"]   # Prometheus finds the compose service by name
    for name, svc in services.items():
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("."):
                assert (DEPLOY / src).exists(), f"{name}: mounted path {src} does not exist in deploy/"
        for dep in svc.get("depends_on", []):
            assert dep in services
    grafana = {v.split(":")[1] for v in services["grafana"]["volumes"]}
    assert "/etc/grafana/provisioning" in grafana


# --- the CRD parts that the manifests use, written from the prometheus-operator v1 CRDs ---------------------

_DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?"
                                          r"(([0-9]+)s)?(([0-9]+)ms)?)$"}
_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_META = {"type": "object", "required": ["name", "namespace"],
         "properties": {"name": {"type": "string"}, "namespace": {"type": "string"}, "labels": _STR_MAP}}
_RULE = {"type": "object", "required": ["expr"], "additionalProperties": False,
         "oneOf": [{"required": ["record"]}, {"required": ["alert"]}],
         "properties": {"record": {"type": "string"}, "alert": {"type": "string"}, "expr": {"type": "string"},
                        "for": _DURATION, "keep_firing_for": _DURATION, "labels": _STR_MAP,
                        "annotations": _STR_MAP}}
PROMETHEUSRULE_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "PrometheusRule"},
        "metadata": _META,
        "spec": {"type": "object", "required": ["groups"], "additionalProperties": False, "properties": {
            "groups": {"type": "array", "items": {
                "type": "object", "required": ["name", "rules"], "additionalProperties": False,
                "properties": {"name": {"type": "string", "minLength": 1}, "interval": _DURATION,
                               "limit": {"type": "integer"}, "rules": {"type": "array", "items": _RULE}}}}}}}}
_RELABEL = {"type": "object", "additionalProperties": False, "properties": {
    "action": {"enum": ["replace", "keep", "drop", "hashmod", "labelmap", "labeldrop", "labelkeep",
                        "lowercase", "uppercase", "keepequal", "dropequal"]},
    "sourceLabels": {"type": "array", "items": {"type": "string", "pattern": "^[a-zA-Z_][a-zA-Z0-9_]*$"}},
    "separator": {"type": "string"}, "targetLabel": {"type": "string"}, "regex": {"type": "string"},
    "replacement": {"type": "string"}, "modulus": {"type": "integer"}}}
SERVICEMONITOR_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "ServiceMonitor"},
        "metadata": _META,
        "spec": {"type": "object", "required": ["selector", "endpoints"], "additionalProperties": False,
                 "properties": {
                     "jobLabel": {"type": "string"},
                     "selector": {"type": "object", "properties": {"matchLabels": _STR_MAP}},
                     "namespaceSelector": {"type": "object", "additionalProperties": False, "properties": {
                         "any": {"type": "boolean"}, "matchNames": {"type": "array", "items": {"type": "string"}}}},
                     "endpoints": {"type": "array", "minItems": 1, "items": {
                         "type": "object", "additionalProperties": False, "properties": {
                             "port": {"type": "string"}, "path": {"type": "string"},
                             "scheme": {"enum": ["http", "https"]}, "interval": _DURATION,
                             "scrapeTimeout": _DURATION, "honorLabels": {"type": "boolean"},
                             "relabelings": {"type": "array", "items": _RELABEL},
                             "metricRelabelings": {"type": "array", "items": _RELABEL}}}}}}}}
