"""`navsvc plan`: automatic core-decompression planning, plan checks, plan summary, Slicer markups.

    navsvc plan auto --mri MRI --seg SEG -o plan.json [--drills 3 --diameter 3.2] [--markups plan.mrk.json]
    navsvc plan check plan.json [--mri MRI --seg SEG] [--no-verify-hashes]
    navsvc plan show plan.json [--png plan.png]
    navsvc plan export plan.json -o plan.mrk.json [--ras]
    navsvc plan import drawn.mrk.json --mri MRI --seg SEG -o plan.json [--diameter 8]

Every point is in the MRI frame, LPS mm (RAS only in markups written with ``--ras``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from navsvc.errors import PlanError


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "plan", help="automatic core-decompression planning, plan checks, plan summary, Slicer markups")
    psub = p.add_subparsers(dest="plan_command", metavar="ACTION", required=True)

    a = psub.add_parser("auto", help="plan drill trajectories from the MRI and its segmentation")
    _images(a, required=True)
    a.add_argument("-o", "--output", required=True, type=Path, help="plan JSON to write")
    a.add_argument("--drills", type=int, default=1, help="number of tracts fanning into the lesion (default 1)")
    a.add_argument("--diameter", type=float, default=None,
                   help="drill diameter mm (default 8 for one tract, 3.2 for several)")
    a.add_argument("--target", choices=("centroid", "coverage"), default="centroid",
                   help="target: allowed point nearest the lesion centroid, or covering most lesion")
    a.add_argument("--clearance", type=float, default=3.0, help="cortical clearance mm (default 3)")
    a.add_argument("--articular-margin", type=float, default=5.0,
                   help="tip distance to the articular surface mm (default 5)")
    a.add_argument("--case-id", default=None, help="pseudonymous case id (default: from the MRI's hash)")
    a.add_argument("--author", default="navsvc auto-planner")
    a.add_argument("--markups", type=Path, default=None, help="also write the plan as Slicer markups")
    a.add_argument("--ras", action="store_true", help="write markups in RAS (default LPS)")
    a.set_defaults(func=_auto)

    c = psub.add_parser("check", help="check a plan's safety rules against its images")
    c.add_argument("plan", type=Path)
    _images(c, required=False)
    c.add_argument("--no-verify-hashes", action="store_true", help="skip the SHA-256 check of recorded images")
    c.add_argument("--json", type=Path, default=None, help="also write the report as JSON")
    c.set_defaults(func=_check)

    s = psub.add_parser("show", help="print a plan's summary and write a review PNG")
    s.add_argument("plan", type=Path)
    _images(s, required=False)
    s.add_argument("--png", type=Path, default=None, help="PNG to write (default: next to the plan)")
    s.add_argument("--no-verify-hashes", action="store_true", help="skip the SHA-256 check of images")
    s.set_defaults(func=_show)

    e = psub.add_parser("export", help="write a plan as 3D Slicer markups (a line per trajectory)")
    e.add_argument("plan", type=Path)
    e.add_argument("-o", "--output", required=True, type=Path)
    e.add_argument("--ras", action="store_true", help="RAS coordinates (default LPS)")
    e.set_defaults(func=_export)

    i = psub.add_parser("import", help="make a plan from trajectories drawn in 3D Slicer")
    i.add_argument("markups", type=Path)
    _images(i, required=True)
    i.add_argument("-o", "--output", required=True, type=Path)
    i.add_argument("--diameter", type=float, default=None, help="drill diameter mm where the markups give none")
    i.add_argument("--side", choices=("left", "right"), default=None, help="default: from the image")
    i.add_argument("--case-id", default=None)
    i.add_argument("--author", default="slicer")
    i.add_argument("--save-unsafe", action="store_true", help="save even if the plan breaks a safety rule")
    i.set_defaults(func=_import)


def _images(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--mri", type=Path, required=required, default=None, help="MRI volume")
    p.add_argument("--seg", type=Path, required=required, default=None, help="segmentation label map")
    p.add_argument("--labels", default="femur=1,necrosis=2,pelvis=3", help="label meanings")


def _spec(args: argparse.Namespace) -> Any:
    from navsvc.imaging import LabelSpec

    return LabelSpec.parse(args.labels)


def _read(mri_path: Path | None, seg_path: Path, spec: Any) -> tuple[Any, Any]:
    from navsvc.imaging import read_image, read_label_map

    mri = read_image(mri_path, "MRI") if mri_path is not None else None
    return mri, read_label_map(seg_path, spec, name="segmentation")


def _plan_images(plan: Any, args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """MRI and labels for a loaded plan: --mri/--seg if given, else the plan's recorded paths.
    An image given on the command line must match the plan's recorded SHA-256 unless
    --no-verify-hashes."""
    from navsvc.imaging import LabelSpec
    from planning.model import resolve_image_path, sha256_file

    for role, given in (("mri", args.mri), ("segmentation", args.seg)):
        ref = plan.image(role)
        if given is None or ref is None or args.no_verify_hashes:
            continue
        if not Path(given).is_file():
            raise PlanError(f"{role} image not found: {given}")
        if sha256_file(given) != ref.sha256:
            raise PlanError(
                f"{given} is not the {role} image plan {plan.case_id} was made on (SHA-256 differs from "
                f"{ref.sha256[:12]}...); pass --no-verify-hashes to check the plan against it anyway"
            )

    spec = _spec(args) if args.seg is not None else LabelSpec(**plan.labels)
    seg = args.seg
    mri = args.mri
    if seg is None:
        ref = plan.image("segmentation")
        if ref is None:
            raise PlanError(f"plan {plan.case_id} records no segmentation; pass --seg")
        seg = resolve_image_path(ref, args.plan)
    if mri is None and plan.image("mri") is not None:
        mri = resolve_image_path(plan.image("mri"), args.plan)
    m, labels = _read(mri, seg, spec)
    return m, labels, spec


def _auto(args: argparse.Namespace) -> int:
    from planning import PlannerOptions, plan_automatic, save_plan
    from planning.slicer import write_plan_markups

    spec = _spec(args)
    mri, labels = _read(args.mri, args.seg, spec)
    diameter = args.diameter if args.diameter is not None else (8.0 if args.drills == 1 else 3.2)
    options = PlannerOptions(n_drills=args.drills, diameter_mm=diameter, target_mode=args.target,
                             cortical_clearance_mm=args.clearance, articular_margin_mm=args.articular_margin,
                             author=args.author)
    plan = plan_automatic(mri, labels, spec, options, mri_path=str(args.mri), seg_path=str(args.seg),
                          case_id=args.case_id)
    save_plan(plan, args.output)
    print(f"wrote {args.output}")
    for line in _summary_lines(plan):
        print(line)
    if args.markups is not None:
        write_plan_markups(plan, args.markups, "RAS" if args.ras else "LPS")
        print(f"wrote {args.markups}")
    return 0


def _check(args: argparse.Namespace) -> int:
    from planning import check_plan, load_plan
    from planning.checks import PlanViolation
    from planning.model import write_json_atomic

    plan = load_plan(args.plan, verify_hashes=not args.no_verify_hashes)
    mri, labels, spec = _plan_images(plan, args)
    report = check_plan(plan, mri, labels, spec, raise_on_violation=False)
    for line in report.summary_lines():
        print(line)
    if args.json is not None:
        write_json_atomic(args.json, report.as_dict())
    if not report.ok:
        raise PlanViolation(plan.case_id, list(report.violations))
    return 0


def _show(args: argparse.Namespace) -> int:
    from planning import check_plan, load_plan
    from planning.figure import render_plan_png
    from planning.geometry import bone_fields, femur_anatomy

    plan = load_plan(args.plan, verify_hashes=not args.no_verify_hashes)
    for line in _summary_lines(plan):
        print(line)
    mri, labels, spec = _plan_images(plan, args)
    if mri is None:
        raise PlanError(f"plan {plan.case_id} records no MRI; pass --mri to draw the review PNG")
    fields = bone_fields(labels, spec)
    anatomy = femur_anatomy(fields)
    report = check_plan(plan, mri, labels, spec, raise_on_violation=False, fields=fields, anatomy=anatomy)
    for line in report.summary_lines():
        print(line)
    png = args.png or args.plan.with_suffix(".png")
    render_plan_png(plan, mri, labels, anatomy, png, spec, report)
    print(f"wrote {png}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from planning import load_plan
    from planning.slicer import write_plan_markups

    plan = load_plan(args.plan, verify_hashes=False)
    write_plan_markups(plan, args.output, "RAS" if args.ras else "LPS")
    print(f"wrote {args.output} ({len(plan.trajectories)} line(s), {'RAS' if args.ras else 'LPS'})")
    return 0


def _import(args: argparse.Namespace) -> int:
    from planning import check_plan, plan_from_markups, save_plan
    from planning.checks import PlanViolation

    spec = _spec(args)
    mri, labels = _read(args.mri, args.seg, spec)
    plan = plan_from_markups(args.markups, mri, labels, spec, diameter_mm=args.diameter, side=args.side,
                             case_id=args.case_id, author=args.author, mri_path=str(args.mri),
                             seg_path=str(args.seg))
    report = check_plan(plan, mri, labels, spec, raise_on_violation=False)
    for line in report.summary_lines():
        print(line)
    if report.ok or args.save_unsafe:
        save_plan(plan, args.output)
        print(f"wrote {args.output}")
    if not report.ok:
        raise PlanViolation(plan.case_id, list(report.violations))
    return 0


def _summary_lines(plan: Any) -> list[str]:
    from navsvc.frames import ras_from_lps_points

    lines = [f"plan {plan.case_id}: {plan.side} hip, {len(plan.trajectories)} trajectory(ies), source "
             f"{plan.source}, author {plan.author}, created {plan.created_utc.isoformat()}"]
    for ref in plan.images:
        lines.append(f"  {ref.role}: {ref.path} (sha256 {ref.sha256[:12]}...)")
    if plan.lesion is not None:
        les = plan.lesion
        lines.append(
            f"  lesion: {les.volume_ml:.2f} mL, {les.head_involvement_percent:.0f} % of the head, extent "
            f"{les.extent_ml_mm:.0f} x {les.extent_ap_mm:.0f} x {les.extent_si_mm:.0f} mm (ML x AP x SI), "
            f"{les.location_class}")
    m = plan.margins
    lines.append(f"  margins: cortical clearance {m.cortical_clearance_mm:g} mm, articular "
                 f"{m.articular_margin_mm:g} mm, entry zone {m.entry_zone_mm:g} mm")
    for t in plan.trajectories:
        e_ras, t_ras = ras_from_lps_points([t.entry_lps, t.target_lps])
        lines.append(
            f"  {t.name}: {t.diameter_mm:g} mm drill, depth {t.depth_mm:.1f} mm; entry LPS "
            f"{_v(t.entry_lps)} (RAS {_v(e_ras)}), target LPS {_v(t.target_lps)} (RAS {_v(t_ras)})")
    figures = plan.planner.get("figures") if plan.planner else None
    if figures:
        lines.append("  planner figures: " + json.dumps(figures))
    return lines


def _v(p: Any) -> str:
    return "(" + ", ".join(f"{float(x):.1f}" for x in p) + ")"
