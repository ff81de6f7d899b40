"""Evaluate the automatic planner on digital phantoms: a table (and JSON) of figures.

    python -m planning.evaluate --seeds 0-9 [--preset small] [--set mri_orientation=\"axial\"] [--json out.json]

For each seed (sides alternate: even right, odd left) and each planner setting (one 8 mm
core; a fan of three 3.2 mm drillings) it reports whether a plan was found, whether its side
is right, the smallest cortical clearance and tip clearance over its tracts (planner's
fields, mm), the minimum *true* clearance measured on the phantom's continuous model (by
bisection on the sign of its distance function, so independent of the planner), the
fraction of the lesion within reach and the planning time. Timings are wall-clock on
whatever else the machine is running.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from navsvc.errors import NavError
from planning.planner import PlannerOptions, plan_automatic

log = logging.getLogger(__name__)


def parse_seeds(text: str) -> list[int]:
    """``"0-4,7"`` -> ``[0, 1, 2, 3, 4, 7]``."""
    out: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        lo, sep, hi = part.partition("-")
        out += list(range(int(lo), int(hi) + 1)) if sep else [int(lo)]
    return out


def true_clearance_mm(inside: Any, entry: NDArray[np.float64], target: NDArray[np.float64],
                      radius_mm: float, zone_mm: float, max_mm: float = 25.0) -> float:
    """Smallest distance from the drill's edge to the surface beyond the entry zone, from the
    sign of ``inside(points) -> bool array`` only: for axis samples and 24 directions around
    the axis, bisect the distance to the first outside point (0.05 mm)."""
    u = (target - entry) / np.linalg.norm(target - entry)
    s = np.arange(zone_mm, float(np.linalg.norm(target - entry)), 1.0)
    axis = entry + s[:, None] * u
    e1 = np.cross(u, [1.0, 0, 0] if abs(u[0]) < 0.9 else [0, 1.0, 0])
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(u, e1)
    phi = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    dirs = np.cos(phi)[:, None] * e1 + np.sin(phi)[:, None] * e2
    lo = np.zeros((len(axis), len(dirs)))
    hi = np.full_like(lo, max_mm)
    for _ in range(10):
        mid = 0.5 * (lo + hi)
        pts = axis[:, None, :] + mid[..., None] * dirs[None, :, :]
        ok = inside(pts.reshape(-1, 3)).reshape(mid.shape)
        lo = np.where(ok, mid, lo)
        hi = np.where(ok, hi, mid)
    return float(lo.min() - radius_mm)


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["mri_orientation=\"axial\"", "mri_spacing_mm=[1.5, 1.5, 4.0]"]`` -> preset overrides
    (values are JSON; a bare word is taken as a string)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"expected KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def evaluate(seeds: Sequence[int], preset: str = "small", **overrides: Any) -> list[dict[str, Any]]:
    """Plan every seed with both settings; one row of figures per (seed, setting).
    ``overrides`` are phantom preset fields (e.g. ``mri_orientation="axial"``)."""
    from phantoms import make_case
    from phantoms.anatomy import HipModel

    rows = []
    for seed in seeds:
        side = "left" if seed % 2 else "right"
        case = make_case(seed, preset, modalities=("mri",), side=side, **overrides)
        model = HipModel(case.params["anatomy"])

        def inside(points: NDArray[np.float64], model: HipModel = model) -> NDArray[np.bool_]:
            return np.asarray(model.femur_sdf(points) < 0)

        for setting, options in (("core 8 mm", PlannerOptions()), ("fan 3x3.2 mm", PlannerOptions.fan())):
            row: dict[str, Any] = {"seed": seed, "side": side, "lesion": case.params["anatomy"]["lesion"]["size"],
                                   "setting": setting}
            t0 = time.perf_counter()
            try:
                plan = plan_automatic(case.mri, case.labels, options=options)
            except NavError as exc:
                row.update(found=False, error=str(exc), seconds=time.perf_counter() - t0)
                rows.append(row)
                continue
            row["seconds"] = time.perf_counter() - t0
            figs = plan.planner["figures"]
            true = [true_clearance_mm(inside, np.asarray(t.entry_lps),
                                      np.asarray(t.target_lps), t.diameter_mm / 2, options.entry_zone_mm)
                    for t in plan.trajectories]
            row.update(
                found=True, side_ok=plan.side == side,
                min_clearance_mm=min(v["min_clearance_mm"] for v in figs["trajectories"].values()),
                true_min_clearance_mm=min(true),
                tip_clearance_mm=min(v["tip_clearance_mm"] for v in figs["trajectories"].values()),
                lesion_reach_fraction=figs["lesion_reach_fraction"],
                path_length_mm=max(v["length_mm"] for v in figs["trajectories"].values()),
            )
            rows.append(row)
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'seed':>4} {'side':5} {'lesion':6} {'setting':13} {'found':5} {'side ok':7} {'clear mm':>8} "
            f"{'true mm':>7} {'tip mm':>6} {'reach':>5} {'len mm':>6} {'s':>5}")
    lines = [head, "-" * len(head)]
    for r in rows:
        if not r["found"]:
            lines.append(f"{r['seed']:>4} {r['side']:5} {r['lesion']:6} {r['setting']:13} {'no':5} "
                         f"{r['error'][:60]}")
            continue
        lines.append(
            f"{r['seed']:>4} {r['side']:5} {r['lesion']:6} {r['setting']:13} {'yes':5} {str(r['side_ok']):7} "
            f"{r['min_clearance_mm']:8.2f} {r['true_min_clearance_mm']:7.2f} {r['tip_clearance_mm']:6.2f} "
            f"{r['lesion_reach_fraction']:5.2f} {r['path_length_mm']:6.1f} {r['seconds']:5.2f}")
    found = [r for r in rows if r["found"]]
    if found:
        lines.append(
            f"plans found {len(found)}/{len(rows)}, side correct {sum(r['side_ok'] for r in found)}/{len(found)}, "
            f"min true clearance {min(r['true_min_clearance_mm'] for r in found):.2f} mm, "
            f"median planning time {np.median([r['seconds'] for r in found]):.2f} s")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m planning.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0-9", help="seeds, e.g. 0-9 or 0,3,5")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="phantom preset override (JSON value), repeatable")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    rows = evaluate(parse_seeds(args.seeds), args.preset, **parse_overrides(args.set))
    print(format_table(rows))
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
