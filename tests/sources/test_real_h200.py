"""What fleetwatch read from a real NVIDIA H200 (tests/fixtures/h200-vm), checked against the device model,
the catalogue and nvidia-smi's own log of the same minute."""

from __future__ import annotations

import json
import subprocess
from collections import defaultdict
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from collector.catalogue import METRICS
from collector.clock import ManualClock
from collector.exposition import Renderer
from collector.importers.nvidia_smi import import_nvidia_smi
from collector.sim.nvml_model import NvmlDeviceModel, state_from_profile
from collector.source import SourceContext
from collector.sources.nvml import NvmlSource
from fleetwatch.analysis.query import analyze
from fleetwatch.cli import main
from tests.conftest import require_tool

REAL = Path(__file__).resolve().parents[1] / "fixtures" / "h200-vm"


def series(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """metric name → [(labels, value)] of an exposition text."""
    out: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[s.name].append((dict(s.labels), s.value))
    return out


def model_exposition(names: str) -> str:
    """The exposition of one collection from the device model's H200 profile."""
    model = NvmlDeviceModel([state_from_profile("h200", 0, seed="vm")])
    src = NvmlSource(SourceContext(node="vm", clock=ManualClock(start_ns=10**18)), model, xid_wait_ms=20)
    try:
        src.collect(1)              # the first call opens NVML and enumerates; the second reads counters
        batch = src.collect(2)
    finally:
        src.shutdown()
        src._jobs.put(None)
    return Renderer(names).render_text([batch]).decode()


def test_model_exposes_every_gpu_series_the_real_h200_did() -> None:
    real = series((REAL / "metrics-load.txt").read_text())
    modelled = series(model_exposition("both"))
    gpu_names = {n for n in real if n.startswith(("fleetwatch_gpu_", "DCGM_FI_"))}
    assert len(gpu_names) > 50
    missing = sorted(gpu_names - set(modelled))
    assert not missing, f"the device model lacks series a real H200 exposes: {missing}"
    # ... and nothing the card lacks, except NVLink: the profile is an 8-GPU HGX board, the lent card a
    # single pass-through GPU. (Retired pages, fan speed: NOT_SUPPORTED on both.)
    extra = {n for n in modelled if n.startswith(("fleetwatch_gpu_", "DCGM_FI_")) and n not in gpu_names}
    assert extra and all("NVLINK" in n.upper() for n in extra), sorted(extra)
    for name in gpu_names:      # same label names: dashboards written against the model work on hardware
        assert {frozenset(lbl) for lbl, _ in real[name]} == {frozenset(lbl) for lbl, _ in modelled[name]}, name


def test_dcgm_and_native_names_agree_on_real_readings() -> None:
    real = series((REAL / "metrics-load.txt").read_text())
    checked = 0
    for spec in METRICS:
        if not spec.dcgm or spec.dcgm not in real or spec.name not in real:
            continue
        native = {lbl.get("reason", ""): v for lbl, v in real[spec.name]}
        for lbl, v in real[spec.dcgm]:
            key = lbl.get("reason", "")
            if key in native:
                assert abs(v - native[key] * spec.dcgm_scale) <= 1e-6 * max(1.0, abs(v)), (spec.name, v, native[key])
                checked += 1
    assert checked >= 20


def test_real_readings_are_plausible() -> None:
    real = {n: v[0][1] for n, v in series((REAL / "metrics-load.txt").read_text()).items() if len(v) == 1}
    assert 600 < real["fleetwatch_gpu_power_watts"] <= real["fleetwatch_gpu_power_limit_watts"] == 700
    assert real["fleetwatch_gpu_utilization_ratio"] == 1
    assert real["fleetwatch_gpu_framebuffer_total_bytes"] == 150754820096      # 143,771 MiB as nvidia-smi says
    assert 0.5 < real["fleetwatch_gpu_tensor_active_ratio"] <= 1                 # GPM works on an H200
    idle = {n: v[0][1] for n, v in series((REAL / "metrics-idle.txt").read_text()).items() if len(v) == 1}
    assert idle["fleetwatch_gpu_power_watts"] < 150
    assert real["fleetwatch_gpu_energy_joules_total"] > idle["fleetwatch_gpu_energy_joules_total"]


def test_promtool_accepts_the_real_native_exposition() -> None:
    promtool = require_tool("promtool")
    text = (REAL / "metrics-load.txt").read_text()
    native = "".join(line + "\n" for line in text.splitlines()
                     if "DCGM_" not in line.split(" ")[0] and "DCGM_" not in line[:12])
    res = subprocess.run([promtool, "check", "metrics"], input=native, capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stdout + res.stderr


def test_nvidia_smi_log_of_the_same_run_imports_and_analyzes(tmp_path: Path) -> None:
    out = tmp_path / "trace"
    import_nvidia_smi([REAL / "smi-log.csv"], out, progress=False)
    [rec] = analyze([out]).to_pylist()
    assert rec["uuid"] == "GPU-6cd01cf9-8bb4-3391-ab46-3753fefec570"
    assert rec["samples"] == 61
    assert 690 < rec["power_max_w"] < 700
    # The matmul load held the board at its 700 W cap: nvidia-smi reported SW power cap (0x4) throughout.
    assert rec["throttled_s_sw_power_cap"] > 30
    # ~35 s near 692 W plus ~26 s near 80 W: about 26 kJ.
    assert 0.006 < rec["energy_kwh"] < 0.0085


def test_analyze_takes_the_service_data_dir(tmp_path: Path, capsys) -> None:
    import_nvidia_smi([REAL / "smi-log.csv"], tmp_path / "data" / "traces", progress=False)
    assert main(["analyze", str(tmp_path / "data"), "--format", "json"]) == 0
    [rec] = json.loads(capsys.readouterr().out)
    assert rec["samples"] == 61
