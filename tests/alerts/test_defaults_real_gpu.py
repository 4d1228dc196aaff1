"""The built-in rules on what a real, healthy H200 under full load exposed (tests/fixtures/h200-vm): silence.

A lent H200 VM also has `ifb0`/`ifb1` (virtual, always down); the NIC rule raised them as pending until the
defaults learned to skip such interfaces.
"""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from alerts.engine import Engine
from alerts.rules import default_rules
from collector.batch import Batch
from collector.catalogue import BY_NAME
from collector.clock import ManualClock
from collector.importers.exposition import SeriesMapper
from collector.series_view import RecentWindow

REAL = Path(__file__).resolve().parents[1] / "fixtures" / "h200-vm"


def real_batch(ts_ns: int) -> Batch:
    """Every native series of the real /metrics capture as one batch at ts_ns."""
    mapper = SeriesMapper()
    b = Batch("h200", ts_ns)
    text = (REAL / "metrics-load.txt").read_text()
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            spec = BY_NAME.get(s.name) or BY_NAME.get(fam.name)
            if spec is None or spec.entity in ("source", "process"):
                continue
            labels = dict(s.labels)
            entity = mapper._native(spec, labels, None)
            b.add(spec.name, entity, s.value, tuple(labels[k] for k in spec.labels))
    return b


def test_defaults_stay_silent_on_a_healthy_real_gpu() -> None:
    clock = ManualClock()
    window = RecentWindow()
    engine = Engine(default_rules())
    first = real_batch(clock.now_ns())
    assert "fleetwatch_network_up" in first.metric and "fleetwatch_gpu_power_watts" in first.metric
    raised = []
    for _ in range(20):                     # 5 minutes at 15 s: past every rule's `for:`
        b = real_batch(clock.now_ns())
        window.add(b)
        raised += [(a.name, a.labels.get("device", a.labels.get("gpu", ""))) for a in
                   engine.evaluate(window, clock.now_ns()) if a.state in ("pending", "firing")]
        clock.advance(15)
    assert raised == []
