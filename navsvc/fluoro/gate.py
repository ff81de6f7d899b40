"""Truth-free checks that the fluoroscopy pose is determined (part of the QA gate).

The per-view similarity alone cannot see a wrong pose whose outline still overlaps the views' edges,
in particular a rotation about the femoral head or about the shaft axis. The check here asks the
views themselves: from the final pose, the optimiser is restarted from poses rotated about the
femoral head (+-``angle_deg`` about each world axis through it) and, optionally, shifted; every
restart is refined at the two finest levels. If a restart ends at a pose whose similarity is within
``margin`` of the final one (or better) but which moves the lesion or the femur by more than
``max_move_mm``, two different poses fit the views equally well: the pose is not determined by the
views (or the optimiser missed a better one) and the registration must FAIL.

Contract: :func:`restart_check` returns one :class:`Restart` per start, with the similarity it
reached (mean over views, the optimiser's finest-level gradient correlation, 1 = identical) and
how far it moved the lesion (mm) and the femur surface (mean over its points, mm) from the final
pose. Pure function of its inputs (fixed starts, no randomness).

The cheaper check, on by default: :func:`pose_uncertainty` measures the similarity's curvature at
the final pose and turns it into how far the lesion and the femur could move unnoticed.
:func:`curvature_verdict` and :func:`restart_verdict` turn either check's result into QA figures
and FAIL reasons (used by :func:`navsvc.fluoro.register.register_mri_to_fluoro`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import torch

from navsvc.errors import InputError
from navsvc.fluoro.pose import PoseOptions, ViewObjective, register_views
from navsvc.fluoro.views import FluoroView
from navsvc.progress import CancelToken, ProgressFn, no_progress, scaled
from navsvc.transforms import RigidTransform, rotation_matrix_from_axis_angle


@dataclass(frozen=True)
class RestartOptions:
    #: rotation of each restart about a world axis through the lesion (the femoral head), degrees
    angle_deg: float = 10.0
    #: shift of the extra restarts along each world axis (mm); 0 = rotations only
    shift_mm: float = 0.0
    #: detector strides (levels of the registration's own schedule, with their blur and band) and
    #: iterations per level of each restart; the similarities are compared at the last of these levels
    strides: tuple[int, ...] = (2,)
    iterations: tuple[int, ...] = (30,)
    #: a restart whose similarity is within ``margin`` of the final pose's (or better) and which moves
    #: the lesion or the femur by more than ``max_move_mm`` makes the pose ambiguous
    margin: float = 0.02
    max_move_mm: float = 2.0


@dataclass(frozen=True)
class Restart:
    name: str
    similarity: float
    lesion_move_mm: float
    femur_move_mm: float

    def moved(self, limit_mm: float) -> bool:
        return max(self.lesion_move_mm, self.femur_move_mm) > limit_mm


def restart_poses(T_world_from_mri: RigidTransform, centre_world: np.ndarray, options: RestartOptions
                  ) -> list[tuple[str, RigidTransform]]:
    """The restart poses: ``T`` rotated by +-angle about each world axis through ``centre_world``, then
    (if ``shift_mm`` > 0) ``T`` shifted by +-shift along each axis. Names like ``rot_x+`` / ``shift_z-``."""
    starts = []
    frame = T_world_from_mri.to_frame
    for axis, label in enumerate("xyz"):
        for sign, s in ((1.0, "+"), (-1.0, "-")):
            e = np.zeros(3)
            e[axis] = 1.0
            rot = RigidTransform.from_rotation_translation(
                rotation_matrix_from_axis_angle(e, sign * options.angle_deg), np.zeros(3), frame, frame,
                center_mm=centre_world)
            starts.append((f"rot_{label}{s}", rot @ T_world_from_mri))
    if options.shift_mm > 0:
        for axis, label in enumerate("xyz"):
            for sign, s in ((1.0, "+"), (-1.0, "-")):
                d = np.zeros(3)
                d[axis] = sign * options.shift_mm
                shift = RigidTransform.from_rotation_translation(np.eye(3), d, frame, frame)
                starts.append((f"shift_{label}{s}", shift @ T_world_from_mri))
    return starts


def restart_options(pose: PoseOptions, options: RestartOptions, iterations: tuple[int, ...] | None = None
                    ) -> PoseOptions:
    """One start through the levels ``options.strides`` of the registration's schedule ``pose`` (same blur,
    band and samples as those levels), ``iterations`` per level (default ``options.iterations``)."""
    if len(options.strides) != len(options.iterations) or not options.strides:
        raise InputError(f"restart check: expected one iteration count per stride, got strides {options.strides} "
                         f"and iterations {options.iterations}")
    missing = [s for s in options.strides if s not in pose.strides]
    if missing:
        raise InputError(f"restart check: strides {missing} are not levels of the registration {pose.strides}")
    idx = [pose.strides.index(s) for s in options.strides]
    return PoseOptions(strides=tuple(options.strides), iterations=tuple(iterations or options.iterations),
                       start_iterations=0, n_samples=pose.n_samples, n_starts=1, n_refine=1, search_translation_mm=0.0,
                       smooth_px=tuple(pose.smooth_px[i] for i in idx),
                       outline_band_px=tuple(pose.outline_band_px[i] for i in idx),
                       lr_rotation_rad=pose.lr_rotation_rad, lr_translation_mm=pose.lr_translation_mm,
                       device=pose.device)


def restart_check(mu: sitk.Image, views: list[FluoroView], T_world_from_mri: RigidTransform,
                  lesion_mri: np.ndarray, femur_points_mri: np.ndarray, pose: PoseOptions,
                  options: RestartOptions = RestartOptions(), *, progress: ProgressFn = no_progress,
                  cancel: CancelToken | None = None, background: list[np.ndarray] | None = None
                  ) -> tuple[float, list[Restart]]:
    """Restart the optimiser about the final pose (module docstring). Returns the final pose's own
    similarity at the check's level (mean over views) and one :class:`Restart` per start."""
    lesion_mri = np.asarray(lesion_mri, dtype=np.float64)
    p_lesion = T_world_from_mri.apply(lesion_mri)
    p_femur = T_world_from_mri.apply(femur_points_mri)
    starts = restart_poses(T_world_from_mri, p_lesion, options)
    opts = restart_options(pose, options)
    geoms, images = [v.geometry for v in views], [v.line_integral for v in views]
    own = register_views(mu, geoms, images, T_world_from_mri,
                         restart_options(pose, options, tuple(0 for _ in options.strides)), cancel=cancel,
                         background=background)
    out = []
    for k, (name, T_start) in enumerate(starts):
        res = register_views(mu, geoms, images, T_start, opts,
                             progress=scaled(progress, k / len(starts), (k + 1) / len(starts)), cancel=cancel,
                             background=background)
        T = res.T_world_from_mri
        out.append(Restart(name, float(np.mean(res.similarity_per_view)),
                           float(np.linalg.norm(T.apply(lesion_mri) - p_lesion)),
                           float(np.linalg.norm(T.apply(femur_points_mri) - p_femur, axis=1).mean())))
    return float(np.mean(own.similarity_per_view)), out


