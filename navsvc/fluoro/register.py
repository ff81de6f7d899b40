"""MRI -> fluoroscopy registration: the femur's pose in the C-arm world from two or more views.

Contract: ``register_mri_to_fluoro(labels, views)`` returns ``T_world_from_mri`` (maps MRI points
into the fluoroscopy world frame, LPS mm) such that the femur of ``labels``, rendered as an
attenuation volume, projects onto every view as it appears there; plus a QA verdict.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from navsvc.errors import InputError
from navsvc.fluoro.attenuation import AttenuationOptions, bone_attenuation
from navsvc.fluoro.drr import AttenuationVolume, render
from navsvc.fluoro.figures import femur_surface_points_mri
from navsvc.fluoro.gate import (
    CurvatureOptions,
    RestartOptions,
    curvature_verdict,
    pose_uncertainty,
    restart_check,
    restart_verdict,
)
from navsvc.fluoro.geometry import ViewGeometry
from navsvc.fluoro.pose import PoseOptions, choose_device, gradient_correlation, register_views
from navsvc.fluoro.views import FluoroView, check_views_consistent, isocentre_estimate
from navsvc.frames import MRI, WORLD
from navsvc.imaging import LabelSpec, check_label_map, voxel_centers_lps
from navsvc.progress import CancelToken, ProgressFn, no_progress, scaled
from navsvc.transforms import RigidTransform


@dataclass(frozen=True)
class FluoroOptions:
    pose: PoseOptions = PoseOptions()
    attenuation: AttenuationOptions = AttenuationOptions()
    labels: LabelSpec = LabelSpec()
    #: per-view gradient correlation below which the registration FAILs / WARNs
    fail_similarity: float = 0.5
    warn_similarity: float = 0.7
    #: a single-view refinement may move the lesion this far across that view's beam before the views
    #: are said to disagree (mm)
    max_view_disagreement_mm: float = 2.0
    check_view_agreement: bool = True
    #: the similarity's curvature at the final pose, propagated to the lesion and the femur (mm); FAIL when
    #: the views leave them free to move (navsvc.fluoro.gate.pose_uncertainty; a few seconds)
    check_curvature: bool = True
    curvature: CurvatureOptions = CurvatureOptions()
    #: restart the optimiser about the femoral head from the final pose; FAIL when another pose fits the
    #: views as well (navsvc.fluoro.gate.restart_check; six local optimisations, about as long as the
    #: registration on 2 CPU cores)
    check_restarts: bool = False
    restarts: RestartOptions = RestartOptions()
    #: when the segmentation holds the pelvis: register femur + pelvis as one body first (stage 1: the
    #: pelvis explains what overlaps the femur on the views), then the femur alone from there (stage 2),
    #: the pelvis rendered at its stage-1 pose as a fixed background and the femur's rotation about the
    #: head searched over +-``femur_search_deg`` per axis (the leg's position differs between the MRI and
    #: the table). Off by default: on the phantoms (femur rotated up to 20 degrees against the pelvis)
    #: stage 1 misled seed 201 (6.5 mm, FAIL; 0.22 mm without it); on the real CT's whole views it took the
    #: right femur from 17.3 to 4.3 mm (AP + 60-degree oblique), still not recovered (docs/fluoroscopy.md,
    #: "The pelvis stage")
    pelvis_first: bool = False
    femur_search_deg: float = 10.0
    #: stage 2 moves the femoral head too (False: rotations about the head alone, the head where stage 1
    #: put it; on the phantoms, whose femur is rotated up to 20 degrees against the pelvis, stage 1's head
    #: is ~1 mm off and False kept that error)
    femur_translation: bool = True
    #: the head in its socket: FAIL when stage 2 moves the femoral head (lesion) more than this from where
    #: stage 1 (femur + pelvis) put it, mm
    max_head_move_mm: float = 3.0


@dataclass
class FluoroQA:
    verdict: str
    reasons: list[str]
    figures: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "reasons": list(self.reasons), "figures": dict(self.figures)}


@dataclass
class FluoroResult:
    T_world_from_mri: RigidTransform
    qa: FluoroQA
    timings_s: dict[str, float]
    similarity_per_view: dict[str, float] = field(default_factory=dict)


def lesion_centre_mri(labels: sitk.Image, spec: LabelSpec) -> np.ndarray:
    """Centroid of the necrosis label (LPS mm), or of the femur if there is no lesion."""
    arr = sitk.GetArrayViewFromImage(labels)
    mask = arr == spec.necrosis
    if not mask.any():
        mask = arr == spec.femur
    return voxel_centers_lps(labels, mask).mean(axis=0)


def initial_pose(labels: sitk.Image, views: list[FluoroView], spec: LabelSpec) -> RigidTransform:
    """Patient frames aligned (both LPS, patient supine), the lesion at the views' common isocentre."""
    centre = lesion_centre_mri(labels, spec)
    iso = isocentre_estimate(views)
    return RigidTransform.from_rotation_translation(np.eye(3), iso - centre, WORLD, MRI)


