"""Preoperative planning for core decompression of the femoral head.

Plan model (:mod:`planning.model`), automatic planner (:mod:`planning.planner`), safety
checks (:mod:`planning.checks`) and 3D Slicer markups import/export
(:mod:`planning.slicer`). Every point is in the MRI frame, LPS millimetres.
"""

from planning.checks import CheckReport, PlanViolation, Violation, check_plan
from planning.model import (
    ImageRef,
    LesionSummary,
    Margins,
    Plan,
    Trajectory,
    load_plan,
    save_plan,
)
from planning.planner import PlannerOptions, plan_automatic
from planning.slicer import plan_from_markups, plan_to_markups, write_plan_markups

__all__ = [
    "CheckReport", "ImageRef", "LesionSummary", "Margins", "Plan", "PlanViolation", "PlannerOptions",
    "Trajectory", "Violation", "check_plan", "load_plan", "plan_automatic", "plan_from_markups",
    "plan_to_markups", "save_plan", "write_plan_markups",
]