@dataclass(frozen=True)
class CurvatureOptions:
    #: detector stride (a level of the registration's schedule) at which the curvature is measured: the
    #: level above the finest, whose blur smooths the full-resolution similarity's ripple (at stride 1 with
    #: 0.5 deg / 0.5 mm steps a right pose can show a negative curvature from the ripple alone); a wrong
    #: pose that is a local optimum of the finest level is usually not a maximum there
    stride: int = 2
    #: a similarity drop (mean gradient correlation over views) the views cannot tell from noise
    drop: float = 0.01
    #: finite-difference steps of the gradient
    step_deg: float = 1.0
    step_mm: float = 1.0
    #: FAIL bounds (mm): how far the lesion / the femur (RMS over its surface) may move within ``drop``,
    #: and how far the quadratic model's peak may lie from the pose at the lesion
    max_lesion_mm: float = 2.0
    max_femur_mm: float = 4.0
    max_shift_to_peak_mm: float = 2.5


@dataclass(frozen=True)
class Uncertainty:
    """How far the lesion and the femur can move while the similarity drops by less than ``drop``
    (quadratic model of the similarity at the pose), mm; ``inf`` where the similarity is not at a
    maximum (some direction does not lower it). ``lesion_shift_to_peak_mm``: how far the quadratic
    model's peak lies from the pose (a pose short of its optimum)."""

    lesion_mm: float
    femur_mm: float
    lesion_shift_to_peak_mm: float
    min_curvature: float


