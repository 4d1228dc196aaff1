"""Load benchmark of the remediation webhook receiver: 500 requests/s for 30 s on loopback, p99 < 50 ms, no lost
audit records — against a do-nothing aiohttp handler measured in the same run.

Run: python -m bench.bench_receiver [--rate 500] [--seconds 30] [--small]

Each server runs in its own process (as in production, the load generator does not share its event loop).
The receiver is the real one: bearer-token check, size limit, schema validation, an fsynced audit record per
request before it is answered, and the engine deciding every alert (dry-run, so nothing is executed; the
policy matches every alert, so each request also gets a decision record). The generator is open-loop: request
i is sent at i/rate seconds whatever the previous ones did, so a slow server shows up as latency, not as a
lower rate. After the run the audit log is read back: request records must equal the requests answered 200,
and decision records must equal the alerts sent.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aiohttp import web

TOKEN = "bench-token-0123456789abcdef0123456789"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- servers (run in a child process) ---------------------------------------------------------------------

async def _serve_baseline(port: int) -> None:
    async def nothing(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"status": "accepted"})

    app = web.Application()
    app.router.add_post("/alertmanager/webhook", nothing)
    await _serve_until_signal(app, port)


async def _serve_receiver(port: int, data: Path) -> None:
    from alerts.remediation.audit import AuditLog
    from alerts.remediation.auth import Authenticator
    from alerts.remediation.policy import build_policy
    from alerts.remediation.receiver import Receiver
    from alerts.remediation.remediator import Remediator
    from alerts.remediation.safety import Limits, SafetyGate
    from collector.clock import WallClock

    true = "/bin/true"
    policy = build_policy({"allowlist": [true], "actions": {"cordon": {"type": "command", "argv": [true, "{node}"]}},
                           "rules": [{"name": "all", "actions": ["cordon"]}]}, "bench")
    gate = SafetyGate(Limits(fleet_nodes=1000), WallClock())
    audit = AuditLog(data / "audit.jsonl")
    rem = Remediator(policy, gate, audit, "dry-run", queue_size=100_000)
    receiver = Receiver(Authenticator(token=TOKEN.encode()), rem)
    stop = asyncio.Event()
    engine = asyncio.create_task(rem.run(stop))
    try:
        await _serve_until_signal(receiver.app(), port)
    finally:
        await rem.idle()
        stop.set()
        await engine
        audit.close()


async def _serve_until_signal(app: web.Application, port: int) -> None:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    done = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, done.set)
    # The CPU spent starting up (imports) is reported so that CPU per request leaves it out.
    print(f"ready {time.process_time():.6f}", flush=True)
    await done.wait()
    await runner.cleanup()


# --- load generator ----------------------------------------------------------------------------------------

def _body(i: int) -> bytes:
    alert = {"status": "firing", "labels": {"alertname": "FleetwatchGpuLost", "node": f"node-{i % 500}",
                                            "gpu": str(i % 8), "severity": "critical"},
             "annotations": {"summary": "GPU lost"}, "startsAt": "2026-01-01T00:00:00Z",
             "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "http://fleetwatch:9400/metrics",
             "fingerprint": f"{i:016x}"}
    doc = {"version": "4", "groupKey": f"{{}}:{{node=\"node-{i}\"}}", "truncatedAlerts": 0, "status": "firing",
           "receiver": "fleetwatch", "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
           "externalURL": "http://alertmanager:9093", "alerts": [alert]}
    return json.dumps(doc).encode()


class _Conn:
    """One keep-alive HTTP/1.1 connection speaking just enough HTTP for this benchmark.

    aiohttp's client costs about a millisecond of CPU per request, more than the servers under test: on a
    small machine the generator, not the server, would set the latency. One request at a time per connection.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, head: bytes, body: bytes) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        self.writer.write(head + str(len(body)).encode() + b"\r\n\r\n" + body)
        status_line = await self.reader.readline()
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        await self.reader.readexactly(length)
        return int(status_line.split()[1])


async def _load(port: int, rate: float, seconds: float) -> tuple[list[float], dict[int, int], float]:
    n = int(rate * seconds)
    bodies = [_body(i) for i in range(n)]
    head = (f"POST /alertmanager/webhook HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: application/json\r\nContent-Length: ").encode()
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    idle: list[_Conn] = []

    async def one(i: int) -> None:
        conn = idle.pop() if idle else _Conn(port)
        t0 = time.perf_counter()
        try:
            status = await conn.post(head, bodies[i])
            idle.append(conn)
        except (OSError, ValueError, IndexError, asyncio.IncompleteReadError):
            status = -1
        latencies.append(time.perf_counter() - t0)
        statuses[status] = statuses.get(status, 0) + 1

    start = time.perf_counter()
    tasks = []
    for i in range(n):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    for c in idle:
        if c.writer is not None:
            c.writer.close()
    return latencies, statuses, elapsed


