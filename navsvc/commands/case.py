"""`navsvc case`: talk to a running service: create, load-plan, register, approve, status, calibrate"""

from __future__ import annotations

import argparse
from typing import Any

from navsvc.commands import not_built


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("case", help="talk to a running service: create, load-plan, register, approve, status, calibrate [not built yet]")
    p.set_defaults(func=not_built("case", 7, "the gRPC service"))
