"""The audit log: append-only (never truncated or rewritten), every record on disk before it is acknowledged."""

from __future__ import annotations

import asyncio
import json
import stat
import threading
from pathlib import Path

import pytest

from alerts.remediation.audit import AuditLog, read_audit


def test_reopening_appends_and_never_rewrites(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    log.write("request", result="accepted")
    log.close()
    before = path.read_bytes()
    with open(path, "ab") as f:
        f.write(b'{"seq": 2, "event": "decis')          # a crash in the middle of a line
    damaged = path.read_bytes()
    log = AuditLog(path)
    log.write("decision", result="refused", reason="blast radius")
    log.close()
    after = path.read_bytes()
    assert after.startswith(damaged) and after.startswith(before)
    read = read_audit(path)
    assert [r["event"] for r in read.records] == ["request", "decision"] and read.damaged == 1
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_record_is_on_disk_when_write_returns(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    for i in range(5):
        rec = log.write("attempt", attempt=i)
        # Read through a separate file description: the line is there as soon as write() returned.
        assert json.loads(path.read_text().splitlines()[-1])["seq"] == rec["seq"]
    assert log.records == 5 and 1 <= log.fsyncs <= 5
    log.close()
    with pytest.raises(RuntimeError, match="closed"):
        log.write("late")


async def test_concurrent_writers_lose_nothing_and_keep_order(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)

    def thread_writer(k: int) -> None:
        for i in range(50):
            log.write("thread", k=k, i=i)

    threads = [threading.Thread(target=thread_writer, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    await asyncio.gather(*(log.append("async", i=i) for i in range(300)))
    for t in threads:
        t.join()
    log.close()
    recs = read_audit(path).records
    assert len(recs) == 450 == log.records
    assert [r["seq"] for r in recs] == list(range(1, 451))          # file order is sequence order
    for k in range(3):
        assert [r["i"] for r in recs if r.get("k") == k] == list(range(50))
