"""`navsvc listen`: connect to an OpenIGTLink server as a subscriber and print what arrives"""

from __future__ import annotations

import argparse
from typing import Any

QUERY_TYPES = ("GET_TRANS", "GET_POINT", "GET_TRAJ", "GET_STATUS", "GET_STRING")


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "listen", help="connect to an OpenIGTLink server as a subscriber and print what arrives",
        description="Connect as a subscriber, optionally send queries, and print one line per "
                    "message received (for technicians checking the link).")
    p.add_argument("--host", default="127.0.0.1", help="server address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=18944, help="server port (default 18944)")
    p.add_argument("--count", type=int, default=0, help="stop after N messages (default: run until Ctrl-C)")
    p.add_argument("--timeout", type=float, default=10.0,
                   help="fail if nothing arrives for this many seconds (default 10)")
    p.add_argument("--query", action="append", default=[], metavar="TYPE:NAME",
                   help=f"send a query after connecting, TYPE one of {', '.join(QUERY_TYPES)} "
                        "(e.g. GET_TRANS:Drill1ToReference); repeatable")
    p.add_argument("--tdata", type=int, default=None, metavar="MS",
                   help="start a TDATA stream with this interval in milliseconds (STT_TDATA)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from navsvc.errors import InputError
    from navsvc.streaming import messages as m
    from navsvc.streaming.client import IgtlClient, describe

    queries = []
    for q in args.query:
        kind, _, name = q.partition(":")
        if kind not in QUERY_TYPES:
            raise InputError(f"--query {q!r}: expected TYPE:NAME with TYPE one of {QUERY_TYPES}")
        queries.append(m.QueryMessage(kind, device_name=name))
    received = 0
    with IgtlClient(args.host, args.port, timeout_s=args.timeout) as client:
        print(f"connected to {args.host}:{args.port}", flush=True)
        for query in queries:
            client.send(query)
        if args.tdata is not None:
            client.send(m.StartTrackingDataMessage(args.tdata, "", device_name="NavTargets"))
        while args.count <= 0 or received < args.count:
            try:
                message = client.receive(args.timeout)
            except TimeoutError as exc:
                from navsvc.errors import StreamingError

                raise StreamingError(
                    f"nothing received from {args.host}:{args.port} for {args.timeout} s "
                    f"after {received} message(s)") from exc
            received += 1
            print(describe(message), flush=True)
    return 0
