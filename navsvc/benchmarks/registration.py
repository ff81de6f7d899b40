"""`navsvc bench registration`: MRI -> CT registration methods side by side on phantom cases.

Each case is generated once (``phantoms.make_case``) and every method runs on it in the same
process, one after the other. Per method: TRE over the femur landmarks (mean / p95 / max over
all landmarks of all cases), lesion Dice on the CT grid, success rate (max TRE < 2 mm), wall
time and peak resident memory above the starting level (sampled every 20 ms). With the
real-CT data present, one more case registers an MRI-like image synthesised from the real
CT's masks (see :mod:`navsvc.registration.realct`). Prints a table, writes JSON (per case
also the per-stage wall ``timings_s`` and process CPU ``cpu_s``).

``elastix-rigid-masks-oracle-start`` is a reference, not a competitor: careful masked rigid
elastix started from the case's true femur pose moved by 3 mm / 3 degrees
(:func:`navsvc.registration.validation_methods.oracle_start`); it shows what that
configuration reaches and costs where it converges. It is skipped on the real-CT case (no
true femur pose to start from there).
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_PRESETS = "small,small-distorted,realistic-distorted,cbct,small,small-distorted,realistic,small,cbct,small-distorted"
DEFAULT_METHODS = "rigid,navsvc,elastix-default,elastix-rigid"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cases", type=int, default=10, help="number of phantom cases (default 10)")
    p.add_argument("--presets", default=DEFAULT_PRESETS,
                   help="comma-separated phantom presets, cycled over the cases")
    p.add_argument("--first-seed", type=int, default=100)
    p.add_argument("--methods", default=DEFAULT_METHODS,
                   help="comma-separated: rigid, navsvc, elastix-default, elastix-rigid, elastix-rigid-masks, "
                        "elastix, elastix-rigid-masks-oracle-start (a reference started near the truth)")
    p.add_argument("--real-ct", default="auto",
                   help="real-CT folder (shared/data/real-ct-pelvis), 'auto' to look for it, 'none' to skip")
    p.add_argument("--out", type=Path, default=Path("out/bench-registration"), help="output folder for the JSON")


class _PeakRSS:
    """Peak resident memory (bytes) of this process above the level at start, sampled in a thread."""

    def __init__(self, interval_s: float = 0.02) -> None:
        import psutil

        self._proc = psutil.Process()
        self._interval = interval_s
        self._stop = threading.Event()
        self.base = self._proc.memory_info().rss
        self.peak = self.base
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def __enter__(self) -> _PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)

    @property
    def above_start_mb(self) -> float:
        return (self.peak - self.base) / 2**20


def _run_method(case: Any, name: str) -> dict[str, Any]:
    from navsvc.registration.validation_methods import run_method
    from phantoms.validate import evaluate_case

    with _PeakRSS() as mem:
        r = evaluate_case(case, lambda c: run_method(c, name))
    r.pop("_label_maps", None)
    extra = r.pop("extra", {}) or {}
    T_rigid = extra.get("T_ct_from_mri_rigid")
    if T_rigid is not None and "tre_mm" in r:
        import numpy as np

        names = list(r["tre_mm"])
        p = np.array([case.landmarks_mri[n] for n in names])
        q = np.array([case.landmarks_ct[n] for n in names])
        r["tre_rigid_stage_mm"] = dict(zip(names, np.linalg.norm(T_rigid.apply(p) - q, axis=1).tolist(), strict=True))
    r["verdict"] = extra.get("verdict")
    r["reasons"] = extra.get("reasons")
    r["notes"] = extra.get("notes")
    r["timings_s"] = extra.get("timings_s")
    r["deformable"] = (extra.get("stages") or {}).get("deformable")
    r["cpu_s"] = (extra.get("stages") or {}).get("cpu_s")
    if "oracle_start" in extra:
        r["oracle_start"] = extra["oracle_start"]
    r["peak_memory_mb"] = mem.above_start_mb
    return r


def _real_ct_case(path: str) -> Any:
    from navsvc.registration import realct

    d = realct.find_data_dir(None if path == "auto" else path)
    if d is None:
        return None, None
    data = realct.load(d)
    seg = realct.bone_segmentation_check(data, 105.0)
    seg["metal_side"] = realct.metal_side(data)
    case = realct.make_real_ct_case(d)
    # the harness reads these attributes
    case.kind = "digital"
    case.labels_ct = None
    case.landmark_structure = {n: "femur" for n in case.landmarks_mri}
    case.landmark_names = lambda structure=None: [  # type: ignore[attr-defined]
        n for n in case.landmarks_mri if structure in (None, "femur")]
    return case, seg


def accuracy_summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Cases, TRE mean / p95 / max over every landmark of every case, success rate, mean lesion
    Dice and mean wall time of one method's per-case results."""
    import numpy as np

    tre = np.array([v for r in results for v in r.get("tre_mm", {}).values()])
    dice = [r["dice_lesion"] for r in results if r.get("dice_lesion") is not None]
    return {
        "n_cases": len(results),
        "tre_mean_mm": float(tre.mean()) if tre.size else None,
        "tre_p95_mm": float(np.percentile(tre, 95)) if tre.size else None,
        "tre_max_mm": float(tre.max()) if tre.size else None,
        "success_rate": float(np.mean([bool(r.get("success")) for r in results])) if results else 0.0,
        "lesion_dice_mean": float(np.mean(dice)) if dice else None,
        "wall_s_mean": float(np.mean([r.get("wall_seconds", np.nan) for r in results])),
    }


