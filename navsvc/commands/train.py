"""`navsvc train`: train the learned registration network"""

from __future__ import annotations

import argparse
from typing import Any

from navsvc.commands import not_built


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("train", help="train the learned registration network [not built yet]")
    p.set_defaults(func=not_built("train", 9, "the learned registration model"))
