"""CLI command groups; each module exposes ``add_parser(subparsers)``."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from navsvc.errors import NotBuiltYet


def not_built(command: str, issue: int, what: str) -> Callable[[argparse.Namespace], Any]:
    """A command handler that says plainly the command is not built yet."""

    def run(args: argparse.Namespace) -> int:
        raise NotBuiltYet(f"`navsvc {command}` is not built yet ({what}; tracked as issue #{issue})")

    return run
