"""Deformable stage: a low-order distortion model of the femur, fitted to its surface.

Why: the MRI's gradient nonlinearity bends the femur's image by 1-2 mm across the field of
view and the fat chemical shift moves the marrow signal; the best rigid fit of a distorted
femur leaves ~0.4 mm mean / 1.3 mm max error at its landmarks. Local warps of bone are
never wanted, so the model is a smooth low-order field.

Model: ``T_ct_from_mri(p) = x + Q(x)`` with ``x = T_rigid(p)`` (the rigid stage's result)
and ``Q`` a polynomial of degree ``deformable_degree`` (default 1, i.e. affine; up to 3) in
the coordinates of ``x``. ``x`` is an affine function of the MRI scanner coordinates, so
this is the same space as a polynomial of that degree in scanner coordinates. ``Q`` is
fitted by point-to-plane ICP of the MRI femur label surface (drawn on the water image, so
the fat shift does not move it; sub-voxel) onto the CT bone surface, as linear least
squares per iteration, with

* one nuisance parameter, a constant normal offset between the two surfaces (the MRI label
  surface sits ~0.1-0.4 mm inside the CT threshold surface: without it the fit shrinks or
  grows the femur);
* the rigid part of ``Q`` (translation, infinitesimal rotation) free, and a Tikhonov
  penalty ``deformable_smooth_weight`` on the non-rigid part (symmetric linear part and
  every higher-order coefficient, coordinates scaled by 50 mm);
* surface points near either image's edge dropped (the field-of-view caps are no bone).

The field is then made a stationary velocity field on a CT-aligned grid around the femur
(:func:`region_grid`, ``deformable_spacing_mm``, 15 mm margin), tapered to zero from 5 mm
to 14 mm outside the femur and over the last 10 mm before the grid border (where the femur
leaves the CT's field of view), so it vanishes smoothly at the border. ``T_mri_from_ct = T_rigid^-1
o exp(v)`` and ``T_ct_from_mri = exp(-v) o T_rigid`` by scaling and squaring (MONAI
``DVF2DDF``): invertible, with an inverse that agrees to ~0.01 mm.

A learned network plugs in through ``RegistrationOptions.initial_velocity``: a torch tensor
of shape (3, Z, Y, X), voxel units of the region grid, channel order (z, y, x) as in MONAI,
the velocity ``v`` of ``T_mri_from_ct = T_rigid^-1 o exp(v)``. With
``deformable_iterations == 0`` it is applied as is; otherwise its field inside the femur is
projected onto the polynomial model and is the fit's starting point and prior.

Acceptance (no truth needed): the field is fitted to the whole femur surface and kept only if
it predicts surface it was not fitted to better than the rigid result: the surface is cut into
``deformable_cv_folds`` (20) compact patches (k-means of the points), the field is fitted
again without each patch (``deformable_cv_iterations`` re-pairings from the whole-surface
fit) and predicts it (:func:`cross_validate_fit`). Two routes of evidence, either suffices:

* surface: the pooled held-out point-to-plane residual beats the rigid one by more than
  ``deformable_min_cv_gain`` (0.5 %: spurious fields on undistorted phantoms reached +0.05 %);
* intensity: the femur's mutual information (fat shift undone where known) rises with the
  field, while the held-out surface loses at most ``deformable_mi_route_max_cv_loss`` (5 %). The
  rigid pose is MI's optimum over rigid poses, so a field fitted to noise lowers MI (it did on 15
  of 16 undistorted phantom fits, +0.02 % the exception); on small-distorted-101 the surface
  evidence was -2.9 % for a field that cuts the max TRE from 1.24 to 0.74 mm and MI rose.

And always: the field is larger than its own uncertainty (rms over the surface of the field >=
``deformable_min_significance`` (1) x rms of its jackknife standard error from the fold fits), the
femur MI falls by at most ``deformable_max_mi_loss`` (10 %: real fields lowered it by up to 5 %,
a field that cut small-distorted-102's mean TRE from 1.26 to 0.62 mm by 5.0 %), and the displacement
inside the femur stays below ``deformable_max_femur_mm``. Otherwise the rigid result stands and the
QA notes say why.
Whole patches, not interleaved points: the two surfaces' errors are correlated over many mm,
so points held out between fitted ones share the errors the field was fitted to (the former
rule, interleaved halves, kept a spurious 0.47 mm rms field on the undistorted small-105 and
made its TRE worse: 0.18 / 0.40 -> 0.46 / 0.77 mm mean / max).
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F_t
from numpy.typing import NDArray
from scipy.spatial import cKDTree

from navsvc.errors import ConfigError
from navsvc.frames import CT
from navsvc.imaging import contains_points, voxel_centers_lps
from navsvc.progress import CancelToken, ProgressFn, no_progress
from navsvc.registration import bone, qa
from navsvc.registration.result import RegistrationOptions
from navsvc.transforms import AnyTransform, RigidTransform, Transform, resample

log = logging.getLogger(__name__)

F = NDArray[np.float64]

#: coordinates of the polynomial are (x - centre) / SCALE_MM
SCALE_MM = 50.0
#: the velocity is tapered from 1 to 0 between these distances (mm) outside the femur
TAPER_MM = (5.0, 14.0)
GRID_MARGIN_MM = 15.0
#: the velocity also falls from 1 to 0 over this distance to the grid border (< GRID_MARGIN_MM, so the
#: femur inside the CT keeps the whole field)
BORDER_RAMP_MM = 10.0
EDGE_MARGIN_MM = 4.0


@dataclass
class DeformableOutput:
    accepted: bool
    T_ct_from_mri: AnyTransform
    T_mri_from_ct: AnyTransform
    field_mm: sitk.Image | None
    info: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: the fitted field's T_ct_from_mri, accepted or not (None when no field was made)
    candidate_T_ct_from_mri: AnyTransform | None = None


def region_grid(mask_ct: sitk.Image, spacing_mm: float, margin_mm: float) -> sitk.Image:
    """An empty float grid, axis-aligned with the CT, covering ``mask_ct`` plus ``margin_mm``."""
    arr = sitk.GetArrayViewFromImage(mask_ct) > 0
    kji = np.argwhere(arr)
    lo_idx = kji.min(0)[::-1].astype(np.float64)
    hi_idx = kji.max(0)[::-1].astype(np.float64)
    sp = np.array(mask_ct.GetSpacing())
    d = np.array(mask_ct.GetDirection()).reshape(3, 3)
    lo_local = lo_idx * sp - margin_mm
    hi_local = hi_idx * sp + margin_mm
    size = np.ceil((hi_local - lo_local) / spacing_mm).astype(int) + 1
    origin = np.array(mask_ct.GetOrigin()) + d @ lo_local
    ref = sitk.Image([int(s) for s in size], sitk.sitkFloat32)
    ref.SetSpacing([spacing_mm] * 3)
    ref.SetOrigin(origin.tolist())
    ref.SetDirection(mask_ct.GetDirection())
    return ref


def mind_ssc(img: torch.Tensor, radius: int = 1, dilation: int = 2) -> torch.Tensor:
    """MIND-SSC descriptor (Heinrich et al. 2013), (B, 1, D, H, W) -> (B, 12, D, H, W).

    Self-similarity of 12 six-neighbourhood patch pairs, normalised by their mean variance.
    """
    kernel = radius * 2 + 1
    six = torch.tensor([[0, 1, 1], [1, 1, 0], [1, 0, 1], [1, 1, 2], [2, 1, 1], [1, 2, 1]], device=img.device)
    dist = ((six[:, None, :] - six[None, :, :]) ** 2).sum(-1)
    x, y = torch.meshgrid(torch.arange(6, device=img.device), torch.arange(6, device=img.device), indexing="ij")
    sel = (x > y) & (dist == 2)
    idx1 = six[None].repeat(6, 1, 1)[sel]
    idx2 = six[:, None].repeat(1, 6, 1)[sel]
    shift1 = torch.zeros(12, 1, 3, 3, 3, device=img.device, dtype=img.dtype)
    shift2 = torch.zeros_like(shift1)
    ar = torch.arange(12, device=img.device)
    shift1[ar, 0, idx1[:, 0], idx1[:, 1], idx1[:, 2]] = 1
    shift2[ar, 0, idx2[:, 0], idx2[:, 1], idx2[:, 2]] = 1
    pad = F_t.pad(img, [dilation] * 6, mode="replicate")
    d1 = F_t.conv3d(pad, shift1, dilation=dilation)
    d2 = F_t.conv3d(pad, shift2, dilation=dilation)
    ssd = F_t.avg_pool3d(F_t.pad((d1 - d2) ** 2, [radius] * 6, mode="replicate"), kernel, stride=1)
    ssd = ssd - ssd.min(1, keepdim=True)[0]
    var = ssd.mean(1, keepdim=True)
    var = torch.clamp(var, var.mean() * 0.001, var.mean() * 1000.0)
    mind = torch.exp(-ssd / var)
    return mind / mind.amax(1, keepdim=True).clamp_min(1e-6)


def _to_tensor(image: sitk.Image, device: str) -> torch.Tensor:
    arr = sitk.GetArrayFromImage(image).astype(np.float32)
    return torch.from_numpy(arr)[None, None].to(device)


def _normalise(t: torch.Tensor) -> torch.Tensor:
    lo, hi = torch.quantile(t.flatten()[:: max(1, t.numel() // 200000)], torch.tensor([0.01, 0.99], device=t.device))
    return ((t - lo) / (hi - lo).clamp_min(1e-6)).clamp(0.0, 1.0)


def _field_image(ddf_vox: NDArray[np.float64], grid: sitk.Image) -> sitk.Image:
    """(3, Z, Y, X) voxel displacement (channels z, y, x) -> SimpleITK vector image in LPS mm."""
    u_ijk = np.stack([ddf_vox[2], ddf_vox[1], ddf_vox[0]], axis=-1) * np.array(grid.GetSpacing())
    d = np.array(grid.GetDirection()).reshape(3, 3)
    u_lps = u_ijk @ d.T
    img = sitk.GetImageFromArray(u_lps.astype(np.float64), isVector=True)
    img.CopyInformation(grid)
    return img


def velocity_transform(v: torch.Tensor, grid: sitk.Image, num_steps: int = 7) -> tuple[Transform, sitk.Image]:
    """``D(x) = x + u(x)`` (CT -> CT) from a stationary velocity ``v`` (1, 3, Z, Y, X), voxels of
    ``grid``, channels (z, y, x); ``u`` by scaling and squaring, the inverse from ``-v``.

    Returns (D with its inverse attached, the displacement field image in LPS mm).
    """
    from monai.networks.blocks import DVF2DDF

    integrate = DVF2DDF(num_steps=num_steps, mode="bilinear", padding_mode="zeros")
    with torch.no_grad():
        ddf = integrate(v).cpu().numpy()[0].astype(np.float64)
        ddf_inv = integrate(-v).cpu().numpy()[0].astype(np.float64)
    field_img = _field_image(ddf, grid)
    inv_img = _field_image(ddf_inv, grid)
    D = Transform(sitk.DisplacementFieldTransform(sitk.Image(field_img)), CT, CT,
                  sitk.DisplacementFieldTransform(sitk.Image(inv_img)))
    return D, field_img


def monomial_exponents(degree: int) -> list[tuple[int, ...]]:
    """Index tuples of the monomials of degree <= ``degree`` in 3 variables: () is 1, (0,) is x..."""
    if not 0 <= degree <= 3:
        raise ConfigError(f"deformable_degree: expected 0..3, got {degree}")
    return [c for d in range(degree + 1) for c in itertools.combinations_with_replacement(range(3), d)]


def monomials(x: F, degree: int) -> F:
    """(N, 3) -> (N, K) monomials of degree <= ``degree`` (order of :func:`monomial_exponents`)."""
    return np.stack([np.prod(x[:, list(c)], axis=1) if c else np.ones(len(x)) for c in monomial_exponents(degree)], 1)


@dataclass(frozen=True)
class PolynomialField:
    """``Q(x) = monomials((x - centre_mm) / scale_mm) @ coefficients_mm``, x in CT LPS mm, Q in mm."""

    coefficients_mm: F  # (K, 3)
    centre_mm: F
    scale_mm: float
    degree: int

    def __call__(self, x_mm: F) -> F:
        return monomials((np.atleast_2d(x_mm) - self.centre_mm) / self.scale_mm, self.degree) @ self.coefficients_mm

    @staticmethod
    def fit(x_mm: F, u_mm: F, centre_mm: F, degree: int, scale_mm: float = SCALE_MM) -> PolynomialField:
        """Least-squares projection of displacements ``u_mm`` at ``x_mm`` (N, 3) onto the model."""
        phi = monomials((x_mm - centre_mm) / scale_mm, degree)
        c, *_ = np.linalg.lstsq(phi, u_mm, rcond=None)
        return PolynomialField(np.asarray(c, dtype=np.float64), np.asarray(centre_mm, dtype=np.float64), scale_mm, degree)


@dataclass(frozen=True)
class SurfaceFit:
    field: PolynomialField
    offset_mm: float  # MRI label surface minus CT bone surface along the CT normal
    pairs: int  # correspondences in the last iteration


def _nonrigid_penalty(degree: int) -> F:
    """(3K, 3K) quadratic form on the coefficients (index k * 3 + component): every
    coefficient of degree >= 2, plus the symmetric part of the linear one; translation and
    the skew (rotation) part are free."""
    ex = monomial_exponents(degree)
    k_total = len(ex)
    pen = np.zeros((3 * k_total, 3 * k_total))
    for k, c in enumerate(ex):
        if len(c) >= 2:
            pen[3 * k:3 * k + 3, 3 * k:3 * k + 3] = np.eye(3)
    lin = {c[0]: k for k, c in enumerate(ex) if len(c) == 1}
    for a in range(3):
        for b in range(3):
            if a in lin and b in lin:
                v = np.zeros(3 * k_total)
                v[3 * lin[b] + a] += 0.5  # d Q_a / d x_b
                v[3 * lin[a] + b] += 0.5
                pen += np.outer(v, v)
    return pen


def fit_surface_polynomial(
    mri_surface: bone.Surface,
    ct_surface: bone.Surface,
    T_ct_from_mri: RigidTransform,
    *,
    degree: int = 1,
    smooth_weight: float = 3e-3,
    iterations: int = 30,
    caps_mm: tuple[float, ...] = (3.0, 2.0, 1.5),
    prior: PolynomialField | None = None,
    start: PolynomialField | None = None,
    ct_tree: cKDTree | None = None,
    cancel: CancelToken | None = None,
) -> SurfaceFit:
    """Point-to-plane ICP of ``mri_surface`` (MRI frame) onto ``ct_surface`` (CT frame) with
    ``y = x + Q(x)``, ``x = T_ct_from_mri(p)``; see the module doc for the model.

    Each iteration pairs each point with its nearest CT surface point (within the current
    cap, normals within 60 degrees) and solves the regularised linear least squares
    ``min mean((n.(x + Q(x) - t) - offset)^2) + smooth_weight * |nonrigid(Q - prior)|^2``.
    ``start``: the first pairing uses this field instead of the prior (a warm start).
    ``ct_tree``: a ``cKDTree`` of ``ct_surface.points_mm`` when the caller has one.
    """
    x0 = T_ct_from_mri.apply(mri_surface.points_mm)
    n_mri = mri_surface.normals @ T_ct_from_mri.matrix[:3, :3].T
    centre = x0.mean(0)
    phi = monomials((x0 - centre) / SCALE_MM, degree)
    k_total = phi.shape[1]
    c_prior = np.zeros((k_total, 3)) if prior is None else prior.coefficients_mm
    if prior is not None and (prior.degree != degree or not np.allclose(prior.centre_mm, centre)):
        c_prior = PolynomialField.fit(x0, prior(x0), centre, degree).coefficients_mm
    pen = _nonrigid_penalty(degree)
    tree = cKDTree(ct_surface.points_mm) if ct_tree is None else ct_tree
    coeffs = c_prior.copy() if start is None else PolynomialField.fit(x0, start(x0), centre, degree).coefficients_mm
    offset, pairs = 0.0, 0
    for it in range(iterations):
        if cancel:
            cancel.check()
        cap = caps_mm[min(it * len(caps_mm) // iterations, len(caps_mm) - 1)]
        y = x0 + phi @ coeffs
        d, j = tree.query(y, workers=-1)
        t, n = ct_surface.points_mm[j], ct_surface.normals[j]
        ok = (d < cap) & (np.sum(n * n_mri, 1) > 0.5)
        pairs = int(ok.sum())
        if pairs < 10 * (3 * k_total + 1):  # too few to fit: keep the last solution
            log.warning("surface polynomial fit: expected >= %d surface pairs, got %d", 10 * (3 * k_total + 1), pairs)
            break
        a = (phi[ok][:, :, None] * n[ok][:, None, :]).reshape(pairs, 3 * k_total)
        a = np.hstack([a, -np.ones((pairs, 1))]) / np.sqrt(pairs)
        b = np.sum(n[ok] * (t[ok] - x0[ok]), 1) / np.sqrt(pairs)
        reg = np.zeros((3 * k_total + 1, 3 * k_total + 1))
        reg[:-1, :-1] = smooth_weight * pen
        rhs = a.T @ b
        rhs[:-1] += smooth_weight * pen @ c_prior.ravel()
        sol = np.linalg.solve(a.T @ a + reg + 1e-10 * np.eye(len(reg)), rhs)
        coeffs, offset = sol[:-1].reshape(k_total, 3), float(sol[-1])
    return SurfaceFit(PolynomialField(coeffs, centre, SCALE_MM, degree), offset, pairs)


def surface_blocks(points_mm: F, k: int, seed: int = 0) -> NDArray[np.int64]:
    """(N,) block index 0..k-1 of each point: k-means of the positions, i.e. k compact patches of
    the surface (deterministic for a seed)."""
    from scipy.cluster.vq import kmeans2

    _, label = kmeans2(np.asarray(points_mm, dtype=np.float64), k, seed=seed, minit="++")
    return np.asarray(label, dtype=np.int64)


def _plane_residuals(y: F, n_mri: F, tree: cKDTree, ct_surface: bone.Surface, cap_mm: float) -> tuple[F, NDArray[np.bool_]]:
    d, j = tree.query(y, workers=-1)
    n = ct_surface.normals[j]
    ok = (d < cap_mm) & (np.sum(n * n_mri, 1) > 0.5)
    return np.sum(n * (y - ct_surface.points_mm[j]), 1), ok


@dataclass(frozen=True)
class CrossValidation:
    """Spatially blocked cross-validation of the surface fit (see :func:`cross_validate_fit`)."""

    significance: float  # rms |field| / rms jackknife standard error, over the surface
    field_rms_mm: float
    standard_error_rms_mm: float
    gain: float  # 1 - rms(field) / rms(rigid) of the held-out patches' residuals
    fold_gains: list[float]


def cross_validate_fit(mri_surface: bone.Surface, ct_surface: bone.Surface, T_ct_from_mri: RigidTransform,
                       full: PolynomialField, *, folds: int = 20, seed: int = 0, step: int = 3,
                       iterations: int = 20, warm_start: bool = False, cap_mm: float = 3.0, clip_mm: float = 2.0,
                       cancel: CancelToken | None = None, **fit_kwargs: Any) -> CrossValidation:
    """Is the field ``full`` (fitted to all of ``mri_surface``) more than a fit to the noise?

    The surface is cut into ``folds`` compact patches (:func:`surface_blocks`); for each, the
    field is fitted again without that patch (every ``step``-th point, ``iterations`` ICP
    iterations, from ``full`` when ``warm_start``; ``fit_kwargs`` as for
    :func:`fit_surface_polynomial`) and predicts the patch (``iterations == 0``: ``full``
    itself, a field not fitted to this surface, e.g. the network's, predicts every patch): the point-to-plane residuals of
    all held-out patches (offsets: median of the training points; clipped to ``clip_mm``)
    against the rigid result's give ``gain = 1 - rms(field) / rms(rigid)``, the evidence the
    acceptance rule uses. Reported with it: the jackknife standard error of the field over the
    surface, from the spread of the fold fits, and ``significance = rms |full| / rms SE``.

    Why patches: the surface errors of the two images are correlated over many mm (smoothed
    thick-slice label, 2 mm CT voxels), so points held out between fitted ones share their
    errors and "confirm" a field fitted to them.
    """
    x0 = T_ct_from_mri.apply(mri_surface.points_mm)
    n_mri = mri_surface.normals @ T_ct_from_mri.matrix[:3, :3].T
    tree = cKDTree(ct_surface.points_mm)
    r_rigid, ok_rigid = _plane_residuals(x0, n_mri, tree, ct_surface, cap_mm)
    block = surface_blocks(x0, folds, seed)
    sub = np.zeros(len(x0), bool)
    sub[::step] = True
    probe = x0[::10]
    fields, held_rigid, held_field, fold_gains = [], [], [], []
    for f in range(folds):
        if cancel:
            cancel.check()
        train, test = block != f, block == f
        if test.sum() < 20 or (train & sub).sum() < 200:
            continue
        field_f = full
        if iterations > 0:
            field_f = fit_surface_polynomial(
                bone.Surface(mri_surface.points_mm[train & sub], mri_surface.normals[train & sub]), ct_surface,
                T_ct_from_mri, start=full if warm_start else None, iterations=iterations, ct_tree=tree, cancel=cancel,
                **fit_kwargs).field
        fields.append(field_f(probe))
        y = x0 + field_f(x0)
        r_field, ok_field = _plane_residuals(y, n_mri, tree, ct_surface, cap_mm)
        use = test & ok_rigid & ok_field
        a = np.clip(r_rigid[use] - np.median(r_rigid[train & ok_rigid]), -clip_mm, clip_mm)
        b = np.clip(r_field[use] - np.median(r_field[train & ok_field]), -clip_mm, clip_mm)
        held_rigid.append(a)
        held_field.append(b)
        fold_gains.append(float(1.0 - np.sqrt(np.mean(b**2)) / np.sqrt(np.mean(a**2))) if len(a) else 0.0)
    if len(fields) < 3:
        return CrossValidation(0.0, float("nan"), float("nan"), 0.0, fold_gains)
    u = np.asarray(fields)
    k = len(u)
    se = np.sqrt((k - 1) / k * np.sum((u - u.mean(0)) ** 2, axis=0))  # jackknife, (M, 3)
    u_rms = float(np.sqrt(np.mean(np.sum(full(probe) ** 2, 1))))
    se_rms = float(np.sqrt(np.mean(np.sum(se**2, 1))))
    a, b = np.concatenate(held_rigid), np.concatenate(held_field)
    gain = float(1.0 - np.sqrt(np.mean(b**2)) / np.sqrt(np.mean(a**2))) if len(a) and np.any(a) else 0.0
    return CrossValidation(u_rms / se_rms if se_rms > 0 else float("inf"), u_rms, se_rms, gain, fold_gains)


def _lps_to_vox(u_lps: F, grid: sitk.Image) -> F:
    """(..., 3) LPS mm displacement -> (3, ...) grid voxels, channels (z, y, x)."""
    d = np.array(grid.GetDirection()).reshape(3, 3)
    u_ijk = (u_lps @ d) / np.array(grid.GetSpacing())
    return np.ascontiguousarray(np.moveaxis(u_ijk[..., ::-1], -1, 0))


def _vox_to_lps(u_vox: F, grid: sitk.Image) -> F:
    """(3, ...) grid voxels, channels (z, y, x) -> (..., 3) LPS mm."""
    u_ijk = np.moveaxis(u_vox, 0, -1)[..., ::-1] * np.array(grid.GetSpacing())
    return u_ijk @ np.array(grid.GetDirection()).reshape(3, 3).T


def log_of_displacement(u_vox: torch.Tensor, iterations: int = 4, num_steps: int = 7) -> torch.Tensor:
    """A stationary velocity ``w`` (1, 3, Z, Y, X) with ``exp(w) ~ x + u`` for a small smooth
    displacement ``u`` (same shape, voxels), by the fixed point ``w += u - exp(w)``."""
    from monai.networks.blocks import DVF2DDF

    integrate = DVF2DDF(num_steps=num_steps, mode="bilinear", padding_mode="zeros")
    w = u_vox.clone()
    with torch.no_grad():
        for _ in range(iterations):
            w = w + (u_vox - integrate(w))
    return w


def _taper(femur_grid: sitk.Image) -> F:
    """(Z, Y, X) weight: 1 within TAPER_MM[0] of the femur, 0 beyond TAPER_MM[1], linear between."""
    dist = sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(
        sitk.Cast(femur_grid > 0.5, sitk.sitkUInt8), insideIsPositive=False, squaredDistance=False,
        useImageSpacing=True))
    w = np.clip((TAPER_MM[1] - dist) / (TAPER_MM[1] - TAPER_MM[0]), 0.0, 1.0)
    # where the femur leaves the grid (beyond the CT's field of view) the field must still fall
    # to zero smoothly: a step at the border made exp(v) and exp(-v) disagree by 0.25 mm there
    ramp = np.ones_like(w)
    spacing = float(femur_grid.GetSpacing()[0])
    for axis in range(3):
        n = w.shape[axis]
        from_border = np.minimum(np.arange(n), np.arange(n)[::-1]) * spacing
        shape = [1, 1, 1]
        shape[axis] = n
        ramp = np.minimum(ramp, np.clip(from_border / BORDER_RAMP_MM, 0.0, 1.0).reshape(shape))
    return w * ramp


def deformable_stage(
    ct: sitk.Image,
    mri: sitk.Image,
    femur_mri: sitk.Image,
    rigid: RigidTransform,
    options: RegistrationOptions,
    *,
    surfaces: tuple[bone.Surface, bone.Surface] | None = None,
    progress: ProgressFn = no_progress,
    cancel: CancelToken | None = None,
) -> DeformableOutput:
    """Fit the low-order field and keep it only where it helps; returns the accepted composite
    or the rigid result (see the module doc).

    ``rigid`` is ``T_ct_from_mri`` of the rigid stage. ``surfaces``: (MRI femur surface, CT
    bone surface) when the caller has them already. On CPU, torch runs with
    ``options.threads`` threads (default 1) inside this stage (the grid is small).
    """
    device = options.resolved_device()
    if device != "cpu":
        return _deformable_stage(ct, mri, femur_mri, rigid, options, surfaces, progress, cancel)
    before = torch.get_num_threads()
    torch.set_num_threads(int(options.threads or 1))
    try:
        return _deformable_stage(ct, mri, femur_mri, rigid, options, surfaces, progress, cancel)
    finally:
        torch.set_num_threads(before)


def _inside(surface: bone.Surface, image: sitk.Image, margin_mm: float, T: RigidTransform | None = None) -> bone.Surface:
    pts = surface.points_mm if T is None else T.apply(surface.points_mm)
    keep = contains_points(image, pts, margin_mm=margin_mm)
    return bone.Surface(surface.points_mm[keep], surface.normals[keep])


def _deformable_stage(
    ct: sitk.Image,
    mri: sitk.Image,
    femur_mri: sitk.Image,
    rigid: RigidTransform,
    options: RegistrationOptions,
    surfaces: tuple[bone.Surface, bone.Surface] | None,
    progress: ProgressFn,
    cancel: CancelToken | None,
) -> DeformableOutput:
    device = options.resolved_device()
    T_mri_from_ct_rigid = rigid.inverse()
    femur_ct = qa.map_mask(femur_mri, ct, T_mri_from_ct_rigid)
    keep = DeformableOutput(False, rigid, T_mri_from_ct_rigid, None)
    if not sitk.GetArrayViewFromImage(femur_ct).any():
        keep.notes.append("deformable stage skipped: the femur maps outside the CT")
        return keep
    grid = region_grid(femur_ct, options.deformable_spacing_mm, margin_mm=GRID_MARGIN_MM)
    shape = tuple(grid.GetSize()[::-1])
    femur_g = resample(sitk.Cast(femur_mri, sitk.sitkFloat32), grid, T_mri_from_ct_rigid)
    weight = _taper(femur_g)
    v0 = None
    if options.initial_velocity is not None:
        v0 = torch.as_tensor(options.initial_velocity, dtype=torch.float32, device=device)
        if tuple(v0.shape) != (3, *shape):
            raise ConfigError(f"initial_velocity: expected shape {(3, *shape)} (the deformable grid), "
                              f"got {tuple(v0.shape)}")
        v0 = v0[None]
    if surfaces is None:
        ct_bone = bone.segment_ct_bone(ct, options.threshold_for(ct.GetSpacing()))
        surfaces = (bone.label_surface(femur_mri, (1,)), bone.ct_bone_surface(ct, ct_bone))
    # the field-of-view caps of either image are no bone surface
    mri_surface = _inside(surfaces[0], mri, EDGE_MARGIN_MM)
    mri_surface = _inside(mri_surface, ct, EDGE_MARGIN_MM, rigid)
    ct_surface = _inside(surfaces[1], ct, EDGE_MARGIN_MM)
    info: dict[str, Any] = {"model": f"polynomial degree {options.deformable_degree} on the femur surface",
                            "grid_size": list(grid.GetSize()), "iterations": options.deformable_iterations,
                            "surface_points": {"mri": len(mri_surface), "ct": len(ct_surface)}, "device": device}
    progress("deformable", 0.1, "fitting the distortion model to the femur surface")
    prior = None
    if options.deformable_iterations == 0:
        if v0 is None:
            keep.notes.append("deformable stage skipped: no iterations and no initial velocity")
            keep.info = info
            return keep
        v = v0
    else:
        if len(mri_surface) < 400 or len(ct_surface) < 200:
            keep.notes.append(f"deformable stage skipped: expected >= 400 MRI and 200 CT surface points, got "
                              f"{len(mri_surface)} and {len(ct_surface)}")
            keep.info = info
            return keep
        pts_g = voxel_centers_lps(grid).reshape(*shape, 3)
        if v0 is not None:  # the network's field inside the femur, projected onto the model
            from monai.networks.blocks import DVF2DDF

            with torch.no_grad():
                fwd = DVF2DDF(num_steps=7, mode="bilinear", padding_mode="zeros")(-v0).cpu().numpy()[0]
            inside = sitk.GetArrayViewFromImage(femur_g) > 0.5
            prior = PolynomialField.fit(pts_g[inside], _vox_to_lps(fwd, grid)[inside], pts_g[inside].mean(0),
                                        options.deformable_degree)
        fit = fit_surface_polynomial(mri_surface, ct_surface, rigid, degree=options.deformable_degree,
                                     smooth_weight=options.deformable_smooth_weight,
                                     iterations=options.deformable_iterations, prior=prior, cancel=cancel)
        info.update(offset_mm=fit.offset_mm, pairs=fit.pairs,
                    coefficients_mm=np.round(fit.field.coefficients_mm, 4).tolist())
        u_lps = fit.field(pts_g.reshape(-1, 3)).reshape(*shape, 3) * weight[..., None]
        u_vox = torch.as_tensor(_lps_to_vox(u_lps, grid)[None], dtype=torch.float32, device=device)
        v = -log_of_displacement(u_vox)  # exp(-v) = forward (MRI -> CT side) map
    if cancel:
        cancel.check()
    progress("deformable", 0.6, "checking the field")
    with torch.no_grad():
        D, field_img = velocity_transform(v, grid)
    T_mri_from_ct = T_mri_from_ct_rigid @ D
    T_ct_from_mri = D.inverse() @ rigid
    keep.candidate_T_ct_from_mri = T_ct_from_mri
    progress("deformable", 0.7, "cross-validating the field on held-out surface patches")
    cv = None
    if len(mri_surface) >= 400 and len(ct_surface) >= 200:
        # the field the stage applies, as a polynomial on the femur surface (for the network's
        # field with 0 iterations: its projection onto the model)
        x_s = rigid.apply(mri_surface.points_mm)
        applied = PolynomialField.fit(x_s, T_ct_from_mri.apply(mri_surface.points_mm) - x_s, x_s.mean(0),
                                      options.deformable_degree)
        cv = cross_validate_fit(mri_surface, ct_surface, rigid, applied, folds=options.deformable_cv_folds,
                                seed=options.seed, degree=options.deformable_degree,
                                smooth_weight=options.deformable_smooth_weight, prior=prior,
                                iterations=min(options.deformable_cv_iterations, options.deformable_iterations),
                                warm_start=True, cancel=cancel)
    return _accept(ct, mri, femur_mri, femur_ct, femur_g, field_img, cv, rigid,
                   T_ct_from_mri, T_mri_from_ct, options, info, keep)


def acceptance(cv: CrossValidation | None, gain_mi: float, max_femur_mm: float,
               options: RegistrationOptions) -> tuple[str | None, list[str]]:
    """The acceptance rule of the module doc: (the route of evidence that holds -- "surface",
    "mi" or None --, the reasons to reject; empty = keep the field). ``gain_mi`` is the relative
    change of the femur's MI (0.01 = +1 %), ``max_femur_mm`` the largest displacement in the femur."""
    reasons = []
    gain_cv = cv.gain if cv is not None else float("nan")
    surface_route = gain_cv > options.deformable_min_cv_gain
    mi_route = gain_mi > 0.0 and gain_cv > -options.deformable_mi_route_max_cv_loss
    evidence = "surface" if surface_route else "mi" if mi_route else None
    if cv is None:
        reasons.append("too few surface points to cross-validate the field")
    elif evidence is None:
        reasons.append(f"the field does not predict held-out surface patches better than the rigid result "
                       f"(cross-validated gain {100 * gain_cv:+.2f}% <= {100 * options.deformable_min_cv_gain:.1f}%) "
                       f"and does not raise the femur's MI ({100 * gain_mi:+.2f}%)")
    elif not cv.significance >= options.deformable_min_significance:
        reasons.append(f"the field ({cv.field_rms_mm:.2f} mm rms) is not larger than "
                       f"{options.deformable_min_significance:g} x its cross-validation standard error "
                       f"({cv.standard_error_rms_mm:.2f} mm)")
    if gain_mi < -options.deformable_max_mi_loss:
        reasons.append(f"femur MI worse by {-100 * gain_mi:.1f}% (> {100 * options.deformable_max_mi_loss:.0f}%)")
    if max_femur_mm > options.deformable_max_femur_mm:
        reasons.append(f"displacement in the femur {max_femur_mm:.2f} mm > {options.deformable_max_femur_mm} mm")
    return evidence, reasons


def _accept(ct: sitk.Image, mri: sitk.Image, femur_mri: sitk.Image, femur_ct: sitk.Image, femur_g: sitk.Image,
            field_img: sitk.Image, cv: CrossValidation | None, rigid: RigidTransform,
            T_ct_from_mri: AnyTransform, T_mri_from_ct: AnyTransform, options: RegistrationOptions,
            info: dict[str, Any], keep: DeformableOutput) -> DeformableOutput:
    """The acceptance rule of the module doc."""
    u_mm = np.linalg.norm(sitk.GetArrayViewFromImage(field_img), axis=-1)
    femur_np = sitk.GetArrayViewFromImage(femur_g) > 0.5
    max_femur_mm = float(u_mm[femur_np].max()) if femur_np.any() else 0.0
    mri_for_mi = sitk.Cast(mri, sitk.sitkFloat32)
    if options.fat_shift_mm is not None:
        from navsvc.registration.rigid import fat_shift_corrected

        mri_for_mi = fat_shift_corrected(mri_for_mi, femur_mri, np.asarray(options.fat_shift_mm, dtype=np.float64))
    roi = sitk.BinaryDilate(femur_ct, [max(1, int(round(options.roi_margin_mm / s))) for s in ct.GetSpacing()])
    mi_rigid = qa.masked_mi(ct, mri_for_mi, roi, rigid.inverse())
    mi_def = qa.masked_mi(ct, mri_for_mi, roi, T_mri_from_ct)
    gain_mi = mi_def / mi_rigid - 1.0 if mi_rigid > 0 else 0.0
    gain_cv = cv.gain if cv is not None else float("nan")
    info.update(max_displacement_femur_mm=max_femur_mm, max_displacement_mm=float(u_mm.max()),
                mi_rigid=mi_rigid, mi_deformable=mi_def, gain_mi=gain_mi, gain_cross_validated=gain_cv)
    if cv is not None:
        info.update(cv_folds=len(cv.fold_gains), cv_fold_gains=np.round(cv.fold_gains, 4).tolist(),
                    significance=cv.significance, field_rms_mm=cv.field_rms_mm,
                    standard_error_rms_mm=cv.standard_error_rms_mm)
    evidence, reasons = acceptance(cv, gain_mi, max_femur_mm, options)
    info["evidence"] = evidence
    info["accepted"] = not reasons
    if reasons:
        keep.info = info
        keep.notes.append("deformable stage rejected, rigid result kept: " + "; ".join(reasons))
        return keep
    return DeformableOutput(True, T_ct_from_mri, T_mri_from_ct, field_img, info,
                            [f"deformable stage accepted ({info['evidence']} evidence): max displacement in the "
                             f"femur {max_femur_mm:.2f} mm (cross-validated surface gain {100 * gain_cv:+.2f}%, "
                             f"MI {100 * gain_mi:+.1f}%)"],
                            candidate_T_ct_from_mri=T_ct_from_mri)
