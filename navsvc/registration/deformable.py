"""Deformable stage (torch + MONAI): a low-order stationary velocity field on the femur region.

Model: after the rigid stage, ``T_mri_from_ct = T_rigid_mri_from_ct o D`` with
``D(x) = x + u(x)`` on a CT-aligned region of interest around the femur. ``u`` is the
scaling-and-squaring integral (MONAI ``DVF2DDF``) of a stationary velocity ``v``, so ``D``
is invertible and its inverse is the integral of ``-v``. ``v`` lives on a coarse control
grid (``deformable_grid_mm``, default 25 mm, zero on the region's border) upsampled
trilinearly: only smooth, low-order fields are possible (MRI gradient nonlinearity), never
local warps of bone. Loss: MIND-SSC (multimodal) + bending energy + a near-rigidity penalty
``|J^T J - I|^2`` inside the femur.

A learned network plugs in through ``RegistrationOptions.initial_velocity``: a torch tensor
of shape (3, Z, Y, X) in voxel units of the region grid (``DeformableGrid``), channel order
(z, y, x) as in MONAI; it is the starting velocity the coarse residual is added to.

The stage never makes the femur worse: its result is kept only if the femur's mutual
information improves and its surface fit does not degrade and the displacement inside
the femur stays below ``deformable_max_femur_mm``; otherwise the rigid result stands and
the QA notes say why.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F_t
from numpy.typing import NDArray

from navsvc.frames import CT
from navsvc.progress import CancelToken, ProgressFn, no_progress
from navsvc.registration import bone, qa
from navsvc.registration.result import RegistrationOptions
from navsvc.transforms import AnyTransform, RigidTransform, Transform, resample

log = logging.getLogger(__name__)


@dataclass
class DeformableOutput:
    accepted: bool
    T_ct_from_mri: AnyTransform
    T_mri_from_ct: AnyTransform
    field_mm: sitk.Image | None
    info: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


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


def _jacobian(ddf: torch.Tensor) -> torch.Tensor:
    """Jacobian of x -> x + ddf(x), ddf (1, 3, D, H, W) in voxels; returns (D, H, W, 3, 3)."""
    grads = []
    for axis in (2, 3, 4):
        g = torch.gradient(ddf, dim=axis)[0]
        grads.append(g)
    jac = torch.stack(grads, dim=2)[0].permute(2, 3, 4, 0, 1)  # [..., component, derivative-axis]
    return jac + torch.eye(3, device=ddf.device, dtype=ddf.dtype)


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
    """Optimise the low-order velocity field; returns the accepted composite or the rigid result.

    ``surfaces``: (MRI femur surface, CT bone surface) when the caller has them already.
    On CPU, torch runs with ``options.threads`` threads (default 1) inside this stage: the
    grid is small, and OpenMP spinning on shared cores made it ~9x slower with 2 threads.
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
    from monai.losses import BendingEnergyLoss
    from monai.networks.blocks import DVF2DDF

    device = options.resolved_device()
    torch.manual_seed(options.seed)
    T_mri_from_ct_rigid = rigid.inverse()
    femur_ct = qa.map_mask(femur_mri, ct, T_mri_from_ct_rigid)
    keep = DeformableOutput(False, rigid, T_mri_from_ct_rigid, None)
    if not sitk.GetArrayViewFromImage(femur_ct).any():
        keep.notes.append("deformable stage skipped: the femur maps outside the CT")
        return keep
    grid = region_grid(femur_ct, options.deformable_spacing_mm, margin_mm=15.0)
    fixed = _normalise(_to_tensor(sitk.Resample(sitk.Cast(ct, sitk.sitkFloat32), grid, sitk.Transform(),
                                                sitk.sitkLinear, -1000.0), device))
    moving = _normalise(_to_tensor(resample(sitk.Cast(mri, sitk.sitkFloat32), grid, T_mri_from_ct_rigid), device))
    femur_g = _to_tensor(resample(sitk.Cast(femur_mri, sitk.sitkFloat32), grid, T_mri_from_ct_rigid), device)
    weight = F_t.max_pool3d(femur_g, 7, stride=1, padding=3)  # femur + ~7 mm
    shape = fixed.shape[2:]
    n_ctrl = [max(2, int(round(s * options.deformable_spacing_mm / options.deformable_grid_mm))) for s in shape]
    v_ctrl = torch.zeros(1, 3, *n_ctrl, device=device, requires_grad=True)
    v0 = None
    if options.initial_velocity is not None:
        v0 = torch.as_tensor(options.initial_velocity, dtype=torch.float32, device=device)
        if tuple(v0.shape) != (3, *shape):
            from navsvc.errors import ConfigError

            raise ConfigError(f"initial_velocity: expected shape {(3, *shape)} (the deformable grid), "
                              f"got {tuple(v0.shape)}")
        v0 = v0[None]
    integrate = DVF2DDF(num_steps=7, mode="bilinear", padding_mode="zeros")
    from monai.networks.blocks import Warp

    warp = Warp(mode="bilinear", padding_mode="border")
    bending = BendingEnergyLoss(normalize=True)
    mind_fixed = mind_ssc(fixed).detach()

    def velocity() -> torch.Tensor:
        padded = F_t.pad(v_ctrl, [1] * 6)  # zero velocity on the region border
        v = F_t.interpolate(padded, size=shape, mode="trilinear", align_corners=True)
        return v if v0 is None else v + v0

    opt = torch.optim.Adam([v_ctrl], lr=options.deformable_lr)
    femur_w = femur_g[0, 0] > 0.5
    losses: list[float] = []
    for it in range(options.deformable_iterations):
        if cancel:
            cancel.check()
        opt.zero_grad()
        ddf = integrate(velocity())
        warped = warp(moving, ddf)
        sim = ((mind_ssc(warped) - mind_fixed).abs().mean(1, keepdim=True) * weight).sum() / weight.sum()
        jac = _jacobian(ddf)
        jtj = jac.transpose(-1, -2) @ jac - torch.eye(3, device=device)
        rigidity = (jtj**2).sum((-1, -2))[femur_w.nonzero(as_tuple=True)].mean() if femur_w.any() else torch.zeros((), device=device)
        loss = sim + options.deformable_smooth_weight * bending(ddf) + options.deformable_rigidity_weight * rigidity
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if it % 10 == 0:
            progress("deformable", it / options.deformable_iterations, f"iteration {it}, loss {losses[-1]:.4f}")
    with torch.no_grad():
        D, field_img = velocity_transform(velocity(), grid)
    T_mri_from_ct = T_mri_from_ct_rigid @ D
    T_ct_from_mri = D.inverse() @ rigid
    u_mm = np.linalg.norm(sitk.GetArrayViewFromImage(field_img), axis=-1)
    femur_np = femur_w.cpu().numpy()
    max_femur_mm = float(u_mm[femur_np].max()) if femur_np.any() else 0.0
    # acceptance: femur similarity up, surface fit not worse, small motion in the femur
    roi = sitk.BinaryDilate(femur_ct, [max(1, int(round(options.roi_margin_mm / s))) for s in ct.GetSpacing()])
    mi_rigid = qa.masked_mi(ct, mri, roi, T_mri_from_ct_rigid)
    mi_def = qa.masked_mi(ct, mri, roi, T_mri_from_ct)
    if surfaces is None:
        ct_bone = bone.segment_ct_bone(ct, options.threshold_for(ct.GetSpacing()))
        surfaces = (bone.label_surface(femur_mri, (1,)), bone.ct_bone_surface(ct, ct_bone))
    mri_surface, ct_surface = surfaces
    s_rigid, _ = qa.surface_distance_mm(mri_surface.points_mm[::4], rigid, ct_surface.points_mm)
    s_def, _ = qa.surface_distance_mm(mri_surface.points_mm[::4], T_ct_from_mri, ct_surface.points_mm)
    info = {"grid_size": list(grid.GetSize()), "control_points": n_ctrl, "iterations": options.deformable_iterations,
            "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
            "max_displacement_femur_mm": max_femur_mm, "max_displacement_mm": float(u_mm.max()),
            "mi_rigid": mi_rigid, "mi_deformable": mi_def,
            "surface_rigid_mm": s_rigid, "surface_deformable_mm": s_def, "device": device}
    reasons = []
    # a gain within noise is no gain: on the benchmark, fields accepted on a bare MI increase
    # (0.1-0.2 mm in the femur) moved single landmarks by up to 0.07 mm the wrong way
    if mi_def < mi_rigid * (1.0 + options.deformable_min_gain):
        reasons.append(f"femur MI did not improve by {100 * options.deformable_min_gain:.0f}% "
                       f"({mi_rigid:.4f} -> {mi_def:.4f})")
    if s_def > s_rigid - 0.01:
        reasons.append(f"femur surface distance did not fall ({s_rigid:.3f} -> {s_def:.3f} mm)")
    if max_femur_mm > options.deformable_max_femur_mm:
        reasons.append(f"displacement in the femur {max_femur_mm:.2f} mm > {options.deformable_max_femur_mm} mm")
    info["accepted"] = not reasons
    if reasons:
        keep.info = info
        keep.notes.append("deformable stage rejected, rigid result kept: " + "; ".join(reasons))
        return keep
    return DeformableOutput(True, T_ct_from_mri, T_mri_from_ct, field_img, info,
                            [f"deformable stage accepted: max displacement in the femur {max_femur_mm:.2f} mm"])
