"""`navsvc demo`: run the whole flow on a generated phantom with embedded defaults"""

from __future__ import annotations

import argparse
from typing import Any

from navsvc.commands import not_built


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("demo", help="run the whole flow on a generated phantom with embedded defaults [not built yet]")
    p.set_defaults(func=not_built("demo", 7, "the end-to-end demo"))
