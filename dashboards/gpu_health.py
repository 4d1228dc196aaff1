"""GPU health: ECC and remapped rows, XIDs with their meaning, throttling reasons, NVLink and PCIe errors."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.models import dashboard as dm

from collector import xid
from collector.catalogue import CLOCK_EVENT_REASONS
from dashboards.builder import (
    Ctx,
    Q,
    bargauge_panel,
    dashboard,
    row,
    stat_panel,
    table_panel,
    timeseries_panel,
    value_map,
    variables,
)

UID = "fleetwatch-gpu-health"

# The XIDs operators meet most, with their meaning from collector/xid.py's catalogue (NVIDIA's).
XID_CODES: tuple[int, ...] = (13, 31, 43, 45, 48, 61, 62, 63, 64, 68, 69, 74, 79, 92, 94, 95, 119, 120, 121,
                              140, 143, 154)
_SEVERITY_COLOUR = {"info": "blue", "warning": "orange", "critical": "red"}


def xid_mappings() -> dict[str, tuple[str, str | None]]:
    """XID code → (\"code: mnemonic\", severity colour) for the codes that matter and are catalogued."""
    out: dict[str, tuple[str, str | None]] = {}
    for code in XID_CODES:
        info = xid.lookup(code)
        if info is not None:
            out[str(code)] = (f"{code}: {info.mnemonic}", _SEVERITY_COLOUR[info.severity])
    return out


def build(ctx: Ctx) -> db.Dashboard:
    """The GPU health dashboard."""
    d = dashboard(ctx, UID, "fleetwatch / GPU health",
                  "Memory errors, XIDs, throttling and interconnect errors per GPU.", ["health"])
    for v in variables(ctx):
        d = d.with_variable(v)
    n = ctx.node_label
    leg = f"{{{{{n}}}}} GPU {{{{gpu}}}}"

    def s(metric: str, extra: str = "") -> str:
        return ctx.sel(metric, extra=extra, gpu=True)

    d = d.with_row(row(ctx, "Memory"))
    d = d.with_panel(stat_panel(
        ctx, "Uncorrectable remapped rows", "none",
        [Q(f"sum({s('fleetwatch_gpu_remapped_rows_uncorrectable_total')})", instant=True)],
        "HBM rows remapped because of uncorrectable errors; any is a reason to watch the GPU.", w=6,
        thresholds=[(None, "green"), (1, "orange"), (8, "red")]))
    d = d.with_panel(stat_panel(
        ctx, "Row remap failures", "none", [Q(f"sum({s('fleetwatch_gpu_remapped_rows_failed')})", instant=True)],
        "GPUs whose row remapping failed (no spare rows left): replace the GPU.", w=6,
        thresholds=[(None, "green"), (1, "red")]))
    d = d.with_panel(stat_panel(
        ctx, "Remaps pending reset", "none",
        [Q(f"sum({s('fleetwatch_gpu_remapped_rows_pending')})", instant=True)],
        "GPUs with a row remap waiting for a GPU reset (native metric).", w=6,
        thresholds=[(None, "green"), (1, "orange")]))
    d = d.with_panel(stat_panel(
        ctx, "GPUs lost", "none", [Q(f"sum({s('fleetwatch_gpu_lost')})", instant=True)],
        "GPUs NVML reports lost (XID 79), native metric.", w=6, thresholds=[(None, "green"), (1, "red")]))
    d = d.with_panel(timeseries_panel(
        ctx, "ECC errors (volatile)", "none",
        [Q(f"increase({s('fleetwatch_gpu_ecc_sbe_volatile_total')}[$__rate_interval])", legend=leg + " SBE"),
         Q(f"increase({s('fleetwatch_gpu_ecc_dbe_volatile_total')}[$__rate_interval])", legend=leg + " DBE")],
        "Corrected (single-bit) and uncorrected (double-bit) ECC errors per interval (native metrics).",
        fill=0))
    d = d.with_panel(timeseries_panel(
        ctx, "Remapped rows", "none",
        [Q(s("fleetwatch_gpu_remapped_rows_correctable_total"), legend=leg + " correctable"),
         Q(s("fleetwatch_gpu_remapped_rows_uncorrectable_total"), legend=leg + " uncorrectable")],
        "HBM rows remapped so far, by cause.", fill=0))
    d = d.with_row(row(ctx, "XID errors"))
    d = d.with_panel(table_panel(
        ctx, "XID errors by code", "none",
        [Q(f"sum {ctx.by('node', 'gpu', 'xid')} ({s('fleetwatch_gpu_xid_errors_total')})", instant=True,
           table=True)],
        "XID errors since the agent started, by GPU and code; the code column shows NVIDIA's mnemonic and is "
        "coloured by severity (red: the GPU or node needs an operator). Native metric "
        "fleetwatch_gpu_xid_errors_total; dcgm-exporter only has the last code (see 'Last XID').",
        w=14, hide=["Time"],
        overrides=[("xid", [dm.DynamicConfigValue(id_val="mappings", value=[value_map(xid_mappings())]),
                            dm.DynamicConfigValue(id_val="custom.cellOptions", value={"type": "color-text"})])]))
    d = d.with_panel(bargauge_panel(
        ctx, "Last XID", "none", [Q(s("fleetwatch_gpu_xid_last_code"), legend=leg, instant=True)],
        "Code of the last XID each GPU reported (0: none); works with dcgm-exporter's DCGM_FI_DEV_XID_ERRORS.",
        w=10, thresholds=[(None, "green"), (1, "red")]))
    d = d.with_row(row(ctx, "Throttling"))
    reasons = "|".join(r for r in CLOCK_EVENT_REASONS if r != "gpu_idle")
    throttled = s("fleetwatch_gpu_clock_event_active", 'reason=~"' + reasons + '"')
    d = d.with_panel(timeseries_panel(
        ctx, "Active throttle reasons", "none",
        [Q(f"sum {ctx.by('reason')} ({throttled})",
           legend="{{reason}}")],
        "GPUs with each clock-event (throttle) reason active; thermal and power-brake slowdowns are the ones "
        "that cost performance. Native metric (one series per NVML reason bit).", stack=True, fill=40, w=24))
    d = d.with_row(row(ctx, "Interconnect"))
    for title, metric, desc in (
        ("NVLink CRC errors", "fleetwatch_gpu_nvlink_crc_errors_total", "NVLink CRC errors per second."),
        ("NVLink replays", "fleetwatch_gpu_nvlink_replay_errors_total", "NVLink replays per second."),
        ("NVLink recoveries", "fleetwatch_gpu_nvlink_recovery_errors_total", "NVLink recoveries per second."),
        ("PCIe replays", "fleetwatch_gpu_pcie_replays_total", "PCIe link-level retries per second."),
    ):
        d = d.with_panel(timeseries_panel(
            ctx, title, "cps", [Q(f"rate({s(metric)}[$__rate_interval])", legend=leg)], desc, fill=0))
    return d