def _skew(v: np.ndarray) -> np.ndarray:
    return np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])


def point_jacobian(points_world: np.ndarray, centre_world: np.ndarray) -> np.ndarray:
    """(n, 3, 6): how each point moves (mm) per pose parameter (rotation vector about ``centre_world``, rad;
    translation, mm), to first order: ``dx = omega x (x - c) + t``."""
    rel = np.atleast_2d(points_world) - centre_world
    return np.stack([np.hstack([-_skew(r), np.eye(3)]) for r in rel])


def pose_uncertainty(mu: sitk.Image, views: list[FluoroView], T_world_from_mri: RigidTransform,
                     lesion_mri: np.ndarray, femur_points_mri: np.ndarray, pose: PoseOptions,
                     options: CurvatureOptions = CurvatureOptions(), *,
                     cancel: CancelToken | None = None, background: list[np.ndarray] | None = None) -> Uncertainty:
    """Curvature of the registration's own similarity (at the level of ``options.stride``, outline band
    fixed at the pose) over the 6 pose parameters, by central differences of its gradient, propagated
    to the lesion and the femur (RMS over ``femur_points_mri``): see :class:`Uncertainty`."""
    if options.stride not in pose.strides:  # e.g. a single-level schedule: that level's blur and band
        pose = PoseOptions(strides=(options.stride,), iterations=(0,), smooth_px=pose.smooth_px[-1:],
                           outline_band_px=pose.outline_band_px[-1:], n_samples=pose.n_samples, device=pose.device)
    level = pose.strides.index(options.stride)
    objective = ViewObjective(mu, [v.geometry for v in views], [v.line_integral for v in views],
                              T_world_from_mri, pose, background=background)
    dtype, device = objective.dtype, objective.device
    with torch.no_grad():
        _, _, weights = objective.similarity(torch.zeros(6, dtype=dtype, device=device), level, None)

    def gradient(p: np.ndarray) -> np.ndarray:
        if cancel is not None:
            cancel.check()
        t = torch.as_tensor(p, dtype=dtype, device=device).requires_grad_(True)
        sim, _, _ = objective.similarity(t, level, weights)
        sim.backward()
        return t.grad.detach().cpu().double().numpy()

    steps = np.array([np.deg2rad(options.step_deg)] * 3 + [options.step_mm] * 3)
    g0 = gradient(np.zeros(6))
    hessian = np.zeros((6, 6))
    for j in range(6):
        e = np.zeros(6)
        e[j] = steps[j]
        hessian[:, j] = (gradient(e) - gradient(-e)) / (2 * steps[j])
    # in units of the steps, so that rotation and translation weigh alike in the eigen-decomposition
    a = -0.5 * (hessian + hessian.T) * np.outer(steps, steps)
    c = objective.centre_world
    j_lesion = point_jacobian(T_world_from_mri.apply(np.asarray(lesion_mri, dtype=np.float64)), c)[0] * steps
    j_femur = point_jacobian(T_world_from_mri.apply(femur_points_mri), c) * steps
    m_lesion = j_lesion.T @ j_lesion
    m_femur = np.einsum("nij,nik->jk", j_femur, j_femur) / len(j_femur)
    eig = np.linalg.eigvalsh(a)
    min_curv = float(eig[0])
    if min_curv <= 0:
        return Uncertainty(float("inf"), float("inf"), float("inf"), min_curv)
    chol_inv = np.linalg.inv(np.linalg.cholesky(a))

    def reach(m: np.ndarray) -> float:
        return float(np.sqrt(2.0 * options.drop * np.linalg.eigvalsh(chol_inv @ m @ chol_inv.T)[-1]))

    peak = np.linalg.solve(a, g0 * steps)  # in step units
    return Uncertainty(reach(m_lesion), reach(m_femur), float(np.linalg.norm(j_lesion @ peak)), min_curv)