def register_mri_to_fluoro(
    labels: sitk.Image,
    views: list[FluoroView],
    options: FluoroOptions = FluoroOptions(),
    *,
    T_world_from_mri_init: RigidTransform | None = None,
    targets_mri: np.ndarray | None = None,
    progress: ProgressFn = no_progress,
    cancel: CancelToken | None = None,
) -> FluoroResult:
    """Register the MRI femur to the views (see the module docstring). Never raises on a poor result:
    the verdict says FAIL with reasons. Raises on bad inputs and :class:`~navsvc.errors.Cancelled`."""
    spec = options.labels
    check_label_map(labels, spec, required=("femur",), name="segmentation")
    if options.max_head_move_mm <= 0 or options.femur_search_deg < 0:
        raise InputError(f"fluoroscopy options: expected max_head_move_mm > 0 and femur_search_deg >= 0, got "
                         f"{options.max_head_move_mm} and {options.femur_search_deg}")
    check_views_consistent(views)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    progress("attenuation", 0.0, "building the femur attenuation volume")
    mu = bone_attenuation(labels, spec, options.attenuation)
    timings["attenuation"] = time.perf_counter() - t0
    T_init = T_world_from_mri_init or initial_pose(labels, views, spec)
    if (T_init.to_frame, T_init.from_frame) != (WORLD, MRI):
        raise InputError(f"expected an initial T_world_from_mri, got {T_init.name}")
    t1 = time.perf_counter()
    checks = int(options.check_view_agreement and len(views) > 1) + int(options.check_restarts)
    share = {0: 0.95, 1: 0.8, 2: 0.7}[checks]
    agree_end = share + (0.98 - share) / checks if checks else share
    lesion = lesion_centre_mri(labels, spec)
    geoms, images = [v.geometry for v in views], [v.line_integral for v in views]
    names = [v.geometry.name for v in views]
    figures: dict[str, float] = {}
    background = None
    pose_options = options.pose
    share_start = 0.02
    if options.pelvis_first and bool((sitk.GetArrayViewFromImage(labels) == spec.pelvis).any()):
        # stage 1: femur + pelvis as one body, from the rough start (the pose search); the pelvis label alone
        # (an MRI's field of view about the hip) did not place the hip: 13 and 26 mm off on a phantom and the
        # real CT
        mu_hip = bone_attenuation(labels, spec, options.attenuation, structures=("femur", "pelvis"))
        share_start = 0.02 + share / 2
        hip = register_views(mu_hip, geoms, images, T_init, options.pose, progress=scaled(progress, 0.02, share_start),
                             cancel=cancel, rotation_centre_mri=lesion)
        T_init = hip.T_world_from_mri
        for name, sim in zip(names, hip.similarity_per_view, strict=True):
            figures[f"pelvis_stage_similarity_{name}"] = sim
        background = pelvis_background(labels, spec, options, geoms, T_init)
        # stage 2: the femur alone about its head, the pelvis fixed
        pose_options = replace(options.pose, search_rotation_deg=options.femur_search_deg,
                               optimise_translation=options.femur_translation)
        timings["pelvis_stage"] = time.perf_counter() - t1
    result = register_views(mu, geoms, images, T_init, pose_options, progress=scaled(progress, share_start, share),
                            cancel=cancel, rotation_centre_mri=lesion, background=background)
    timings["pose"] = time.perf_counter() - t1
    T = result.T_world_from_mri
    figures["starts_tried"] = float(result.starts_tried)
    reasons: list[str] = []
    verdict = "PASS"
    if background is not None:
        move = float(np.linalg.norm(T.apply(lesion) - T_init.apply(lesion)))
        figures["pelvis_stage_lesion_move_mm"] = move
        reason = head_in_socket_reason(move, options.max_head_move_mm)
        if reason:
            verdict = "FAIL"
            reasons.append(reason)
    for name, sim, sim0 in zip(names, result.similarity_per_view, result.similarity_initial_per_view, strict=True):
        figures[f"similarity_{name}"] = sim
        figures[f"similarity_initial_{name}"] = sim0
        if sim < options.fail_similarity:
            verdict = "FAIL"
            reasons.append(f"view {name}: final similarity {sim:.2f} < {options.fail_similarity} (poor optimum: "
                           "the femur does not match this view)")
        elif sim < options.warn_similarity and verdict != "FAIL":
            verdict = "WARN"
            reasons.append(f"view {name}: final similarity {sim:.2f} < {options.warn_similarity}")
    if len(views) < 2:
        verdict = "FAIL"
        reasons.append("single view: the depth along the beam and the rotation about it are not determined "
                       "(half of the single-view benchmark cases ended 19-46 mm off); take a second view "
                       "at least 15 degrees from the first")
    if options.check_view_agreement and len(views) > 1:
        t2 = time.perf_counter()
        moves = view_disagreement_mm(mu, views, T, lesion, options.pose,
                                     progress=scaled(progress, share, agree_end), cancel=cancel, background=background)
        timings["agreement"] = time.perf_counter() - t2
        for name, move in zip(names, moves, strict=True):
            figures[f"disagreement_mm_{name}"] = move
            if move > options.max_view_disagreement_mm:
                verdict = "FAIL"
                reasons.append(f"view {name} alone moves the lesion {move:.1f} mm across its beam "
                               f"(> {options.max_view_disagreement_mm} mm): the views disagree")
    femur_pts = femur_surface_points_mri(labels, spec, max_points=500)
    if options.check_curvature:
        t4 = time.perf_counter()
        unc = pose_uncertainty(mu, views, T, lesion, femur_pts, options.pose, options.curvature, cancel=cancel,
                               background=background)
        timings["curvature"] = time.perf_counter() - t4
        if curvature_verdict(unc, options.curvature, figures, reasons) == "FAIL":
            verdict = "FAIL"
    if options.check_restarts:
        t3 = time.perf_counter()
        start = agree_end if options.check_view_agreement and len(views) > 1 else share
        own, restarts = restart_check(mu, views, T, lesion, femur_pts, options.pose, options.restarts,
                                      progress=scaled(progress, start, 0.98), cancel=cancel, background=background)
        timings["restarts"] = time.perf_counter() - t3
        if restart_verdict(own, restarts, options.restarts, figures, reasons) == "FAIL":
            verdict = "FAIL"
    points = [lesion] if targets_mri is None else [lesion, *np.atleast_2d(targets_mri)]
    for view in views:
        uv = view.geometry.project(T.apply(np.asarray(points)))
        w, h = view.geometry.size_px
        outside = ~((uv[:, 0] >= 0) & (uv[:, 0] <= w - 1) & (uv[:, 1] >= 0) & (uv[:, 1] <= h - 1))
        if outside.any():
            verdict = "FAIL"
            reasons.append(f"view {view.geometry.name}: {int(outside.sum())} target(s) project outside the detector")
    timings["total"] = time.perf_counter() - t0
    progress("done", 1.0, f"verdict {verdict}")
    return FluoroResult(T, FluoroQA(verdict, reasons, figures), timings,
                        dict(zip(names, result.similarity_per_view, strict=True)))


