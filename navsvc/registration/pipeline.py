"""The MRI -> CT registration: input checks, femur-focused rigid, deformable, QA gate.

:func:`register_mri_to_ct` is a pure function of its inputs (plus the seed): no files, no
global state. It raises only for bad inputs (:class:`InvalidImageError`,
:class:`InvalidLabelsError`) and on cancellation (:class:`Cancelled`); a registration that
does not work returns verdict FAIL with reasons.
"""

from __future__ import annotations

import logging
import platform
import time
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray

from navsvc import __version__
from navsvc.errors import InvalidImageError, RegistrationFailed
from navsvc.frames import CT, MRI
from navsvc.imaging import check_geometry, check_label_map, check_same_grid, contains_points
from navsvc.progress import CancelToken, ProgressFn, no_progress, scaled
from navsvc.registration import bone, qa
from navsvc.registration.result import QAReport, RegistrationOptions, RegistrationResult
from navsvc.transforms import AnyTransform, RigidTransform, Transform

log = logging.getLogger(__name__)

F = NDArray[np.float64]


def versions() -> dict[str, str]:
    import itk
    import monai
    import open3d
    import torch

    return {
        "navsvc": __version__, "python": platform.python_version(), "SimpleITK": sitk.Version_VersionString(),
        "itk": itk.__version__, "open3d": open3d.__version__, "torch": torch.__version__,
        "monai": monai.__version__, "numpy": np.__version__,
    }


class _Timer:
    """Wall time (``timings_s``) and CPU time of this process, all threads (``cpu_s``), per stage."""

    def __init__(self) -> None:
        self.timings_s: dict[str, float] = {}
        self.cpu_s: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Any:
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.timings_s[name] = self.timings_s.get(name, 0.0) + time.perf_counter() - t0
            self.cpu_s[name] = self.cpu_s.get(name, 0.0) + time.process_time() - c0


def check_inputs(mri: sitk.Image, labels: sitk.Image, ct: sitk.Image, options: RegistrationOptions) -> dict[str, int]:
    """Geometry of both images, labels on the MRI grid with femur and necrosis present."""
    check_geometry(mri, "MRI")
    check_geometry(ct, "CT")
    for img, name in ((mri, "MRI"), (ct, "CT")):
        if img.GetDimension() != 3 or img.GetNumberOfComponentsPerPixel() != 1:
            raise InvalidImageError(f"{name}: expected a 3-D scalar image, got {img.GetDimension()}-D with "
                                    f"{img.GetNumberOfComponentsPerPixel()} components")
        if min(img.GetSize()) < 4:
            raise InvalidImageError(f"{name}: expected at least 4 voxels along each axis, got size {img.GetSize()}")
    check_same_grid(mri, labels, "MRI", "segmentation")
    counts = check_label_map(labels, options.labels, required=("femur", "necrosis"), name="segmentation")
    hu_min = float(sitk.GetArrayViewFromImage(ct).min())
    if hu_min > -50.0:
        raise InvalidImageError(
            f"CT: expected Hounsfield units (air and fat below -50 HU), got a minimum of {hu_min:.0f}; "
            "is this a CT in HU (not rescaled or normalised)?"
        )
    return counts


def _surfaces(labels: sitk.Image, ct: sitk.Image, options: RegistrationOptions
              ) -> tuple[bone.Surface, sitk.Image, bone.Surface]:
    """(MRI femur surface, CT bone mask, CT bone surface) as every stage and the QA use them."""
    mri_surface = bone.label_surface(labels, bone.femur_values(options.labels))
    # the head's joint surface touches the acetabulum: a CT cannot separate the two
    mri_surface = bone.exclude_near(mri_surface, labels == options.labels.pelvis, options.joint_exclusion_mm)
    ct_bone = bone.segment_ct_bone(ct, options.threshold_for(ct.GetSpacing()))
    return mri_surface, ct_bone, bone.ct_bone_surface(ct, ct_bone)


def gate_at_pose(mri: sitk.Image, labels: sitk.Image, ct: sitk.Image, T_ct_from_mri: RigidTransform,
                 options: RegistrationOptions | None = None) -> QAReport:
    """The QA gate's figures and verdict for a given rigid pose (no registration): what the gate
    says of the truth, or of the truth moved by a known error, on a given CT."""
    options = options or RegistrationOptions()
    check_inputs(mri, labels, ct, options)
    mri_surface, ct_bone, ct_surface = _surfaces(labels, ct, options)
    return quality(mri, _femur_mask(labels, options), ct, ct_bone, mri_surface, ct_surface, T_ct_from_mri,
                   T_ct_from_mri.inverse(), T_ct_from_mri, None, options, targets_mri=None, landmarks=None,
                   notes=[], extra_fail=[])


