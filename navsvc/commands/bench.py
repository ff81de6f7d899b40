"""`navsvc bench NAME`: benchmarks that print a table, write JSON and compare against a baseline.

Each benchmark is a module ``navsvc.benchmarks.<name>`` exposing
``add_arguments(parser)`` (cheap, no heavy imports) and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any

from navsvc.errors import NotBuiltYet

#: benchmark name -> (help, issue that builds it)
BENCHMARKS: dict[str, tuple[str, int]] = {
    "registration": ("MRI -> CT registration: navsvc vs rigid-only vs elastix on phantom cases", 5),
    "streaming": ("OpenIGTLink: delivered rate and latency for 1..32 subscribers", 6),
    "fluoro": ("fluoroscopy 2D/3D registration on projected phantoms", 8),
    "ablation": ("learned model ablation: rigid, + network, + instance optimisation, both", 9),
}


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "bench", help="benchmarks: registration against elastix, streaming latency, fluoroscopy"
    )
    bsub = p.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for name, (help_text, issue) in BENCHMARKS.items():
        bp = bsub.add_parser(name, help=help_text)
        try:
            module = importlib.import_module(f"navsvc.benchmarks.{name}")
        except ModuleNotFoundError as exc:
            if exc.name not in (f"navsvc.benchmarks.{name}", "navsvc.benchmarks"):
                raise
            bp.set_defaults(func=_not_built(name, issue))
            continue
        module.add_arguments(bp)
        bp.set_defaults(func=module.run)


def _not_built(name: str, issue: int) -> Any:
    def run(args: argparse.Namespace) -> int:
        raise NotBuiltYet(f"`navsvc bench {name}` is not built yet (tracked as issue #{issue})")

    return run
