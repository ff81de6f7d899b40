"""Quality figures of a registration and the PASS / WARN / FAIL gate.

Every figure is a pure function of the images, the masks and the two transforms; the gate
compares them with :class:`~navsvc.registration.result.QAThresholds` and gives its reasons.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray
from scipy.spatial import cKDTree

from navsvc.imaging import contains_points
from navsvc.registration.result import QAReport, QAThresholds
from navsvc.transforms import AnyTransform, resample

F = NDArray[np.float64]


def surface_distance_mm(mri_surface_mm: F, T_ct_from_mri: AnyTransform, ct_surface_mm: F) -> tuple[float, float]:
    """(mean, p95) distance (mm) from mapped MRI femur surface points to the nearest CT bone surface point."""
    if len(ct_surface_mm) == 0 or len(mri_surface_mm) == 0:
        return math.inf, math.inf
    d, _ = cKDTree(ct_surface_mm).query(T_ct_from_mri.apply(mri_surface_mm), k=1, workers=-1)
    return float(np.mean(d)), float(np.percentile(d, 95))


def femur_dice(mapped_femur_ct: sitk.Image, ct_bone: sitk.Image, radius_mm: float = 10.0) -> float:
    """Dice of the MRI femur mapped onto the CT grid against the CT bone near it.

    CT bone counts within ``radius_mm`` of the mapped femur (other bones further away,
    e.g. the pelvis across the joint, do not lower the figure more than their near part).
    """
    a = sitk.GetArrayViewFromImage(mapped_femur_ct) > 0
    if not a.any():
        return 0.0
    dist = sitk.GetArrayFromImage(
        sitk.SignedMaurerDistanceMap(sitk.Cast(mapped_femur_ct > 0, sitk.sitkUInt8), insideIsPositive=False,
                                     squaredDistance=False, useImageSpacing=True)
    )
    b = (sitk.GetArrayViewFromImage(ct_bone) > 0) & (dist <= radius_mm)
    denom = a.sum() + b.sum()
    return float(2.0 * np.logical_and(a, b).sum() / denom) if denom else 0.0


def inverse_consistency_mm(T_ct_from_mri: AnyTransform, T_mri_from_ct: AnyTransform, points_mri: F) -> float:
    """Largest |T_mri_from_ct(T_ct_from_mri(p)) - p| (mm) over ``points_mri``."""
    if len(points_mri) == 0:
        return 0.0
    back = T_mri_from_ct.apply(T_ct_from_mri.apply(points_mri))
    return float(np.linalg.norm(back - points_mri, axis=1).max())


def jacobian_determinant_range(field_mm: sitk.Image | None) -> tuple[float, float]:
    """(min, max) Jacobian determinant of ``x -> x + u(x)`` for a displacement field; (1, 1) when rigid."""
    if field_mm is None:
        return 1.0, 1.0
    jac = sitk.GetArrayFromImage(sitk.DisplacementFieldJacobianDeterminant(field_mm))
    return float(jac.min()), float(jac.max())


def masked_mi(ct: sitk.Image, mri: sitk.Image, mask_ct: sitk.Image, T_mri_from_ct: AnyTransform,
              bins: int = 40) -> float:
    """Mattes mutual information (positive, higher is better) between the CT and the mapped MRI in a CT mask.

    The MRI is resampled onto the mask's bounding box of the CT grid first, so any transform
    (rigid or with a displacement field) is evaluated the same way.
    """
    from navsvc.registration.bone import crop_to_mask

    m = sitk.GetArrayViewFromImage(mask_ct) > 0
    if not m.any():
        return 0.0
    fixed = crop_to_mask(sitk.Cast(ct, sitk.sitkFloat32), m, margin_vox=1)
    mask = crop_to_mask(mask_ct, m, margin_vox=1)
    moving = resample(sitk.Cast(mri, sitk.sitkFloat32), fixed, T_mri_from_ct)
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=bins)
    method.SetMetricFixedMask(mask)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetInitialTransform(sitk.Transform(3, sitk.sitkIdentity))
    # the value only: ITK's gradient-image filters would filter the whole image for nothing
    method.MetricUseMovingImageGradientFilterOff()
    method.MetricUseFixedImageGradientFilterOff()
    try:
        return -float(method.MetricEvaluate(fixed, moving))
    except RuntimeError:  # too few samples map inside the MRI
        return 0.0


def map_mask(mask_mri: sitk.Image, ct: sitk.Image, T_mri_from_ct: AnyTransform) -> sitk.Image:
    """A binary MRI mask on the CT grid (nearest neighbour through ``T_mri_from_ct``)."""
    return sitk.Cast(resample(mask_mri, ct, T_mri_from_ct, interpolator="nearest") > 0, sitk.sitkUInt8)


def gate(figures: dict[str, float], limits: QAThresholds, notes: list[str] | None = None,
         extra_fail: list[str] | None = None) -> QAReport:
    """Turn figures into a verdict. Missing figures are not judged."""
    fail: list[str] = list(extra_fail or [])
    warn: list[str] = []
    g = figures.get
    voxel_mm = g("ct_voxel_max_mm")
    coarse = voxel_mm is not None and voxel_mm > limits.coarse_ct_mm
    # on a coarse CT a surface or Dice failure may be the figure's own floor: say so
    floor = (f" (on a CT with {voxel_mm:.1f} mm voxels this figure is limited by the voxel size "
             "even for a correct registration)") if coarse else ""

    def check(value: Any) -> bool:
        return value is not None and not (isinstance(value, float) and math.isnan(value))

    v = g("surface_distance_mean_mm")
    if check(v):
        if v > limits.surface_mean_fail_mm:
            fail.append(f"bone surface distance {v:.2f} mm > {limits.surface_mean_fail_mm} mm: the femur does not "
                        f"match the CT bone (wrong case, other hip, or no femur in the CT?){floor}")
        elif v > limits.surface_mean_warn_mm:
            warn.append(f"bone surface distance {v:.2f} mm > {limits.surface_mean_warn_mm} mm")
    v = g("surface_distance_p95_mm")
    if check(v) and v > limits.surface_p95_fail_mm:
        fail.append(f"bone surface distance p95 {v:.2f} mm > {limits.surface_p95_fail_mm} mm{floor}")
    v = g("femur_dice")
    if check(v):
        if v < limits.dice_fail:
            fail.append(f"femur Dice {v:.3f} < {limits.dice_fail}{floor}")
        elif v < limits.dice_warn:
            warn.append(f"femur Dice {v:.3f} < {limits.dice_warn}")
    v = g("jacobian_min")
    if check(v) and v <= 0.0:
        fail.append(f"deformation folds: minimum Jacobian determinant {v:.3f} <= 0")
    v = g("inverse_consistency_mm")
    if check(v):
        if v > limits.inverse_fail_mm:
            fail.append(f"the two transform directions disagree by {v:.3f} mm > {limits.inverse_fail_mm} mm")
        elif v > limits.inverse_warn_mm:
            warn.append(f"the two transform directions disagree by {v:.3f} mm > {limits.inverse_warn_mm} mm")
    v = g("targets_outside_ct")
    if check(v) and v > 0:
        fail.append(f"{int(v)} target(s) map outside the CT field of view")
    v = g("femur_in_ct_fraction")
    if check(v) and v < limits.femur_in_fov_fail:
        fail.append(f"only {100 * v:.0f}% of the femur surface maps inside the CT field of view "
                    f"(expected >= {100 * limits.femur_in_fov_fail:.0f}%)")
    v = g("rotation_deg")
    if check(v) and v > limits.max_rotation_deg:
        fail.append(f"implausible pose change: rotation {v:.1f} deg > {limits.max_rotation_deg} deg "
                    "between two scans in patient coordinates (mirror-image fit: other hip?)")
    v = g("tre_max_mm")
    if check(v):
        if v > limits.tre_fail_mm:
            fail.append(f"landmark TRE max {v:.2f} mm > {limits.tre_fail_mm} mm")
        elif v > limits.tre_warn_mm:
            warn.append(f"landmark TRE max {v:.2f} mm > {limits.tre_warn_mm} mm")
    if coarse:
        warn.append(f"CT voxels {voxel_mm:.1f} mm > {limits.coarse_ct_mm} mm: too coarse for the QA "
                    "figures to verify sub-millimetre accuracy (a fit 5 mm off scores the same); check landmarks "
                    f"with a tracked pointer or acquire the CT at <= {limits.coarse_ct_mm} mm")
    b, a = g("similarity_before"), g("similarity_after")
    if check(b) and check(a) and a < b:
        warn.append(f"femur similarity (MI) fell from {b:.3f} to {a:.3f}")
    verdict = "FAIL" if fail else "WARN" if warn else "PASS"
    return QAReport(verdict, fail + warn, {k: float(x) for k, x in figures.items() if x is not None},
                    list(notes or []))


def points_outside(ct: sitk.Image, points_ct: F) -> int:
    """How many of ``points_ct`` (N, 3) lie outside the CT field of view."""
    if len(points_ct) == 0:
        return 0
    return int((~contains_points(ct, points_ct)).sum())