def _femur_mask(labels: sitk.Image, options: RegistrationOptions) -> sitk.Image:
    vals = bone.femur_values(options.labels)
    arr = np.isin(sitk.GetArrayViewFromImage(labels), vals).astype(np.uint8)
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(labels)
    return out


def _lesion_mask(labels: sitk.Image, options: RegistrationOptions) -> sitk.Image:
    out = sitk.Cast(labels == options.labels.necrosis, sitk.sitkUInt8)
    return out


def _roi(mask_ct: sitk.Image, margin_mm: float) -> sitk.Image:
    r = [max(1, int(round(margin_mm / s))) for s in mask_ct.GetSpacing()]
    return sitk.BinaryDilate(mask_ct, r)


def register_mri_to_ct(
    mri: sitk.Image,
    labels: sitk.Image,
    ct: sitk.Image,
    options: RegistrationOptions | None = None,
    *,
    targets_mri: F | None = None,
    landmarks: tuple[F, F] | None = None,
    ct_femur_mask: sitk.Image | None = None,
    elastix_start: RigidTransform | None = None,
    elastix_overrides: dict[str, str] | None = None,
    progress: ProgressFn = no_progress,
    cancel: CancelToken | None = None,
) -> RegistrationResult:
    """Register the preoperative MRI (with its segmentation) to the intraoperative CT.

    Inputs: ``mri`` (any scalar MRI, LPS geometry), ``labels`` (label map on the MRI grid,
    values per ``options.labels``), ``ct`` (HU). ``targets_mri`` (N, 3) LPS mm: QA checks they
    land inside the CT. ``landmarks``: (points in the MRI (N, 3), the same points in the CT
    (N, 3)), for the QA's TRE. ``ct_femur_mask`` (CT grid, femur > 0): only the elastix
    methods use it, as the fixed mask a user who segmented the CT would give; navsvc never does.
    ``elastix_start`` (``T_ct_from_mri``) and ``elastix_overrides`` (rigid parameter-map entries):
    elastix methods only, a start instead of elastix's own initialisation and changed settings
    (the benchmark's oracle-start reference, :mod:`navsvc.registration.validation_methods`).

    Returns ``T_ct_from_mri`` (maps MRI points to CT points; move targets with it) and
    ``T_mri_from_ct`` (``I_mri(T_mri_from_ct(x)) ~ I_ct(x)``; resample the MRI with it), QA
    and per-stage timings. Never raises on a poor registration: the verdict is FAIL.
    """
    options = options or RegistrationOptions()
    timer = _Timer()
    t_total, cpu_total = time.perf_counter(), time.process_time()
    notes: list[str] = []
    stages: dict[str, Any] = {}
    with timer.stage("checks"):
        check_inputs(mri, labels, ct, options)
    progress("checks", 0.02, "inputs checked")
    femur_mri = _femur_mask(labels, options)
    with timer.stage("surfaces"):
        mri_surface, ct_bone, ct_surface = _surfaces(labels, ct, options)
    threshold_hu = options.threshold_for(ct.GetSpacing())
    stages["surface_points"] = {"mri": len(mri_surface), "ct": len(ct_surface), "bone_threshold_hu": threshold_hu}
    progress("surfaces", 0.08, f"bone surfaces: MRI {len(mri_surface)} points, CT {len(ct_surface)} points")
    if cancel:
        cancel.check()

    T_ct_from_mri: AnyTransform
    T_mri_from_ct: AnyTransform
    field_mm: sitk.Image | None = None
    failure: list[str] = []
    rigid: RigidTransform = RigidTransform.identity(CT, MRI)
    try:
        if options.method.startswith("elastix"):
            rigid, deformed = _elastix(mri, femur_mri, ct, ct_femur_mask, options, timer, progress,
                                       start=elastix_start, overrides=elastix_overrides)
            T_ct_from_mri, T_mri_from_ct = rigid, rigid.inverse()
            if deformed is not None:
                T_mri_from_ct = deformed
                with timer.stage("inverse"):
                    T_ct_from_mri = deformed.inverse()
                field_mm = _field_of(deformed)
        else:
            rigid = _navsvc_rigid(mri, femur_mri, ct, mri_surface, ct_surface, options, timer, stages,
                                  scaled(progress, 0.08, 0.6), cancel)
            T_ct_from_mri, T_mri_from_ct = rigid, rigid.inverse()
            if options.method == "navsvc":
                from navsvc.registration.deformable import deformable_stage

                if options.network_weights and options.initial_velocity is None:
                    from navsvc.learning.network import network_velocity

                    progress("network", 0.6, "learned network: initial field")
                    with timer.stage("network"):
                        v0, stages["network"] = network_velocity(ct, mri, femur_mri, rigid, options)
                    options = replace(options, initial_velocity=v0)
                with timer.stage("deformable"):
                    out = deformable_stage(ct, mri, femur_mri, rigid, options,
                                           surfaces=(mri_surface, ct_surface), progress=scaled(progress, 0.6, 0.9), cancel=cancel)
                stages["deformable"] = out.info
                notes.extend(out.notes)
                if out.accepted:
                    T_ct_from_mri, T_mri_from_ct, field_mm = out.T_ct_from_mri, out.T_mri_from_ct, out.field_mm
    except RegistrationFailed as exc:
        failure.append(f"registration did not converge: {exc}")
        T_ct_from_mri, T_mri_from_ct = rigid, rigid.inverse()
    if cancel:
        cancel.check()
    progress("qa", 0.92, "quality checks")
    with timer.stage("qa"):
        report = quality(mri, femur_mri, ct, ct_bone, mri_surface, ct_surface, T_ct_from_mri, T_mri_from_ct,
                         rigid, field_mm, options, targets_mri=targets_mri, landmarks=landmarks,
                         notes=notes, extra_fail=failure)
    timer.timings_s["total"] = time.perf_counter() - t_total
    timer.cpu_s["total"] = time.process_time() - cpu_total
    stages["cpu_s"] = timer.cpu_s
    progress("done", 1.0, f"verdict {report.verdict}")
    log.info("registration %s: %s in %.1f s", options.method, report.verdict, timer.timings_s["total"])
    return RegistrationResult(T_ct_from_mri, T_mri_from_ct, report, timer.timings_s, options.method, versions(),
                              T_ct_from_mri_rigid=rigid, stages=stages)