def head_in_socket_reason(head_move_mm: float, max_move_mm: float) -> str | None:
    """The FAIL reason when stage 2 (the femur alone) moved the femoral head more than ``max_move_mm`` from
    where stage 1 (femur + pelvis as one body) put it, else None."""
    if head_move_mm <= max_move_mm:
        return None
    return (f"the femur alone moved the femoral head {head_move_mm:.1f} mm from where the femur + pelvis put it "
            f"(> {max_move_mm} mm): the femur and the pelvis on the views disagree (a wrong pose of one of them)")


def pelvis_background(labels: sitk.Image, spec: LabelSpec, options: FluoroOptions, geoms: list[ViewGeometry],
                      T_world_from_mri: RigidTransform) -> list[np.ndarray]:
    """Per view, the full-resolution DRR of the pelvis alone at ``T_world_from_mri`` (line integral)."""
    mu = bone_attenuation(labels, spec, options.attenuation, structures=("pelvis",))
    drrs = drrs_at(mu, geoms, T_world_from_mri, options.pose.n_samples, options.pose.device)
    return [d.cpu().numpy() for d in drrs]


def drrs_at(mu: sitk.Image, geoms: list[ViewGeometry], T_world_from_mri: RigidTransform, n_samples: int,
            device: str = "auto") -> list[torch.Tensor]:
    """Full-resolution DRRs (line integrals) of ``mu`` at a pose, one per view, on the chosen device."""
    dev = choose_device(device)
    vol = AttenuationVolume.from_image(mu, device=dev)
    T = torch.as_tensor(np.array(T_world_from_mri.matrix), dtype=torch.float32, device=dev)
    with torch.no_grad():
        return render(vol, geoms, T, n_samples=n_samples)


