"""Bone in the CT (HU threshold + connected components) and bone surfaces as point clouds.

Surfaces are sub-voxel: voxels next to the iso-level are moved along the intensity gradient
onto the level (one Newton step), which removes the voxel staircase of thick MRI slices
and of coarse CT grids. Normals point out of the bone. All points are LPS mm.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray
from scipy import ndimage

from navsvc.imaging import LabelSpec, index_from_lps, lps_from_index

log = logging.getLogger(__name__)

F = NDArray[np.float64]


@dataclass(frozen=True)
class Surface:
    """Points (N, 3) and outward unit normals (N, 3) in LPS mm, in the frame of their image."""

    points_mm: F
    normals: F

    def __len__(self) -> int:
        return len(self.points_mm)


def isosurface(image: sitk.Image, level: float, *, keep_zyx: NDArray[np.bool_] | None = None) -> Surface:
    """Sub-voxel points where ``image`` crosses ``level`` (bone = values above ``level``).

    ``keep_zyx`` restricts the result to voxels where it is True (same grid as ``image``).
    """
    arr = sitk.GetArrayFromImage(image).astype(np.float64)
    above = arr >= level
    edge = np.zeros_like(above)
    for axis in range(3):
        diff = np.diff(above, axis=axis)
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis] = slice(0, -1)
        hi[axis] = slice(1, None)
        edge[tuple(lo)] |= diff
        edge[tuple(hi)] |= diff
    if keep_zyx is not None:
        edge &= keep_zyx
    g_k, g_j, g_i = np.gradient(arr)
    kji = np.argwhere(edge)
    if len(kji) == 0:
        return Surface(np.zeros((0, 3)), np.zeros((0, 3)))
    grad_ijk = np.stack([g_i[edge], g_j[edge], g_k[edge]], axis=1)
    d = np.array(image.GetDirection()).reshape(3, 3)
    s = np.array(image.GetSpacing())
    # f(p) with p = D S idx + o  ->  grad_p = D S^-1 grad_idx
    grad_lps = grad_ijk @ (d / s[None, :]).T
    norm2 = np.sum(grad_lps**2, axis=1)
    ok = norm2 > 1e-12
    pts = lps_from_index(image, kji[:, ::-1].astype(np.float64))
    step = ((arr[edge] - level) / np.where(ok, norm2, 1.0))[:, None] * grad_lps
    # a Newton step beyond one voxel means a flat gradient: keep the voxel centre
    step_len = np.linalg.norm(step, axis=1)
    ok &= step_len < float(s.max())
    pts = np.where(ok[:, None], pts - step, pts)
    normals = -grad_lps / np.sqrt(np.where(ok, norm2, 1.0))[:, None]
    return Surface(pts[ok], normals[ok])


def smooth_mask(mask: sitk.Image, sigma_mm: float | tuple[float, float, float]) -> sitk.Image:
    """A binary mask as a float image in [0, 1], Gaussian-smoothed (``sigma_mm`` per axis)."""
    img = sitk.Cast(mask > 0, sitk.sitkFloat32)
    sig = [sigma_mm] * 3 if np.isscalar(sigma_mm) else list(sigma_mm)  # type: ignore[arg-type]
    return sitk.SmoothingRecursiveGaussian(img, [float(x) for x in sig])


def label_surface(labels: sitk.Image, values: tuple[int, ...], spacing_mm: float = 1.0) -> Surface:
    """The outer surface of the union of ``values`` in a label map, sub-voxel, LPS mm.

    The mask is resampled onto an isotropic ``spacing_mm`` grid (same direction) after a
    Gaussian smoothing of about half a voxel along each axis, which turns the staircase of
    thick slices into a smooth surface; the surface is its 0.5 level.
    """
    arr = np.isin(sitk.GetArrayViewFromImage(labels), values).astype(np.uint8)
    mask = sitk.GetImageFromArray(arr)
    mask.CopyInformation(labels)
    sigma = tuple(0.45 * s for s in labels.GetSpacing())
    # cut before smoothing (cheaper; 6 voxels = 13 sigma of zeros keep the values): 3 voxels kept
    box = crop_to_mask(mask, arr > 0, margin_vox=6)
    soft = smooth_mask(box, sigma)  # type: ignore[arg-type]
    soft = crop_to_mask(soft, sitk.GetArrayViewFromImage(box) > 0, margin_vox=3)
    iso = _isotropic(soft, spacing_mm)
    return isosurface(iso, 0.5)


def _isotropic(image: sitk.Image, spacing_mm: float) -> sitk.Image:
    sp = np.array(image.GetSpacing())
    size = np.array(image.GetSize())
    new_size = np.maximum(1, np.round(size * sp / spacing_mm)).astype(int)
    d = np.array(image.GetDirection()).reshape(3, 3)
    origin = np.array(image.GetOrigin()) + d @ ((spacing_mm - sp) / 2.0)
    ref = sitk.Image([int(v) for v in new_size], sitk.sitkFloat32)
    ref.SetSpacing([spacing_mm] * 3)
    ref.SetOrigin(origin.tolist())
    ref.SetDirection(image.GetDirection())
    return sitk.Resample(image, ref, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)


def crop_to_mask(image: sitk.Image, mask_zyx: NDArray[np.bool_], margin_vox: int = 2) -> sitk.Image:
    """Crop ``image`` to the bounding box of ``mask_zyx`` plus a margin (geometry kept)."""
    if not mask_zyx.any():
        return image
    kji = np.argwhere(mask_zyx)
    lo = np.maximum(kji.min(0) - margin_vox, 0)
    hi = np.minimum(kji.max(0) + margin_vox + 1, mask_zyx.shape)
    lo_ijk = [int(v) for v in lo[::-1]]
    size_ijk = [int(v) for v in (hi - lo)[::-1]]
    return sitk.RegionOfInterest(image, size_ijk, lo_ijk)


def fill_holes(mask_zyx: NDArray[np.bool_], *, in_plane: bool = False) -> NDArray[np.bool_]:
    """``scipy.ndimage.binary_fill_holes`` of a 3-D mask (``in_plane``: of every axial slice
    ``mask_zyx[k]`` on its own), the same result from one connected-component labelling.

    Holes are background not connected (through faces: 6-, or in a slice 4-neighbours) to the
    border of the volume (``in_plane``: to the edge of its slice); ndimage's iterative
    dilation takes seconds on a 0.8 mm CT, the labelling a fraction.
    """
    mask = np.asarray(mask_zyx, dtype=bool)
    if in_plane:
        structure = np.zeros((3, 3, 3), bool)
        structure[1] = ndimage.generate_binary_structure(2, 1)
    else:
        structure = ndimage.generate_binary_structure(3, 1)
    lab, n = ndimage.label(~mask, structure=structure)
    if in_plane:
        border = [lab[:, 0, :], lab[:, -1, :], lab[:, :, 0], lab[:, :, -1]]
    else:
        border = [lab[0], lab[-1], lab[:, 0, :], lab[:, -1, :], lab[:, :, 0], lab[:, :, -1]]
    outside = np.zeros(n + 1, bool)
    for face in border:
        outside[face.ravel()] = True
    outside[0] = False  # label 0 = the mask itself
    return ~outside[lab]


def crop_box(image: sitk.Image, box: tuple[NDArray[np.int64], NDArray[np.int64]] | None) -> sitk.Image:
    """``image`` cut to the index box (lo, hi exclusive; i, j, k), geometry kept; None: as is."""
    if box is None:
        return image
    lo, hi = box
    return sitk.RegionOfInterest(image, [int(v) for v in hi - lo], [int(v) for v in lo])


def segment_ct_bone(
    ct: sitk.Image,
    threshold_hu: float = 250.0,
    min_component_ml: float = 2.0,
    fill: str = "3d",
) -> sitk.Image:
    """Bone mask (UInt8, CT grid) from HU: threshold, fill enclosed marrow, keep big components.

    ``fill="3d"``: marrow (HU below the threshold) enclosed by cortex is filled in 3-D with
    the first and last slices capped, so a femur cut by the field of view is still filled
    while a joint space (open to soft tissue) stays empty -- the mask for bone surfaces.
    ``fill="slices"``: every axial slice is hole-filled as well, which also fills marrow
    behind a cortex gap (thin cortex on a coarse grid) -- the mask for volume overlap (Dice).
    Components smaller than ``min_component_ml`` (metal streaks, calcifications, the table)
    are dropped. Metal (screws) is above the threshold and stays part of its bone.
    """
    hu = sitk.GetArrayViewFromImage(ct)
    bone = hu >= threshold_hu
    caps = fill_holes(np.stack([bone[0], bone[-1]]), in_plane=True)
    padded = np.concatenate([caps[:1], bone, caps[1:]], axis=0)
    filled = fill_holes(padded)[1:-1]
    if fill == "slices":
        filled = fill_holes(filled, in_plane=True)
    lab, n = ndimage.label(filled, structure=ndimage.generate_binary_structure(3, 1))
    voxel_ml = float(np.prod(ct.GetSpacing())) / 1000.0
    if n:
        counts = np.bincount(lab.ravel())
        keep = np.nonzero(counts * voxel_ml >= min_component_ml)[0]
        keep = keep[keep != 0]
        filled = np.isin(lab, keep)
    out = sitk.GetImageFromArray(filled.astype(np.uint8))
    out.CopyInformation(ct)
    log.debug("CT bone: %d components, %.1f ml kept", n, filled.sum() * voxel_ml)
    return out


def ct_bone_surface(ct: sitk.Image, bone_mask: sitk.Image) -> Surface:
    """Outer bone surface of the CT: the 0.5 level of the bone mask smoothed by half a voxel.

    The mask (HU threshold, marrow filled) gives the periosteal surface only, complete even
    where a thin cortex is partial-volumed below any fixed HU level on a coarse grid; the
    smoothing makes it sub-voxel. ``ct`` fixes the grid (kept for the signature's clarity).
    """
    sigma = [0.5 * float(s) for s in bone_mask.GetSpacing()]
    # cut to the bone's box first (6 voxels = 12 sigma of zeros around it keep the values)
    box = crop_to_mask(bone_mask, sitk.GetArrayViewFromImage(bone_mask) > 0, margin_vox=6)
    return isosurface(smooth_mask(box, tuple(sigma)), 0.5)  # type: ignore[arg-type]


def exclude_near(surface: Surface, mask: sitk.Image, distance_mm: float) -> Surface:
    """Drop surface points closer than ``distance_mm`` to a binary ``mask`` (e.g. the femoral
    head's joint surface next to the pelvis label, which a CT at 1-3 mm cannot separate)."""
    m = sitk.Cast(mask > 0, sitk.sitkUInt8)
    if len(surface) == 0 or not sitk.GetArrayViewFromImage(m).any():
        return surface
    dist = sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(m, insideIsPositive=False, squaredDistance=False,
                                                              useImageSpacing=True))
    idx = np.round(index_from_lps(mask, surface.points_mm)).astype(int)
    size = np.array(mask.GetSize())
    inside = np.all((idx >= 0) & (idx < size), axis=1)
    d = np.full(len(surface), np.inf)
    d[inside] = dist[idx[inside, 2], idx[inside, 1], idx[inside, 0]]
    keep = d >= distance_mm
    return Surface(surface.points_mm[keep], surface.normals[keep])


def femur_values(spec: LabelSpec) -> tuple[int, int]:
    """Label values that make up the femur (necrosis is femur)."""
    return (spec.femur, spec.necrosis)