def _fsync_latency(data: Path, n: int = 200) -> list[float]:
    """Latencies of appending a line and fsyncing it: the floor under any durable answer on this disk."""
    fd = os.open(data / "fsync-probe", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    out = []
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            os.write(fd, b'{"probe":true}\n')
            os.fsync(fd)
            out.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
    return out


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def _run(kind: str, rate: float, seconds: float, data: Path) -> dict[str, Any]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.bench_receiver", f"--serve-{kind}", str(port),
                             "--data", str(data)], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    assert proc.stdout is not None
    ready = proc.stdout.readline().split()
    assert ready and ready[0] == "ready", f"{kind} server did not start"
    startup_cpu = float(ready[1])
    try:
        lat, statuses, elapsed = asyncio.run(_load(port, rate, seconds))
    finally:
        proc.send_signal(signal.SIGTERM)
        # wait4 gives the server's own CPU time: a figure that other load on the machine does not inflate.
        _, _, usage = os.wait4(proc.pid, 0)
        proc.returncode = 0
    out: dict[str, Any] = {"kind": kind, "sent": len(lat), "rate": len(lat) / elapsed, "statuses": statuses,
                           "p50": _pct(lat, 0.50), "p99": _pct(lat, 0.99), "max": max(lat),
                           "mean": statistics.fmean(lat),
                           "cpu_ms": (usage.ru_utime + usage.ru_stime - startup_cpu) * 1e3 / len(lat)}
    if kind == "receiver":
        from alerts.remediation.audit import read_audit

        recs = read_audit(data / "audit.jsonl")
        out["request_records"] = sum(1 for r in recs.records if r["event"] == "request" and r["result"] == "accepted")
        out["decision_records"] = sum(1 for r in recs.records if r["event"] == "decision")
        out["damaged"] = recs.damaged
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table; exit 1 when a target is missed."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=500.0, help="requests per second (default 500)")
    ap.add_argument("--seconds", type=float, default=30.0, help="duration (default 30)")
    ap.add_argument("--small", action="store_true", help="a 3-second smoke run")
    ap.add_argument("--serve-baseline", type=int, metavar="PORT", help=argparse.SUPPRESS)
    ap.add_argument("--serve-receiver", type=int, metavar="PORT", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve_baseline:
        asyncio.run(_serve_baseline(args.serve_baseline))
        return 0
    if args.serve_receiver:
        asyncio.run(_serve_receiver(args.serve_receiver, Path(args.data)))
        return 0
    seconds = 3.0 if args.small else args.seconds
    with tempfile.TemporaryDirectory(prefix="fleetwatch-bench-receiver-") as tmp:
        fs = _fsync_latency(Path(tmp))
        rows = [_run(kind, args.rate, seconds, Path(tmp)) for kind in ("baseline", "receiver")]
    base, rx = rows
    print(f"webhook load: {args.rate:g} requests/s for {seconds:g} s on loopback ({os.cpu_count()} CPUs)")
    print(f"{'server':<10} {'sent':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'p99 ratio':>10} "
          f"{'CPU ms/req':>11} {'CPU ratio':>10}  status")
    for r in rows:
        print(f"{r['kind']:<10} {r['sent']:>7} {r['rate']:>8.1f} {r['p50'] * 1e3:>8.2f} {r['p99'] * 1e3:>8.2f} "
              f"{r['max'] * 1e3:>8.1f} {r['p99'] / base['p99']:>10.2f} {r['cpu_ms']:>11.3f} "
              f"{r['cpu_ms'] / base['cpu_ms']:>10.2f}  {r['statuses']}")
    print(f"disk: append+fsync p50 {_pct(fs, 0.5) * 1e3:.2f} ms, p99 {_pct(fs, 0.99) * 1e3:.2f} ms "
          f"(a request is answered after its record's fsync)")
    load = os.getloadavg()[0]
    print(f"load average {load:.1f} on {os.cpu_count()} CPUs"
          + (" (busy machine: latencies include waiting for a CPU; see CPU ms/req)" if load > (os.cpu_count() or 1)
             else ""))
    ok200 = rx["statuses"].get(200, 0)
    print(f"audit: {rx['request_records']} request records for {ok200} accepted requests, "
          f"{rx['decision_records']} decision records for {rx['sent']} alerts, {rx['damaged']} damaged lines")
    lost = ok200 - rx["request_records"] + rx["sent"] - rx["decision_records"]
    passed = rx["p99"] < 0.050 and ok200 == rx["sent"] and lost == 0
    print(f"target p99 < 50 ms and no lost audit records: {'PASS' if passed else 'FAIL'} "
          f"(p99 {rx['p99'] * 1e3:.1f} ms, lost {lost})")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
