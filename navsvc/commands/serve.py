"""`navsvc serve`: start the gRPC and OpenIGTLink service.

Embedded defaults: gRPC on 127.0.0.1:50051, OpenIGTLink on 127.0.0.1:18944, SQLite store in
./navsvc-data, tokens generated into <data_dir>/tokens.json when none are configured.
SIGTERM or Ctrl-C shut down gracefully (health NOT_SERVING, registrations interrupted).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any


class JsonFormatter(logging.Formatter):
    """One JSON object per log line: time, level, logger, message (and exception)."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) +
               f".{int(record.msecs):03d}Z", "level": record.levelname, "logger": record.name,
               "message": record.getMessage(), "thread": record.threadName}
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out)


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "serve", help="start the gRPC and OpenIGTLink service",
        description="Start the navsvc service (gRPC + OpenIGTLink + SQLite store).")
    p.add_argument("--config", type=Path, help="TOML configuration (see docs/service.md); default: embedded")
    p.add_argument("--data-dir", type=Path, help="override [store] data_dir")
    p.add_argument("--host", help="override [server] host")
    p.add_argument("--port", type=int, help="override [server] port (0: any free port)")
    p.add_argument("--igtl-port", type=int, help="override [igtl] port (0: any free port)")
    p.add_argument("--no-igtl", action="store_true", help="do not start the OpenIGTLink server")
    p.add_argument("--ports-file", type=Path,
                   help="write the bound ports as JSON {grpc_port, igtl_port, pid} once serving")
    p.add_argument("--log-json", action="store_true", help="structured logs: one JSON object per line")
    p.set_defaults(func=run)


def _overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    over: dict[str, dict[str, Any]] = {"server": {}, "igtl": {}, "store": {}}
    if args.data_dir is not None:
        over["store"]["data_dir"] = str(args.data_dir.resolve())
    if args.host is not None:
        over["server"]["host"] = args.host
    if args.port is not None:
        over["server"]["port"] = args.port
    if args.igtl_port is not None:
        over["igtl"]["port"] = args.igtl_port
    if args.no_igtl:
        over["igtl"]["enabled"] = False
    return over


def run(args: argparse.Namespace) -> int:
    from navsvc.config import config_from_dict, load_config, resolve_paths
    from navsvc.server.app import create_server
    from navsvc.transforms import write_json_atomic

    root = logging.getLogger()
    if root.level > logging.INFO:
        root.setLevel(logging.INFO)
    if args.log_json:
        for handler in root.handlers:
            handler.setFormatter(JsonFormatter())
    cfg = load_config(args.config)
    data = cfg.model_dump(mode="json")
    for section, values in _overrides(args).items():
        data[section].update(values)
    cfg = resolve_paths(config_from_dict(data, str(args.config or "configuration")), Path.cwd())

    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        logging.getLogger("navsvc").info("received %s", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    app, port = create_server(cfg)
    try:
        if args.ports_file is not None:
            write_json_atomic(args.ports_file, {"grpc_port": port, "igtl_port": app.igtl_port,
                                                "pid": os.getpid(),
                                                "data_dir": str(app.store.data_dir)})
        while not stop.wait(1.0):
            pass
    finally:
        app.stop()
    return 0