def _field_of(tx: Transform) -> sitk.Image | None:
    from navsvc.transforms import _flatten

    for part in _flatten(tx.sitk_transform):
        if isinstance(part, sitk.DisplacementFieldTransform):
            return part.GetDisplacementField()
    return None


def _navsvc_rigid(mri: sitk.Image, femur_mri: sitk.Image, ct: sitk.Image, mri_surface: bone.Surface,
                  ct_surface: bone.Surface, options: RegistrationOptions, timer: _Timer, stages: dict[str, Any],
                  progress: ProgressFn, cancel: CancelToken | None) -> RigidTransform:
    from navsvc.registration import rigid as rigid_mod

    def rank(m: F) -> float:
        """Minus the femur's mutual information under candidate ``T_ct_from_mri`` = m (on a <= 2 mm CT)."""
        T_mri_from_ct = RigidTransform(m, CT, MRI).inverse()
        roi = rigid_mod.mi_region(qa.map_mask(femur_mri, grid.ct, T_mri_from_ct), grid.ct, options.roi_margin_mm,
                                  min_voxels=grid.min_voxels, exclude=grid.exclude)
        return -rigid_mod.region_mi(grid.ct, mri, roi, T_mri_from_ct.to_sitk())

    with timer.stage("rigid_surface"):
        grid = rigid_mod.rank_grid(ct)
    with timer.stage("rigid_image"):
        # on the rank grid: a fine CT is smoothed and resampled to 2 mm once, for both
        image_start = rigid_mod.image_rigid(mri, grid.ct, seed=options.seed, cancel=cancel)
    with timer.stage("rigid_surface"):
        fit = rigid_mod.surface_rigid(mri_surface, ct_surface, voxel_mm=options.surface_voxel_mm,
                                      seed=options.seed, n_starts=options.ransac_starts,
                                      max_rotation_deg=options.qa.max_rotation_deg, rank=rank,
                                      extra_starts=[("image", image_start)],
                                      progress=scaled(progress, 0.0, 0.6), cancel=cancel)
    T_surface = RigidTransform(fit.T_ct_from_mri, CT, MRI)
    stages["rigid_surface"] = {"score_mm": fit.score_mm, "start": fit.source, "starts": fit.candidates,
                               "rotation_deg": T_surface.rotation_angle_deg}
    with timer.stage("rigid_intensity"):
        roi = rigid_mod.mi_region(qa.map_mask(femur_mri, ct, T_surface.inverse()), ct, options.roi_margin_mm)
        if not sitk.GetArrayViewFromImage(roi).any():
            raise RegistrationFailed("the femur maps outside the CT after the surface fit")
        center = T_surface.apply(mri_surface.points_mm.mean(0))
        mri_for_mi = mri
        if options.fat_shift_mm is not None:
            mri_for_mi = rigid_mod.fat_shift_corrected(sitk.Cast(mri, sitk.sitkFloat32), femur_mri,
                                                       np.asarray(options.fat_shift_mm, dtype=np.float64))
        tx, before, after = rigid_mod.intensity_refine(
            ct, mri_for_mi, roi, T_surface.inverse().to_sitk(), center_mm=center,
            iterations=options.mi_iterations, spacing_mm=options.mi_spacing_mm, cancel=cancel)
    progress("rigid", 1.0, "rigid done")
    T_refined = RigidTransform.from_sitk(tx, MRI, CT).inverse()
    delta = T_refined @ T_surface.inverse()
    stages["rigid_intensity"] = {"mi_before": -before, "mi_after": -after,
                                 "change_deg": delta.rotation_angle_deg,
                                 "change_mm": float(np.linalg.norm(delta.apply(center) - center))}
    if after > before:  # MI got worse (SimpleITK's metric is negative MI)
        return T_surface
    return T_refined


