"""`navsvc stream`: serve fixed targets over OpenIGTLink for hardware bring-up"""

from __future__ import annotations

import argparse
from typing import Any

from navsvc.commands import not_built


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("stream", help="serve fixed targets over OpenIGTLink for hardware bring-up [not built yet]")
    p.set_defaults(func=not_built("stream", 6, "OpenIGTLink streaming"))
