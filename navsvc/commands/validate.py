"""`navsvc validate`: run a registration method over phantom cases and report TRE, Dice, timings."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "validate", help="run a registration method over phantom cases and report TRE, Dice, timings",
        description="Runs METHOD on each case, writes OUT/report.json, report.md and figures. "
        "Exit status 0 when every case succeeds (max TRE < 2 mm), 1 otherwise.",
    )
    p.add_argument("--cases", required=True,
                   help="a number N (generate seeds FIRST..FIRST+N-1), a case folder, or a folder of case folders")
    p.add_argument("--method", required=True, help="registered method name (built in: truth, perturbed)")
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument("--preset", default="small", help="preset for generated cases (default small)")
    p.add_argument("--first-seed", type=int, default=0, help="first seed for generated cases (default 0)")
    p.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from phantoms.validate import run_validation

    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), transient=True) as bar:
        task = bar.add_task("validate", total=1.0)

        def progress(stage: str, fraction: float, message: str) -> None:
            bar.update(task, completed=fraction, description=message)

        report = run_validation(args.cases, args.method, args.out, preset=args.preset,
                                first_seed=args.first_seed, progress=progress, figures=not args.no_figures)
    o = report["tre_overall"]
    print(f"method {report['method']}: {report['n_cases']} case(s), success {100 * report['success_rate']:.0f} %, "
          f"TRE mean {o['mean']:.3f} / p95 {o['p95']:.3f} / max {o['max']:.3f} mm; report in {args.out}/report.md")
    return 0 if report["success_rate"] == 1.0 else 1