def _elastix(mri: sitk.Image, femur_mri: sitk.Image, ct: sitk.Image, ct_femur: sitk.Image | None,
             options: RegistrationOptions, timer: _Timer, progress: ProgressFn, *, start: RigidTransform | None = None,
             overrides: dict[str, str] | None = None) -> tuple[RigidTransform, Transform | None]:
    from navsvc.registration.elastix import elastix_register

    moving_mask = sitk.BinaryDilate(femur_mri, [max(1, int(round(5.0 / s))) for s in mri.GetSpacing()])
    fixed_mask = None if ct_femur is None else sitk.BinaryDilate(
        sitk.Cast(ct_femur > 0, sitk.sitkUInt8), [max(1, int(round(5.0 / s))) for s in ct.GetSpacing()])
    progress("elastix", 0.1, f"elastix ({options.elastix_config})")
    with timer.stage("elastix"):
        try:
            rigid, deformed = elastix_register(ct, mri, moving_mask=moving_mask, fixed_mask=fixed_mask,
                                               config=options.elastix_config,
                                               bspline=options.method == "elastix" and options.elastix_bspline,
                                               threads=options.threads, use_fixed_mask=fixed_mask is not None,
                                               initial_T_ct_from_mri=start, overrides=overrides)
        except RuntimeError as exc:  # elastix stops with an internal error (e.g. too few samples)
            raise RegistrationFailed(f"elastix stopped: {str(exc).strip().splitlines()[-1]}") from exc
    progress("elastix", 0.9, "elastix done")
    return rigid, deformed


def _femur_box(femur_mri: sitk.Image, ct: sitk.Image, transforms: tuple[AnyTransform, ...],
               margin_mm: float) -> tuple[NDArray[np.int64], NDArray[np.int64]] | None:
    """(lo, hi) CT index box (i, j, k; hi exclusive) around the femur mask's box mapped by each
    ``T_ct_from_mri``, grown by ``margin_mm``; None when it misses the CT."""
    kji = np.argwhere(sitk.GetArrayViewFromImage(femur_mri) > 0)
    if not len(kji):
        return None
    lo, hi = kji.min(0)[::-1] - 1.0, kji.max(0)[::-1] + 1.0
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    from navsvc.imaging import index_from_lps, lps_from_index

    mapped = np.vstack([T.apply(lps_from_index(femur_mri, corners)) for T in transforms])
    idx = index_from_lps(ct, mapped)
    grow = margin_mm / np.array(ct.GetSpacing())
    size = np.array(ct.GetSize())
    box_lo = np.clip(np.floor(idx.min(0) - grow), 0, size).astype(np.int64)
    box_hi = np.clip(np.ceil(idx.max(0) + grow) + 1, 0, size).astype(np.int64)
    return (box_lo, box_hi) if np.all(box_hi > box_lo) else None


