"""MRI (T1-like, fluid-sensitive STIR-like) and CT (Hounsfield units) renderers.

Each renders the continuous :class:`~phantoms.anatomy.HipModel` directly on its own grid
and in its own pose; nothing is resampled from another rendered image.

MRI: the anatomy is seen through the gradient-nonlinearity distortion (a point at true
position x appears at ``distort(x)``); with chemical shift on, the fat signal of x
appears at ``distort(x) + shift`` along the readout axis. T1 = water part + fat part.
The label map uses the water image (no chemical shift), i.e. it segments the bone as it
appears in the image.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray

from phantoms import pose as pose_mod
from phantoms.anatomy import N_TISSUES, HipModel, Tissue
from phantoms.render import affine_points, polynomial_field, sample_codes, to_image, voxel_points

F64 = NDArray[np.float64]

FAT_WATER_PPM = 3.5
GYROMAGNETIC_MHZ_PER_T = 42.577


def _lut(values: dict[Tissue, float]) -> F64:
    lut = np.zeros(N_TISSUES, dtype=np.float64)
    for t, v in values.items():
        lut[t] = v
    return lut


#: T1-weighted signal (arbitrary units) and fat fraction of each tissue's signal.
T1 = _lut({Tissue.SKIN: 380, Tissue.FAT: 950, Tissue.MUSCLE: 330, Tissue.CORTICAL: 25,
           Tissue.TRABECULAR: 640, Tissue.MARROW: 860, Tissue.NECROSIS: 260, Tissue.RIM: 50,
           Tissue.OEDEMA: 380, Tissue.PELVIS_CORTICAL: 25, Tissue.PELVIS_TRABECULAR: 600,
           Tissue.JOINT: 280})
FAT_FRACTION = _lut({Tissue.SKIN: 0.2, Tissue.FAT: 0.95, Tissue.MUSCLE: 0.05, Tissue.TRABECULAR: 0.75,
                     Tissue.MARROW: 0.9, Tissue.NECROSIS: 0.3, Tissue.RIM: 0.2, Tissue.OEDEMA: 0.4,
                     Tissue.PELVIS_TRABECULAR: 0.75})
#: STIR / T2 fat-saturated: fluid and oedema bright, fat dark.
STIR = _lut({Tissue.SKIN: 160, Tissue.FAT: 40, Tissue.MUSCLE: 190, Tissue.CORTICAL: 15,
             Tissue.TRABECULAR: 90, Tissue.MARROW: 60, Tissue.NECROSIS: 520, Tissue.RIM: 60,
             Tissue.OEDEMA: 720, Tissue.PELVIS_CORTICAL: 15, Tissue.PELVIS_TRABECULAR: 90,
             Tissue.JOINT: 850})


def ct_lut(cortical_hu: float, trabecular_hu: float) -> F64:
    """Hounsfield units of each tissue."""
    return _lut({Tissue.AIR: -1000, Tissue.SKIN: 30, Tissue.FAT: -100, Tissue.MUSCLE: 45,
                 Tissue.CORTICAL: cortical_hu, Tissue.TRABECULAR: trabecular_hu, Tissue.MARROW: 20,
                 Tissue.NECROSIS: trabecular_hu - 40, Tissue.RIM: 750, Tissue.OEDEMA: trabecular_hu + 10,
                 Tissue.PELVIS_CORTICAL: cortical_hu - 150, Tissue.PELVIS_TRABECULAR: trabecular_hu - 30,
                 Tissue.JOINT: 90})


#: texture amplitude (per unit texture) of the cancellous tissues: CT in HU, MRI as a
#: fraction of the tissue's signal
TEXTURED = (Tissue.TRABECULAR, Tissue.OEDEMA, Tissue.NECROSIS, Tissue.PELVIS_TRABECULAR)
CT_TEXTURE_HU = 45.0
MRI_TEXTURE_FRACTION = 0.07


def add_bone_texture(values_zyx: NDArray, codes_zyx: NDArray[np.uint8], grid: sitk.Image, model: HipModel,
                     to_anatomy: Any, amplitude: NDArray | float) -> None:
    """Add ``amplitude * texture`` in place at voxels whose centre is cancellous bone.

    ``to_anatomy(points, is_femur)`` maps image points (N, 3) to the anatomy frame of their
    bone; ``amplitude`` is a scalar or a per-voxel array of the same shape as ``values_zyx``.
    """
    from phantoms.anatomy import FEMUR_CODES
    from phantoms.render import _points_at

    flat = np.flatnonzero(np.isin(codes_zyx, TEXTURED))
    if flat.size == 0:
        return
    is_femur = np.isin(codes_zyx.ravel()[flat], FEMUR_CODES)
    x = to_anatomy(_points_at(grid, flat), is_femur)
    amp = amplitude if np.isscalar(amplitude) else np.asarray(amplitude).ravel()[flat]
    values_zyx.ravel()[flat] += amp * model.texture(x)


def chemical_shift_mm(field_t: float, bandwidth_hz_per_px: float, readout_spacing_mm: float) -> float:
    """Fat displacement along the readout axis: (3.5 ppm * Larmor) / pixel bandwidth * spacing."""
    return FAT_WATER_PPM * GYROMAGNETIC_MHZ_PER_T * field_t / bandwidth_hz_per_px * readout_spacing_mm


def render_mri(model: HipModel, grid: sitk.Image, mri: dict[str, Any], rng: np.random.Generator,
               with_fluid: bool = True) -> tuple[sitk.Image, sitk.Image | None, sitk.Image]:
    """(T1, fluid or None, labels) on ``grid`` (the MRI frame). ``mri`` holds the acquisition
    parameters: subsample, distortion, chemical shift, noise, bias (see the presets)."""
    dist = mri.get("distortion")
    views = [lambda y: model.classify_with_margin(pose_mod.undistort(y, dist))]
    shift = float(mri.get("chemical_shift_mm", 0.0))
    if shift:
        d = np.array(grid.GetDirection()).reshape(3, 3)[:, mri["readout_axis"]]
        shift_vec = shift * d
        views.append(lambda y: model.classify_with_margin(pose_mod.undistort(y - shift_vec, dist)))
        t1_luts = [T1 * (1 - FAT_FRACTION), T1 * FAT_FRACTION]
    else:
        t1_luts = [T1]
    codes = sample_codes(grid, views, mri["subsample"])
    labels = codes.labels(0)
    pts = voxel_points(grid)
    bias = np.exp(polynomial_field(pts, pts.mean(0), 100.0, np.asarray(mri["bias_coefficients"])))
    bias = bias.reshape(labels.shape)
    sigma = float(mri["noise_sigma"])

    def to_anatomy(y: F64, is_femur: NDArray[np.bool_]) -> F64:
        return pose_mod.undistort(y, dist)

    t1_clean = codes.channel(t1_luts)
    add_bone_texture(t1_clean, codes.centre[0], grid, model, to_anatomy, MRI_TEXTURE_FRACTION * t1_clean)
    t1 = _rician(t1_clean * bias, sigma, rng)
    fluid = None
    if with_fluid:
        fluid_clean = codes.channel([STIR])
        add_bone_texture(fluid_clean, codes.centre[0], grid, model, to_anatomy, MRI_TEXTURE_FRACTION * fluid_clean)
        fluid = _rician(fluid_clean * bias, sigma * 0.6, rng)
    ref = grid
    return (to_image(t1, ref), None if fluid is None else to_image(fluid, ref),
            to_image(labels, ref, sitk.sitkUInt8))


def _rician(signal: NDArray[np.float32], sigma: float, rng: np.random.Generator) -> NDArray[np.float32]:
    if sigma <= 0:
        return signal.astype(np.float32)
    n1 = rng.normal(scale=sigma, size=signal.shape)
    n2 = rng.normal(scale=sigma, size=signal.shape)
    return np.sqrt((signal + n1) ** 2 + n2**2).astype(np.float32)


def ct_views(model: HipModel, T_ct_from_mri_pelvis: Any, T_ct_from_mri_femur: Any, pose: dict[str, Any]):  # noqa: ANN201
    """The view of the intraop scene: CT points -> (tissue codes, margins), each structure in its pose."""
    inv_p = T_ct_from_mri_pelvis.inverse().matrix
    inv_f = T_ct_from_mri_femur.inverse().matrix

    def view(p: F64) -> tuple[NDArray[np.uint8], F64]:
        xp = affine_points(inv_p, p)
        xf = affine_points(inv_f, p)
        xs = pose_mod.soft_tissue_points(p, xp, xf, pose, model.H)
        return model.classify_with_margin(xf, xp, xs)

    def to_anatomy(p: F64, is_femur: NDArray[np.bool_]) -> F64:
        return np.where(is_femur[:, None], affine_points(inv_f, p), affine_points(inv_p, p))

    view.to_anatomy = to_anatomy  # type: ignore[attr-defined]
    return view


def render_ct(model: HipModel, grid: sitk.Image, view, ct: dict[str, Any],  # noqa: ANN001
              rng: np.random.Generator) -> tuple[sitk.Image, sitk.Image]:
    """(CT in HU as Int16, true labels on the CT grid). ``ct``: subsample, HU values, noise,
    cupping, truncated field of view (cone-beam)."""
    codes = sample_codes(grid, [view], ct["subsample"])
    labels = codes.labels(0)
    hu = codes.channel([ct_lut(ct["cortical_hu"], ct["trabecular_hu"])]).astype(np.float64)
    if hasattr(view, "to_anatomy"):
        add_bone_texture(hu, codes.centre[0], grid, model, view.to_anatomy, CT_TEXTURE_HU)
    pts = voxel_points(grid).reshape(*hu.shape, 3)
    centre = np.asarray(ct["axial_centre_mm"], dtype=np.float64)
    rho = np.linalg.norm(pts[..., :2] - centre[:2], axis=-1)
    if ct.get("cupping_hu", 0.0):
        # beam hardening: the centre of the body reads darker than its edge
        body = hu > -500
        hu -= body * ct["cupping_hu"] * np.clip(1.0 - (rho / ct["cupping_radius_mm"]) ** 2, 0.0, 1.0)
    if ct.get("noise_hu", 0.0):
        hu += rng.normal(scale=ct["noise_hu"], size=hu.shape)
    r_fov = ct.get("fov_radius_mm")
    if r_fov:
        fov_c = np.asarray(ct["fov_centre_mm"], dtype=np.float64)
        rho = np.linalg.norm(pts[..., :2] - fov_c[:2], axis=-1)
        # cone-beam: reconstruction cylinder; truncation brightens its edge, nothing outside
        hu += 180.0 * np.clip(rho / r_fov, 0, 1) ** 8
        hu[rho > r_fov] = -1000.0
    hu = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    return to_image(hu, grid), to_image(labels, grid, sitk.sitkUInt8)
