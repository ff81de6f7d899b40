"""`navsvc phantom`: make digital phantom cases with exact ground truth."""

from __future__ import annotations

import argparse
import sys
from typing import Any

PRESET_NAMES = ("small", "small-distorted", "realistic", "realistic-distorted", "cbct")


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "phantom", help="make digital phantom cases with exact ground truth",
        description="Digital hip phantoms (MRI, CT, fluoroscopy) with exact ground truth; see docs/phantoms.md.",
    )
    psub = p.add_subparsers(dest="phantom_command", metavar="SUBCOMMAND", required=True)
    m = psub.add_parser("make", help="write one case folder (or --count N folders) from a seed")
    m.add_argument("--seed", type=int, required=True, help="random seed: the same seed gives the same case")
    m.add_argument("--out", required=True, help="output folder (with --count: parent of case_<seed> folders)")
    m.add_argument("--preset", default="small", help=f"one of {', '.join(PRESET_NAMES)} (default small)")
    m.add_argument("--modalities", default="mri,ct", help="comma list of mri, ct, fluoro (default mri,ct)")
    m.add_argument("--side", choices=("left", "right"), help="hip side (default: drawn by seed)")
    m.add_argument("--count", type=int, default=1, help="make N cases with seeds SEED..SEED+N-1")
    m.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a preset field, e.g. --set max_rotation_deg=0 --set lesion_size=large")
    m.set_defaults(func=run_make)
    f = psub.add_parser("figure", help="write an overview PNG of a case folder")
    f.add_argument("case", help="case folder")
    f.add_argument("--out", required=True, help="PNG file to write")
    f.set_defaults(func=run_figure)
    ls = psub.add_parser("presets", help="list the presets and their settings")
    ls.set_defaults(func=run_presets)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings -> dict; values parsed as JSON when possible (numbers, lists, true/null)."""
    import json

    from navsvc.errors import ConfigError

    out: dict[str, Any] = {}
    for item in items:
        key, sep, val = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set: expected KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = json.loads(val)
        except json.JSONDecodeError:
            out[key.strip()] = val
    return out


def run_make(args: argparse.Namespace) -> int:
    from pathlib import Path

    from navsvc.errors import ConfigError
    from phantoms import make_case

    mods = tuple(m.strip() for m in args.modalities.split(",") if m.strip())
    if args.count < 1:
        raise ConfigError(f"--count: expected >= 1, got {args.count}")
    overrides = parse_overrides(args.set)
    for k in range(args.count):
        seed = args.seed + k
        out = Path(args.out) if args.count == 1 else Path(args.out) / f"case_{seed:04d}"
        case = make_case(seed, args.preset, modalities=mods, side=args.side, **overrides)
        case.write(out)
        print(f"{out}: {case.describe()} ({case.params['generation_seconds']:.1f} s)")
    return 0


def run_figure(args: argparse.Namespace) -> int:
    from pathlib import Path

    from navsvc.errors import InputError
    from phantoms import load_case
    from phantoms.report import case_figure

    case = load_case(args.case)
    if case.kind != "digital" or case.mri is None or case.ct is None:
        raise InputError(f"{args.case}: expected a digital phantom folder with MRI and CT")
    print(case_figure(case, Path(args.out)))
    return 0


def run_presets(args: argparse.Namespace) -> int:
    from phantoms import PRESETS

    for name, preset in PRESETS.items():
        print(f"{name}:")
        for key, value in preset.as_dict().items():
            if key != "name":
                print(f"  {key} = {value}")
    sys.stdout.flush()
    return 0
