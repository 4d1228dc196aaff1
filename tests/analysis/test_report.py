"""The HTML report: sections, embedded plots, no external resources, XID meanings, ranking, escaping, errors."""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from collector.sim.faults import parse_inject
from collector.sim.offline import DEFAULT_START_NS, generate_trace
from collector.trace_io import SCHEMAS, TraceError, list_trace_files, read_events, read_ground_truth
from collector.xid import lookup
from fleetwatch.analysis.report import (
    PREDICTOR_SECTIONS,
    STACK_MAX_NODES,
    GpuHealth,
    health_score,
    render_report,
    write_report,
)
from fleetwatch.cli import main

HOUR_NS = 3600 * 10**9
SECTIONS = ("summary", "power", "energy", "temperature", "throttling", "errors", "unhealthy",
            *(sid for sid, _, _ in PREDICTOR_SECTIONS))
INJECTS = ("hbm-degradation@node-0/1+2h", "sudden-off-bus@node-1/0+5h", "thermal@node-0/3+1h")
HOSTILE = "<img src=x onerror=alert(1)>\"&'$x$"
HOSTILE_DETAIL = "<script>alert('xid')</script>"


@pytest.fixture(scope="module")
def trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 hours of 2 nodes × 4 GPUs at 1-minute samples with three injected faults that all fail."""
    out = tmp_path_factory.mktemp("report") / "trace"
    generate_trace(out, nodes=2, gpus_per_node=4, days=0.5, seed=1, interval_s=60,
                   injects=[parse_inject(s) for s in INJECTS])
    return out


@pytest.fixture(scope="module")
def report(trace: Path) -> str:
    """The report of the whole trace."""
    return render_report([trace])


class _Collector(HTMLParser):
    """Collects tags, attributes and the <svg> elements' child tags of a document."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def _parse(doc: str) -> list[tuple[str, dict[str, str | None]]]:
    p = _Collector()
    p.feed(doc)
    return p.tags


def _unhealthy_uuids(doc: str) -> list[str]:
    table = doc[doc.index('<table class="unhealthy">'):]
    table = table[:table.index("</table>")]
    return re.findall(r"<code>(GPU-[0-9a-f-]+)</code>", table)


def test_every_section_is_present_in_order(report: str) -> None:
    positions = [report.index(f'<section id="{sid}"') for sid in SECTIONS]
    assert positions == sorted(positions)
    for sid in SECTIONS:
        assert f'href="#{sid}"' in report                   # the navigation links each section
    assert report.startswith("<!DOCTYPE html>") and report.rstrip().endswith("</html>")


def test_summary_header_counts_the_trace(report: str) -> None:
    summary = report[report.index('<section id="summary"'):report.index('<section id="power"')]
    assert "2026-01-01 00:00:00 UTC → 2026-01-01 11:59:00 UTC" in summary
    assert re.search(r"Nodes</th><td>2<", summary) and re.search(r"GPUs</th><td>8<", summary)
    assert re.search(r"GPU samples</th><td>[\d,]+ \(every 1 min 00 s\)", summary)
    energy = float(re.search(r"GPU energy</th><td>([\d.,]+) kWh", summary).group(1).replace(",", ""))
    # 8 GPUs for 12 h at a few hundred watts at most: between idle-only and all-at-TDP.
    assert 8 * 12 * 0.05 < energy < 8 * 12 * 0.7


def test_plots_are_inline_svg_with_titles_and_units(report: str) -> None:
    tags = _parse(report)
    plots = [a for t, a in tags if t == "svg" and a.get("role") == "img"]
    # power, energy, heatmap, throttling, errors; the predictor sections (PREDICTOR_SECTIONS) add their own
    own = [a for a in plots if not a["aria-labelledby"].startswith(tuple(sid for sid, _, _ in PREDICTOR_SECTIONS))]
    assert len(own) == 5
    for a in plots:
        title_id, desc_id = a["aria-labelledby"].split()
        assert f'<title id="{title_id}">' in report and f'<desc id="{desc_id}">' in report
    for label in ("GPU power (kW)", "GPU energy (kWh)", "GPU temperature (°C)", "time (UTC)", "GPU (node/index)"):
        assert label in report, label
    # the heatmap raster rides inside its SVG as a data URI
    assert re.search(r'href="data:image/png;base64,[A-Za-z0-9+/=\s]{200,}"', report)
    ids = [a["id"] for _, a in tags if a.get("id")]
    assert len(ids) == len(set(ids)), "element ids repeat across figures"


