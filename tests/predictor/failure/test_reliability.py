"""Reliability analysis recovers known hazards from generated inventories."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from statsmodels.duration.hazard_regression import PHReg

from fleetwatch.cli import main
from predictor.failure.reliability import (
    InventoryError,
    analyse,
    cox_fit,
    parse_columns,
    read_inventory,
    synth_inventory,
)


@pytest.fixture(scope="module")
def inventory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("inv") / "inventory.csv"
    inv = synth_inventory(4000, shape=1.5, scale_h=20_000.0, hazard_ratio={"c0": 1.0, "c1": 2.5}, seed=4)
    inv.to_csv(p, index=False)
    return p


def test_cox_recovers_the_hazard_ratio(inventory: Path) -> None:
    r = analyse(read_inventory(inventory), by=["cage"])
    (c,) = r.cox
    assert c["covariate"] == "cage=c1 vs c0"
    assert c["ci_low"] < 2.5 < c["ci_high"] and c["p"] < 1e-6


def test_weibull_recovers_shape_and_scale(tmp_path: Path) -> None:
    p = tmp_path / "one.csv"
    synth_inventory(4000, shape=1.5, scale_h=20_000.0, hazard_ratio={"c0": 1.0}, seed=5).to_csv(p, index=False)
    r = analyse(read_inventory(p))
    w = r.weibull
    assert w["shape_ci"][0] < 1.5 < w["shape_ci"][1]
    assert w["scale_ci"][0] < 20_000 < w["scale_ci"][1]
    # Kaplan-Meier follows the true survival curve
    for pt in r.km[:: max(1, len(r.km) // 20)]:
        true = math.exp(-((pt["t_h"] / 20_000.0) ** 1.5))
        assert abs(pt["survival"] - true) < 0.04, pt


def test_units_that_move_keep_their_age(inventory: Path) -> None:
    inv = read_inventory(inventory)
    rec = inv.records
    moved = rec[rec.duplicated("serial", keep=False)]
    assert len(moved) > 500
    second = moved.groupby("serial").nth(1)
    first = moved.groupby("serial").nth(0)
    np.testing.assert_allclose(second["entry_h"].to_numpy(), first["exit_h"].to_numpy())
    r = analyse(inv)
    assert r.units == rec["serial"].nunique()


def test_cox_fit_matches_statsmodels_phreg() -> None:
    rng = np.random.default_rng(0)
    n = 400
    X = np.column_stack([rng.integers(0, 2, n), rng.normal(size=n)])
    t = rng.exponential(1.0 / np.exp(0.7 * X[:, 0] - 0.4 * X[:, 1]))
    entry = rng.uniform(0, 0.3, n) * t
    c = rng.exponential(2.0, n) + entry
    status = (t <= c).astype(int)
    exit_ = np.minimum(t, c)
    beta, cov = cox_fit(entry, exit_, status.astype(bool), X)
    ref = PHReg(exit_, X, status=status, entry=entry, ties="breslow").fit()
    np.testing.assert_allclose(beta, ref.params, rtol=1e-5)
    np.testing.assert_allclose(np.sqrt(np.diag(cov)), ref.bse, rtol=1e-4)


def test_event_filter_counts_only_that_type(inventory: Path) -> None:
    inv = read_inventory(inventory)
    all_f = analyse(inv).failures
    dbe = analyse(inv, types=["dbe"]).failures
    assert 0.45 * all_f < dbe < 0.75 * all_f


def test_cli_json_and_column_mapping(inventory: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import pandas as pd

    df = pd.read_csv(inventory, dtype=str, keep_default_na=False)
    df = df.rename(columns={"serial": "SN", "installed": "insert"})
    other = tmp_path / "other.csv"
    df.to_csv(other, index=False)
    assert main(["reliability", str(other), "--columns", "serial=SN,installed=insert", "--by", "cage",
                 "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"units", "failures", "mtbf_h", "weibull", "km", "cox"} <= set(out)
    assert set(out["weibull"]) == {"shape", "scale_h", "shape_ci", "scale_ci"}
    assert out["km"][0] == {"t_h": 0.0, "survival": 1.0}
    assert {"covariate", "hazard_ratio", "ci_low", "ci_high", "p"} == set(out["cox"][0])
    assert main(["reliability", str(inventory), "--by", "cage"]) == 0
    assert "hazard ratio" in capsys.readouterr().out


@pytest.mark.parametrize(("text", "match"), [
    ("serial,location,installed,removed\nA,x,2020-01-01,\n", "missing column.*event"),
    ("serial,location,installed,removed,event\nA,x,yesterday,,\n", "row 2: bad installed time"),
    ("serial,location,installed,removed,event\nA,x,2021-01-01,2020-01-01,\n", "removed before installed"),
], ids=["no-event-column", "bad-date", "negative-duration"])
def test_bad_inventories_name_the_problem(tmp_path: Path, text: str, match: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "inv.csv"
    p.write_text(text)
    with pytest.raises(InventoryError, match=match):
        read_inventory(p)
    assert main(["reliability", str(p)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fleetwatch: reliability: ") and "Traceback" not in err


def test_bad_columns_spec() -> None:
    with pytest.raises(InventoryError, match="want OURS=THEIRS"):
        parse_columns("serial")
    with pytest.raises(InventoryError, match="unknown column 'colour'"):
        parse_columns("colour=x")
