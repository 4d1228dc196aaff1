"""The metric catalogue: consistency with dcgm-exporter and the README's generated reference."""

from __future__ import annotations

from pathlib import Path

from collector.catalogue import BY_DCGM, METRICS, readme_with_reference
from tests.test_exposition import dcgm_default_counters

ROOT = Path(__file__).resolve().parents[1]


def test_readme_metric_reference_is_current() -> None:
    readme = (ROOT / "README.md").read_text()
    assert readme == readme_with_reference(readme), \
        "README metric reference is stale: run `python -m collector.catalogue --update-readme`"


def test_every_default_dcgm_counter_is_in_the_catalogue() -> None:
    for name, (typ, help_) in dcgm_default_counters().items():
        spec = BY_DCGM.get(name)
        assert spec is not None and spec.dcgm_default, name
        assert (spec.dcgm_type, spec.dcgm_help) == (typ, help_), name
    assert sum(m.dcgm_default for m in METRICS) == len(dcgm_default_counters())


def test_names_unique_and_documented() -> None:
    names = [m.name for m in METRICS]
    assert len(names) == len(set(names))
    for m in METRICS:
        assert m.help.strip() and m.source.strip(), m.name
        assert m.type in ("gauge", "counter"), m.name


def test_recorded_metrics_have_no_extra_labels() -> None:
    # The trace has no column for extra labels: a recorded metric's series must be told apart by entity alone.
    for m in METRICS:
        if m.record:
            assert not m.labels, m.name