def test_no_external_resources(report: str) -> None:
    assert not re.search(r"https?://", report)
    assert not re.search(r"<(script|link|iframe|object|embed)\b", report, re.I)
    assert "@import" not in report and "@font-face" not in report
    for _tag, attrs in _parse(report):
        for name in ("src", "href", "xlink:href"):
            value = attrs.get(name)
            if value is not None:
                assert value.startswith(("#", "data:")), (name, value[:80])
    assert len(report) < 1_500_000                             # downsampled: reasonably small


def test_xid_meanings_for_every_xid_in_the_trace(trace: Path, report: str) -> None:
    events = read_events(trace, kinds=["xid"])
    codes = set(events.column("code").to_pylist())
    assert codes >= {63, 79, 94}
    errors = report[report.index('<section id="errors"'):report.index('<section id="unhealthy"')]
    for code in codes:
        info = lookup(code)
        assert info is not None
        assert html.escape(info.mnemonic) in errors and html.escape(info.description) in errors
        assert html.escape(info.immediate_action) in errors
    assert "critical</span>" in errors                        # XID 79's severity badge


def test_failing_gpus_rank_at_the_top(trace: Path, report: str) -> None:
    truth = read_ground_truth(trace)
    assert truth is not None
    failed = {e for e, f in zip(truth.column("entity").to_pylist(), truth.column("failure").is_valid().to_pylist(),
                                strict=True) if f}
    assert len(failed) == 3
    ranked = _unhealthy_uuids(report)
    assert set(ranked[:3]) == failed
    assert "GPU lost" in report and "HW/thermal throttling" in report


def test_health_score_orders_findings() -> None:
    def h(**kw: float) -> float:
        return health_score(GpuHealth(uuid="u", node="n", name="n/0", **kw))
    assert h() == 0
    assert h(lost=True) > h(critical_xids=1) > h(other_xids=1) > 0
    assert h(ecc_uncorrected=1) > h(remapped_correctable=1)
    # a flood of benign XIDs does not outrank one lost GPU
    assert h(other_xids=1000) < h(lost=True)
    assert h(throttle_s=7200) > h(throttle_s=300) > 0


def _rename_node(src: Path, dst: Path, old: str, new: str) -> None:
    """Copy a trace with one node renamed in every table and every event's detail replaced by HOSTILE_DETAIL."""
    for table in SCHEMAS:
        for f in list_trace_files(src, table):
            t = pq.read_table(f)
            col = t.column("node")
            plain = col.cast(pa.string()) if pa.types.is_dictionary(col.type) else col
            renamed = pc.if_else(pc.equal(plain, old), new, plain)
            if pa.types.is_dictionary(col.type):
                renamed = renamed.dictionary_encode().cast(col.type)
            t = t.set_column(t.schema.get_field_index("node"), t.schema.field("node"), renamed)
            if table == "events":
                detail = pa.array([HOSTILE_DETAIL] * t.num_rows, pa.string())
                t = t.set_column(t.schema.get_field_index("detail"), t.schema.field("detail"), detail)
            out = dst / f.relative_to(src)
            out.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(t.replace_schema_metadata(SCHEMAS[table].metadata), out)


def test_hostile_node_name_and_detail_are_escaped(trace: Path, tmp_path: Path) -> None:
    bad = tmp_path / "hostile"
    _rename_node(trace, bad, "node-0", HOSTILE)
    doc = render_report([bad])
    assert HOSTILE not in doc
    assert "<img" not in doc and "onerror=alert" not in doc.replace("onerror=alert(1)&gt;", "")
    assert html.escape(HOSTILE) in doc                       # tables and captions show it, escaped
    assert "<script" not in doc and html.escape(HOSTILE_DETAIL) in doc      # event details in the event list
    # matplotlib draws it in the plots too (legend, tick labels), as escaped SVG text, '$' not as mathtext
    svg_text = re.findall(r"<text[^>]*>([^<]*)</text>", doc)
    assert any("&lt;img src=x onerror=alert(1)&gt;" in t for t in svg_text)
    assert any("$x$" in html.unescape(t) for t in svg_text)


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "missing", "no such trace directory"),
    (lambda p: (p / "file.txt").write_text("x") and p / "file.txt", "not a trace directory"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "not a fleetwatch trace"),
], ids=["missing", "file", "empty-dir"])
def test_non_trace_path_is_a_clear_error(tmp_path: Path, make: Callable[[Path], Path],
                                         message: str) -> None:
    path = make(tmp_path)
    with pytest.raises(TraceError, match=re.escape(str(path))) as err:
        render_report([path])
    assert message in str(err.value)


