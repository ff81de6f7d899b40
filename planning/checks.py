"""Safety checks for any plan, automatic or drawn by hand.

Rules (each violation names the trajectory, the rule and the distance):

* ``in_field_of_view`` -- entry and target lie inside the image, ``fov_margin_mm`` from its
  edges (a femur cut by the field of view has no cortex there);
* ``target_in_lesion`` -- the target lies in the necrotic lesion;
* ``path_in_femur`` -- the planned entry lies within ``entry_tolerance_mm`` of the femur's
  surface (outside or inside), and the path stays in the femur from there to the target;
* ``articular_margin`` -- the drill tip's edge stays ``articular_margin_mm`` inside the
  articular surface (a target outside the head is a breach into the joint);
* ``cortical_clearance`` -- beyond the entry zone, the drill's edge keeps
  ``cortical_clearance_mm`` from the femur's cortex (the neck cortex);
* ``entry_on_lateral_cortex`` -- the bone entry lies lateral of the shaft axis and its
  surface normal points within ``max_entry_angle_deg`` of lateral;
* ``entry_below_trochanter`` -- the bone entry lies at or below the greater trochanter's tip;
* ``side`` -- the plan's side is the side of the femur in the image.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field

import numpy as np
import SimpleITK as sitk

from navsvc.errors import PlanError
from navsvc.imaging import LabelSpec, check_same_grid, contains_points
from planning.geometry import (
    BoneFields,
    FemurAnatomy,
    PathFigures,
    bone_fields,
    femur_anatomy,
    lesion_reach_fraction,
    measure_path,
)
from planning.model import Margins, Plan, Trajectory

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Violation:
    """One broken rule: ``value`` measured against ``limit`` (mm or degrees, see ``unit``)."""

    trajectory: str
    rule: str
    value: float
    limit: float
    unit: str
    message: str

    def __str__(self) -> str:
        return f"{self.trajectory}: {self.rule}: {self.message}"


class PlanViolation(PlanError):
    """A plan broke one or more safety rules; ``violations`` lists them."""

    def __init__(self, case_id: str, violations: list[Violation]) -> None:
        self.violations = tuple(violations)
        lines = "; ".join(str(v) for v in violations)
        super().__init__(f"plan {case_id} is unsafe ({len(violations)} violation(s)): {lines}")


@dataclass(frozen=True)
class TrajectoryReport:
    """Measured figures of one trajectory (mm, degrees)."""

    name: str
    diameter_mm: float
    length_mm: float
    entry_offset_mm: float
    max_outside_mm: float
    min_clearance_mm: float
    min_clearance_at_mm: float
    tip_clearance_mm: float
    target_lesion_distance_mm: float
    entry_angle_deg: float
    entry_level_mm: float
    trochanter_level_mm: float


@dataclass(frozen=True)
class CheckReport:
    """Result of :func:`check_plan`: per-trajectory figures, plan figures and violations."""

    case_id: str
    plan_side: str
    image_side: str
    trajectories: tuple[TrajectoryReport, ...]
    lesion_reach_fraction: float
    lesion_reach_mm: float
    violations: tuple[Violation, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return not self.violations

    def as_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["ok"] = self.ok
        return d

    def summary_lines(self) -> list[str]:
        lines = [f"plan {self.case_id}: side {self.plan_side} (image: {self.image_side}); "
                 f"{100 * self.lesion_reach_fraction:.1f} % of the lesion within "
                 f"{self.lesion_reach_mm:g} mm of a drill tract"]
        for t in self.trajectories:
            lines.append(
                f"  {t.name}: {t.diameter_mm:g} mm drill, path {t.length_mm:.1f} mm, min cortical "
                f"clearance {t.min_clearance_mm:.1f} mm (at {t.min_clearance_at_mm:.0f} mm), tip "
                f"{t.tip_clearance_mm:.1f} mm from the articular surface, entry angle "
                f"{t.entry_angle_deg:.0f} deg from lateral, {t.trochanter_level_mm - t.entry_level_mm:.1f} mm "
                "below the trochanter tip"
            )
        lines += [f"  VIOLATION {v}" for v in self.violations]
        lines.append("  result: " + ("OK, all safety rules met" if self.ok else f"{len(self.violations)} violation(s)"))
        return lines


def _fmt(x: float) -> str:
    return f"{x:.1f}" if math.isfinite(x) else str(x)


def trajectory_violations(
    traj: Trajectory, fig: PathFigures, anatomy: FemurAnatomy, margins: Margins,
    labels: sitk.Image | None = None,
) -> list[Violation]:
    """The rules of this module applied to one trajectory's measured figures."""
    out: list[Violation] = []
    name = traj.name

    def add(rule: str, value: float, limit: float, unit: str, message: str) -> None:
        out.append(Violation(name, rule, float(value), float(limit), unit, message))

    if labels is not None:
        pts = np.array([traj.entry_lps, traj.target_lps])
        inside = contains_points(labels, pts, margin_mm=margins.fov_margin_mm)
        for ok, what in zip(inside, ("entry", "target"), strict=True):
            if not ok:
                add("in_field_of_view", float("nan"), margins.fov_margin_mm, "mm",
                    f"the {what} lies outside the image or within {margins.fov_margin_mm:g} mm of its edge; "
                    "expected it inside the field of view")
    if fig.target_lesion_sdf_mm > 0.0:
        add("target_in_lesion", fig.target_lesion_sdf_mm, 0.0, "mm",
            f"the target is {_fmt(fig.target_lesion_sdf_mm)} mm outside the lesion; expected inside it")
    if not math.isfinite(fig.entry_offset_mm):
        add("path_in_femur", fig.max_outside_mm, 0.0, "mm",
            "the path never enters the femur; expected it to run inside the femur to the target")
    else:
        if fig.entry_depth_mm > margins.entry_tolerance_mm:
            add("path_in_femur", fig.entry_depth_mm, margins.entry_tolerance_mm, "mm",
                f"the planned entry lies {_fmt(fig.entry_depth_mm)} mm deep inside the femur; expected it "
                f"on the bone surface (within {margins.entry_tolerance_mm:g} mm)")
        if fig.entry_offset_mm > margins.entry_tolerance_mm:
            add("path_in_femur", fig.entry_offset_mm, margins.entry_tolerance_mm, "mm",
                f"the path reaches the femur {_fmt(fig.entry_offset_mm)} mm after the planned entry; "
                f"expected the entry on the bone surface (within {margins.entry_tolerance_mm:g} mm)")
        if fig.max_outside_mm > 0.0:
            add("path_in_femur", fig.max_outside_mm, 0.0, "mm",
                f"the path leaves the femur by {_fmt(fig.max_outside_mm)} mm at {fig.max_outside_at_mm:.1f} mm "
                "from the entry (through the cortex); expected it inside the femur up to the target")
    target_sdf = -(fig.tip_clearance_mm + traj.diameter_mm / 2.0)
    if target_sdf > 0.0:
        add("articular_margin", fig.tip_clearance_mm, margins.articular_margin_mm, "mm",
            f"the target is {_fmt(target_sdf)} mm outside the femoral head: the drill breaches the "
            f"articular surface into the joint; expected the tip {margins.articular_margin_mm:g} mm inside")
    elif fig.tip_clearance_mm < margins.articular_margin_mm:
        add("articular_margin", fig.tip_clearance_mm, margins.articular_margin_mm, "mm",
            f"the drill tip's edge is {_fmt(fig.tip_clearance_mm)} mm from the articular surface; "
            f"expected at least {margins.articular_margin_mm:g} mm")
    if math.isfinite(fig.entry_offset_mm) and fig.min_clearance_mm < margins.cortical_clearance_mm:
        add("cortical_clearance", fig.min_clearance_mm, margins.cortical_clearance_mm, "mm",
            f"the drill's edge comes {_fmt(fig.min_clearance_mm)} mm from the cortex at "
            f"{fig.min_clearance_at_mm:.1f} mm from the entry; expected at least "
            f"{margins.cortical_clearance_mm:g} mm")
    if math.isfinite(fig.entry_offset_mm):
        if fig.entry_lateral_mm <= 0.0:
            add("entry_on_lateral_cortex", fig.entry_lateral_mm, 0.0, "mm",
                f"the bone entry lies {_fmt(-fig.entry_lateral_mm)} mm medial of the shaft axis; "
                "expected it on the lateral cortex")
        elif fig.entry_angle_deg > margins.max_entry_angle_deg:
            add("entry_on_lateral_cortex", fig.entry_angle_deg, margins.max_entry_angle_deg, "deg",
                f"the bone surface at the entry faces {fig.entry_angle_deg:.0f} deg away from lateral; "
                f"expected at most {margins.max_entry_angle_deg:g} deg (the lateral cortex)")
        above = fig.entry_level_mm - anatomy.trochanter_level_mm
        if above > 0.0:
            add("entry_below_trochanter", above, 0.0, "mm",
                f"the entry lies {_fmt(above)} mm above the greater trochanter's tip; expected at or below it")
    return out


