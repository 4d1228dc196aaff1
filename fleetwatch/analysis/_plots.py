"""Matplotlib figures of the HTML report, rendered to self-contained inline SVG (Agg backend, no network)."""

from __future__ import annotations

import html
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")   # headless: the report is rendered on servers and in CI without a display

import matplotlib.dates as mdates
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

# Text stays <text> (not glyph paths) so the SVG stays small, searchable and readable by screen readers;
# a fixed hash salt makes the output reproducible run to run.
_RC = {
    "svg.fonttype": "none",
    "svg.hashsalt": "fleetwatch",
    "font.family": "sans-serif",
    "font.size": 9,
    "axes.titlesize": 11,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "path.simplify": True,
}
# Savefig metadata keys set to None are left out: no creator URL or date ends up in the report.
_NO_METADATA = {"Creator": None, "Date": None, "Format": None, "Type": None}

SEVERITY_COLOURS = {"critical": "#c62828", "warning": "#ef8f00", "info": "#1e6fbf", "event": "#333333"}
# Colour-blind-safe palette (Okabe-Ito) for the throttle reasons and per-node series.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000",
           "#999999", "#882255", "#44AA99", "#117733")


@dataclass(frozen=True, slots=True)
class Plot:
    """One rendered figure: inline SVG markup plus the texts that describe it."""

    svg: str
    title: str
    alt: str


def mpl_text(s: str) -> str:
    """Text safe for matplotlib: a '$' in a node name must not switch on mathtext (it could fail to parse)."""
    return s.replace("\\", "\\\\").replace("$", r"\$")


def _to_dt(ts_ns: np.ndarray) -> np.ndarray:
    """Unix nanoseconds to datetime64 (UTC) for matplotlib's date axis."""
    return np.asarray(ts_ns, dtype=np.int64).astype("datetime64[ns]")


def _time_axis(ax: plt.Axes) -> None:
    loc = mdates.AutoDateLocator(minticks=3, maxticks=8)
    ax.xaxis.set_major_locator(loc)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(loc))
    ax.set_xlabel("time (UTC)")


