"""Attenuation volumes (mu in 1/mm) from the MRI segmentation, for DRR rendering.

The femur (and optionally the pelvis) of the label map becomes bone: a cortical shell of
``cortical_thickness_mm`` below the periosteal surface and trabecular bone inside, the depth
taken from a signed distance to the label surface (smooth, so thick MRI slices do not make
steps). A learned MRI-to-pseudo-CT model can replace this function later: anything that
returns a ``SimpleITK.Image`` of mu on an isotropic grid in the MRI frame plugs in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from navsvc.errors import InvalidLabelsError
from navsvc.imaging import LabelSpec, reference_grid

#: Linear attenuation at ~60 keV effective energy, 1/mm, in excess of the soft tissue (water) that the
#: bone displaces: a radiograph shows bone against tissue, so a bone-only DRR must render the
#: difference (cortical ~0.051 - 0.020, trabecular ~0.026 - 0.020). Rendering absolute mu made the
#: femur a bright solid whose edges are weaker than its inside and pulled the pose 2-8 mm off
#: on the phantoms' views.
MU_WATER_PER_MM = 0.020
MU_CORTICAL_PER_MM = 0.031
MU_TRABECULAR_PER_MM = 0.006


@dataclass(frozen=True)
class AttenuationOptions:
    spacing_mm: float = 1.0
    margin_mm: float = 8.0
    cortical_thickness_mm: float = 2.0
    mu_cortical_per_mm: float = MU_CORTICAL_PER_MM
    mu_trabecular_per_mm: float = MU_TRABECULAR_PER_MM
    include_pelvis: bool = False
    fov_taper_mm: float = 15.0


def _signed_distance_mm(mask: sitk.Image) -> sitk.Image:
    """Signed distance to the mask surface in mm (negative inside), on the mask's grid.

    The surface is taken halfway between the last voxel inside and the first outside (the mean of
    the mask's and its complement's Maurer maps, whose zero levels lie on voxel centres), so a
    label is neither shrunk nor grown by half a voxel."""
    def maurer(m: sitk.Image) -> sitk.Image:
        return sitk.SignedMaurerDistanceMap(m, insideIsPositive=False, squaredDistance=False, useImageSpacing=True)

    return 0.5 * (maurer(mask) - maurer(1 - mask))


def bone_attenuation(labels: sitk.Image, spec: LabelSpec = LabelSpec(),
                     options: AttenuationOptions = AttenuationOptions(),
                     structures: tuple[str, ...] | None = None) -> sitk.Image:
    """An isotropic float32 mu volume (1/mm) in the label map's frame, cropped to the femur's bounding box
    plus ``margin_mm``, of ``structures`` (``"femur"``, ``"pelvis"``; default the femur, and the pelvis
    with ``options.include_pelvis``)."""
    arr = sitk.GetArrayViewFromImage(labels)
    femur = (arr == spec.femur) | (arr == spec.necrosis)
    if not femur.any():
        raise InvalidLabelsError(f"segmentation has no femur (label {spec.femur}); cannot build an attenuation volume")
    if structures is None:
        structures = ("femur", "pelvis") if options.include_pelvis else ("femur",)
    unknown = set(structures) - {"femur", "pelvis"}
    if unknown or not structures:
        raise InvalidLabelsError(f"attenuation structures: expected 'femur' and/or 'pelvis', got {structures}")
    masks = {"femur": femur, "pelvis": arr == spec.pelvis}
    if "pelvis" in structures and not masks["pelvis"].any():
        raise InvalidLabelsError(f"segmentation has no pelvis (label {spec.pelvis}); cannot render the pelvis")
    # grid: the femur bounding box in the label grid's orientation, isotropic spacing
    kji = np.argwhere(femur)
    lo_ijk = kji.min(axis=0)[::-1].astype(float)
    hi_ijk = kji.max(axis=0)[::-1].astype(float)
    spacing = np.array(labels.GetSpacing())
    margin_vox = options.margin_mm / spacing
    lo_ijk -= margin_vox
    hi_ijk += margin_vox
    direction = np.array(labels.GetDirection()).reshape(3, 3)
    origin = np.array(labels.TransformContinuousIndexToPhysicalPoint(tuple(lo_ijk)))
    extent_mm = (hi_ijk - lo_ijk) * spacing
    size = np.maximum(2, np.ceil(extent_mm / options.spacing_mm).astype(int) + 1)
    grid = reference_grid(size.tolist(), [options.spacing_mm] * 3, origin.tolist(), direction.ravel().tolist())
    mu = np.zeros(size[::-1], dtype=np.float32)
    for name in structures:
        mask = masks[name]
        mask_img = sitk.GetImageFromArray(mask.astype(np.uint8))
        mask_img.CopyInformation(labels)
        sdf = sitk.Resample(_signed_distance_mm(mask_img), grid, sitk.Transform(), sitk.sitkLinear, 1e3,
                            sitk.sitkFloat32)
        depth = -sitk.GetArrayFromImage(sdf)  # mm below the surface, negative outside
        inside = np.clip(depth + 0.5 * options.spacing_mm, 0.0, options.spacing_mm) / options.spacing_mm
        cortical = np.clip(options.cortical_thickness_mm - depth, 0.0, options.spacing_mm) / options.spacing_mm
        value = inside * (options.mu_trabecular_per_mm
                          + (options.mu_cortical_per_mm - options.mu_trabecular_per_mm) * cortical)
        mu = np.maximum(mu, value.astype(np.float32))
    if options.fov_taper_mm > 0:
        # the MRI field of view cuts the femur (shaft) with a hard face that no radiograph shows:
        # fade the attenuation out over ``fov_taper_mm`` towards the label map's edges
        idx = np.indices(size[::-1]).reshape(3, -1)[::-1].T.astype(np.float64)
        pts = idx @ (direction * options.spacing_mm).T + origin
        ijk = (pts - np.array(labels.GetOrigin())) @ np.linalg.inv(direction * spacing).T
        dist_mm = np.min(np.concatenate([(ijk + 0.5) * spacing, (np.array(labels.GetSize()) - 0.5 - ijk) * spacing],
                                        axis=1), axis=1)
        mu *= np.clip(dist_mm / options.fov_taper_mm, 0.0, 1.0).reshape(mu.shape).astype(np.float32)
    out = sitk.GetImageFromArray(mu)
    out.CopyInformation(grid)
    return out
