"""The HTML report's forecast section: actual vs forecast with 80/95 % bands, and the accuracy table."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from collector.series_view import NS, TraceView
from collector.trace_io import TraceError
from predictor.energy.forecast import Forecast, Settings, fit_plan, horizon_label, make_forecast
from predictor.energy.series import PowerPanel, SeriesInputError, load_power

HORIZONS = (900.0, 3600.0, 3 * 3600.0, 6 * 3600.0, 12 * 3600.0, 86400.0)
SETTINGS = Settings(horizons_s=HORIZONS, models=("last_value", "seasonal_naive", "gbm"), backtest_days=2.0)
TABLE_HORIZONS = (900.0, 3600.0, 86400.0)
HISTORY_S = 7 * 86400.0
SHOWN_S = 2 * 86400.0


def _cut(panel: PowerPanel, n: int) -> PowerPanel:
    return PowerPanel(panel.ts_ns[:n], panel.step_s, panel.ids, panel.values[:, :n], panel.uuids, panel.notes)


def section(paths: Sequence[Path], start_ns: int | None, end_ns: int | None) -> str:
    """Inner HTML of the forecast section."""
    from fleetwatch.analysis.report import _empty, _esc, _figure

    try:
        view = TraceView(list(paths))
        span = view.span()
    except TraceError as err:
        return _empty(f"No forecast: {err}")
    if span is None:
        return _empty("No forecast: the traces hold no metric samples.")
    end = min(span[1], end_ns) if end_ns is not None else span[1]
    start = max(span[0], start_ns or span[0], end - int(HISTORY_S * NS))
    try:
        panel = load_power(view, start, end, SETTINGS.step_s)
    except SeriesInputError as err:
        return _empty(f"No forecast: {err}.")
    plan = fit_plan(panel, SETTINGS)
    fc = make_forecast(plan, panel)
    fleet = panel.rows("fleet")[0]
    parts = [f"<p>Fleet GPU power forecast from {_esc(_iso(fc.origin_ns))}: median with 80 % and 95 % "
             "intervals (empirical, from the backtest residuals). Medians add up GPU → node → fleet.</p>"]
    parts += [f'<p class="empty">{_esc(n)}</p>' for n in fc.notes]
    hind: tuple[PowerPanel, Forecast] | None = None
    day = round(86400 / panel.step_s)
    if plan.backtested and panel.ts_ns.size > 4 * day:
        # A forecast made a day before the end, with what was known then, against what happened.
        past = _cut(panel, panel.ts_ns.size - day)
        hind = (past, make_forecast(fit_plan(past, SETTINGS), past))
    parts.append(_figure(_plot(panel, fc, fleet, hind), "Fleet GPU power: actual (black), forecast median "
                         "(blue) with 80 % (dark) and 95 % (light) bands; a forecast made 24 h before the end is "
                         "drawn against what happened."))
    parts.append(_table(plan, panel))
    return "\n".join(parts)


def _bands(fc: Forecast, i: int) -> tuple[np.ndarray, np.ndarray]:
    """Times and quantiles (H+1, Q) of series i at the origin and each horizon."""
    ts = np.concatenate([[fc.origin_ns], fc.origin_ns + (np.array(fc.horizons_s) * NS).astype(np.int64)])
    q = np.vstack([np.full(len(fc.quantiles), fc.path[i, 0] if fc.path.size else np.nan), fc.power[i]])
    return ts, q


def _plot(panel: PowerPanel, fc: Forecast, i: int, hind: tuple[PowerPanel, Forecast] | None) -> object:
    import matplotlib.pyplot as plt

    from fleetwatch.analysis._plots import _RC, _finish, _time_axis, _to_dt

    with plt.rc_context(_RC):
        fig, ax = plt.subplots(figsize=(10, 3.6))
        shown = panel.ts_ns >= panel.ts_ns[-1] - int(SHOWN_S * NS)
        ax.plot(_to_dt(panel.ts_ns[shown]), panel.values[i, shown] / 1e3, color="#000000", lw=0.8, label="actual")
        for f, colour, label in ((hind[1] if hind else None, "#CC79A7", "forecast made 24 h before"),
                                 (fc, "#0072B2", "forecast")):
            if f is None:
                continue
            ts, q = _bands(f, i)
            x = _to_dt(ts)
            ax.fill_between(x, q[:, 0] / 1e3, q[:, -1] / 1e3, color=colour, alpha=0.15, lw=0)
            ax.fill_between(x, q[:, 1] / 1e3, q[:, -2] / 1e3, color=colour, alpha=0.3, lw=0)
            ax.plot(x, q[:, 2] / 1e3, color=colour, lw=1.2, marker="o", ms=2.5, label=label)
        ax.set_ylabel("fleet GPU power (kW)")
        ax.set_ylim(bottom=0)
        ax.set_title("Fleet GPU power: actual and forecast")
        _time_axis(ax)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
        med = fc.power[i, :, 2]
        alt = (f"Line chart of fleet GPU power over the last {SHOWN_S / 86400:.0f} days and its forecast; the "
               f"median at {horizon_label(fc.horizons_s[-1])} is {med[-1] / 1e3:.1f} kW "
               f"(80 % interval {fc.power[i, -1, 1] / 1e3:.1f}–{fc.power[i, -1, 3] / 1e3:.1f} kW).")
        return _finish(fig, "energy-forecast", "Fleet GPU power forecast", alt)


def _table(plan: object, panel: PowerPanel) -> str:
    from fleetwatch.analysis.report import _empty, _esc

    scores = [s for s in plan.scores  # type: ignore[attr-defined]
              if s.horizon_s in TABLE_HORIZONS and not s.series.count("/")]
    if not scores:
        return _empty("No accuracy table: too little history for a rolling-origin backtest.")
    head = ("<tr><th>series</th><th>model</th><th>horizon</th><th>MAE (W)</th><th>MAPE</th><th>sMAPE</th>"
            "<th>MASE</th><th>80 % coverage</th><th>95 % coverage</th><th>chosen</th></tr>")
    rows = []
    for s in scores:
        rows.append(f"<tr><td>{_esc(s.series)}</td><td>{_esc(s.model)}</td><td>{horizon_label(s.horizon_s)}</td>"
                    f"<td>{_n(s.mae, 0)}</td><td>{_n(s.mape, 2)}</td><td>{_n(s.smape, 2)}</td><td>{_n(s.mase, 2)}</td>"
                    f"<td>{_n(s.coverage_80, 2)}</td><td>{_n(s.coverage_95, 2)}</td>"
                    f"<td>{'✔' if s.chosen else ''}</td></tr>")
    return ("<p>Rolling-origin backtest (hourly origins over the last days with a full horizon after them). "
            "MASE = MAE / in-sample MAE of the daily seasonal-naive forecast.</p>"
            f"<table><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>")


def _n(x: float, nd: int) -> str:
    return "–" if not np.isfinite(x) else f"{x:.{nd}f}"


def _iso(ns: int) -> str:
    from predictor.energy.series import _iso as iso

    return iso(ns)


__all__ = ["section"]
