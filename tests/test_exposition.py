"""Exposition: dcgm-exporter names byte for byte, lint-clean native names, OpenMetrics, escaping."""

from __future__ import annotations

import csv
import subprocess

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse
from prometheus_client.parser import text_string_to_metric_families

from collector.batch import Batch, Entity, nvlink_entity
from collector.catalogue import CLOCK_EVENT_REASONS, DCGM_GPU_LABELS, METRICS
from collector.exposition import Renderer, format_value, render_openmetrics
from tests.conftest import FIXTURES, require_tool, sample_gpu


def dcgm_default_counters() -> dict[str, tuple[str, str]]:
    """name → (type, help) for the uncommented, non-label rows of dcgm-exporter's default-counters.csv."""
    out = {}
    with open(FIXTURES / "dcgm-exporter" / "default-counters.csv") as f:
        for row in csv.reader(f):
            if not row or row[0].lstrip().startswith("#"):
                continue
            name, typ, help_ = row[0].strip(), row[1].strip(), ",".join(row[2:]).strip()
            if typ != "label":
                out[name] = (typ, help_)
    return out


def full_batch() -> Batch:
    """Every GPU, NVLink and host metric of the catalogue for two GPUs."""
    b = Batch("test", 1_767_225_600 * 10**9)
    hosts = {
        "interface": Entity("interface", "node-0", "eth0", ("node-0", "eth0")),
        "ib_port": Entity("ib_port", "node-0", "mlx5_0/1", ("node-0", "mlx5_0", "1")),
        "rapl_zone": Entity("rapl_zone", "node-0", "package-0", ("node-0", "package-0")),
        "node": Entity("node", "node-0", "node-0", ("node-0",)),
    }
    for i in range(2):
        gpu = sample_gpu("node-0", i)
        for m in METRICS:
            if m.entity == "gpu":
                if m.labels == ("reason",):
                    for r in CLOCK_EVENT_REASONS:
                        b.add(m.name, gpu, 0.0, (r,))
                elif m.labels == ("xid",):
                    b.add(m.name, gpu, 2.0, ("79",))
                else:
                    b.add(m.name, gpu, 12.5 if m.type == "gauge" else 7.0)
            elif m.entity == "nvlink":
                b.add(m.name, nvlink_entity(gpu, 0), 3.0)
            elif m.entity in hosts and i == 0:
                b.add(m.name, hosts[m.entity], 1.0, tuple("x" for _ in m.labels))
    return b


def test_dcgm_mode_exports_exactly_default_counters() -> None:
    want = dcgm_default_counters()
    text = Renderer("dcgm").render_text([full_batch()]).decode()
    helps = {ln.split(" ", 3)[2]: ln.split(" ", 3)[3] for ln in text.splitlines() if ln.startswith("# HELP")}
    types = {ln.split()[2]: ln.split()[3] for ln in text.splitlines() if ln.startswith("# TYPE")}
    assert set(types) == set(want), set(types) ^ set(want)
    for name, (typ, help_) in want.items():
        assert types[name] == typ, name
        assert helps[name] == help_, name
    for ln in text.splitlines():
        if not ln.startswith("#"):
            labels = ln[ln.index("{") + 1: ln.index("}")]
            names = tuple(kv.split("=")[0] for kv in labels.split('",') if kv)
            assert names == DCGM_GPU_LABELS, ln


def test_dcgm_units_are_dcgm_units() -> None:
    b = Batch("t", 0)
    gpu = sample_gpu()
    b.add("fleetwatch_gpu_energy_joules_total", gpu, 2.5)          # J → mJ
    b.add("fleetwatch_gpu_framebuffer_used_bytes", gpu, 3 * 2**20)  # B → MiB
    b.add("fleetwatch_gpu_utilization_ratio", gpu, 0.93)             # ratio → %
    b.add("fleetwatch_gpu_sm_clock_hertz", gpu, 1.98e9)             # Hz → MHz
    fams = {f.name: f for f in text_string_to_metric_families(Renderer("dcgm").render_text([b]).decode())}
    val = {name: f.samples[0].value for name, f in fams.items()}
    assert val["DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"] == 2500
    assert val["DCGM_FI_DEV_FB_USED"] == 3
    assert val["DCGM_FI_DEV_GPU_UTIL"] == pytest.approx(93)
    assert val["DCGM_FI_DEV_SM_CLOCK"] == 1980
    assert fams["DCGM_FI_DEV_GPU_UTIL"].samples[0].labels["modelName"] == "NVIDIA H100 80GB HBM3"
    assert fams["DCGM_FI_DEV_GPU_UTIL"].samples[0].labels["Hostname"] == "node-0"


