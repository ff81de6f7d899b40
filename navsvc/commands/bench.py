"""`navsvc bench`: benchmarks: registration against elastix, streaming latency"""

from __future__ import annotations

import argparse
from typing import Any

from navsvc.commands import not_built


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("bench", help="benchmarks: registration against elastix, streaming latency [not built yet]")
    p.set_defaults(func=not_built("bench", 5, "the benchmarks"))
