"""`navsvc listen`: connect to an OpenIGTLink server as a subscriber and print what arrives"""

from __future__ import annotations

import argparse
from typing import Any

from navsvc.commands import not_built


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("listen", help="connect to an OpenIGTLink server as a subscriber and print what arrives [not built yet]")
    p.set_defaults(func=not_built("listen", 6, "OpenIGTLink streaming"))
