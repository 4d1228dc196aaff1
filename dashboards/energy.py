"""Energy: power by node, energy per day, cost and carbon, the power forecast, and PUE when configured."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.models import dashboard as dm

from dashboards.builder import Ctx, Q, dashboard, row, stat_panel, text_panel, timeseries_panel, variables

UID = "fleetwatch-energy"
JOULES_PER_KWH = 3.6e6
DEFAULT_PRICE_PER_KWH = "0.15"
DEFAULT_GCO2_PER_KWH = "400"


def build(ctx: Ctx) -> db.Dashboard:
    """The energy dashboard."""
    d = dashboard(ctx, UID, "fleetwatch / Energy",
                  "GPU power and energy, what it costs and emits, and the power forecast.", ["energy"])
    for v in variables(ctx, gpu=False):
        d = d.with_variable(v)
    # Text boxes rather than constants: the site's tariff and grid intensity are edited in the UI.
    d = d.with_variable(db.TextBoxVariable("price_per_kwh").label("Price per kWh")
                        .default_value(DEFAULT_PRICE_PER_KWH)
                        .current(dm.VariableOption(text=DEFAULT_PRICE_PER_KWH, value=DEFAULT_PRICE_PER_KWH)))
    d = d.with_variable(db.TextBoxVariable("gco2_per_kwh").label("gCO2 per kWh")
                        .default_value(DEFAULT_GCO2_PER_KWH)
                        .current(dm.VariableOption(text=DEFAULT_GCO2_PER_KWH, value=DEFAULT_GCO2_PER_KWH)))
    n = ctx.node_label
    power = ctx.sel("fleetwatch_gpu_power_watts")
    metric = "fleetwatch_gpu_energy_joules_total"
    kwh_range = f"(sum({ctx.over('increase', metric, '$__range')}) / {JOULES_PER_KWH:g})"
    day = ctx.over("increase", metric, "1d")
    d = d.with_row(row(ctx, "Selected time range"))
    d = d.with_panel(stat_panel(ctx, "GPU energy", "kwatth", [Q(kwh_range, instant=True)],
                                "Energy used by the selected nodes' GPUs over the dashboard's time range.", w=6))
    d = d.with_panel(stat_panel(ctx, "Cost", "currencyUSD", [Q(f"{kwh_range} * $price_per_kwh", instant=True)],
                                "GPU energy × the price-per-kWh variable (edit it at the top; the currency "
                                "symbol is only a unit label).", w=6))
    d = d.with_panel(stat_panel(ctx, "Carbon", "masskg",
                                [Q(f"{kwh_range} * $gco2_per_kwh / 1000", instant=True)],
                                "GPU energy × the gCO2-per-kWh variable (your grid's carbon intensity).", w=6))
    d = d.with_panel(stat_panel(
        ctx, "PUE", "none",
        [Q(f"sum(fleetwatch_facility_power_watts) / sum({ctx.sel('fleetwatch_node_power_watts', node=False)})",
           instant=True)],
        "Power usage effectiveness: facility power over IT (node) power. Needs a facility power meter "
        "(energy.facility_power_query); the forecaster's fleetwatch_pue_ratio divides by GPU power instead.",
        w=6))
    d = d.with_row(row(ctx, "Power and energy"))
    d = d.with_panel(timeseries_panel(
        ctx, "GPU power by node", "watt", [Q(f"sum {ctx.by('node')} ({power})", legend=f"{{{{{n}}}}}")],
        "Sum of GPU board power per node.", stack=True, fill=30))
    d = d.with_panel(timeseries_panel(
        ctx, "Node power (BMC) vs GPU power", "watt",
        [Q(f"sum by (node) ({ctx.sel('fleetwatch_node_power_watts')})", legend="{{node}} node"),
         Q(f"sum {ctx.by('node')} ({power})", legend=f"{{{{{n}}}}} GPUs")],
        "Whole-node power from the BMC (native metric) next to its GPUs' share."))
    d = d.with_panel(timeseries_panel(
        ctx, "GPU energy per day", "kwatth",
        [Q(f"sum {ctx.by('node')} ({day}) / {JOULES_PER_KWH:g}", legend=f"{{{{{n}}}}}")],
        "Energy per node over the trailing day (increase of the energy counter over 1d).", fill=20))
    d = d.with_panel(timeseries_panel(
        ctx, "Cost per day", "currencyUSD",
        [Q(f"sum({day}) / {JOULES_PER_KWH:g} * $price_per_kwh", legend="cost")],
        "Trailing-day GPU energy cost at the price-per-kWh variable.", fill=20))
    d = d.with_row(row(ctx, "Forecast"))
    fc = 'fleetwatch_power_forecast_watts{scope="fleet"'
    d = d.with_panel(timeseries_panel(
        ctx, "Fleet power forecast", "watt",
        [Q(f"sum({power})", legend="actual"),
         Q(f'{fc},quantile="0.5"}}', legend="forecast (median) {{horizon}}"),
         Q(f'{fc},quantile="0.1"}}', legend="p10 {{horizon}}"),
         Q(f'{fc},quantile="0.9"}}', legend="p90 {{horizon}}")],
        "Actual fleet GPU power with the forecast's median and its 10–90 % band (the 80 % interval), per "
        "horizon; the forecast is drawn at the time it was made, not at the time it is for.",
        w=16, fill=0))
    d = d.with_panel(stat_panel(
        ctx, "Energy forecast, next 24 h", "joule",
        [Q('sum(fleetwatch_energy_forecast_joules{scope="fleet",horizon="24h",quantile="0.5"})', instant=True)],
        "Forecast fleet GPU energy over the next day (median).", w=8, h=8))
    d = d.with_panel(text_panel(ctx, "About these numbers",
                                "Energy comes from each GPU's own energy counter (NVML), not from integrating "
                                "samples. Cost and carbon use the two text boxes at the top; set them to your "
                                "tariff and your grid's intensity. PUE appears once fleetwatch reads a facility "
                                "power meter (`energy.facility_power_query`: "
                                "`fleetwatch_facility_power_watts`)."))
    return d
