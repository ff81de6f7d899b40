"""Safety checks refuse hand-made bad plans with specific messages; the distances they report
agree with distances measured on the exact analytic femur (within 1 mm: half the largest
voxel spacing of the 1.2 x 1.4 x 2.0 mm label grid, plus interpolation)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from navsvc.errors import PlanError
from planning import PlannerOptions, Trajectory, check_plan, plan_automatic
from planning.analytic import cached_analytic_femur
from planning.checks import PlanViolation, trajectory_violations
from planning.geometry import PathFigures, bone_fields, femur_anatomy
from planning.model import Margins

AGREE_MM = 1.0


@pytest.fixture(scope="module")
def case():
    f = cached_analytic_femur("right", 6.0, 13.0, 5)
    plan = plan_automatic(f.mri, f.labels, options=PlannerOptions())
    return f, plan


def _with(plan, **traj_fields):
    t = plan.trajectories[0]
    data = {"name": t.name, "entry_lps": t.entry_lps, "target_lps": t.target_lps, "diameter_mm": t.diameter_mm}
    data.update({k: tuple(float(x) for x in v) if k.endswith("_lps") else v for k, v in traj_fields.items()})
    return plan.model_copy(update={"trajectories": (Trajectory(**data),)})


def _violations(f, plan):
    with pytest.raises(PlanViolation) as info:
        check_plan(plan, f.mri, f.labels)
    assert isinstance(info.value, PlanError)
    return info.value


def _analytic_clearance(f, traj, zone_mm=10.0):
    """Drill edge to the exact surface beyond the entry zone (from where the path enters the bone)."""
    e = np.asarray(traj.entry_lps)
    s = np.linspace(0, traj.length_mm, 600)
    pts = e + s[:, None] * traj.direction_lps
    s_bone = s[np.argmax(f.femur_sdf(pts) < 0)]
    zone = s >= s_bone + zone_mm
    d = f.surface_distance_mm(pts[zone]) * np.where(f.femur_sdf(pts[zone]) < 0, 1, -1)
    return float(d.min() - traj.diameter_mm / 2)


def test_the_automatic_plan_passes(case):
    f, plan = case
    report = check_plan(plan, f.mri, f.labels)
    assert report.ok and report.image_side == "right"
    assert report.trajectories[0].min_clearance_mm >= 3.0
    assert report.as_dict()["ok"] is True
    assert "all safety rules met" in report.summary_lines()[-1]


def test_target_outside_the_lesion_is_refused(case):
    f, plan = case
    lesion_dir = (f.lesion_center_lps - f.head_center_lps) / np.linalg.norm(f.lesion_center_lps - f.head_center_lps)
    target = f.head_center_lps - 6.0 * lesion_dir  # deep in the head, on the far side from the lesion
    err = _violations(f, _with(plan, target_lps=target))
    v = next(v for v in err.violations if v.rule == "target_in_lesion")
    assert v.trajectory == "Drill1"
    assert v.value == pytest.approx(float(f.lesion_sdf(target)[0]), abs=AGREE_MM)
    assert "Drill1: target_in_lesion: the target is" in str(err) and "outside the lesion" in str(err)


def test_path_through_the_neck_cortex_is_refused(case):
    f, plan = case
    junction = f.parts[1].a_lps
    posterior = np.array([0.0, 1.0, 0.0])
    off = posterior - (posterior @ f.neck_axis) * f.neck_axis
    off = 11.5 * off / np.linalg.norm(off)  # the axis 1.5 mm inside the 13 mm neck: an 8 mm drill breaches
    bad = _with(plan, entry_lps=junction + off - 20.0 * f.neck_axis, target_lps=junction + off + 58.0 * f.neck_axis)
    err = _violations(f, bad)
    v = next(v for v in err.violations if v.rule == "cortical_clearance")
    expected = _analytic_clearance(f, bad.trajectories[0])
    assert expected < -2.0  # the construction breaches (measured on the exact surface)
    assert v.value == pytest.approx(expected, abs=AGREE_MM)
    assert "Drill1: cortical_clearance: the drill's edge comes" in str(err)
    assert "expected at least 3 mm" in str(err)


def test_target_in_the_joint_is_refused(case):
    f, plan = case
    lesion_dir = (f.lesion_center_lps - f.head_center_lps) / np.linalg.norm(f.lesion_center_lps - f.head_center_lps)
    target = f.head_center_lps + (f.head_radius_mm + 3.0) * lesion_dir  # 3 mm beyond the articular surface
    err = _violations(f, _with(plan, target_lps=target))
    v = next(v for v in err.violations if v.rule == "articular_margin")
    assert v.value == pytest.approx(-3.0 - 4.0, abs=AGREE_MM)  # tip edge: 3 mm outside plus the 4 mm radius
    assert "breaches the articular surface into the joint" in str(err)
    assert any(v.rule == "path_in_femur" for v in err.violations)


def test_too_shallow_tip_is_refused_with_its_distance(case):
    f, plan = case
    lesion_dir = (f.lesion_center_lps - f.head_center_lps) / np.linalg.norm(f.lesion_center_lps - f.head_center_lps)
    target = f.head_center_lps + (f.head_radius_mm - 6.0) * lesion_dir  # centre 6 mm deep: edge 2 mm
    err = _violations(f, _with(plan, target_lps=target))
    v = next(v for v in err.violations if v.rule == "articular_margin")
    assert v.value == pytest.approx(2.0, abs=AGREE_MM)
    assert "from the articular surface; expected at least 5 mm" in str(err)


def test_wrong_side_is_refused(case):
    f, plan = case
    err = _violations(f, plan.model_copy(update={"side": "left"}))
    assert [v.rule for v in err.violations] == ["side"]
    assert "plan: side: the plan is for the left hip but the femur in the image is a right femur" in str(err)


def test_medial_entry_is_refused(case):
    f, plan = case
    junction = f.parts[1].a_lps
    entry = junction + 14.0 * f.medial - 15.0 * f.shaft_axis  # on the medial shaft cortex
    err = _violations(f, _with(plan, entry_lps=entry))
    assert any(v.rule == "entry_on_lateral_cortex" for v in err.violations)
    assert "expected it on the lateral cortex" in str(err) or "deg away from lateral" in str(err)


def test_entry_far_from_the_bone_is_refused(case):
    f, plan = case
    t = plan.trajectories[0]
    entry = np.asarray(t.entry_lps) - 12.0 * t.direction_lps  # 12 mm out in the soft tissue
    err = _violations(f, _with(plan, entry_lps=entry))
    v = next(v for v in err.violations if v.rule == "path_in_femur")
    assert v.value == pytest.approx(12.0, abs=AGREE_MM)
    assert "after the planned entry" in str(err)


def test_entry_deep_inside_the_bone_is_refused(case):
    f, plan = case
    t = plan.trajectories[0]
    entry = np.asarray(t.entry_lps) + 25.0 * t.direction_lps  # 25 mm along the path: in the neck
    err = _violations(f, _with(plan, entry_lps=entry))
    v = next(v for v in err.violations if v.rule == "path_in_femur")
    depth = float(f.surface_distance_mm(entry[None])[0])  # exact depth of the entry below the surface
    assert v.value == pytest.approx(depth, abs=AGREE_MM)
    assert "mm deep inside the femur; expected it on the bone surface" in str(err)


def test_entry_above_the_trochanter_rule():
    f = cached_analytic_femur("right", 6.0, 13.0, 5)
    anatomy = femur_anatomy(bone_fields(f.labels))
    traj = Trajectory(name="Drill1", entry_lps=(0, 0, 0), target_lps=(0, 0, 50), diameter_mm=4.0)
    fig = PathFigures(50.0, np.zeros(3), 0.0, -1.0, 0.0, 4.0, 20.0, 6.0, -1.0, 10.0,
                      anatomy.trochanter_level_mm + 7.5, 10.0)
    out = trajectory_violations(traj, fig, anatomy, Margins())
    assert [(v.rule, v.value) for v in out] == [("entry_below_trochanter", pytest.approx(7.5))]
    ok = PathFigures(50.0, np.zeros(3), 0.0, -1.0, 0.0, 4.0, 20.0, 6.0, -1.0, 10.0,
                     anatomy.trochanter_level_mm - 0.1, 10.0)
    assert trajectory_violations(traj, ok, anatomy, Margins()) == []
    never = PathFigures(50.0, np.full(3, np.nan), math.nan, 3.0, 0.0, -math.inf, 0.0, -7.0, 2.0, math.nan,
                        math.nan, math.nan)
    rules = [v.rule for v in trajectory_violations(traj, never, anatomy, Margins())]
    assert rules == ["target_in_lesion", "path_in_femur", "articular_margin"]


def test_report_without_raising_lists_every_violation(case):
    f, plan = case
    bad = _with(plan.model_copy(update={"side": "left"}), target_lps=f.head_center_lps)
    report = check_plan(bad, f.mri, f.labels, raise_on_violation=False)
    assert not report.ok
    assert {v.rule for v in report.violations} >= {"side", "target_in_lesion"}
    assert any(line.startswith("  VIOLATION Drill1: target_in_lesion") for line in report.summary_lines())