def check_plan(
    plan: Plan,
    mri: sitk.Image | None,
    labels: sitk.Image,
    spec: LabelSpec | None = None,
    *,
    raise_on_violation: bool = True,
    fields: BoneFields | None = None,
    anatomy: FemurAnatomy | None = None,
) -> CheckReport:
    """Check every safety rule of ``plan`` against its segmentation (MRI frame, LPS mm).

    ``spec`` defaults to the plan's own label meanings. ``mri`` (optional) must share the
    label map's grid. Returns a :class:`CheckReport`; with ``raise_on_violation`` (default)
    any violation raises :class:`PlanViolation` (a :class:`PlanError`) listing them all.
    """
    if spec is None:
        spec = LabelSpec(**{k: v for k, v in plan.labels.items() if k in ("femur", "necrosis", "pelvis")})
    if mri is not None:
        check_same_grid(mri, labels, "MRI", "segmentation")
    fields = fields or bone_fields(labels, spec)
    anatomy = anatomy or femur_anatomy(fields)
    margins = plan.margins
    reports: list[TrajectoryReport] = []
    violations: list[Violation] = []
    if plan.side != anatomy.side:
        violations.append(Violation(
            "plan", "side", float("nan"), float("nan"), "",
            f"the plan is for the {plan.side} hip but the femur in the image is a {anatomy.side} femur "
            "(its head lies towards the patient's " + ("left" if anatomy.side == "right" else "right") + ")"))
    for traj in plan.trajectories:
        fig = measure_path(fields, anatomy, traj.entry_lps, traj.target_lps, traj.diameter_mm,
                           margins.entry_zone_mm)
        violations += trajectory_violations(traj, fig, anatomy, margins, labels)
        reports.append(TrajectoryReport(
            name=traj.name, diameter_mm=traj.diameter_mm, length_mm=fig.length_mm,
            entry_offset_mm=fig.entry_offset_mm, max_outside_mm=fig.max_outside_mm,
            min_clearance_mm=fig.min_clearance_mm, min_clearance_at_mm=fig.min_clearance_at_mm,
            tip_clearance_mm=fig.tip_clearance_mm, target_lesion_distance_mm=fig.target_lesion_sdf_mm,
            entry_angle_deg=fig.entry_angle_deg, entry_level_mm=fig.entry_level_mm,
            trochanter_level_mm=anatomy.trochanter_level_mm,
        ))
    reach = lesion_reach_fraction(fields, [(t.entry_lps, t.target_lps) for t in plan.trajectories],
                                  margins.lesion_reach_mm)
    report = CheckReport(plan.case_id, plan.side, anatomy.side, tuple(reports), reach,
                         margins.lesion_reach_mm, tuple(violations))
    if violations:
        log.info("plan %s: %d violation(s)", plan.case_id, len(violations))
        if raise_on_violation:
            raise PlanViolation(plan.case_id, violations)
    return report
