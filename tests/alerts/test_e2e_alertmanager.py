"""End to end: `fleetwatch run --simulate --inject gpu-lost... --alertmanager URL` → a real Alertmanager."""

from __future__ import annotations

from pathlib import Path

from tests.alerts.amhelpers import RealAlertmanager
from tests.test_e2e_prometheus import http_get, start_fleetwatch, stop, wait_until


def test_run_sends_gpu_lost_for_the_injected_gpu(tmp_path: Path) -> None:
    am = RealAlertmanager(tmp_path).start()
    am.stop()          # down at first: the alert must wait in the outbox and arrive once it is back
    # The simulated clock starts again when the service starts running (ScaledClock.restart), just before the
    # agent's first round, in which the NVML source discovers the GPUs (a GPU lost before discovery has no
    # UUID): at --speed 20 the fault (+60 s, then its 30 s of PCIe replays) strikes ~4.5 s after that round.
    proc, port = start_fleetwatch(tmp_path, "--simulate", "2x4", "--seed", "3", "--speed", "20", "--no-record",
                                  "--inject", "gpu-lost@node-0/3+60s", "--alertmanager", am.url)
    try:
        def outboxed() -> bool:
            _, body = http_get(f"http://127.0.0.1:{port}/metrics")
            line = next((ln for ln in body.splitlines()
                         if ln.startswith("fleetwatch_alertmanager_outbox_alerts{")), "")
            return bool(line) and float(line.rsplit(" ", 1)[1]) >= 1
        wait_until(outboxed, 60, "an alert waiting in the outbox", proc)
        am.start()
        got = wait_until(lambda: am.alerts(alertname="FleetwatchGpuLost"), 60, "FleetwatchGpuLost in Alertmanager",
                         proc)
        (alert,) = got
        labels = alert["labels"]
        assert (labels["node"], labels["gpu"], labels["severity"]) == ("node-0", "3", "critical")
        assert labels["uuid"].startswith("GPU-")
        assert "fallen off the bus" in alert["annotations"]["summary"]
        assert alert["generatorURL"].startswith(f"http://127.0.0.1:{port}/metrics")
        # only the injected GPU is lost
        assert all(a["labels"]["gpu"] == "3" for a in am.alerts(alertname="FleetwatchGpuLost"))
        _, body = http_get(f"http://127.0.0.1:{port}/metrics")
        assert 'fleetwatch_alerts_instances{state="firing"}' in body
        assert "fleetwatch_alerts_evaluations_total" in body
    finally:
        stop(proc)
        am.stop()
    assert proc.returncode == 0, proc.stdout.read() if proc.stdout else ""
