"""The ``navsvc`` command line.

Each command group lives in its own module under :mod:`navsvc.commands` and exposes
``add_parser(subparsers)``; heavy imports happen inside the command, so ``--help`` is fast.
Errors: a :class:`~navsvc.errors.NavError` becomes one line on stderr and a non-zero
exit code (see :data:`navsvc.errors.EXIT_CODES`); ``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback
import warnings
from collections.abc import Sequence

from navsvc import __version__
from navsvc.errors import NavError, exit_code_for

#: (group title, [command module names]) -- grouped by who uses them.
COMMAND_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("operating room (technician, surgeon)", ("demo", "case", "plan", "register", "inspect")),
    ("service and devices", ("serve", "listen", "stream")),
    ("validation (engineer)", ("phantom", "validate", "bench", "train")),
)

log = logging.getLogger("navsvc")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="navsvc",
        description="Intraoperative navigation and registration for core decompression of the femoral head.",
        epilog="Groups: " + "; ".join(f"{title}: {', '.join(cmds)}" for title, cmds in COMMAND_GROUPS),
    )
    parser.add_argument("--version", action="version", version=f"navsvc {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for _title, commands in COMMAND_GROUPS:
        for name in commands:
            module = importlib.import_module(f"navsvc.commands.{name}")
            module.add_parser(sub)
    return parser


def setup_logging(verbose: bool, debug: bool) -> None:
    if not debug:
        # third-party chatter that says nothing to a technician (shown with --debug)
        warnings.filterwarnings("ignore", message=r"monai\.networks\.blocks\.Warp: Using PyTorch native")
        warnings.filterwarnings("ignore", message=r"Using a non-tuple sequence for multidimensional indexing")
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    setup_logging(args.verbose, args.debug)
    try:
        return int(args.func(args) or 0)
    except NavError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"navsvc: error: {exc}", file=sys.stderr)
        return exit_code_for(exc)
    except KeyboardInterrupt:
        print("navsvc: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
