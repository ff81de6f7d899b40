"""Intraoperative pose: patient motion, femur motion about the head centre, soft-tissue
deformation, and the MRI gradient-nonlinearity distortion.

Conventions: the anatomy frame is the undistorted MRI frame (``mri``).
``T_ct_from_mri_pelvis`` moves the whole patient; ``T_ct_from_mri_femur =
T_ct_from_mri_pelvis @ T_mri_from_mri_femur_rel`` adds the femur's rotation about the
femoral head centre. The soft tissue follows the pelvis near the hip and the femur down
the thigh, blended smoothly, plus a few smooth Gaussian bumps.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from navsvc.frames import CT, MRI
from navsvc.transforms import RigidTransform, rotation_matrix_from_axis_angle
from phantoms import sdf

F64 = NDArray[np.float64]


def sample_pose(rng: np.random.Generator, head_centre_mm: F64, max_rotation_deg: float,
                max_translation_mm: float, max_femur_deg: float, deform_mm: float) -> dict[str, Any]:
    """Random pose parameters (JSON-serialisable): rotation axis/angle, translation, femur
    flexion/abduction/rotation (degrees about the LPS x/y/z axes through the head centre),
    soft-tissue bumps."""
    axis = sdf.unit(rng.normal(size=3))
    angle = float(rng.uniform(0.5, 1.0) * max_rotation_deg)
    trans = sdf.unit(rng.normal(size=3)) * float(rng.uniform(0.5, 1.0) * max_translation_mm)
    femur = rng.uniform(-1.0, 1.0, size=3) * max_femur_deg
    bumps = [
        {"centre_mm": (np.asarray(head_centre_mm) + rng.uniform(-70, 70, size=3)).tolist(),
         "amplitude_mm": (sdf.unit(rng.normal(size=3)) * rng.uniform(0.5, 1.0) * deform_mm).tolist(),
         "sigma_mm": float(rng.uniform(35.0, 55.0))}
        for _ in range(4)
    ] if deform_mm > 0 else []
    return {
        "rotation_axis": axis.tolist(), "rotation_deg": angle, "translation_mm": trans.tolist(),
        "femur_flexion_abduction_rotation_deg": femur.tolist(), "soft_tissue_bumps": bumps,
        "thigh_blend_mm": [0.0, 90.0],
    }


def pose_transforms(pose: dict[str, Any], head_centre_mm: F64) -> tuple[RigidTransform, RigidTransform]:
    """(T_ct_from_mri_pelvis, T_ct_from_mri_femur) from :func:`sample_pose` parameters."""
    h = np.asarray(head_centre_mm, dtype=np.float64)
    r = rotation_matrix_from_axis_angle(pose["rotation_axis"], pose["rotation_deg"])
    T_ct_from_mri_pelvis = RigidTransform.from_rotation_translation(r, pose["translation_mm"], CT, MRI, center_mm=h)
    T_rel = RigidTransform.from_euler_deg(pose["femur_flexion_abduction_rotation_deg"], (0, 0, 0), MRI, MRI, center_mm=h)
    return T_ct_from_mri_pelvis, T_ct_from_mri_pelvis @ T_rel


def soft_tissue_points(p_ct: F64, x_pelvis: F64, x_femur: F64, pose: dict[str, Any], head_centre_mm: F64) -> F64:
    """Anatomy-frame position of the soft tissue seen at CT points ``p_ct`` (N, 3).

    ``x_pelvis``/``x_femur`` are the points mapped by the inverse pelvis/femur transforms.
    """
    h = np.asarray(head_centre_mm, dtype=np.float64)
    lo, hi = pose["thigh_blend_mm"]
    w = sdf.smoothstep(h[2] - x_pelvis[:, 2], lo, hi)[:, None]  # 0 at the hip, 1 down the thigh
    xs = (1.0 - w) * x_pelvis + w * x_femur
    for b in pose["soft_tissue_bumps"]:
        g = np.exp(-np.sum((x_pelvis - np.asarray(b["centre_mm"])) ** 2, axis=1) / (2 * b["sigma_mm"] ** 2))
        xs = xs + g[:, None] * np.asarray(b["amplitude_mm"])
    return xs


# -- MRI gradient nonlinearity ----------------------------------------------------------
R0_MM = 150.0


def sample_distortion(rng: np.random.Generator, magnitude_at_150_mm: float) -> dict[str, Any]:
    """Per-axis coefficients of a third-order gradient-nonlinearity model (see :func:`distort`)."""
    coeffs = rng.uniform(0.6, 1.0, size=3) * rng.choice([-1.0, 1.0], size=3)
    coeffs /= np.abs(coeffs).max()
    return {"magnitude_at_150_mm": float(magnitude_at_150_mm), "axis_coefficients": coeffs.tolist(),
            "through_plane_coefficient": float(rng.uniform(-0.5, 0.5))}


def distortion_mm(x: F64, d: dict[str, Any] | None) -> F64:
    """Displacement (N, 3) mm: ``g * a_i * x_i * |x|^2 / R0^3`` plus a z * (x^2 + y^2) term
    (scanner frame, isocentre at 0). Its size is ``g`` mm at 150 mm from the isocentre."""
    if not d or d["magnitude_at_150_mm"] == 0:
        return np.zeros_like(x)
    g = d["magnitude_at_150_mm"]
    r2 = np.sum(x * x, axis=1, keepdims=True)
    u = g * np.asarray(d["axis_coefficients"]) * x * r2 / R0_MM**3
    u[:, 2] += g * d["through_plane_coefficient"] * x[:, 2] * (x[:, 0] ** 2 + x[:, 1] ** 2) / R0_MM**3
    return u


def distort(x: F64, d: dict[str, Any] | None) -> F64:
    """True (anatomy) position -> position where the MRI shows it."""
    return x + distortion_mm(x, d)


def undistort(y: F64, d: dict[str, Any] | None, iterations: int = 8) -> F64:
    """Inverse of :func:`distort` by fixed-point iteration (contraction: |grad| < 0.05)."""
    if not d or d["magnitude_at_150_mm"] == 0:
        return np.asarray(y, dtype=np.float64)
    x = np.array(y, dtype=np.float64)
    for _ in range(iterations):
        x = y - distortion_mm(x, d)
    return x
