"""The remediation audit log: append-only JSON lines, one fsync per record, every decision including refusals."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

AUDIT_FILE_NAME = "audit.jsonl"       # under <data_dir>/remediation/


class _SyncWaiter:
    """A blocking writer's wait for its record."""

    __slots__ = ("err", "event")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.err: BaseException | None = None


_Waiter = _SyncWaiter | tuple[asyncio.AbstractEventLoop, "asyncio.Future[None]"]


def _settle(futs: list[asyncio.Future[None]], err: BaseException | None) -> None:
    for f in futs:
        if not f.done():
            if err is None:
                f.set_result(None)
            else:
                f.set_exception(err)


class AuditLog:
    """Appends records to one file opened O_APPEND (never truncated, never rewritten), fsynced before use.

    One writer thread owns the file. A record is durable (written and fsynced) when `write` or `append`
    returns, and the caller acts or answers only after that. Records that arrive while an fsync is under way
    are written together and share the next fsync (group commit, as databases do): on a disk whose fsync
    takes milliseconds, one fsync per record in turn could not keep up with a burst of alerts, while every
    record is still on disk before anything depends on it.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._cv = threading.Condition()
        # (encoded line, waiter): a waiter is an asyncio future (with its loop) or a threading.Event holder
        self._pending: list[tuple[bytes, _Waiter]] = []
        self._closed = False
        self._idle = False           # the writer sleeps on the condition (else it will look again by itself)
        self.records = 0
        self.fsyncs = 0
        self._seq = 0
        # A crash can leave a partial last line: start on a fresh line so it stays the only damaged one.
        size = os.fstat(self._fd).st_size
        if size:
            with open(self.path, "rb") as f:
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    os.write(self._fd, b"\n")
        self._thread = threading.Thread(target=self._writer, name=f"audit:{self.path.name}", daemon=True)
        self._thread.start()

    def _enqueue(self, event: str, fields: dict[str, Any], waiter: _Waiter) -> dict[str, Any]:
        with self._cv:
            if self._closed:
                raise RuntimeError(f"audit log {self.path} is closed")
            self._seq += 1
            rec = {"ts": time.time(), "seq": self._seq, "pid": os.getpid(), "event": event, **fields}
            line = json.dumps(rec, separators=(",", ":"), default=str, ensure_ascii=False) + "\n"
            self._pending.append((line.encode(), waiter))
            if self._idle:
                # Waking a thread costs a GIL hand-off; a busy writer takes the record with its next batch.
                self._idle = False
                self._cv.notify()
        return rec

    def _writer(self) -> None:
        while True:
            with self._cv:
                while not self._pending and not self._closed:
                    self._idle = True
                    self._cv.wait()
                self._idle = False
                batch, self._pending = self._pending, []
                if not batch and self._closed:
                    return
            err: BaseException | None = None
            try:
                data = b"".join(line for line, _ in batch)
                while data:                       # os.write may write less than asked
                    data = data[os.write(self._fd, data):]
                os.fsync(self._fd)
                self.fsyncs += 1
                self.records += len(batch)
            except OSError as e:
                err = e
            by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
            for _, w in batch:
                if isinstance(w, _SyncWaiter):
                    w.err = err
                    w.event.set()
                else:
                    by_loop.setdefault(w[0], []).append(w[1])
            for loop, futs in by_loop.items():    # one wake-up per loop and batch, not per record
                with contextlib.suppress(RuntimeError):          # that loop has closed meanwhile
                    loop.call_soon_threadsafe(_settle, futs, err)

    def write(self, event: str, **fields: Any) -> dict[str, Any]:
        """Append one record {ts, seq, pid, event, ...fields}; returns it once it is on disk (blocking)."""
        waiter = _SyncWaiter()
        rec = self._enqueue(event, fields, waiter)
        waiter.event.wait()
        if waiter.err is not None:
            raise waiter.err
        return rec

    def submit(self, event: str, **fields: Any) -> asyncio.Future[None]:
        """Queue one record from the event loop; the returned future is done once the record is on disk."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._enqueue(event, fields, (loop, fut))
        return fut

    async def append(self, event: str, **fields: Any) -> None:
        """Append one record; returns once it is on disk, without blocking the event loop."""
        await self.submit(event, **fields)

    def close(self) -> None:
        """Write what is pending, stop the writer and close the file (later writes raise)."""
        with self._cv:
            if self._closed:
                return
            self._closed = True
            self._cv.notify()
        self._thread.join()
        os.close(self._fd)


@dataclass
class AuditRead:
    """The records of an audit log and how many lines could not be parsed (a crash's partial line)."""

    records: list[dict[str, Any]]
    damaged: int


def read_audit(path: str | Path) -> AuditRead:
    """Every parseable record of an audit log, in order; a missing file reads as empty."""
    p = Path(path)
    if not p.exists():
        return AuditRead([], 0)
    records, damaged = [], 0
    with open(p, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                damaged += 1
                continue
            if isinstance(rec, dict):
                records.append(rec)
            else:
                damaged += 1
    return AuditRead(records, damaged)
