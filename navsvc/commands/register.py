"""`navsvc register`: register the preoperative MRI to an intraoperative CT or to fluoroscopy views (offline)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "register",
        help="register the preoperative MRI to an intraoperative CT or to fluoroscopy views (offline)",
        description="Register MRI (+ segmentation) to an intraoperative CT (--ct) or to two or more X-ray views "
        "(--fluoro). CT: writes DIR/T_ct_from_mri.h5, DIR/T_mri_from_ct.h5, DIR/qa.json, DIR/lesion_in_ct.nii.gz, "
        "DIR/overlay.png and, with --points, DIR/points_ct.mrk.json. Fluoroscopy: DIR/T_world_from_mri.h5, "
        "DIR/T_mri_from_world.h5, DIR/qa.json, DIR/overlay_<view>.png and, with --points, "
        "DIR/points_world.mrk.json. Exits non-zero when the QA gate says FAIL (qa.json is still written).",
    )
    p.add_argument("--mri", required=True, type=Path, help="preoperative MRI volume")
    p.add_argument("--seg", required=True, type=Path, help="segmentation on the MRI grid (femur, necrosis, pelvis)")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--ct", type=Path, help="intraoperative CT in Hounsfield units")
    target.add_argument("--fluoro", nargs="+", type=Path, metavar="VIEW",
                        help="X-ray views: image files with a JSON geometry beside them (view.nii.gz + view.json), "
                        "or DICOM XA / RF / DX files")
    p.add_argument("--init", type=Path, help="fluoroscopy: rough initial T_world_from_mri (ITK transform file); "
                   "default: patient axes aligned, lesion at the views' isocentre")
    p.add_argument("--starts", type=int, default=7, help="fluoroscopy: number of starting poses (default 7)")
    p.add_argument("--pelvis-stage", action="store_true",
                   help="fluoroscopy: register femur + pelvis first, then the femur with the pelvis fixed (needs the "
                        "pelvis label; off by default, see docs/fluoroscopy.md)")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--points", type=Path, help="Slicer markups (.mrk.json) of MRI-frame points to map into the CT "
                   "(or the fluoroscopy world frame)")
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


def _with_progress(quiet: bool, job: Callable[[Any], Any]) -> Any:
    """Run ``job(progress)`` with a transient progress bar on stderr (or none when ``quiet``)."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from navsvc.progress import no_progress

    if quiet:
        return job(no_progress)
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                  TimeElapsedColumn(), console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("registration", total=1.0)

        def report(stage: str, fraction: float, message: str) -> None:
            bar.update(task, completed=fraction, description=f"{stage}: {message}"[:70])

        return job(report)


def _finish(timings_s: dict[str, float], files: dict[str, Path], out_dir: Path, verdict: str,
            reasons: list[str]) -> int:
    """Print the time and the files written; the exit code (non-zero when the gate says FAIL)."""
    from navsvc.errors import RegistrationFailed, exit_code_for

    print(f"  time {timings_s.get('total', 0.0):.1f} s; files in {out_dir}:")
    for path in files.values():
        print(f"    {path.name}")
    if verdict == "FAIL":
        print("navsvc: registration FAILED the QA gate: " + "; ".join(reasons), file=sys.stderr)
        return exit_code_for(RegistrationFailed("QA gate FAIL"))
    return 0


def run(args: argparse.Namespace) -> int:
    if args.fluoro:
        return run_fluoro(args)

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
    result = _with_progress(args.no_progress, lambda progress: register_mri_to_ct(
        mri, labels, ct, options, targets_mri=targets, progress=progress))
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
    return _finish(result.timings_s, files, args.out, qa.verdict, qa.reasons)


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


def run_fluoro(args: argparse.Namespace) -> int:
    """`navsvc register --fluoro`: MRI femur -> C-arm world frame from two or more X-ray views."""
    import numpy as np

    from navsvc.errors import InputError
    from navsvc.fluoro.output import write_fluoro_result
    from navsvc.fluoro.pose import PoseOptions
    from navsvc.fluoro.register import FluoroOptions, register_mri_to_fluoro
    from navsvc.fluoro.views import read_view
    from navsvc.frames import MRI, WORLD
    from navsvc.imaging import LabelSpec, read_image, read_label_map
    from navsvc.markups import read_points
    from navsvc.transforms import RigidTransform, read_transform

    spec = LabelSpec.parse(args.labels)
    read_image(args.mri, "MRI (--mri)")  # checked; the fluoroscopy path renders the segmentation
    labels = read_label_map(args.seg, spec, name="segmentation (--seg)")
    views = [read_view(path) for path in args.fluoro]
    points = read_points(args.points) if args.points else None
    init = read_transform(args.init, WORLD, MRI) if args.init else None
    if init is not None and not isinstance(init, RigidTransform):
        raise InputError(f"--init {args.init}: expected a rigid transform, got {type(init).__name__}")
    if args.starts < 1:
        raise InputError(f"--starts: expected at least 1, got {args.starts}")
    options = FluoroOptions(pose=PoseOptions(device=args.device, seed=args.seed, n_starts=args.starts,
                                             n_refine=min(PoseOptions.n_refine, args.starts)), labels=spec,
                            pelvis_first=args.pelvis_stage)
    targets = np.array(list(points.values())) if points else None
    result = _with_progress(args.no_progress, lambda progress: register_mri_to_fluoro(
        labels, views, options, T_world_from_mri_init=init, targets_mri=targets, progress=progress))
    files = write_fluoro_result(result, args.out, views, labels, points_mri=points, spec=spec)
    qa = result.qa
    out = sys.stdout
    print(f"verdict: {qa.verdict}", file=out)
    for reason in qa.reasons:
        print(f"  - {reason}", file=out)
    print("  " + ", ".join(f"similarity {k}={v:.3f}" for k, v in result.similarity_per_view.items()), file=out)
    return _finish(result.timings_s, files, args.out, qa.verdict, qa.reasons)
