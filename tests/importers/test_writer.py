"""TraceWriter: staging, atomic commit, nothing left behind on failure, duplicates, chunking, option parsing."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pyarrow as pa
import pytest

from collector.batch import Event
from collector.importers._writer import (
    InputError,
    TraceWriter,
    parse_duration,
    parse_time,
    parse_timezone,
    wall_to_ns,
)
from collector.trace_io import list_trace_files, read_entities
from tests.conftest import sample_gpu
from tests.importers.helpers import assert_layout, entities, events, tree, values

DAY = 86_400 * 10**9
T0 = 1_700_000_000 * 10**9          # 2023-11-14 22:13:20 UTC
POWER = "fleetwatch_gpu_power_watts"
TEMP = "fleetwatch_gpu_temperature_celsius"


def _fill(w: TraceWriter, n: int = 10, node: str = "n1") -> None:
    for i in range(n):
        w.add(T0 + i * 10**9, node, "GPU-a", POWER, 100.0 + i)
        w.add(T0 + i * 10**9, node, "GPU-b", TEMP, 40.0 + i)


def test_fresh_trace_is_renamed_into_place(tmp_path: Path) -> None:
    out = tmp_path / "deep" / "trace"
    with TraceWriter(out) as w:
        _fill(w)
        w.add_entity(sample_gpu("n1", 0))
        w.add_event(Event(T0, "n1", "GPU-a", "xid", 79, "fell off the bus"))
        assert w.staging.parent == tmp_path / "deep" and w.staging.name.startswith(".tmp-import-")
        assert not out.exists()                      # nothing visible before the commit
        written = w.commit()
    assert all(p.is_file() for p in written)
    assert tree(tmp_path / "deep") == sorted(["trace", *(str(p.relative_to(tmp_path / "deep")) for p in written),
                                              "trace/metrics", "trace/metrics/date=2023-11-14", "trace/events",
                                              "trace/events/date=2023-11-14", "trace/entities"])
    got = values(out)
    assert got[("n1", "GPU-a", POWER, T0 + 3 * 10**9)] == 103.0
    assert len(got) == 20
    assert events(out)[0]["code"] == 79
    assert entities(out)[("n1", sample_gpu("n1", 0).id)]["labels"]["model_name"] == "NVIDIA H100 80GB HBM3"
    assert_layout(out)


def test_failure_leaves_nothing_behind_not_even_parent_directories(tmp_path: Path) -> None:
    out = tmp_path / "a" / "b" / "trace"
    with pytest.raises(RuntimeError), TraceWriter(out) as w:
        _fill(w)
        raise RuntimeError("boom")
    assert tree(tmp_path) == []


def test_keyboard_interrupt_removes_staging(tmp_path: Path) -> None:
    out = tmp_path / "trace"
    with pytest.raises(KeyboardInterrupt), TraceWriter(out, flush_samples=5) as w:
        _fill(w, 50)                                 # forces staged chunks on disk first
        assert any(w.staging.rglob("*.parquet"))
        raise KeyboardInterrupt
    assert tree(tmp_path) == []


def test_import_into_existing_trace_adds_files_and_merges_entities(tmp_path: Path) -> None:
    out = tmp_path / "trace"
    with TraceWriter(out) as w:
        _fill(w, node="n1")
        w.add_entity(sample_gpu("n1", 0))
        first = w.commit()
    before = {p: p.read_bytes() for p in first if "entities" not in str(p)}
    with TraceWriter(out) as w:
        assert w.staging.parent == out               # staged inside the existing trace, hidden
        _fill(w, node="n2")
        w.add_entity(sample_gpu("n2", 1))
        w.add_entity(sample_gpu("n1", 0).__class__(kind="gpu", node="n1", id=sample_gpu("n1", 0).id,
                                                    labels=("n1", "", "", "", "", "", "")))
        second = w.commit()
    assert set(before).isdisjoint(second)
    assert out / "entities" / "entities.parquet" in second       # the one file replaced (atomically)
    assert all(p.read_bytes() == b for p, b in before.items())   # existing files untouched
    assert {k[0] for k in values(out)} == {"n1", "n2"}
    ents = entities(out)
    assert set(ents) == {("n1", sample_gpu("n1", 0).id), ("n2", sample_gpu("n2", 1).id)}
    # what the trace already knew about an entity wins over an import's poorer labels
    assert ents[("n1", sample_gpu("n1", 0).id)]["labels"]["gpu"] == "0"
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    assert_layout(out)


def test_failure_into_existing_trace_leaves_it_as_it_was(tmp_path: Path) -> None:
    out = tmp_path / "trace"
    with TraceWriter(out) as w:
        _fill(w)
        w.add_entity(sample_gpu("n1", 0))
        w.commit()
    snapshot = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(ValueError), TraceWriter(out, flush_samples=3) as w:
        for i in range(20):
            w.add(T0 + 5 * DAY + i, "n9", "GPU-z", POWER, 1.0)   # a new day partition, staged chunks
        w.add_entity(sample_gpu("n9", 3))
        raise ValueError("bad line")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == snapshot
    assert sorted(p.name for p in (out / "metrics").iterdir()) == ["date=2023-11-14"]


def test_failure_while_linking_unlinks_what_was_committed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "trace"
    with TraceWriter(out) as w:
        _fill(w)
        w.commit()
    snapshot = tree(out)
    real_link = os.link
    calls = []

    def flaky_link(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("disk full")
        real_link(src, dst)

    monkeypatch.setattr(os, "link", flaky_link)
    with pytest.raises(OSError, match="disk full"), TraceWriter(out) as w:
        for day in range(3):
            w.add(T0 + day * DAY, "n1", "GPU-a", POWER, 1.0)
        w.commit()
    assert len(calls) == 2
    assert tree(out) == snapshot


def test_duplicates_keep_the_higher_rank_then_the_last(tmp_path: Path) -> None:
    out = tmp_path / "trace"
    with TraceWriter(out) as w:
        w.series("n", "GPU-a", POWER, rank=1).add(T0, 10.0)        # native
        w.series("n", "GPU-a", POWER, rank=0).add(T0, 99.0)        # dcgm, same reading: loses
        w.series("n", "GPU-a", POWER, rank=0).add(T0 + 1, 5.0)     # only dcgm at this time: kept
        s = w.series("n", "GPU-a", TEMP)
        s.add(T0 + 2, 1.0)
        s.add(T0 + 1, 2.0)                                          # out of order
        s.add(T0 + 2, 3.0)                                          # same time again: the later wins
        w.added(6)
        w.commit()
    assert values(out) == {("n", "GPU-a", POWER, T0): 10.0, ("n", "GPU-a", POWER, T0 + 1): 5.0,
                           ("n", "GPU-a", TEMP, T0 + 1): 2.0, ("n", "GPU-a", TEMP, T0 + 2): 3.0}


@pytest.mark.parametrize("flush", [5, 37, 10**9], ids=["tiny-chunks", "small-chunks", "one-chunk"])
@pytest.mark.parametrize("merge_rows", [10**9, 1], ids=["merged", "unmerged"])
def test_chunked_writes_give_the_same_rows(tmp_path: Path, flush: int, merge_rows: int) -> None:
    out = tmp_path / "trace"
    expected = {}
    with TraceWriter(out, flush_samples=flush, merge_rows=merge_rows) as w:
        for i in range(60):
            ts = T0 + i * 3600 * 10**9                   # 60 hours: three day partitions
            for node, gpu in (("n2", "GPU-b"), ("n1", "GPU-a")):
                w.add(ts, node, gpu, POWER, float(i))
                w.series(node, gpu, TEMP, rank=i % 2).add(ts, float(-i))
                w.added(1)
                expected[(node, gpu, POWER, ts)] = float(i)
                expected[(node, gpu, TEMP, ts)] = float(-i)
        w.commit()
    assert values(out) == expected
    days = sorted(p.name for p in (out / "metrics").iterdir())
    assert days == ["date=2023-11-14", "date=2023-11-15", "date=2023-11-16", "date=2023-11-17"]
    if merge_rows > 1:
        assert len(list_trace_files(out, "metrics")) == 4       # one file per day
    assert_layout(out)


def test_dictionary_encoded_columns_and_units(tmp_path: Path) -> None:
    out = tmp_path / "trace"
    with TraceWriter(out) as w:
        _fill(w, 3)
        w.commit()
    import pyarrow.parquet as pq
    t = pq.read_table(list_trace_files(out, "metrics")[0])
    for col in ("node", "entity", "metric", "unit"):
        assert pa.types.is_dictionary(t.schema.field(col).type)
    units = dict(zip(t.column("metric").to_pylist(), t.column("unit").to_pylist(), strict=True))
    assert units == {POWER: "watts", TEMP: "celsius"}


def test_unknown_metric_is_refused(tmp_path: Path) -> None:
    with TraceWriter(tmp_path / "t") as w, pytest.raises(ValueError, match="not a recorded catalogue metric"):
        w.series("n", "e", "fleetwatch_source_up")
    assert tree(tmp_path) == []


def test_empty_import_creates_nothing(tmp_path: Path) -> None:
    with TraceWriter(tmp_path / "t") as w:
        assert w.commit() == []
    assert tree(tmp_path) == []


def test_a_file_in_the_way_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "t").write_text("x")
    with pytest.raises(InputError, match="not a directory"):
        TraceWriter(tmp_path / "t")


def test_entities_only_trace_is_readable(tmp_path: Path) -> None:
    with TraceWriter(tmp_path / "t") as w:
        w.add_entity(sample_gpu())
        w.commit()
    assert read_entities(tmp_path / "t").num_rows == 1


@pytest.mark.parametrize(("text", "ns"), [
    ("2024-05-01T12:00:00Z", 1714564800 * 10**9),
    ("2024-05-01T14:00:00+02:00", 1714564800 * 10**9),
    ("2024-05-01T12:00:00.123456789Z", 1714564800 * 10**9 + 123456789),
    ("2024-05-01 12:00:00", 1714564800 * 10**9),
    ("1714564800", 1714564800 * 10**9),
    ("1714564800.25", 1714564800 * 10**9 + 250_000_000),
    ("now", 5000 * 10**9),
    ("-1h", 1400 * 10**9),
    ("now-30m", 3200 * 10**9),
], ids=["rfc3339-z", "rfc3339-offset", "nanoseconds", "naive-utc", "unix", "unix-fraction", "now", "relative",
        "now-relative"])
def test_parse_time(text: str, ns: int) -> None:
    assert parse_time(text, now_ns=5000 * 10**9) == ns


@pytest.mark.parametrize("text", ["yesterday", "2024-13-01T00:00:00Z", "-1x", ""], ids=str)
def test_parse_time_rejects(text: str) -> None:
    with pytest.raises(InputError, match="cannot parse"):
        parse_time(text)


@pytest.mark.parametrize(("text", "ns"), [("15s", 15 * 10**9), ("1h30m", 5400 * 10**9), ("500ms", 5 * 10**8),
                                          ("2.5", 25 * 10**8), ("1d", 86400 * 10**9)], ids=str)
def test_parse_duration(text: str, ns: int) -> None:
    assert parse_duration(text) == ns


@pytest.mark.parametrize("text", ["15", "1h-", "m", "-5"], ids=str)
def test_parse_duration_rejects(text: str) -> None:
    if text == "15":
        assert parse_duration(text) == 15 * 10**9
        return
    with pytest.raises(InputError):
        parse_duration(text)


def test_timezones() -> None:
    wall = dt.datetime(2024, 7, 1, 12, 0, 0)
    utc = wall_to_ns(wall, parse_timezone(None))
    assert utc == 1719835200 * 10**9
    assert wall_to_ns(wall, parse_timezone("+02:00")) == utc - 2 * 3600 * 10**9
    assert wall_to_ns(wall, parse_timezone("Europe/Paris")) == utc - 2 * 3600 * 10**9     # summer time
    assert wall_to_ns(dt.datetime(2024, 1, 1, 12), parse_timezone("Europe/Paris")) == \
        wall_to_ns(dt.datetime(2024, 1, 1, 11), parse_timezone("UTC"))
    assert parse_timezone("local") is None
    with pytest.raises(InputError, match="unknown time zone"):
        parse_timezone("Mars/Olympus")


def test_filesystem_without_hard_links_falls_back_to_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    out = tmp_path / "trace"
    with TraceWriter(out) as w:
        _fill(w)
        w.commit()

    def no_links(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    with TraceWriter(out) as w:
        _fill(w, node="n2")
        written = w.commit()
    assert {k[0] for k in values(out)} == {"n1", "n2"}
    assert all(p.is_file() for p in written)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
