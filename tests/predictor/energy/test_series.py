"""Loading power on a grid: the hierarchy adds up, gaps stay gaps, bad input is named or repaired visibly."""

from __future__ import annotations

import numpy as np
import pytest

from collector.batch import Batch, gpu_entity
from collector.series_view import RecentWindow
from predictor.energy.series import POWER_METRIC, SeriesId, SeriesInputError, aggregate, load_power, regular

T0 = 1_767_225_600 * 10**9
S = 10**9


def _window(samples: dict[tuple[str, int], list[tuple[int, float]]]) -> RecentWindow:
    w = RecentWindow(max_age_s=10 * 86400)
    by_ts: dict[int, Batch] = {}
    for (node, idx), pts in samples.items():
        e = gpu_entity(node, idx, f"GPU-{node}-{idx}", f"0000:{idx:02x}:00.0", "H100", "550")
        for ts, v in pts:
            by_ts.setdefault(ts, Batch("t", ts)).add(POWER_METRIC, e, v)
    for ts in sorted(by_ts):
        w.add(by_ts[ts])
    return w


def test_levels_add_up_and_gaps_stay_nan(panel4d) -> None:  # type: ignore[no-untyped-def]
    p = panel4d
    gpus, nodes, fleet = p.rows("gpu"), p.rows("node"), p.rows("fleet")
    assert len(gpus) == 8 and len(nodes) == 2 and len(fleet) == 1
    np.testing.assert_allclose(np.nansum(p.values[gpus], axis=0), p.values[fleet[0]], rtol=1e-12)
    np.testing.assert_allclose(p.structure() @ np.nan_to_num(p.values[gpus]), np.nan_to_num(p.values), rtol=1e-12)


def test_long_outage_is_not_interpolated() -> None:
    pts = [(T0 + i * 300 * S, 100.0 + i) for i in range(12)] + [(T0 + i * 300 * S, 500.0) for i in range(30, 40)]
    w = _window({("n0", 0): pts, ("n0", 1): [(T0 + i * 300 * S, 50.0) for i in range(40)]})
    p = load_power(w, T0, T0 + 39 * 300 * S, 300.0)
    g0 = p.values[p.index(SeriesId("gpu", "n0", "0"))]
    assert np.isnan(g0[15:28]).all()                       # 2.5 steps of lookback, then NaN until data returns
    assert g0[11] == 111.0 and g0[30] == 500.0
    node = p.values[p.index(SeriesId("node", "n0"))]
    assert node[20] == 50.0                                 # the node sums the GPU that reported


def test_no_samples_is_a_clear_error() -> None:
    with pytest.raises(SeriesInputError, match="no fleetwatch_gpu_power_watts samples"):
        load_power(_window({}), T0, T0 + 3600 * S, 300.0)
    with pytest.raises(SeriesInputError, match="window is empty"):
        load_power(_window({}), T0, T0, 300.0)


def test_negative_readings_are_dropped_and_said() -> None:
    w = _window({("n0", 0): [(T0 + i * 300 * S, -5.0 if i == 3 else 80.0) for i in range(10)]})
    p = load_power(w, T0, T0 + 9 * 300 * S, 300.0)
    assert np.isnan(p.values[0, 3]) and any("negative" in n for n in p.notes)


@pytest.mark.parametrize(("ts", "vals", "note"), [
    ([0, 600, 300, 900], [1.0, 3.0, 2.0, 4.0], "clock went backwards"),
    ([0, 300, 300, 600], [1.0, 2.0, 9.0, 4.0], "duplicate"),
    ([0, 300, 600, 900], [1.0, float("nan"), float("inf"), 4.0], "non-finite"),
], ids=["backwards", "duplicates", "nan"])
def test_regular_repairs_visibly(ts: list[int], vals: list[float], note: str) -> None:
    points, out, notes = regular(np.array(ts) * S + T0, np.array(vals), 300.0)
    assert any(note in n for n in notes), notes
    assert np.all(np.diff(points) == 300 * S)
    assert np.all(np.isfinite(out[np.isfinite(out)]))
    if note == "duplicate":
        assert out[1] == 9.0                                # the last written sample wins


def test_regular_empty_is_an_error() -> None:
    with pytest.raises(SeriesInputError, match="no finite samples"):
        regular(np.array([T0]), np.array([np.nan]), 300.0)


def test_aggregate_of_missing_everything_is_nan() -> None:
    ids, vals = aggregate([SeriesId("gpu", "a", "0")], np.full((1, 3), np.nan))
    assert np.isnan(vals).all() and ids[-1].scope == "fleet"