def test_native_exposition_is_promtool_clean(tmp_path) -> None:
    promtool = require_tool("promtool")
    text = Renderer("native").render_text([full_batch()])
    assert not any(ln.startswith(b"DCGM_") for ln in text.splitlines())
    res = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == b"" and res.stderr.strip() == b"", res


def test_native_names_follow_conventions() -> None:
    for m in METRICS:
        assert m.name.startswith("fleetwatch_"), m.name
        assert m.name == m.name.lower(), m.name
        assert (m.type == "counter") == m.name.endswith("_total"), m.name
        if m.unit and m.unit != "ratio":
            stem = m.name.removesuffix("_total")
            assert stem.endswith("_" + m.unit), m.name
        assert all(ln == ln.lower() for ln in m.labelnames), m.name


def test_both_mode_parses_and_has_one_family_per_name() -> None:
    text = Renderer("both").render_text([full_batch(), full_batch()]).decode()
    fams = list(text_string_to_metric_families(text))
    names = [f.name for f in fams]
    assert len(names) == len(set(names))
    assert "DCGM_FI_DEV_GPU_TEMP" in names and "fleetwatch_gpu_temperature_celsius" in names
    temp = next(f for f in fams if f.name == "fleetwatch_gpu_temperature_celsius")
    assert len(temp.samples) == 2          # duplicates from a second batch are dropped
    reasons = {s.labels["reason"] for f in fams if f.name == "fleetwatch_gpu_clock_event_active"
               for s in f.samples}
    assert reasons == set(CLOCK_EVENT_REASONS)


def test_openmetrics_parses() -> None:
    body = render_openmetrics(Renderer("both"), [full_batch()]).decode()
    assert body.endswith("# EOF\n")
    fams = {f.name: f for f in om_parse(body)}
    assert fams["fleetwatch_gpu_energy_joules"].type == "counter"
    # dcgm counters without _total cannot be OpenMetrics counters
    assert fams["DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"].type == "unknown"


@pytest.mark.parametrize(("value", "text"), [(1.0, "1"), (0.5, "0.5"), (float("nan"), "NaN"),
                                             (float("inf"), "+Inf"), (1e20, "1e+20"), (-3.0, "-3")],
                         ids=["int", "frac", "nan", "inf", "big", "neg"])
def test_format_value(value: float, text: str) -> None:
    assert format_value(value) == text


def test_label_values_are_escaped() -> None:
    ent = Entity("interface", 'n"0', "eth\\0", ('n"0', "eth\\0\nx"))
    b = Batch("t", 0)
    b.add("fleetwatch_network_up", ent, 1)
    fam = next(iter(text_string_to_metric_families(Renderer("native").render_text([b]).decode())))
    assert fam.samples[0].labels == {"node": 'n"0', "device": "eth\\0\nx"}


@pytest.mark.parametrize("names", ["native", "dcgm", "both"])
def test_prepared_rendering_matches_direct_rendering(names: str) -> None:
    r = Renderer(names)  # type: ignore[arg-type]
    batches = [full_batch()]
    other = Batch("other", 0)
    other.add("fleetwatch_gpu_power_watts", sample_gpu("node-1", 0), 99.0)
    batches.append(other)
    direct = r.render_text(batches)
    assert r.render_prepared([r.prepare(b) for b in batches]) == direct


def test_prepared_rendering_dedups_series_two_sources_emit() -> None:
    r = Renderer("native")
    a, b = Batch("gpu", 0), Batch("kernel_xid", 0)
    a.add("fleetwatch_gpu_xid_errors_total", sample_gpu(), 2.0, ("79",))
    b.add("fleetwatch_gpu_xid_errors_total", sample_gpu(), 5.0, ("79",))
    b.add("fleetwatch_gpu_xid_errors_total", sample_gpu(), 1.0, ("48",))
    fam = next(iter(text_string_to_metric_families(r.render_prepared([r.prepare(a), r.prepare(b)]).decode())))
    assert sorted((s.labels["xid"], s.value) for s in fam.samples) == [("48", 1.0), ("79", 2.0)]
