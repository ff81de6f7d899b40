"""`navsvc validate`: run a registration method over phantom cases and report TRE, Dice, timings"""

from __future__ import annotations

import argparse
from typing import Any

from navsvc.commands import not_built


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("validate", help="run a registration method over phantom cases and report TRE, Dice, timings [not built yet]")
    p.set_defaults(func=not_built("validate", 3, "the validation harness"))
