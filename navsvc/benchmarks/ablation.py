"""`navsvc bench ablation`: what the learned network adds to the MRI -> CT registration.

On held-out phantom cases (seeds the network never saw; distorted presets included), each
case generated once, the same pipeline runs in these configurations:

* ``rigid``: the rigid stages only (``method=rigid``);
* ``rigid+net``: the network's field applied as is (``deformable_iterations=0``), subject to the
  deformable stage's acceptance rule (femur MI gain, surface distance, displacement cap);
* ``rigid+net+io``: the network's field refined by the instance optimisation;
* ``rigid+io``: the instance optimisation alone (the default pipeline before this issue);
* ``rigid+net (no gate)``: diagnostic -- the network's field composed with the rigid result
  of the ``rigid`` run with no acceptance rule, to show what the field itself does to TRE.

Figures per configuration: TRE mean / p95 / max over the femur landmarks of all cases, lesion
Dice, folding (smallest Jacobian determinant of the field), how often the field was kept, wall
time. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_PRESETS = "small-distorted,small,small-distorted,cbct,small-distorted"
CONFIGS = ("rigid", "rigid+net", "rigid+net+io", "rigid+io", "rigid+net (no gate)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cases", type=int, default=5, help="number of held-out phantom cases (default 5)")
    p.add_argument("--presets", default=DEFAULT_PRESETS, help="comma-separated presets, cycled over the cases")
    p.add_argument("--first-seed", type=int, default=100, help="first seed (training uses 1000-1025, 2000-2002)")
    p.add_argument("--network", default="shipped", help="'shipped' or a weights file from `navsvc train`")
    p.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset of: " + ", ".join(CONFIGS))
    p.add_argument("--out", type=Path, default=Path("out/bench-ablation"), help="output folder for the JSON")


def _options(config: str, weights: str) -> Any:
    from navsvc.registration.result import RegistrationOptions

    if config == "rigid":
        return RegistrationOptions(method="rigid")
    if config == "rigid+net":
        return RegistrationOptions(method="navsvc", network_weights=weights, deformable_iterations=0)
    if config == "rigid+net+io":
        return RegistrationOptions(method="navsvc", network_weights=weights)
    if config == "rigid+io":
        return RegistrationOptions(method="navsvc")
    raise ValueError(config)


def _no_gate_method(weights: str, rigid_result: dict[str, Any]) -> Any:
    """The network's field on the rigid run's result, composed without the acceptance rule."""
    from navsvc.learning.data import fat_shift_of
    from navsvc.learning.network import load_model_cached, predict_velocity
    from navsvc.registration import qa
    from navsvc.registration.deformable import region_grid, velocity_transform
    from navsvc.registration.result import RegistrationOptions
    from phantoms.validate import MethodResult

    def method(case: Any) -> Any:
        import SimpleITK as sitk

        t0 = time.perf_counter()
        opts = RegistrationOptions()
        rigid = rigid_result["T"]
        femur_mri = sitk.Cast((case.labels == 1) | (case.labels == 2), sitk.sitkUInt8)
        model = load_model_cached(weights)
        v = predict_velocity(model, case.ct, case.mri, femur_mri, rigid, opts.deformable_spacing_mm,
                             fat_shift_mm=fat_shift_of(case))
        grid = region_grid(qa.map_mask(femur_mri, case.ct, rigid.inverse()), opts.deformable_spacing_mm, 15.0)
        D, field_img = velocity_transform(v[None], grid)
        T_ct_from_mri = D.inverse() @ rigid
        jmin, _ = qa.jacobian_determinant_range(field_img)
        seconds = time.perf_counter() - t0 + rigid_result["seconds"]
        return MethodResult(T_ct_from_mri, seconds, {"figures": {"jacobian_min": jmin}, "accepted": True,
                                                     "network_s": time.perf_counter() - t0})

    return method


def _run(case: Any, config: str, weights: str, rigid_result: dict[str, Any]) -> dict[str, Any]:
    from navsvc.registration.validation_methods import run_case
    from phantoms.validate import evaluate_case

    if config == "rigid+net (no gate)":
        r = evaluate_case(case, _no_gate_method(weights, rigid_result))
        r["wall_seconds"] = r.get("method_seconds", r.get("wall_seconds"))
    else:
        r = evaluate_case(case, lambda c: run_case(c, _options(config, weights)))
    r.pop("_label_maps", None)
    extra = r.pop("extra", {}) or {}
    figures = extra.get("figures") or {}
    stages = extra.get("stages") or {}
    r["jacobian_min"] = figures.get("jacobian_min")
    r["verdict"] = extra.get("verdict")
    r["timings_s"] = extra.get("timings_s")
    r["deformable"] = stages.get("deformable")
    r["network"] = stages.get("network")
    r["field_kept"] = bool(extra.get("accepted")) or bool((stages.get("deformable") or {}).get("accepted"))
    if config == "rigid" and extra.get("T_ct_from_mri_rigid") is not None:
        rigid_result["T"] = extra["T_ct_from_mri_rigid"]
        rigid_result["seconds"] = float(r.get("method_seconds", 0.0))
    return r


def summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    from navsvc.benchmarks.registration import accuracy_summary

    jac = [r["jacobian_min"] for r in results if r.get("jacobian_min") is not None]
    return {
        **accuracy_summary(results),
        "jacobian_min": float(min(jac)) if jac else None,
        "field_kept": int(sum(bool(r.get("field_kept")) for r in results)),
    }


def run(args: argparse.Namespace) -> int:
    import platform

    import numpy as np
    import torch
    from rich.console import Console
    from rich.table import Table

    from navsvc.errors import ConfigError
    from navsvc.learning.network import load_model_cached
    from navsvc.registration.pipeline import versions
    from navsvc.transforms import write_json_atomic
    from phantoms.case import make_case

    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        raise ConfigError(f"--configs: unknown {unknown}; expected some of {list(CONFIGS)}")
    if "rigid+net (no gate)" in configs and "rigid" not in configs:
        raise ConfigError("--configs: 'rigid+net (no gate)' needs 'rigid' (it uses that run's rigid result)")
    configs = sorted(configs, key=CONFIGS.index)
    model = load_model_cached(args.network)  # a bad weights file fails before any case is made
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    console = Console()
    per: dict[str, list[dict[str, Any]]] = {c: [] for c in configs}
    cases = []
    t_start = time.perf_counter()
    for k in range(args.cases):
        preset, seed = presets[k % len(presets)], args.first_seed + k
        case = make_case(seed, preset)
        cases.append({"name": case.name, "preset": preset, "seed": seed, "describe": case.describe()})
        console.print(f"[bold]{k + 1}/{args.cases}[/] {case.describe()}")
        rigid_result: dict[str, Any] = {}
        for c in configs:
            r = _run(case, c, args.network, rigid_result)
            r["preset"] = preset
            per[c].append(r)
            tre = r.get("tre", {})
            console.print(f"   {c:20s} TRE mean {tre.get('mean', float('nan')):.3f} max {tre.get('max', float('nan')):.3f}"
                          f" mm  kept {r['field_kept']}  {r.get('wall_seconds', float('nan')):.1f} s  {r.get('error', '')}")
    sums = {c: summary(rs) for c, rs in per.items()}
    table = Table(title=f"Learned model ablation, {args.cases} held-out phantom cases (seeds {args.first_seed}-"
                        f"{args.first_seed + args.cases - 1})")
    for col in ("configuration", "TRE mean", "TRE p95", "TRE max", "success", "lesion Dice", "min Jacobian",
                "field kept", "wall s mean"):
        table.add_column(col)

    def f3(x: Any) -> str:
        return "-" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.3f}"

    for c, s in sums.items():
        table.add_row(c, f3(s["tre_mean_mm"]), f3(s["tre_p95_mm"]), f3(s["tre_max_mm"]),
                      f"{100 * s['success_rate']:.0f}%", f3(s["lesion_dice_mean"]), f3(s["jacobian_min"]),
                      f"{s['field_kept']}/{s['n_cases']}", f"{s['wall_s_mean']:.1f}")
    console.print(table)
    report = {
        "benchmark": "ablation",
        "command": f"navsvc bench ablation --cases {args.cases} --presets {args.presets} --first-seed "
                   f"{args.first_seed} --network {args.network}",
        "network": {"source": model.source, "header": model.header},
        "machine": {"platform": platform.platform(), "torch_threads": torch.get_num_threads(),
                    "cuda": torch.cuda.is_available()},
        "versions": versions(), "total_s": time.perf_counter() - t_start, "cases": cases,
        "summary": sums, "per_case": per,
    }
    out = Path(args.out)
    write_json_atomic(out / "ablation.json", json.loads(json.dumps(report, default=str)))
    console.print(f"JSON: {out / 'ablation.json'}")
    return 0
