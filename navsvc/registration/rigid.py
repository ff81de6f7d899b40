"""Femur-focused rigid registration: surface global pose (FPFH + RANSAC), ICP, masked MI.

Contracts (all LPS mm):

* :func:`surface_rigid` returns ``T_ct_from_mri`` (4x4) that maps MRI femur surface points
  onto the CT bone surface.
* :func:`intensity_refine` returns ``T_mri_from_ct`` (SimpleITK convention: fixed = CT,
  moving = MRI, ``I_mri(T_mri_from_ct(x)) ~ I_ct(x)``) refined by Mattes mutual information
  inside a femur region of the CT.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import open3d as o3d
import SimpleITK as sitk
from numpy.typing import NDArray
from scipy.spatial import cKDTree

from navsvc.errors import RegistrationFailed
from navsvc.progress import CancelToken, ProgressFn, no_progress
from navsvc.registration.bone import Surface

log = logging.getLogger(__name__)

F = NDArray[np.float64]


def _cloud(surface: Surface) -> o3d.geometry.PointCloud:
    pc = o3d.geometry.PointCloud()
    pc.points = o3d.utility.Vector3dVector(surface.points_mm)
    pc.normals = o3d.utility.Vector3dVector(surface.normals)
    return pc


def _fpfh(pc: o3d.geometry.PointCloud, voxel_mm: float) -> o3d.pipelines.registration.Feature:
    return o3d.pipelines.registration.compute_fpfh_feature(
        pc, o3d.geometry.KDTreeSearchParamHybrid(radius=5.0 * voxel_mm, max_nn=100)
    )


def rotation_angle_deg(matrix: F) -> float:
    cos = (np.trace(matrix[:3, :3]) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def trimmed_distance_mm(src: F, tree: cKDTree, cap_mm: float = 5.0) -> float:
    """Mean of point-to-nearest-point distances capped at ``cap_mm`` (robust fit score)."""
    d, _ = tree.query(src, k=1)
    return float(np.mean(np.minimum(d, cap_mm)))


@dataclass(frozen=True)
class SurfaceFit:
    T_ct_from_mri: F
    score_mm: float  # capped mean surface distance after ICP
    candidates: int
    source: str  # which start won: "ransac-<i>" or "centroid"


def surface_rigid(
    mri_surface: Surface,
    ct_surface: Surface,
    *,
    voxel_mm: float = 3.0,
    seed: int = 0,
    n_starts: int = 3,
    max_rotation_deg: float = 75.0,
    rank: Callable[[F], float] | None = None,
    progress: ProgressFn = no_progress,
    cancel: CancelToken | None = None,
) -> SurfaceFit:
    """Global pose by FPFH + RANSAC from several seeds, plus a centroid start and the identity
    (both images are in patient coordinates), each refined by point-to-plane ICP. The start
    with the lowest ``rank(T_ct_from_mri)`` wins (e.g. minus the femur's mutual information);
    without ``rank``, the lowest capped surface distance.

    Starts whose rotation exceeds ``max_rotation_deg`` are dropped when another start remains:
    MRI and CT are both in patient coordinates, so a half-turn is a mirror-image fit, not a pose.
    """
    if len(mri_surface) < 50 or len(ct_surface) < 50:
        raise RegistrationFailed(
            f"expected bone surfaces with >= 50 points, got MRI {len(mri_surface)} and CT {len(ct_surface)}"
        )
    o3d.utility.random.seed(int(seed))
    src_full, tgt_full = _cloud(mri_surface), _cloud(ct_surface)
    src = src_full.voxel_down_sample(voxel_mm)
    tgt = tgt_full.voxel_down_sample(voxel_mm)
    src_f, tgt_f = _fpfh(src, voxel_mm), _fpfh(tgt, voxel_mm)
    reg = o3d.pipelines.registration
    starts: list[tuple[str, F]] = []
    for i in range(n_starts):
        if cancel:
            cancel.check()
        o3d.utility.random.seed(int(seed) + i)
        res = reg.registration_ransac_based_on_feature_matching(
            src, tgt, src_f, tgt_f, True, 1.5 * voxel_mm,
            reg.TransformationEstimationPointToPoint(False), 3,
            [reg.CorrespondenceCheckerBasedOnEdgeLength(0.9),
             reg.CorrespondenceCheckerBasedOnDistance(1.5 * voxel_mm)],
            reg.RANSACConvergenceCriteria(30000, 0.999),
        )
        starts.append((f"ransac-{i}", np.asarray(res.transformation)))
        progress("rigid", 0.3 * (i + 1) / n_starts, f"global pose {i + 1}/{n_starts}")
    centroid = np.eye(4)
    centroid[:3, 3] = np.asarray(tgt.get_center()) - np.asarray(src.get_center())
    starts.append(("centroid", centroid))
    starts.append(("identity", np.eye(4)))
    tree = cKDTree(ct_surface.points_mm)
    src_icp, tgt_icp = src_full.voxel_down_sample(1.5), tgt_full.voxel_down_sample(1.5)
    src_pts = np.asarray(src_icp.points)
    fits: list[tuple[float, str, F]] = []
    for n, (name, init) in enumerate(starts):
        if cancel:
            cancel.check()
        m = icp(src_icp, tgt_icp, init, (20.0, 10.0, 5.0, 2.5, 1.0) if name == "identity" else (8.0, 4.0, 2.0, 1.0))
        dist = trimmed_distance_mm(src_pts @ m[:3, :3].T + m[:3, 3], tree)
        score = rank(m) if rank is not None else dist
        fits.append((score, name, m))
        log.debug("start %s: rank %.4f, surface %.3f mm, rotation %.1f deg", name, score, dist, rotation_angle_deg(m))
        progress("rigid", 0.3 + 0.4 * (n + 1) / len(starts), f"ICP {n + 1}/{len(starts)}")
    plausible = [f for f in fits if rotation_angle_deg(f[2]) <= max_rotation_deg] or fits
    _, name, best = min(plausible, key=lambda f: f[0])
    score = trimmed_distance_mm(src_pts @ best[:3, :3].T + best[:3, 3], tree)
    return SurfaceFit(best, score, len(starts), name)


def icp(src: o3d.geometry.PointCloud, tgt: o3d.geometry.PointCloud, init: F,
        distances_mm: tuple[float, ...] = (8.0, 4.0, 2.0, 1.0)) -> F:
    """Point-to-plane ICP with shrinking correspondence distances; returns T_tgt_from_src."""
    reg = o3d.pipelines.registration
    m = np.asarray(init, dtype=np.float64)
    for dist in distances_mm:
        res = reg.registration_icp(
            src, tgt, dist, m, reg.TransformationEstimationPointToPlane(),
            reg.ICPConvergenceCriteria(relative_fitness=1e-7, relative_rmse=1e-7, max_iteration=60),
        )
        m = np.asarray(res.transformation)
    return m


def fat_shift_corrected(mri: sitk.Image, femur_mri: sitk.Image, fat_shift_mm: F) -> sitk.Image:
    """Undo the fat chemical shift inside the femur: ``I'(y) = I(y + s)`` where the femur label is.

    The fat signal of a point y appears at ``y + s`` (``s`` = shift along the readout
    direction, LPS mm; ``|s| = 3.5 ppm * Larmor / pixel bandwidth * readout spacing``). Marrow
    is fat, cortex has no signal, so inside the (water-based) femur label the shifted sample
    puts the marrow back in place; outside, water tissue (muscle) is not shifted.
    """
    shift = sitk.TranslationTransform(3, [float(v) for v in fat_shift_mm])
    moved = sitk.Resample(mri, mri, shift, sitk.sitkLinear, 0.0, mri.GetPixelID())
    inside = sitk.Cast(femur_mri > 0, mri.GetPixelID())
    return moved * inside + mri * (1 - inside)


def resample_to_spacing(image: sitk.Image, spacing_mm: float, interpolator: int) -> sitk.Image:
    """Same box and direction, isotropic ``spacing_mm``."""
    from navsvc.imaging import resample_isotropic

    return resample_isotropic(image, spacing_mm, interpolator)


def intensity_refine(
    ct: sitk.Image,
    mri: sitk.Image,
    fixed_mask: sitk.Image,
    T_mri_from_ct_init: sitk.Transform,
    *,
    center_mm: F,
    iterations: int = 200,
    bins: int = 40,
    spacing_mm: float | None = 1.2,
    cancel: CancelToken | None = None,
) -> tuple[sitk.Euler3DTransform, float, float]:
    """Rigid refinement with Mattes MI restricted to ``fixed_mask`` (CT grid, the femur region).

    Returns (T_mri_from_ct as an Euler3DTransform about ``center_mm``, metric before, metric
    after); SimpleITK's MI metric is negative, lower is better. Every voxel of the region is
    used (no random subset); a CT finer than ``spacing_mm`` is resampled to it first.
    """
    tx = sitk.Euler3DTransform()
    tx.SetCenter([float(c) for c in center_mm])
    init = sitk.Euler3DTransform()
    init.SetCenter([float(c) for c in center_mm])
    mat = np.array(T_mri_from_ct_init.GetMatrix() if hasattr(T_mri_from_ct_init, "GetMatrix")
                   else np.eye(3).ravel()).reshape(3, 3)
    # q = A p + t_full; Euler about c: q = A (p - c) + c + t  ->  t = t_full + A c - c
    probe = np.array(T_mri_from_ct_init.TransformPoint([0.0, 0.0, 0.0]))
    tx.SetMatrix(mat.ravel().tolist(), 1e-4)
    tx.SetTranslation((probe + mat @ center_mm - center_mm).tolist())
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=bins)
    # every voxel of the (small) femur region: random subsets bias the optimum by ~0.5 mm
    method.SetMetricSamplingStrategy(method.NONE)
    method.SetInterpolator(sitk.sitkLinear)
    # ITK's gradient-image filters give a wrong metric derivative on oblique thick-slice MRI
    # (the optimiser walks away from the optimum); the derivative from the interpolator is right
    method.MetricUseMovingImageGradientFilterOff()
    method.MetricUseFixedImageGradientFilterOff()
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0, minStep=1e-4, numberOfIterations=iterations,
        relaxationFactor=0.6, gradientMagnitudeTolerance=1e-8,
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([1])
    method.SetSmoothingSigmasPerLevel([0.0])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    method.SetInitialTransform(tx, inPlace=True)
    if cancel is not None:
        def _check() -> None:
            if cancel.cancelled:
                method.StopRegistration()
        method.AddCommand(sitk.sitkIterationEvent, _check)
    from navsvc.registration.bone import crop_to_mask

    roi = sitk.GetArrayViewFromImage(fixed_mask) > 0
    fixed = crop_to_mask(sitk.Cast(ct, sitk.sitkFloat32), roi, margin_vox=2)
    mask = crop_to_mask(fixed_mask, roi, margin_vox=2)
    if spacing_mm and min(ct.GetSpacing()) < spacing_mm:
        # a fine CT is smoothed and resampled to ``spacing_mm`` (the MRI is coarser anyway)
        fixed = sitk.SmoothingRecursiveGaussian(fixed, 0.4 * spacing_mm)
        fixed = resample_to_spacing(fixed, spacing_mm, sitk.sitkLinear)
        mask = resample_to_spacing(mask, spacing_mm, sitk.sitkNearestNeighbor)
    method.SetMetricFixedMask(mask)
    moving = sitk.Cast(mri, sitk.sitkFloat32)
    before = method.MetricEvaluate(fixed, moving)
    method.Execute(fixed, moving)
    if cancel is not None:
        cancel.check()
    after = method.MetricEvaluate(fixed, moving)
    return tx, float(before), float(after)
