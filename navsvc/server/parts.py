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
from navsvc.transforms import RigidTransform, write_transform

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
    #: fluoroscopy instead of the CT: (image, JSON geometry or None for DICOM) per view; ``ct_path`` is
    #: then the first view's image
    fluoro: tuple[tuple[Path, Path | None], ...] = ()


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


FLUORO_OPTIONS = {"starts": int, "device": str, "seed": int, "T_world_from_mri_init": list, "pelvis_stage": bool}


def check_fluoro_options(options: dict[str, Any]) -> None:
    """Refuse unknown or mistyped fluoroscopy options before a registration is queued."""
    for key, value in options.items():
        kind = FLUORO_OPTIONS.get(key)
        if kind is None:
            raise InputError(f"fluoroscopy option {key!r} unknown; expected some of {sorted(FLUORO_OPTIONS)}")
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise InputError(f"fluoroscopy option {key!r}: expected {kind.__name__}, got {value!r}")
    if options.get("starts", 1) < 1:
        raise InputError(f"fluoroscopy option 'starts': expected at least 1, got {options['starts']}")
    if options.get("device", "auto") not in ("auto", "cpu", "cuda"):
        raise InputError(f"fluoroscopy option 'device': expected auto, cpu or cuda, got {options['device']!r}")
    if "T_world_from_mri_init" in options:
        _fluoro_init(options["T_world_from_mri_init"])


def _fluoro_init(values: Any) -> RigidTransform:
    """The rough initial pose option: 16 numbers, row-major, a rigid 4x4 (T_world_from_mri)."""
    from navsvc.frames import MRI, WORLD

    try:
        m = np.asarray(values, dtype=float).reshape(4, 4)
        return RigidTransform(m, WORLD, MRI)
    except (TypeError, ValueError, TransformError) as exc:
        raise InputError(f"fluoroscopy option 'T_world_from_mri_init': expected 16 numbers (row-major rigid 4x4), "
                         f"got {values!r}: {exc}") from exc


def _read_fluoro(views: tuple[tuple[Path, Path | None], ...]) -> list[Any]:
    from navsvc.fluoro.views import check_views_consistent, read_view

    out = [read_view(img, geo, name=f"view{k + 1}") for k, (img, geo) in enumerate(views)]
    check_views_consistent(out)
    return out


def check_fluoro(views: tuple[tuple[Path, Path | None], ...]) -> None:
    """Refuse unreadable views, missing or inconsistent geometry before queueing a registration."""
    if len(views) < 2:
        raise InputError(f"expected at least two fluoroscopy views, got {len(views)}")
    _read_fluoro(views)


def run_fluoro_registration(inp: RegistrationInput, out_dir: Path, progress: ProgressFn,
                            cancel: CancelToken) -> RegistrationOutput:
    """Register the plan's MRI femur to the fluoroscopy views; the intraoperative frame of the stored
    result (``T_ct_from_mri``, targets) is the views' world frame."""
    from navsvc.fluoro.output import write_fluoro_result
    from navsvc.fluoro.pose import PoseOptions
    from navsvc.fluoro.register import FluoroOptions, register_mri_to_fluoro
    from navsvc.frames import CT, WORLD

    spec = LabelSpec()
    if inp.plan_path is not None:
        from planning import load_plan

        spec = LabelSpec(**load_plan(inp.plan_path, verify_hashes=False).labels)
    starts = int(inp.options.get("starts", 7))
    options = FluoroOptions(pose=PoseOptions(n_starts=starts, n_refine=min(PoseOptions.n_refine, starts),
                                             device=str(inp.options.get("device", "auto")),
                                             seed=int(inp.options.get("seed", 0))), labels=spec,
                            pelvis_first=bool(inp.options.get("pelvis_stage", False)))
    read_image(inp.mri_path, "MRI")
    labels = read_label_map(inp.labels_path, spec, name="segmentation")
    views = _read_fluoro(inp.fluoro)
    points_mri = _trajectory_points(inp.trajectories)
    # the gate wants every drill target on every view; entry points may lie beyond a small detector
    targets_mri = np.array([np.asarray(t["target_lps"], dtype=float) for t in inp.trajectories]) \
        if inp.trajectories else None
    init = inp.options.get("T_world_from_mri_init")
    result = register_mri_to_fluoro(labels, views, options, targets_mri=targets_mri, progress=progress,
                                    cancel=cancel, T_world_from_mri_init=_fluoro_init(init) if init else None)
    write_fluoro_result(result, out_dir, views, labels, points_mri=points_mri, spec=spec)
    T = result.T_world_from_mri
    if T.to_frame != WORLD:
        raise TransformError(f"expected T_world_from_mri, got {T.name}")
    # the service's intraoperative frame is named ct whatever the modality: here it is the C-arm world
    T_intraop_from_mri = RigidTransform(T.matrix, CT, T.from_frame)
    write_transform(out_dir / "T_ct_from_mri.h5", T_intraop_from_mri, {"method": "fluoro-2d3d",
                                                                      "intraop_frame": WORLD})
    overlays = sorted(p.name for p in out_dir.glob("overlay_*.png"))
    qa = {
        "verdict": str(result.qa.verdict),
        "reasons": [str(r) for r in result.qa.reasons],
        "figures": {k: float(v) for k, v in dict(result.qa.figures).items() if _is_number(v)},
        "picture": overlays[0] if overlays else "",
    }
    return RegistrationOutput(qa=qa, T_ct_from_mri=T_intraop_from_mri.matrix.tolist(),
                              targets_ct=targets_ct_from_trajectories(inp.trajectories, T_intraop_from_mri),
                              timings_s={k: float(v) for k, v in dict(result.timings_s).items()})


def run_registration(inp: RegistrationInput, out_dir: Path, progress: ProgressFn,
                     cancel: CancelToken) -> RegistrationOutput:
    """Register the plan's MRI to the CT (or to fluoroscopy views) and write the result files into ``out_dir``."""
    if inp.fluoro:
        return run_fluoro_registration(inp, out_dir, progress, cancel)
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
