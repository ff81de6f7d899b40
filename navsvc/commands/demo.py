"""`navsvc demo`: run the whole flow on a generated phantom with embedded defaults.

Generates a phantom (MRI, segmentation, CT with exact ground truth), plans on the MRI,
starts the service (gRPC + OpenIGTLink + SQLite, OS-chosen ports), loads the plan by chunked
upload, registers with live progress, approves as the surgeon, receives the targets over a
real OpenIGTLink socket and prints the targets, their error against the truth, the QA verdict,
the timings and the QA picture's path.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "demo", help="run the whole flow on a generated phantom with embedded defaults",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("demo-out"),
                   help="folder for the phantom, the service's data and the summary (default ./demo-out)")
    p.add_argument("--seed", type=int, default=0, help="phantom seed (default 0)")
    p.add_argument("--preset", default="small", help="phantom preset (default small)")
    p.add_argument("--option", action="append", default=[], metavar="NAME=JSON",
                   help="registration option override, e.g. --option method='\"rigid\"'")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from navsvc.commands.case import parse_options
    from navsvc.server.demo import run_demo

    console = Console(stderr=args.json)
    console.print(f"navsvc demo: phantom seed {args.seed} ({args.preset}) in {args.out.resolve()}")
    with Progress(TextColumn("{task.description:<60}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                  TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task("registration: queued", total=1.0)

        def on_progress(stage: str, fraction: float, message: str) -> None:
            bar.update(task, completed=fraction, description=f"registration {stage}: {message}"[:60])

        result = run_demo(args.out, args.seed, args.preset, on_progress=on_progress,
                          registration_options=parse_options(args.option))
    if args.json:
        sys.stdout.write(json.dumps(result.to_dict(), indent=2) + "\n")
        return 0
    table = Table(title="targets received over OpenIGTLink (CT frame, LPS mm)")
    for col in ("trajectory", "target received", "target true", "TRE mm"):
        table.add_column(col)
    for name, tgt in result.targets_ct_lps.items():
        truth = result.truth_ct_lps.get(name, [float("nan")] * 3)
        table.add_row(name, _fmt(tgt), _fmt(truth), f"{result.tre_mm.get(name, float('nan')):.3f}")
    console.print(table)
    console.print(f"QA verdict: [bold]{result.qa_verdict}[/bold]"
                  + (f" ({'; '.join(result.qa_reasons)})" if result.qa_reasons else ""))
    figures = ", ".join(f"{k} {v:.3g}" for k, v in sorted(result.qa_figures.items()))
    if figures:
        console.print(f"QA figures: {figures}")
    console.print("timings: " + ", ".join(f"{k} {v:.2f}" for k, v in result.timings_s.items()))
    if result.registration_timings_s:
        console.print("registration stages: " + ", ".join(
            f"{k} {v:.2f} s" for k, v in result.registration_timings_s.items()))
    console.print(f"QA picture: {result.qa_picture or '(none written)'}")
    console.print(f"summary: {Path(result.out_dir) / 'demo_summary.json'}")
    return 0


def _fmt(v: list[float]) -> str:
    return "(" + ", ".join(f"{x:.2f}" for x in v) + ")"
