"""Node detail: every GPU of the chosen nodes side by side (power, temperature, utilisation, memory, clocks)."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as db

from dashboards.builder import Ctx, Q, dashboard, grafana_unit, row, stat_panel, timeseries_panel, variables

UID = "fleetwatch-node"


def build(ctx: Ctx) -> db.Dashboard:
    """The node detail dashboard."""
    d = dashboard(ctx, UID, "fleetwatch / Node detail", "One node's GPUs, and the node's own power.", ["node"])
    for v in variables(ctx):
        d = d.with_variable(v)
    n = ctx.node_label
    leg = f"{{{{{n}}}}} GPU {{{{gpu}}}}"

    def s(metric: str) -> str:
        return ctx.sel(metric, gpu=True)

    d = d.with_row(row(ctx, "Now"))
    d = d.with_panel(stat_panel(ctx, "GPU power", "watt", [Q(f"sum({s('fleetwatch_gpu_power_watts')})",
                                                            instant=True)], "Sum over the selected GPUs.", w=6))
    d = d.with_panel(stat_panel(ctx, "Node power (BMC)", "watt",
                                [Q(f"sum({ctx.sel('fleetwatch_node_power_watts')})", instant=True)],
                                "Node power draw reported by the BMC over Redfish (native metric).", w=6))
    d = d.with_panel(stat_panel(ctx, "Max GPU temperature", "celsius",
                                [Q(f"max({s('fleetwatch_gpu_temperature_celsius')})", instant=True)],
                                "Hottest selected GPU core.", w=6,
                                thresholds=[(None, "green"), (75, "orange"), (85, "red")]))
    d = d.with_panel(stat_panel(ctx, "Mean utilisation", "percentunit",
                                [Q(f"avg({s('fleetwatch_gpu_utilization_ratio')})", instant=True)],
                                "Mean utilisation of the selected GPUs.", w=6))
    d = d.with_row(row(ctx, "Per GPU"))
    for title, metric, desc in (
        ("Power", "fleetwatch_gpu_power_watts", "Power draw of the GPU board."),
        ("Power limit", "fleetwatch_gpu_power_limit_watts", "Enforced power limit (native metric)."),
        ("GPU temperature", "fleetwatch_gpu_temperature_celsius", "GPU core temperature."),
        ("HBM temperature", "fleetwatch_gpu_memory_temperature_celsius", "HBM memory temperature."),
        ("Utilisation", "fleetwatch_gpu_utilization_ratio", "Fraction of time a kernel was running."),
        ("Memory copy utilisation", "fleetwatch_gpu_memory_copy_utilization_ratio",
         "Fraction of time device memory was read or written."),
        ("Framebuffer used", "fleetwatch_gpu_framebuffer_used_bytes", "Used framebuffer memory."),
        ("SM clock", "fleetwatch_gpu_sm_clock_hertz", "SM clock frequency."),
        ("Tensor pipe activity", "fleetwatch_gpu_tensor_active_ratio",
         "Fraction of cycles a tensor pipe was active (Hopper GPM; DCGM_FI_PROF_PIPE_TENSOR_ACTIVE)."),
        ("DRAM activity", "fleetwatch_gpu_dram_active_ratio",
         "Fraction of cycles the HBM interface was busy (Hopper GPM; DCGM_FI_PROF_DRAM_ACTIVE)."),
    ):
        d = d.with_panel(timeseries_panel(ctx, title, grafana_unit(metric), [Q(s(metric), legend=leg)], desc))
    d = d.with_panel(timeseries_panel(
        ctx, "PCIe throughput", "Bps",
        [Q(s("fleetwatch_gpu_pcie_transmit_bytes_per_second"), legend=leg + " tx"),
         Q(s("fleetwatch_gpu_pcie_receive_bytes_per_second"), legend=leg + " rx")],
        "PCIe transmit and receive throughput."))
    d = d.with_panel(timeseries_panel(
        ctx, "Performance state", "none", [Q(s("fleetwatch_gpu_performance_state"), legend=leg)],
        "P-state: 0 is maximum performance (native metric).", fill=0))
    return d
