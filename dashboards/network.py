"""Network: NIC and InfiniBand throughput and errors per node."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as db

from dashboards.builder import Ctx, Q, dashboard, row, stat_panel, timeseries_panel, variables

UID = "fleetwatch-network"


def build(ctx: Ctx) -> db.Dashboard:
    """The network dashboard (native metrics: dcgm-exporter has no network series)."""
    d = dashboard(ctx, UID, "fleetwatch / Network", "NIC and InfiniBand throughput and errors.", ["network"])
    for v in variables(ctx, gpu=False):
        d = d.with_variable(v)

    def rate(metric: str, by: str = "node, device") -> str:
        return f"sum by ({by}) (rate({metric}{{node=~\"$node\"}}[$__rate_interval]))"

    d = d.with_row(row(ctx, "Ethernet / NIC"))
    d = d.with_panel(timeseries_panel(
        ctx, "NIC throughput", "Bps",
        [Q(rate("fleetwatch_network_receive_bytes_total"), legend="{{node}} {{device}} rx"),
         Q(rate("fleetwatch_network_transmit_bytes_total"), legend="{{node}} {{device}} tx")],
        "Bytes per second per interface, from /proc/net/dev."))
    d = d.with_panel(timeseries_panel(
        ctx, "NIC errors and drops", "pps",
        [Q(rate("fleetwatch_network_receive_errors_total"), legend="{{node}} {{device}} rx errors"),
         Q(rate("fleetwatch_network_transmit_errors_total"), legend="{{node}} {{device}} tx errors"),
         Q(rate("fleetwatch_network_receive_drop_total"), legend="{{node}} {{device}} rx drops"),
         Q(rate("fleetwatch_network_transmit_drop_total"), legend="{{node}} {{device}} tx drops")],
        "Errored and dropped packets per second.", fill=0))
    d = d.with_panel(stat_panel(
        ctx, "Interfaces down", "none",
        [Q('count(fleetwatch_network_up{node=~"$node"} == 0) or vector(0)', instant=True)],
        "Interfaces whose operstate is not up.", w=6, thresholds=[(None, "green"), (1, "orange")]))
    d = d.with_row(row(ctx, "InfiniBand"))
    ib_by = "node, device, port"
    d = d.with_panel(timeseries_panel(
        ctx, "InfiniBand throughput", "Bps",
        [Q(rate("fleetwatch_infiniband_port_data_received_bytes_total", ib_by),
           legend="{{node}} {{device}}/{{port}} rx"),
         Q(rate("fleetwatch_infiniband_port_data_transmitted_bytes_total", ib_by),
           legend="{{node}} {{device}}/{{port}} tx")],
        "Data per second per InfiniBand port."))
    d = d.with_panel(timeseries_panel(
        ctx, "InfiniBand errors", "cps",
        [Q(rate("fleetwatch_infiniband_port_symbol_errors_total", ib_by), legend="{{node}} {{device}}/{{port}} symbol"),
         Q(rate("fleetwatch_infiniband_port_receive_errors_total", ib_by), legend="{{node}} {{device}}/{{port}} rcv"),
         Q(rate("fleetwatch_infiniband_port_link_error_recovery_total", ib_by),
           legend="{{node}} {{device}}/{{port}} recovery")],
        "Symbol errors, receive errors and link recoveries per second: rising counts precede link flaps.",
        fill=0))
    d = d.with_panel(timeseries_panel(
        ctx, "InfiniBand link downs", "none",
        [Q(f"sum by ({ib_by}) (increase(fleetwatch_infiniband_port_link_downed_total{{node=~\"$node\"}}[1h]))",
           legend="{{node}} {{device}}/{{port}}")],
        "Times each port's link went down in the trailing hour.", fill=0))
    d = d.with_panel(stat_panel(
        ctx, "IB ports not active", "none",
        [Q('count(fleetwatch_infiniband_port_up{node=~"$node"} == 0) or vector(0)', instant=True)],
        "InfiniBand ports whose state is not ACTIVE.", w=6, thresholds=[(None, "green"), (1, "red")]))
    return d