def view_disagreement_mm(mu: sitk.Image, views: list[FluoroView], T_world_from_mri: RigidTransform,
                         point_mri: np.ndarray, pose_options: PoseOptions, *,
                         progress: ProgressFn = no_progress, cancel: CancelToken | None = None,
                         background: list[np.ndarray] | None = None) -> list[float]:
    """For each view alone, refine the pose from the joint optimum (finest scale, one start) and report how
    far ``point_mri`` moves across that view's beam (mm). Agreeing views give ~0."""
    moves = []
    single = PoseOptions(strides=pose_options.strides[-1:], iterations=(max(20, pose_options.iterations[-1] // 2),),
                         smooth_px=pose_options.smooth_px[-1:], outline_band_px=pose_options.outline_band_px[-1:],
                         start_iterations=0, n_samples=pose_options.n_samples, n_starts=1, n_refine=1,
                         search_translation_mm=0.0,
                         lr_rotation_rad=pose_options.lr_rotation_rad / 2,
                         lr_translation_mm=pose_options.lr_translation_mm / 2, device=pose_options.device)
    p0 = T_world_from_mri.apply(point_mri)
    for k, view in enumerate(views):
        res = register_views(mu, [view.geometry], [view.line_integral], T_world_from_mri, single,
                             progress=scaled(progress, k / len(views), (k + 1) / len(views)), cancel=cancel,
                             background=None if background is None else [background[k]])
        d = res.T_world_from_mri.apply(point_mri) - p0
        beam = view.geometry.T_world_from_carm.rotation[:, 2]
        moves.append(float(np.linalg.norm(d - (d @ beam) * beam)))
    return moves


def similarity_at(mu: sitk.Image, views: list[FluoroView], T_world_from_mri: RigidTransform,
                  n_samples: int = 128, device: str = "auto") -> list[float]:
    """Gradient correlation of each view with the DRR at a given pose (full resolution)."""
    drrs = drrs_at(mu, [v.geometry for v in views], T_world_from_mri, n_samples, device)
    with torch.no_grad():
        return [float(gradient_correlation(d, torch.as_tensor(v.line_integral, device=d.device),
                                           torch.ones_like(d))) for d, v in zip(drrs, views, strict=True)]
