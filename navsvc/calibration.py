"""Device calibration from paired fiducials: ``T_device_from_ct`` by closed-form least squares.

Points are touched in the CT (LPS mm) and with the robot or tracker (device frame, mm).
:func:`calibrate_from_fiducials` returns the rigid ``T_device_from_ct`` minimising
``sum_i |R @ p_ct_i + t - p_device_i|^2`` (Kabsch / Umeyama without scale, via SVD, with
the reflection case handled), and the fiducial registration error (FRE).
Pure functions, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from navsvc.errors import InputError, PreconditionFailed
from navsvc.frames import CT, DEVICE
from navsvc.transforms import RigidTransform

#: Smallest ratio of the second to the first singular value of the centred CT points;
#: below it the points are (nearly) on a line and the rotation about it is undetermined.
MIN_SPREAD_RATIO = 1e-3


@dataclass(frozen=True)
class CalibrationResult:
    """``T_device_from_ct`` and its fiducial registration error (mm).

    ``per_point_mm[i] = |T_device_from_ct(points_ct[i]) - points_device[i]|``.
    """

    T_device_from_ct: RigidTransform
    fre_mm_rms: float
    fre_mm_max: float
    per_point_mm: NDArray[np.float64]


def _points(values: ArrayLike, field: str) -> NDArray[np.float64]:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise InputError(f"{field}: expected an (N, 3) array of points in mm, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        bad = int(np.argwhere(~np.isfinite(arr))[0, 0])
        raise InputError(f"{field}: point {bad} holds NaN or infinite values")
    return arr


def rigid_fit(points_from: NDArray[np.float64], points_to: NDArray[np.float64]) -> NDArray[np.float64]:
    """The 4x4 rigid M minimising ``sum |M(p_from) - p_to|^2`` (no scale; det(R) = +1).

    Shapes (N, 3) each, N >= 3. Kabsch: SVD of the cross-covariance; a reflection is
    turned into the nearest rotation by flipping the smallest singular direction.
    """
    c_from, c_to = points_from.mean(axis=0), points_to.mean(axis=0)
    h = (points_from - c_from).T @ (points_to - c_to)
    u, _s, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(vt.T @ u.T)) or 1.0
    r = vt.T @ np.diag([1.0, 1.0, d]) @ u.T
    m = np.eye(4)
    m[:3, :3] = r
    m[:3, 3] = c_to - r @ c_from
    return m


def calibrate_from_fiducials(
    points_ct: ArrayLike,
    points_device: ArrayLike,
    max_fre_mm: float = 1.0,
    labels: Sequence[str] | None = None,
) -> CalibrationResult:
    """Compute ``T_device_from_ct`` from paired fiducials.

    ``points_ct`` (N, 3): fiducials in the CT (LPS mm); ``points_device`` (N, 3): the same
    fiducials in the device frame (mm), in the same order; ``labels`` name them in errors.
    Contract: ``T_device_from_ct.apply(points_ct) ~ points_device``.

    Raises :class:`InputError` for mismatched shapes, fewer than 3 pairs, non-finite
    values, or (nearly) collinear or coincident points; :class:`PreconditionFailed` when
    the largest per-fiducial error exceeds ``max_fre_mm``, naming the worst fiducial.
    """
    p_ct = _points(points_ct, "points_ct")
    p_dev = _points(points_device, "points_device")
    if p_ct.shape != p_dev.shape:
        raise InputError(
            f"expected as many device points as CT points, got {len(p_dev)} and {len(p_ct)}"
        )
    n = len(p_ct)
    if n < 3:
        raise InputError(f"expected at least 3 paired fiducials, got {n}")
    names = list(labels) if labels is not None else [f"#{i}" for i in range(n)]
    if len(names) != n:
        raise InputError(f"expected {n} labels, got {len(names)}")
    if not (max_fre_mm > 0):
        raise InputError(f"max_fre_mm: expected > 0, got {max_fre_mm}")
    for field, pts in (("points_ct", p_ct), ("points_device", p_dev)):
        s = np.linalg.svd(pts - pts.mean(axis=0), compute_uv=False)
        if s[0] < 1e-9 or s[1] / s[0] < MIN_SPREAD_RATIO:
            raise InputError(
                f"{field}: the fiducials are collinear or coincident (spread ratio "
                f"{(s[1] / s[0]) if s[0] > 0 else 0:.2e}, expected >= {MIN_SPREAD_RATIO}); "
                "add a fiducial off the line through the others"
            )

    m = rigid_fit(p_ct, p_dev)
    T_device_from_ct = RigidTransform(m, DEVICE, CT)
    per_point_mm = np.linalg.norm(T_device_from_ct.apply(p_ct) - p_dev, axis=1)
    result = CalibrationResult(
        T_device_from_ct,
        float(np.sqrt(np.mean(per_point_mm**2))),
        float(per_point_mm.max()),
        per_point_mm,
    )
    if result.fre_mm_max > max_fre_mm:
        worst = int(np.argmax(per_point_mm))
        raise PreconditionFailed(
            f"fiducial registration error too large: fiducial {names[worst]} is off by "
            f"{per_point_mm[worst]:.2f} mm (RMS {result.fre_mm_rms:.2f} mm over {n} fiducials), "
            f"expected at most {max_fre_mm:.2f} mm; re-touch that fiducial or check the pairing"
        )
    return result
