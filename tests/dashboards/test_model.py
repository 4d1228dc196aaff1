"""JSON-model sanity of every dashboard, and deploy/grafana/ being up to date with the code."""

from __future__ import annotations

import filecmp
from pathlib import Path
from typing import Any

import pytest

from dashboards.builder import GRID_COLUMNS
from dashboards.export import build_all, export
from dashboards.gpu_health import xid_mappings
from fleetwatch.cli import main

ROOT = Path(__file__).resolve().parents[2]
ALL = [m for n in ("native", "dcgm") for m in build_all(n)]  # type: ignore[arg-type]


@pytest.mark.parametrize("model", ALL, ids=[m["uid"] for m in ALL])
def test_dashboard_model_is_sane(model: dict[str, Any]) -> None:
    assert model["schemaVersion"] >= 39 and model["uid"] and model["title"]
    panels = model["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)) and all(i > 0 for i in ids)
    names = [v["name"] for v in model["templating"]["list"]]
    assert names[:2] == ["datasource", "node"]
    cells: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= GRID_COLUMNS, p["title"]
        here = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not here & cells, f"{p['title']} overlaps another panel"
        cells |= here
        if p["type"] in ("row", "text"):
            continue
        assert p["fieldConfig"]["defaults"].get("unit"), f"{p['title']} has no unit"
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"] and p["description"], p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}" and t["expr"] and t["refId"]


def test_uids_are_unique() -> None:
    uids = [m["uid"] for m in ALL]
    assert len(uids) == len(set(uids)) == 14


def test_xid_table_maps_codes_to_meaning() -> None:
    maps = xid_mappings()
    assert maps["79"][0].startswith("79: ") and maps["79"][1] == "red"
    assert maps["48"][1] == "red" and "13" in maps


def test_deploy_grafana_is_up_to_date(tmp_path: Path) -> None:
    assert main(["dashboards", "export", str(tmp_path), "--names", "both"]) == 0
    deployed = ROOT / "deploy" / "grafana"
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    have = sorted(p.relative_to(deployed) for p in deployed.rglob("*") if p.is_file())
    hint = "deploy/grafana/ is stale: run `fleetwatch dashboards export deploy/grafana --names both`"
    assert fresh == have, hint
    for rel in fresh:
        assert filecmp.cmp(tmp_path / rel, deployed / rel, shallow=False), f"{rel}: {hint}"


def test_provisioning_points_at_the_json(tmp_path: Path) -> None:
    export(tmp_path, ("native",), dashboards_path="/srv/dash", prometheus_url="http://prom:9090")
    provider = (tmp_path / "provisioning" / "dashboards" / "fleetwatch.yaml").read_text()
    assert "path: /srv/dash" in provider and "type: file" in provider
    assert "url: http://prom:9090" in (tmp_path / "provisioning" / "datasources" / "prometheus.yaml").read_text()
