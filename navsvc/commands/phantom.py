"""`navsvc phantom`: make digital phantom cases with exact ground truth"""

from __future__ import annotations

import argparse
from typing import Any

from navsvc.commands import not_built


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("phantom", help="make digital phantom cases with exact ground truth [not built yet]")
    p.set_defaults(func=not_built("phantom", 3, "the digital phantoms"))
