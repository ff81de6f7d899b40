"""`navsvc plan`: automatic core-decompression planning, plan checks, plan summary"""

from __future__ import annotations

import argparse
from typing import Any

from navsvc.commands import not_built


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("plan", help="automatic core-decompression planning, plan checks, plan summary [not built yet]")
    p.set_defaults(func=not_built("plan", 4, "the planner"))
