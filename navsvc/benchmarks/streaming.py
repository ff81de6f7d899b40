"""`navsvc bench streaming`: OpenIGTLink delivered rate and latency for 1..32 subscribers.

For each (subscribers, publish rate, stalled or not) the server publishes a new
approved state (timestamp = time of publish) at the given rate for ``--duration``
seconds. The subscribers live in a separate process (like real robots and navigation
systems), read with one ``selectors`` loop, and record for every new state the
latency from its timestamp to the receipt of its TRANSFORM. "Stalled": one more
client connects with a tiny receive buffer and never reads; before the timed run the
server publishes until that client's buffers are full (data pending in its outbox), and
its send timeout is longer than the run, so it pushes back all along.

Goal (issue #6): >= 500 updates/s to each of 8 subscribers with p99 <= 5 ms on
loopback, unchanged by a stalled subscriber.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import selectors
import socket
import struct
import time
from pathlib import Path
from typing import Any

_HEADER = struct.Struct(">H12s20sIIQQ")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--subscribers", default="1,8,32", help="comma-separated counts (default 1,8,32)")
    parser.add_argument("--rates", default="100,500,1000", help="publish rates in Hz (default 100,500,1000)")
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per configuration (default 2)")
    parser.add_argument("--targets", type=int, default=1, help="trajectories per state (default 1)")
    parser.add_argument("--refresh-hz", type=float, default=20.0, help="server refresh rate (default 20)")
    parser.add_argument("--no-stall", action="store_true", help="skip the runs with a stalled subscriber")
    parser.add_argument("--out", default="bench-out/streaming.json", help="JSON result path")


def _subscribers(port: int, count: int, duration_s: float, ready: Any, results: Any) -> None:
    """Child process: ``count`` subscribers on one selectors loop; report per subscriber
    the (state timestamp, latency) pairs (s) of each new TRANSFORM timestamp."""
    sel = selectors.DefaultSelector()
    socks = []
    for i in range(count):
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, i)
        socks.append(s)
    bufs = [bytearray() for _ in range(count)]
    last_ts = [0.0] * count
    latencies: list[list[tuple[float, float]]] = [[] for _ in range(count)]
    ready.set()
    deadline = time.monotonic() + duration_s + 1.0
    while time.monotonic() < deadline:
        for key, _ in sel.select(0.05):
            i = key.data
            try:
                part = socks[i].recv(1 << 18)
            except BlockingIOError:
                continue
            now = time.time()
            if not part:
                sel.unregister(socks[i])
                continue
            buf = bufs[i]
            buf += part
            off = 0
            while len(buf) - off >= 58:
                _v, mtype, _n, sec, frac, size, _crc = _HEADER.unpack_from(buf, off)
                if len(buf) - off < 58 + size:
                    break
                if mtype.startswith(b"TRANSFORM"):
                    ts = sec + frac / 4294967296.0  # 2**32 (within 1 ns of the exact value)
                    if ts > last_ts[i]:
                        last_ts[i] = ts
                        latencies[i].append((ts, now - ts))
                off += 58 + size
            del buf[:off]
    for s in socks:
        s.close()
    results.put(latencies)


def _percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q)) if values else float("nan")


def run_one(n_subscribers: int, rate_hz: float, stalled: bool, duration_s: float,
            n_targets: int, refresh_hz: float) -> dict[str, Any]:
    import numpy as np

    from navsvc.streaming import IgtlServer, StreamConfig, Target, TargetState

    config = StreamConfig(port=0, refresh_hz=refresh_hz, send_timeout_s=duration_s + 10.0,
                          max_clients=max(64, n_subscribers + 2))
    rng = np.random.default_rng(0)
    base_entry = np.array([-62.0, 31.5, -802.25])
    base_target = np.array([-84.5, 48.0, -766.0])
    with IgtlServer(config) as server:
        server.publish(TargetState("bench", "approved", "PASS",
                                   (Target("Drill1", base_entry, base_target, 3.0),), time.time()))
        stall_sock = None
        if stalled:
            stall_sock = socket.socket()
            stall_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            stall_sock.connect(("127.0.0.1", server.port))
        ctx = mp.get_context("spawn")
        ready, results = ctx.Event(), ctx.Queue()
        child = ctx.Process(target=_subscribers, args=(server.port, n_subscribers, duration_s, ready, results))
        child.start()
        if not ready.wait(60) or not server.wait_for_clients(n_subscribers + int(stalled), 10):
            child.kill()
            raise RuntimeError("subscribers did not connect")
        if stalled:  # fill the stalled client's buffers first, so that it pushes back all along
            fill_deadline = time.monotonic() + 20.0
            while max((c.pending_bytes for c in server.client_stats()), default=0) == 0:
                if time.monotonic() > fill_deadline:
                    raise RuntimeError("the stalled client never filled its buffers")
                server.publish(TargetState("bench", "approved", "PASS",
                                           (Target("Drill1", base_entry, base_target, 3.0),), time.time()))
                time.sleep(0.0005)
        period_s = 1.0 / rate_hz
        published = 0
        t0 = time.perf_counter()
        t0_unix = time.time()
        next_t = t0
        while True:
            now = time.perf_counter()
            if now - t0 >= duration_s:
                break
            if now < next_t:
                time.sleep(next_t - now)
            jitter = rng.normal(0.0, 0.05, 3)
            targets = tuple(Target(f"Drill{k + 1}", base_entry + k + jitter, base_target + k + jitter, 3.0)
                            for k in range(n_targets))
            server.publish(TargetState("bench", "approved", "PASS", targets, time.time()))
            published += 1
            next_t += period_s
        elapsed_s = time.perf_counter() - t0
        received = results.get(timeout=60)
        # only states published in the timed window (not the initial one from before)
        latencies = [[lat for ts, lat in pairs if ts >= t0_unix] for pairs in received]
        child.join(10)
        stats = server.client_stats()   # only the stalled client (if any) is left
        still_connected = len(stats)
        stalled_pending = max((c.pending_bytes for c in stats), default=0)
        if stall_sock is not None:
            stall_sock.close()
    per_rate = [len(lat) / elapsed_s for lat in latencies]
    flat = [x for lat in latencies for x in lat]
    return {
        "subscribers": n_subscribers,
        "rate_hz": rate_hz,
        "stalled_subscriber": stalled,
        "published_per_s": published / elapsed_s,
        "delivered_per_s_min": min(per_rate),
        "delivered_per_s_mean": float(np.mean(per_rate)),
        "latency_ms_p50": 1e3 * _percentile(flat, 50),
        "latency_ms_p99": 1e3 * _percentile(flat, 99),
        "latency_ms_max": 1e3 * max(flat) if flat else float("nan"),
        "clients_connected_at_end": still_connected,
        "stalled_client_pending_bytes": stalled_pending,
        "stalled_client_bytes_sent": max((c.bytes_sent for c in stats), default=0),
    }


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    subs = [int(v) for v in str(args.subscribers).split(",") if v]
    rates = [float(v) for v in str(args.rates).split(",") if v]
    rows = []
    console = Console()
    for n in subs:
        for rate in rates:
            for stalled in ([False] if args.no_stall else [False, True]):
                row = run_one(n, rate, stalled, args.duration, args.targets, args.refresh_hz)
                rows.append(row)
                console.log(f"{n} subscribers, {rate:.0f} Hz, stalled={stalled}: "
                            f"{row['delivered_per_s_min']:.0f}/s, p99 {row['latency_ms_p99']:.2f} ms")
    table = Table(title="OpenIGTLink streaming (loopback)")
    for col in ("subs", "rate Hz", "stalled", "published/s", "delivered/s min", "p50 ms", "p99 ms", "max ms"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(str(r["subscribers"]), f"{r['rate_hz']:.0f}", "yes" if r["stalled_subscriber"] else "no",
                      f"{r['published_per_s']:.0f}", f"{r['delivered_per_s_min']:.0f}",
                      f"{r['latency_ms_p50']:.2f}", f"{r['latency_ms_p99']:.2f}", f"{r['latency_ms_max']:.2f}")
    console.print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"benchmark": "streaming", "duration_s": args.duration, "targets": args.targets,
            "refresh_hz": args.refresh_hz, "python": platform.python_version(), "machine": platform.machine(),
            "cpus": mp.cpu_count(), "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    console.print(f"wrote {out}")
    return 0
