"""`navsvc serve`: start the gRPC and OpenIGTLink service"""

from __future__ import annotations

import argparse
from typing import Any

from navsvc.commands import not_built


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("serve", help="start the gRPC and OpenIGTLink service [not built yet]")
    p.set_defaults(func=not_built("serve", 7, "the gRPC service"))
