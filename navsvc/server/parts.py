"""Adapters from the service to the pure parts (planning, registration, calibration).

The service calls the parts only through these functions, so their imports are lazy (a
missing part is a clear :class:`NotBuiltYet`) and the service layer stays a translation.
Each function reads files the store already holds and returns plain data.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from navsvc.errors import InputError, NotBuiltYet, PlanError, TransformError
from navsvc.imaging import LabelSpec, read_image, read_label_map
from navsvc.progress import CancelToken, ProgressFn
from navsvc.server.targets import targets_ct_from_trajectories
from navsvc.store import sha256_file
from navsvc.transforms import RigidTransform

log = logging.getLogger(__name__)


def _missing(part: str, exc: ImportError) -> NotBuiltYet:
    return NotBuiltYet(f"the {part} part is not installed in this build ({exc}); see DESIGN.md")


def read_plan(plan_path: Path, mri_path: Path, labels_path: Path) -> list[dict[str, Any]]:
    """Validate a plan file with its MRI and segmentation and return its trajectories as
    dicts (name, entry_lps, target_lps in the MRI frame in LPS mm, diameter_mm, depth_mm).

    The images must be the ones the plan was made on (their SHA-256 against the plan's
    records) and every trajectory must pass the planning safety checks. Raises
    InvalidImageError / InvalidLabelsError (volumes) or PlanError (plan, hashes, safety)."""
    try:
        from planning import check_plan, load_plan
    except ImportError as exc:
        raise _missing("planning", exc) from exc
    plan = load_plan(plan_path, verify_hashes=False)  # images are checked by content below
    for role, path in (("mri", mri_path), ("segmentation", labels_path)):
        ref = plan.image(role)
        if ref is not None and ref.sha256 != sha256_file(path):
            raise PlanError(
                f"plan {plan.case_id}: the {role} given ({path.name}) is not the image the plan was made on "
                f"(SHA-256 {ref.sha256[:12]}... expected); load the plan's own {role} or re-plan"
            )
    spec = LabelSpec(**plan.labels)
    mri = read_image(mri_path, "MRI")
    labels = read_label_map(labels_path, spec, name="segmentation")
    check_plan(plan, mri, labels, spec)
    return [
        {"name": t.name, "entry_lps": [float(v) for v in t.entry_lps],
         "target_lps": [float(v) for v in t.target_lps],
         "diameter_mm": float(t.diameter_mm), "depth_mm": float(t.depth_mm)}
        for t in plan.trajectories
    ]


@dataclass(frozen=True)
class RegistrationInput:
    mri_path: Path
    labels_path: Path
    ct_path: Path
    options: dict[str, Any]
    trajectories: list[dict[str, Any]]
    plan_path: Path | None = None  # its label values (femur, necrosis, pelvis) go to the registration


@dataclass(frozen=True)
class RegistrationOutput:
    """``T_ct_from_mri`` is the 4x4 matrix when the result is rigid, else None."""

    qa: dict[str, Any]  # verdict, reasons, figures, picture (file name in the result folder)
    T_ct_from_mri: list[list[float]] | None
    targets_ct: list[dict[str, Any]]
    timings_s: dict[str, float]


def check_ct(ct_path: Path) -> None:
    """Refuse an unreadable or geometrically invalid CT before queueing a registration."""
    read_image(ct_path, "CT")


def parse_options(options: dict[str, str]) -> dict[str, Any]:
    """Registration option overrides arrive as name -> JSON text."""
    out: dict[str, Any] = {}
    for key, text in options.items():
        try:
            out[key] = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"option {key!r}: expected a JSON value, got {text!r}") from exc
    return out


def check_options(options: dict[str, Any]) -> None:
    """Refuse unknown or invalid registration options before a registration is queued."""
    _registration_options(options)


def _registration_options(options: dict[str, Any]) -> Any:
    try:
        from navsvc.registration import RegistrationOptions
    except ImportError as exc:
        raise _missing("registration", exc) from exc
    try:
        return RegistrationOptions(**options)
    except (TypeError, ValueError) as exc:
        raise InputError(f"registration options {sorted(options)}: {exc}") from exc


def run_registration(inp: RegistrationInput, out_dir: Path, progress: ProgressFn,
                     cancel: CancelToken) -> RegistrationOutput:
    """Register the plan's MRI to the CT and write the result files into ``out_dir``."""
    try:
        from navsvc.registration import register_mri_to_ct, write_result
    except ImportError as exc:
        raise _missing("registration", exc) from exc
    opts = dict(inp.options)
    if inp.plan_path is not None and "labels" not in opts:
        from planning import load_plan

        opts["labels"] = LabelSpec(**load_plan(inp.plan_path, verify_hashes=False).labels)
    options = _registration_options(opts)
    mri = read_image(inp.mri_path, "MRI")
    labels = read_label_map(inp.labels_path, options.labels, name="segmentation")
    ct = read_image(inp.ct_path, "CT")
    points_mri = _trajectory_points(inp.trajectories)
    targets_mri = np.array(list(points_mri.values()), dtype=float) if points_mri else None
    result = register_mri_to_ct(mri, labels, ct, options, targets_mri=targets_mri,
                                progress=progress, cancel=cancel)
    write_result(result, out_dir, mri=mri, labels=labels, ct=ct, points_mri=points_mri, spec=options.labels)
    T = result.T_ct_from_mri
    if T.to_frame != "ct" or T.from_frame != "mri":
        raise TransformError(f"expected T_ct_from_mri, got {T.name}")
    qa = {
        "verdict": str(result.qa.verdict),
        "reasons": [str(r) for r in result.qa.reasons],
        "figures": {k: float(v) for k, v in dict(result.qa.figures).items() if _is_number(v)},
        "picture": "overlay.png" if (out_dir / "overlay.png").is_file() else "",
    }
    return RegistrationOutput(
        qa=qa,
        T_ct_from_mri=T.matrix.tolist() if isinstance(T, RigidTransform) else None,
        targets_ct=targets_ct_from_trajectories(inp.trajectories, T),
        timings_s={k: float(v) for k, v in dict(result.timings_s).items()},
    )


def _is_number(v: Any) -> bool:
    try:
        return bool(np.isfinite(float(v)))
    except (TypeError, ValueError):
        return False


def _trajectory_points(trajectories: Sequence[dict[str, Any]]) -> dict[str, np.ndarray] | None:
    """Entry and target of each trajectory by name (MRI frame, LPS mm)."""
    pts = {}
    for t in trajectories:
        pts[f"{t['name']}_entry"] = np.asarray(t["entry_lps"], dtype=float)
        pts[f"{t['name']}_target"] = np.asarray(t["target_lps"], dtype=float)
    return pts or None


def calibrate(points_ct: np.ndarray, points_device: np.ndarray,
              names: Sequence[str]) -> tuple[list[list[float]], float]:
    """T_device_from_ct (4x4) and the RMS fiducial registration error in mm from paired points
    (CT LPS mm and device mm, same order); refuses degenerate sets and a per-fiducial error
    over 1 mm (naming the worst fiducial)."""
    try:
        from navsvc.calibration import calibrate_from_fiducials
    except ImportError as exc:
        raise _missing("calibration", exc) from exc
    cal = calibrate_from_fiducials(points_ct, points_device, labels=list(names))
    return np.asarray(cal.T_device_from_ct.matrix).tolist(), float(cal.fre_mm_rms)