def quality(mri: sitk.Image, femur_mri: sitk.Image, ct: sitk.Image, ct_bone: sitk.Image,
            mri_surface: bone.Surface, ct_surface: bone.Surface, T_ct_from_mri: AnyTransform,
            T_mri_from_ct: AnyTransform, rigid: RigidTransform, field_mm: sitk.Image | None,
            options: RegistrationOptions, *, targets_mri: F | None, landmarks: tuple[F, F] | None,
            notes: list[str], extra_fail: list[str]) -> QAReport:
    """All QA figures and the gate verdict."""
    rng = np.random.default_rng(options.seed)
    pts = mri_surface.points_mm
    if len(pts) > 4000:
        pts = pts[rng.choice(len(pts), 4000, replace=False)]
    figures: dict[str, float] = {"ct_voxel_max_mm": float(max(ct.GetSpacing()))}
    inside = contains_points(ct, T_ct_from_mri.apply(pts)) if len(pts) else np.zeros(0, bool)
    figures["femur_in_ct_fraction"] = float(inside.mean()) if len(inside) else 0.0
    # only the femur the CT shows can be judged: points mapped inside its field of view (3 mm in)
    seen = contains_points(ct, T_ct_from_mri.apply(pts), margin_mm=3.0) if len(pts) else inside
    mean_mm, p95_mm = qa.surface_distance_mm(pts[seen], T_ct_from_mri, ct_surface.points_mm)
    figures["surface_distance_mean_mm"] = mean_mm
    figures["surface_distance_p95_mm"] = p95_mm
    ct_bone_filled = bone.segment_ct_bone(ct, options.threshold_for(ct.GetSpacing()), fill="slices")
    # the mask figures only look near the femur: on its box (+ margins) of the CT grid, same values
    box = _femur_box(femur_mri, ct, (T_ct_from_mri, rigid), 12.0 + max(10.0, options.roi_margin_mm))
    ct_near, ct_bone_filled = bone.crop_box(ct, box), bone.crop_box(ct_bone_filled, box)
    mapped = qa.map_mask(femur_mri, ct_near, T_mri_from_ct)
    figures["femur_dice"] = qa.femur_dice(mapped, ct_bone_filled)
    jmin, jmax = qa.jacobian_determinant_range(field_mm)
    figures["jacobian_min"], figures["jacobian_max"] = jmin, jmax
    check_pts = pts[:: max(1, len(pts) // 500)]
    if targets_mri is not None and len(targets_mri):
        check_pts = np.vstack([check_pts, np.asarray(targets_mri, dtype=np.float64).reshape(-1, 3)])
    figures["inverse_consistency_mm"] = qa.inverse_consistency_mm(T_ct_from_mri, T_mri_from_ct, check_pts)
    roi = _roi(qa.map_mask(femur_mri, ct_near, rigid.inverse()), options.roi_margin_mm)
    if sitk.GetArrayViewFromImage(roi).any():
        figures["similarity_before"] = qa.masked_mi(ct_near, mri, roi, RigidTransform.identity(MRI, CT))
        figures["similarity_after"] = qa.masked_mi(ct_near, mri, roi, T_mri_from_ct)
    figures["rotation_deg"] = rigid.rotation_angle_deg
    figures["translation_mm"] = float(np.linalg.norm(rigid.translation_mm))
    if targets_mri is not None and len(targets_mri):
        targets_ct = T_ct_from_mri.apply(np.asarray(targets_mri, dtype=np.float64).reshape(-1, 3))
        figures["targets_outside_ct"] = float(qa.points_outside(ct, targets_ct))
    if landmarks is not None:
        lm_mri, lm_ct = (np.asarray(a, dtype=np.float64).reshape(-1, 3) for a in landmarks)
        if len(lm_mri) != len(lm_ct):
            raise InvalidImageError(f"landmarks: expected as many CT points as MRI points, got {len(lm_ct)} "
                                    f"and {len(lm_mri)}")
        tre = np.linalg.norm(T_ct_from_mri.apply(lm_mri) - lm_ct, axis=1)
        figures["tre_mean_mm"] = float(tre.mean())
        figures["tre_p95_mm"] = float(np.percentile(tre, 95))
        figures["tre_max_mm"] = float(tre.max())
    return qa.gate(figures, options.qa, notes=notes, extra_fail=extra_fail)