def _summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    import numpy as np

    worse = []
    for r in results:
        if "tre_rigid_stage_mm" in r and "tre_mm" in r:
            d = np.array(list(r["tre_mm"].values())) - np.array(list(r["tre_rigid_stage_mm"].values()))
            worse.append(float(d.max()))
    return {
        **accuracy_summary(results),
        "wall_s_max": float(np.max([r.get("wall_seconds", np.nan) for r in results])),
        "peak_memory_mb_max": float(np.max([r.get("peak_memory_mb", 0.0) for r in results])),
        "verdicts": {v: sum(1 for r in results if r.get("verdict") == v) for v in ("PASS", "WARN", "FAIL")},
        "deformable_vs_rigid_max_tre_change_mm": max(worse) if worse else None,
    }


def run(args: argparse.Namespace) -> int:
    import platform

    import torch
    from rich.console import Console
    from rich.table import Table

    from navsvc.registration.pipeline import versions
    from navsvc.transforms import write_json_atomic

    console = Console()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    from navsvc.errors import ConfigError
    from navsvc.registration.validation_methods import METHOD_OPTIONS, ORACLE_START_METHODS

    unknown = [m for m in methods if m not in METHOD_OPTIONS]
    if unknown:
        raise ConfigError(f"unknown method(s) {unknown}; expected some of {sorted(METHOD_OPTIONS)}")
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    from phantoms.case import make_case

    per_method: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    real: dict[str, dict[str, Any]] = {}
    cases_info = []
    t_start = time.perf_counter()
    for k in range(args.cases):
        preset = presets[k % len(presets)]
        seed = args.first_seed + k
        t0 = time.perf_counter()
        case = make_case(seed, preset)
        cases_info.append({"name": case.name, "preset": preset, "seed": seed, "describe": case.describe(),
                           "generation_s": time.perf_counter() - t0})
        console.print(f"[bold]{k + 1}/{args.cases}[/] {case.describe()}")
        for m in methods:
            r = _run_method(case, m)
            r["preset"] = preset
            per_method[m].append(r)
            tre = r.get("tre", {})
            console.print(f"   {m:16s} TRE mean {tre.get('mean', float('nan')):.3f} max {tre.get('max', float('nan')):.3f} mm"
                          f"  {r.get('wall_seconds', float('nan')):.1f} s  {r.get('verdict')}  {r.get('error', '')}"
                          f"  {'; '.join(r.get('reasons') or [])[:160]}")
    real_seg = real_gate = None
    if args.real_ct != "none":
        case, real_seg = _real_ct_case(args.real_ct)
        if case is not None:
            console.print(f"[bold]real CT[/] {case.name}: bone segmentation {real_seg}")
            for m in methods:
                if m in ORACLE_START_METHODS:
                    continue  # needs the true femur pose of a phantom
                r = _run_method(case, m)
                real[m] = r
                tre = r.get("tre", {})
                console.print(f"   {m:16s} TRE mean {tre.get('mean', float('nan')):.3f} max {tre.get('max', float('nan')):.3f} mm"
                              f"  {r.get('wall_seconds', float('nan')):.1f} s  {r.get('verdict')}  {r.get('reasons')}")
            # what the gate can tell apart on this CT: the truth and the truth moved by known errors
            from navsvc.registration.realct import gate_near_truth

            real_gate = gate_near_truth(case)
            for name, g in real_gate.items():
                console.print(f"   gate at {name:14s}: TRE mean {g['tre_mean_mm']:.2f} mm, surface "
                              f"{g['surface_distance_mean_mm']:.2f} / p95 {g['surface_distance_p95_mm']:.2f} mm, "
                              f"femur Dice {g['femur_dice']:.3f}, {g['verdict']}")
    # --cases 0 runs the real-CT case alone: no phantom summary then
    summaries = {m: _summary(rs) for m, rs in per_method.items() if rs}
    if "navsvc" in per_method and "rigid" not in per_method:
        # rigid-only figures from the same runs: the navsvc result's rigid stage
        import numpy as np

        rs = per_method["navsvc"]
        tre = np.array([v for r in rs for v in r.get("tre_rigid_stage_mm", {}).values()])
        if tre.size:
            summaries["rigid (stage of navsvc)"] = {
                "n_cases": len(rs), "tre_mean_mm": float(tre.mean()), "tre_p95_mm": float(np.percentile(tre, 95)),
                "tre_max_mm": float(tre.max()),
                "success_rate": float(np.mean([max(r.get("tre_rigid_stage_mm", {"x": 99}).values()) < 2.0 for r in rs])),
                "lesion_dice_mean": None,
                "wall_s_mean": float(np.mean([r["timings_s"]["total"] - r["timings_s"].get("deformable", 0.0)
                                              for r in rs if r.get("timings_s")])),
                "wall_s_max": float(np.max([r["timings_s"]["total"] - r["timings_s"].get("deformable", 0.0)
                                            for r in rs if r.get("timings_s")])),
                "peak_memory_mb_max": float("nan"), "verdicts": {"PASS": 0, "WARN": 0, "FAIL": 0},
                "deformable_vs_rigid_max_tre_change_mm": None,
            }
    table = Table(title=f"MRI -> CT registration, {args.cases} phantom cases ({', '.join(sorted(set(presets[:args.cases])))})")
    for col in ("method", "TRE mean", "TRE p95", "TRE max", "success", "lesion Dice", "wall s (mean/max)",
                "peak MB", "PASS/WARN/FAIL", "real CT TRE mean/max"):
        table.add_column(col)
    for m, s in summaries.items():
        rr = real.get(m, {}).get("tre", {}) if m in real else {}
        table.add_row(m, f"{s['tre_mean_mm']:.3f}", f"{s['tre_p95_mm']:.3f}", f"{s['tre_max_mm']:.3f}",
                      f"{100 * s['success_rate']:.0f}%", f"{s['lesion_dice_mean']:.3f}" if s["lesion_dice_mean"] else "-",
                      f"{s['wall_s_mean']:.1f}/{s['wall_s_max']:.1f}", f"{s['peak_memory_mb_max']:.0f}",
                      "/".join(str(s["verdicts"][v]) for v in ("PASS", "WARN", "FAIL")) if sum(s["verdicts"].values()) else "-",
                      f"{rr.get('mean', float('nan')):.2f}/{rr.get('max', float('nan')):.2f}" if rr else "-")
    for m in real:
        if m not in summaries:
            rr = real[m].get("tre", {})
            table.add_row(m, *["-"] * 8, f"{rr.get('mean', float('nan')):.2f}/{rr.get('max', float('nan')):.2f}")
    console.print(table)
    report = {
        "benchmark": "registration", "command": "navsvc bench registration " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k in ("cases", "presets", "first_seed", "methods")),
        "machine": {"platform": platform.platform(), "cpu_threads_torch": torch.get_num_threads(),
                    "cuda": torch.cuda.is_available()},
        "versions": versions(), "total_s": time.perf_counter() - t_start,
        "cases": cases_info, "summary": summaries, "per_case": per_method,
        "real_ct": {"bone_segmentation": real_seg, "results": real, "gate_near_truth": real_gate},
    }
    out = Path(args.out)
    write_json_atomic(out / "registration.json", json.loads(json.dumps(report, default=str)))
    console.print(f"JSON: {out / 'registration.json'}")
    return 0