def _finish(fig: Figure, plot_id: str, title: str, alt: str) -> Plot:
    """Serialise `fig` as inline SVG with a <title> and <desc>, ids made unique within the page."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata=_NO_METADATA, bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    text = text[text.index("<svg"):]      # drop the XML declaration and DOCTYPE (not valid inside HTML)
    # Namespace declarations are implied for <svg> inside HTML; dropping them keeps URLs out of the file.
    text = re.sub(r'\s+xmlns(?::\w+)?="[^"]*"', "", text)
    # matplotlib numbers ids per figure (figure_1, axes_1, ...) and hashes clip paths: prefix every id and
    # reference so that several figures in one page never share one.
    text = re.sub(r'\bid="', f'id="{plot_id}-', text)
    text = re.sub(r"url\(#", f"url(#{plot_id}-", text)
    text = re.sub(r'href="#', f'href="#{plot_id}-', text)
    head_end = text.index(">") + 1
    head = text[:head_end].replace(
        "<svg", f'<svg role="img" aria-labelledby="{plot_id}-title {plot_id}-desc" class="plot"', 1)
    body = (f'<title id="{plot_id}-title">{html.escape(title)}</title>'
            f'<desc id="{plot_id}-desc">{html.escape(alt)}</desc>')
    return Plot(svg=head + body + text[head_end:], title=title, alt=alt)


def power_plot(ts_ns: np.ndarray, names: Sequence[str], watts: np.ndarray, title: str) -> Plot:
    """Stacked area of GPU power per node (watts: one row per name, one column per timestamp)."""
    with plt.rc_context(_RC):
        fig, ax = plt.subplots(figsize=(10, 3.6))
        x = _to_dt(ts_ns)
        colours = [PALETTE[i % len(PALETTE)] for i in range(len(names))]
        ax.stackplot(x, np.nan_to_num(watts / 1e3), labels=[mpl_text(n) for n in names], colors=colours,
                     linewidth=0)
        ax.set_ylabel("GPU power (kW)")
        ax.set_title(title)
        ax.set_ylim(bottom=0)
        _time_axis(ax)
        # Legend top to bottom in the stack's own order (the first series is the bottom band).
        handles, labels = ax.get_legend_handles_labels()
        ax.legend(handles[::-1], labels[::-1], loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8,
                  frameon=False, title="node")
        total = np.nansum(watts, axis=0) if watts.size else np.zeros(0)
        alt = (f"Stacked area chart of GPU power per node over time for {len(names)} series; fleet total "
               f"peaks at {total.max() / 1e3:.1f} kW and averages {total.mean() / 1e3:.1f} kW."
               if total.size else "No power readings in this window.")
        return _finish(fig, "power", title, alt)


def energy_bar(names: Sequence[str], kwh: np.ndarray, title: str) -> Plot:
    """Horizontal bars of GPU energy per node."""
    with plt.rc_context(_RC):
        height = max(1.6, 0.28 * len(names) + 0.9)
        fig, ax = plt.subplots(figsize=(10, height))
        y = np.arange(len(names))
        ax.barh(y, kwh, color=PALETTE[0])
        ax.set_yticks(y, [mpl_text(n) for n in names])
        ax.invert_yaxis()
        ax.set_xlabel("GPU energy (kWh)")
        ax.set_ylabel("node")
        ax.set_title(title)
        for yi, v in zip(y, kwh, strict=True):
            ax.annotate(f"{v:.2f}", (v, yi), xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)
        top = ", ".join(f"{n} {v:.2f} kWh" for n, v in list(zip(names, kwh, strict=True))[:5])
        alt = f"Bar chart of GPU energy by node, {len(names)} nodes, largest first: {top}."
        return _finish(fig, "energy", title, alt)


def temp_heatmap(bins_ns: np.ndarray, step_ns: int, names: Sequence[str], temps: np.ndarray, title: str) -> Plot:
    """Heatmap of mean GPU temperature, one row per GPU, one column per time bin (NaN: no reading)."""
    with plt.rc_context(_RC):
        height = min(9.0, max(2.2, 0.16 * len(names) + 1.2))
        fig, ax = plt.subplots(figsize=(10, height))
        x0 = mdates.date2num(_to_dt(bins_ns[:1])[0])
        x1 = mdates.date2num(_to_dt(np.asarray([bins_ns[-1] + step_ns]))[0])
        cmap = matplotlib.colormaps["inferno"].with_extremes(bad="#d0d0d0")
        img = ax.imshow(np.ma.masked_invalid(temps), aspect="auto", interpolation="nearest", cmap=cmap,
                        extent=(x0, x1, len(names) - 0.5, -0.5))
        ax.xaxis_date()
        _time_axis(ax)
        # Label every row while they are legible, then every k-th row.
        every = max(1, int(np.ceil(len(names) / 48)))
        rows = np.arange(0, len(names), every)
        ax.set_yticks(rows, [mpl_text(names[i]) for i in rows], fontsize=7 if len(names) > 16 else 8)
        ax.set_ylabel("GPU (node/index)")
        ax.set_title(title)
        bar = fig.colorbar(img, ax=ax, pad=0.01)
        bar.set_label("GPU temperature (°C)")
        finite = temps[np.isfinite(temps)]
        hot = ""
        if finite.size:
            row = int(np.nanargmax(np.nanmax(np.where(np.isfinite(temps), temps, -np.inf), axis=1)))
            hot = f" Range {finite.min():.0f} to {finite.max():.0f} °C; hottest GPU {names[row]}."
        alt = (f"Heatmap of GPU temperature over time: {len(names)} GPUs by {temps.shape[1]} time bins; "
               f"grey cells have no reading.{hot}")
        return _finish(fig, "temperature", title, alt)


def throttle_timeline(bins_ns: np.ndarray, step_ns: int, names: Sequence[str], reasons: Sequence[str],
                      active: np.ndarray, title: str) -> Plot:
    """Per-GPU bars where each throttle reason was active: active[gpu, reason, bin] is a bool."""
    with plt.rc_context(_RC):
        height = min(9.0, max(2.0, 0.32 * len(names) + 1.2))
        fig, ax = plt.subplots(figsize=(10, height))
        lane = 0.8 / max(1, len(reasons))
        handles: list[Patch] = []
        starts = _to_dt(bins_ns)
        width = np.timedelta64(int(step_ns), "ns")
        for r, reason in enumerate(reasons):
            colour = PALETTE[r % len(PALETTE)]
            for g in range(len(names)):
                runs = _runs(active[g, r])
                if not runs:
                    continue
                spans = [(mdates.date2num(starts[a]), mdates.date2num(starts[b - 1] + width)
                          - mdates.date2num(starts[a])) for a, b in runs]
                ax.broken_barh(spans, (g - 0.4 + r * lane, lane), facecolors=colour)
            handles.append(Patch(color=colour, label=reason))
        ax.set_xlim(mdates.date2num(starts[0]), mdates.date2num(starts[-1] + width))
        ax.set_ylim(len(names) - 0.5, -0.5)
        ax.set_yticks(np.arange(len(names)), [mpl_text(n) for n in names], fontsize=8)
        ax.set_ylabel("GPU (node/index)")
        ax.xaxis_date()
        _time_axis(ax)
        ax.set_title(title)
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False,
                  title="reason")
        seen = [reasons[r] for r in range(len(reasons)) if active[:, r, :].any()]
        alt = (f"Timeline of GPU clock throttling for {len(names)} GPUs, one coloured bar per active reason; "
               f"reasons seen: {', '.join(seen) or 'none'}.")
        return _finish(fig, "throttling", title, alt)


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) index pairs of the runs of True in a 1-D bool array."""
    if not flags.any():
        return []
    padded = np.concatenate([[False], flags, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


def event_timeline(ts_ns: np.ndarray, rows: np.ndarray, names: Sequence[str], categories: Sequence[str],
                   labels: Sequence[str], span_ns: tuple[int, int], title: str) -> Plot:
    """Events as markers: x time, y the GPU's row, colour by category (critical/warning/info/event)."""
    with plt.rc_context(_RC):
        height = min(9.0, max(2.0, 0.32 * len(names) + 1.2))
        fig, ax = plt.subplots(figsize=(10, height))
        x = _to_dt(ts_ns)
        cats = np.asarray(categories)
        markers = {"critical": "X", "warning": "D", "info": "o", "event": "s"}
        # Each category sits a little off the row's centre so that, say, XID 79 and the "gpu_lost" event it
        # comes with do not hide each other.
        offset = {"critical": -0.18, "warning": -0.06, "info": 0.06, "event": 0.18}
        for cat in ("critical", "warning", "info", "event"):
            sel = cats == cat
            if sel.any():
                name = "non-XID event" if cat == "event" else f"XID, {cat}"
                ax.scatter(x[sel], rows[sel] + offset[cat], s=42, marker=markers[cat],
                           color=SEVERITY_COLOURS[cat], label=name, zorder=3, edgecolors="white", linewidths=0.5)
        lo, hi = _to_dt(np.asarray(span_ns))
        # One label per cluster of nearby events on a row ("63×4, 94"): per-event labels would overprint.
        gap = max(int(span_ns[1] - span_ns[0]) // 60, 1)
        clusters = _clusters(np.asarray(ts_ns, dtype=np.int64), np.asarray(rows), gap)
        if len(clusters) <= 150:
            for t0, row, members in clusters:
                text = _cluster_label([labels[i] for i in members])
                ax.annotate(mpl_text(text), (mdates.date2num(_to_dt(np.asarray([t0]))[0]), row - 0.22),
                            xytext=(0, 2), textcoords="offset points", ha="left", va="bottom", fontsize=7)
        pad = (hi - lo) / 50 if hi > lo else np.timedelta64(60, "s")
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_ylim(len(names) - 0.5, -0.8)
        ax.set_yticks(np.arange(len(names)), [mpl_text(n) for n in names], fontsize=8)
        ax.set_ylabel("GPU (node/index)")
        ax.grid(axis="y", color="#eeeeee", zorder=0)
        _time_axis(ax)
        ax.set_title(title)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False, title="kind")
        counts = {c: int((cats == c).sum()) for c in ("critical", "warning", "info", "event")}
        alt = (f"Timeline of {len(labels)} error events on {len(names)} GPUs: {counts['critical']} critical, "
               f"{counts['warning']} warning and {counts['info']} informational XIDs, {counts['event']} other "
               f"events; each marker is labelled with its XID code or event kind.")
        return _finish(fig, "errors", title, alt)


def _clusters(ts_ns: np.ndarray, rows: np.ndarray, gap_ns: int) -> list[tuple[int, int, list[int]]]:
    """(first ts, row, member indices) of runs of events on one row less than gap_ns apart."""
    out: list[tuple[int, int, list[int]]] = []
    for row in np.unique(rows):
        idx = np.flatnonzero(rows == row)
        idx = idx[np.argsort(ts_ns[idx], kind="stable")]
        start = 0
        for k in range(1, idx.size + 1):
            if k == idx.size or ts_ns[idx[k]] - ts_ns[idx[k - 1]] > gap_ns:
                out.append((int(ts_ns[idx[start]]), int(row), idx[start:k].tolist()))
                start = k
    return out


def _cluster_label(labels: Sequence[str]) -> str:
    """"63×4, 94" from the labels of one cluster, in order of first appearance."""
    counts: dict[str, int] = {}
    for lab in labels:
        counts[lab] = counts.get(lab, 0) + 1
    text = ", ".join(f"{k}×{n}" if n > 1 else k for k, n in counts.items())
    return text if len(text) <= 40 else text[:39] + "…"