def curvature_verdict(unc: Uncertainty, options: CurvatureOptions, figures: dict[str, float],
                      reasons: list[str]) -> str:
    """FAIL when the curvature says the lesion or the femur is free to move beyond the bounds, or the pose
    is not at a maximum of the similarity; else PASS. Adds figures (mm; curvature in units of the
    finite-difference steps) and reasons in place."""
    figures["pose_uncertainty_lesion_mm"] = unc.lesion_mm
    figures["pose_uncertainty_femur_mm"] = unc.femur_mm
    figures["lesion_shift_to_peak_mm"] = unc.lesion_shift_to_peak_mm
    figures["similarity_min_curvature"] = unc.min_curvature
    if not np.isfinite(unc.lesion_mm):
        reasons.append("pose not determined: the similarity is not at a maximum at this pose (some rotation or "
                       "shift of the femur fits the views as well or better); the pose may be wrong")
        return "FAIL"
    verdict = "PASS"
    if unc.lesion_mm > options.max_lesion_mm or unc.femur_mm > options.max_femur_mm:
        verdict = "FAIL"
        reasons.append(f"pose not determined: the views let the lesion move {unc.lesion_mm:.1f} mm and the femur "
                       f"{unc.femur_mm:.1f} mm (RMS) for a similarity drop of {options.drop:g} (bounds "
                       f"{options.max_lesion_mm:g} / {options.max_femur_mm:g} mm): the femur could be rotated "
                       "or shifted and still match the views")
    if unc.lesion_shift_to_peak_mm > options.max_shift_to_peak_mm:
        verdict = "FAIL"
        reasons.append(f"pose not at the optimum: the similarity peaks {unc.lesion_shift_to_peak_mm:.1f} mm (at "
                       f"the lesion) from this pose (bound {options.max_shift_to_peak_mm:g} mm)")
    return verdict


def restart_verdict(own_similarity: float, restarts: list[Restart], options: RestartOptions,
                    figures: dict[str, float], reasons: list[str]) -> str:
    """FAIL when a restart ends far from the final pose (lesion or femur moved > ``max_move_mm``) with a
    similarity within ``margin`` of the final pose's or better; else PASS. Adds the figures (similarity
    as the difference to the final pose's, moves in mm) and the reasons in place."""
    figures["restart_similarity_final"] = own_similarity
    verdict = "PASS"
    rival_lesion_mm = rival_femur_mm = 0.0
    for r in restarts:
        gap = r.similarity - own_similarity
        figures[f"restart_similarity_gap_{r.name}"] = gap
        figures[f"restart_lesion_move_mm_{r.name}"] = r.lesion_move_mm
        figures[f"restart_femur_move_mm_{r.name}"] = r.femur_move_mm
        if not r.moved(options.max_move_mm) or gap < -options.margin:
            continue
        rival_lesion_mm = max(rival_lesion_mm, r.lesion_move_mm)
        rival_femur_mm = max(rival_femur_mm, r.femur_move_mm)
        verdict = "FAIL"
        how = (f"restart {r.name} ({options.angle_deg:g} deg about the femoral head) ends at a pose "
               f"{r.lesion_move_mm:.1f} mm (lesion) / {r.femur_move_mm:.1f} mm (femur, mean) away")
        if gap > options.margin:
            reasons.append(f"pose not optimal: {how} that fits the views better (similarity {r.similarity:.3f} "
                           f"> {own_similarity:.3f}); the optimiser missed it")
        else:
            reasons.append(f"pose not determined: {how} that fits the views as well (similarity "
                           f"{r.similarity:.3f} vs {own_similarity:.3f}): two poses fit the views equally well")
    figures["rival_pose_lesion_move_mm"] = rival_lesion_mm
    figures["rival_pose_femur_move_mm"] = rival_femur_mm
    return verdict