def test_foreign_parquet_file_is_named(tmp_path: Path) -> None:
    day = tmp_path / "t" / "metrics" / "date=2026-01-01"
    day.mkdir(parents=True)
    pq.write_table(pa.table({"a": [1]}), day / "part-0.parquet")
    with pytest.raises(TraceError, match=r"part-0\.parquet: not a fleetwatch trace file"):
        render_report([tmp_path / "t"])


def test_cli_writes_the_report(trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.html"
    assert main(["report", str(trace), "-o", str(out), "--top", "3"]) == 0
    doc = out.read_text(encoding="utf-8")
    assert "Top 3 unhealthy GPUs" in doc and len(_unhealthy_uuids(doc)) == 3
    assert str(out) in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]          # no temp file left behind


def test_cli_non_trace_path_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.html"
    out.write_text("the previous report")
    assert main(["report", str(tmp_path / "nope"), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "nope") in err and "no such trace directory" in err
    assert out.read_text() == "the previous report"                      # a failed run loses nothing


def test_cli_bad_time_exits_2(trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(trace), "-o", str(tmp_path / "r.html"), "--start", "yesterday"]) == 2
    assert "bad time 'yesterday'" in capsys.readouterr().err


def test_window_limits_every_section(trace: Path) -> None:
    start = DEFAULT_START_NS
    doc = render_report([trace], start_ns=start, end_ns=start + 2 * HOUR_NS)
    assert "Window</th>" in doc
    assert "2026-01-01 00:00:00 UTC → 2026-01-01 01:59:00 UTC" in doc
    # the GPU falls off the bus at +5 h: outside the window, so no XID 79 and no lost GPU
    assert "ROBUST_CHANNEL_GPU_HAS_FALLEN_OFF_THE_BUS" not in doc and "GPU lost;" not in doc
    truth = read_ground_truth(trace)
    assert truth is not None
    thermal = truth.column("entity")[truth.column("kind").to_pylist().index("thermal")].as_py()
    assert _unhealthy_uuids(doc)[0] == thermal                # the thermal fault starts at +1 h


def test_window_without_data_still_renders(trace: Path) -> None:
    start = DEFAULT_START_NS + 48 * HOUR_NS
    doc = render_report([trace], start_ns=start, end_ns=start + HOUR_NS)
    for sid in SECTIONS:
        assert f'<section id="{sid}"' in doc
    assert "no data in the window" in doc and "<svg" not in doc


def test_two_traces_with_a_gap_share_one_time_axis(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    generate_trace(a, nodes=1, gpus_per_node=2, days=2 / 24, seed=4, interval_s=60)
    generate_trace(b, nodes=1, gpus_per_node=2, days=2 / 24, seed=4, interval_s=60,
                   start_ns=DEFAULT_START_NS + 6 * HOUR_NS)
    doc = render_report([a, b])
    assert "2026-01-01 00:00:00 UTC → 2026-01-01 07:59:00 UTC" in doc
    assert re.search(r"GPUs</th><td>2<", doc)                  # the same GPUs, seen in both traces
    # 1-minute buckets over 8 hours: the 4-hour outage keeps its 240 empty buckets on the time axis
    assert "(480 points per node)" in doc


def test_unwritable_output_exits_2(trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "missing-dir" / "r.html"
    # A window after the trace's end renders in no time; writing it is what fails.
    assert main(["report", str(trace), "-o", str(out), "--start", "2026-01-03", "--end", "2026-01-03T01:00:00Z"]) == 2
    assert f"{out}: cannot write the report" in capsys.readouterr().err


def test_many_nodes_fold_into_other(tmp_path: Path) -> None:
    out = tmp_path / "wide"
    generate_trace(out, nodes=STACK_MAX_NODES + 2, gpus_per_node=1, days=0.02, seed=2, interval_s=120)
    doc = render_report([out])
    # 14 nodes: the 11 biggest stacked one by one, the 3 others folded into one band
    assert f"{STACK_MAX_NODES + 2 - (STACK_MAX_NODES - 1)} other nodes" in doc


def test_write_report_is_atomic_and_reversed_window_fails(trace: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="window is empty"):
        write_report([trace], tmp_path / "r.html", start_ns=DEFAULT_START_NS + HOUR_NS, end_ns=DEFAULT_START_NS)
    assert list(tmp_path.iterdir()) == []
