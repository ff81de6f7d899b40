"""`navsvc register`: register the preoperative MRI to an intraoperative CT (offline)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "register",
        help="register the preoperative MRI to an intraoperative CT (offline)",
        description="Register MRI (+ segmentation) to an intraoperative CT. Writes DIR/T_ct_from_mri.h5, "
        "DIR/T_mri_from_ct.h5, DIR/qa.json, DIR/lesion_in_ct.nii.gz, DIR/overlay.png and, with --points, "
        "DIR/points_ct.mrk.json. Exits non-zero when the QA gate says FAIL (qa.json is still written).",
    )
    p.add_argument("--mri", required=True, type=Path, help="preoperative MRI volume")
    p.add_argument("--seg", required=True, type=Path, help="segmentation on the MRI grid (femur, necrosis, pelvis)")
    p.add_argument("--ct", required=True, type=Path, help="intraoperative CT in Hounsfield units")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--points", type=Path, help="Slicer markups (.mrk.json) of MRI-frame points to map into the CT")
    p.add_argument("--method", default="navsvc", choices=["navsvc", "rigid", "elastix", "elastix-rigid"])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--labels", default="femur=1,necrosis=2,pelvis=3", help="label values in --seg")
    p.add_argument("--elastix-config", default="careful", choices=["careful", "default"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--network", default="none", metavar="shipped|PATH|none",
                   help="learned network for the deformable stage's starting field: 'shipped' (the committed "
                   "weights), a weights file from `navsvc train`, or 'none' (default; see docs/benchmarks.md, "
                   "'Learned model ablation')")
    shift = p.add_mutually_exclusive_group()
    shift.add_argument("--fat-shift", metavar="X,Y,Z",
                       help="fat chemical shift of the MRI, LPS mm (undone in the femur for the intensity stage)")
    shift.add_argument("--fat-shift-from", metavar="FIELD_T,BANDWIDTH_HZ_PX,READOUT_AXIS",
                       help="the same from the acquisition: field strength (T), pixel bandwidth (Hz/pixel) and "
                       "the MRI image axis of the readout (0, 1 or 2; DICOM gives it)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from navsvc.errors import RegistrationFailed, exit_code_for
    from navsvc.imaging import LabelSpec, read_image, read_label_map
    from navsvc.markups import read_points
    from navsvc.registration import RegistrationOptions, register_mri_to_ct, write_result

    spec = LabelSpec.parse(args.labels)
    network = None if args.network.lower() == "none" else args.network
    if network:
        from navsvc.learning.network import load_model_cached

        load_model_cached(network)  # a bad weights file fails here, before any image is read
    mri = read_image(args.mri, "MRI (--mri)")
    options = RegistrationOptions(method=args.method, device=args.device, labels=spec, seed=args.seed,
                                  elastix_config=args.elastix_config, fat_shift_mm=_fat_shift(args, mri),
                                  network_weights=network)
    labels = read_label_map(args.seg, spec, name="segmentation (--seg)")
    ct = read_image(args.ct, "CT (--ct)")
    points = read_points(args.points) if args.points else None
    import numpy as np

    targets = np.array(list(points.values())) if points else None
    console = Console(stderr=True)
    if args.no_progress:
        result = register_mri_to_ct(mri, labels, ct, options, targets_mri=targets)
    else:
        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                      TimeElapsedColumn(), console=console, transient=True) as bar:
            task = bar.add_task("registration", total=1.0)

            def report(stage: str, fraction: float, message: str) -> None:
                bar.update(task, completed=fraction, description=f"{stage}: {message}"[:70])

            result = register_mri_to_ct(mri, labels, ct, options, targets_mri=targets, progress=report)
    files = write_result(result, args.out, mri=mri, labels=labels, ct=ct, points_mri=points, spec=spec)
    qa = result.qa
    out = sys.stdout
    print(f"verdict: {qa.verdict}", file=out)
    for reason in qa.reasons:
        print(f"  - {reason}", file=out)
    for note in qa.notes:
        print(f"  note: {note}", file=out)
    keys = ("surface_distance_mean_mm", "femur_dice", "inverse_consistency_mm", "jacobian_min", "rotation_deg")
    print("  " + ", ".join(f"{k}={qa.figures[k]:.3f}" for k in keys if k in qa.figures), file=out)
    print(f"  time {result.timings_s.get('total', 0.0):.1f} s; files in {args.out}:", file=out)
    for path in files.values():
        print(f"    {path.name}", file=out)
    if qa.verdict == "FAIL":
        print("navsvc: registration FAILED the QA gate: " + "; ".join(qa.reasons), file=sys.stderr)
        return exit_code_for(RegistrationFailed("QA gate FAIL"))
    return 0


def _fat_shift(args: argparse.Namespace, mri: Any) -> tuple[float, float, float] | None:
    """``--fat-shift`` or ``--fat-shift-from`` as an LPS mm vector (None when neither is given)."""
    import numpy as np

    from navsvc.errors import ConfigError
    from navsvc.registration.result import fat_shift_vector_mm

    if args.fat_shift:
        try:
            v = [float(x) for x in args.fat_shift.split(",")]
        except ValueError:
            v = []
        if len(v) != 3 or not np.all(np.isfinite(v)):
            raise ConfigError(f"--fat-shift: expected three numbers X,Y,Z (LPS mm), got {args.fat_shift!r}")
        return (v[0], v[1], v[2])
    if args.fat_shift_from:
        parts = args.fat_shift_from.split(",")
        try:
            field_t, bandwidth, axis = float(parts[0]), float(parts[1]), int(parts[2])
        except (ValueError, IndexError):
            field_t, bandwidth, axis = 0.0, 0.0, -1
        if len(parts) != 3 or field_t <= 0 or bandwidth <= 0 or axis not in (0, 1, 2):
            raise ConfigError("--fat-shift-from: expected FIELD_T,BANDWIDTH_HZ_PX,READOUT_AXIS with positive field "
                              f"and bandwidth and an axis 0, 1 or 2, got {args.fat_shift_from!r}")
        direction = np.array(mri.GetDirection()).reshape(3, 3)[:, axis]
        return fat_shift_vector_mm(field_t, bandwidth, tuple(direction), mri.GetSpacing()[axis])
    return None
