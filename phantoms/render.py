"""Render tissue codes of the continuous model onto an image grid, with partial volume.

A *view* maps image points (N, 3, LPS mm in the image's frame) to tissue codes (N,)
(it knows the pose, distortion, chemical shift...). :func:`sample_codes` evaluates the
views at every voxel centre, finds the voxels where the code changes between
neighbours, and evaluates only those again at ``subsample`` sub-voxel points, so partial
volume costs little. Channels (intensities, labels) are then read through lookup tables.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray

from navsvc.imaging import lps_from_index_matrix
from phantoms.anatomy import NECROSIS_CODES, PELVIS_CODES, label_lut

View = Callable[[NDArray[np.float64]], NDArray[np.uint8]]
CHUNK = 250_000


def reference_image(size_ijk: Sequence[int], spacing_mm: Sequence[float], centre_lps: Sequence[float],
                    direction: NDArray[np.float64]) -> sitk.Image:
    """An empty UInt8 grid whose centre lies at ``centre_lps`` (origin computed from it)."""
    img = sitk.Image([int(s) for s in size_ijk], sitk.sitkUInt8)
    img.SetSpacing([float(s) for s in spacing_mm])
    img.SetDirection(np.asarray(direction, dtype=np.float64).ravel().tolist())
    half = (np.array(size_ijk, dtype=np.float64) - 1.0) / 2.0
    d = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    origin = np.asarray(centre_lps, dtype=np.float64) - d @ (half * np.array(spacing_mm))
    img.SetOrigin(origin.tolist())
    return img


def voxel_points(image: sitk.Image) -> NDArray[np.float64]:
    """LPS centres of all voxels, (Z*Y*X, 3) in numpy (k, j, i) raveled order."""
    m = lps_from_index_matrix(image)
    i, j, k = (np.arange(n, dtype=np.float64) for n in image.GetSize())
    kk, jj, ii = np.meshgrid(k, j, i, indexing="ij")
    idx = np.stack([ii.ravel(), jj.ravel(), kk.ravel()], axis=1)
    return idx @ m[:3, :3].T + m[:3, 3]


def _apply_view(view: View, pts: NDArray[np.float64]) -> NDArray[np.uint8]:
    out = np.empty(pts.shape[0], dtype=np.uint8)
    for a in range(0, pts.shape[0], CHUNK):
        out[a:a + CHUNK] = view(pts[a:a + CHUNK])
    return out


def _edges(codes: NDArray[np.uint8]) -> NDArray[np.bool_]:
    """Voxels whose code differs from a face neighbour's."""
    e = np.zeros(codes.shape, dtype=bool)
    for ax in range(codes.ndim):
        a = np.moveaxis(codes, ax, 0)
        ea = np.moveaxis(e, ax, 0)
        diff = a[1:] != a[:-1]
        ea[1:] |= diff
        ea[:-1] |= diff
    return e


@dataclass
class SampledCodes:
    """Tissue codes at voxel centres ``centre[v]`` (Z, Y, X) for each view v, and at the
    sub-voxel points ``sub[v]`` (M, S) of the M boundary voxels ``boundary`` (flat indices)."""

    centre: list[NDArray[np.uint8]]
    boundary: NDArray[np.intp]
    sub: list[NDArray[np.uint8]]

    def channel(self, luts: Sequence[NDArray[np.float64]]) -> NDArray[np.float32]:
        """Sum over views of ``lut_v[code]``, averaged over sub-voxel points (partial volume).
        ``luts[v]`` goes with view v; views beyond ``len(luts)`` are not used."""
        if not 0 < len(luts) <= len(self.centre):
            raise ValueError(f"expected 1..{len(self.centre)} lookup tables, got {len(luts)}")
        out = np.zeros(self.centre[0].shape, dtype=np.float64)
        for lut, c in zip(luts, self.centre[: len(luts)], strict=True):
            out += lut[c]
        if self.boundary.size:
            pv = np.zeros(self.boundary.size, dtype=np.float64)
            for lut, s in zip(luts, self.sub[: len(luts)], strict=True):
                pv += lut[s].mean(axis=1)
            out.ravel()[self.boundary] = pv
        return out.astype(np.float32)

    def labels(self, view: int = 0) -> NDArray[np.uint8]:
        """Label map (0 bg, 1 femur, 2 necrosis, 3 pelvis): at boundary voxels the label whose
        volume fraction is > 0.5, ties going to the centre's label (necrosis counted inside the femur)."""
        lut = label_lut()
        out = lut[self.centre[view]].copy()
        if self.boundary.size:
            s = self.sub[view]
            nec = np.isin(s, NECROSIS_CODES).mean(axis=1)
            fem = (lut[s] == 1).mean(axis=1) + nec
            pel = np.isin(s, PELVIS_CODES).mean(axis=1)
            centre = out.ravel()[self.boundary]
            lab = np.zeros(s.shape[0], dtype=np.uint8)
            # majority per label; an exact tie (fraction 0.5) keeps the voxel centre's label
            for value, frac in ((3, pel), (1, fem), (2, nec)):
                lab[(frac > 0.5) | ((frac == 0.5) & _member(centre, value))] = value
            out.ravel()[self.boundary] = lab
        return out


def _member(labels: NDArray[np.uint8], value: int) -> NDArray[np.bool_]:
    """Whether a voxel labelled ``labels`` counts as ``value`` (necrosis counts as femur)."""
    return (labels == value) | ((value == 1) & (labels == 2))


def sample_codes(image: sitk.Image, views: Sequence[View], subsample: Sequence[int]) -> SampledCodes:
    """Evaluate ``views`` on the grid of ``image`` with ``subsample`` = (si, sj, sk) sub-voxel
    points per axis at the voxels where any view's code changes."""
    pts = voxel_points(image)
    shape = image.GetSize()[::-1]
    centre = [_apply_view(v, pts).reshape(shape) for v in views]
    edge = np.zeros(shape, dtype=bool)
    for c in centre:
        edge |= _edges(c)
    boundary = np.flatnonzero(edge)
    si, sj, sk = (int(s) for s in subsample)
    offs = np.stack(np.meshgrid(*[(np.arange(n) + 0.5) / n - 0.5 for n in (si, sj, sk)], indexing="ij"), -1)
    offs_lps = offs.reshape(-1, 3) @ lps_from_index_matrix(image)[:3, :3].T
    sub_pts = (pts[boundary][:, None, :] + offs_lps[None]).reshape(-1, 3)
    sub = [_apply_view(v, sub_pts).reshape(boundary.size, -1) for v in views]
    return SampledCodes(centre, boundary, sub)


def to_image(array_zyx: NDArray, reference: sitk.Image, pixel_type: int | None = None) -> sitk.Image:
    img = sitk.GetImageFromArray(array_zyx)
    img.CopyInformation(reference)
    return sitk.Cast(img, pixel_type) if pixel_type is not None else img


def polynomial_field(points: NDArray[np.float64], centre: NDArray[np.float64], scale_mm: float,
                     coeffs: NDArray[np.float64]) -> NDArray[np.float64]:
    """Smooth second-order polynomial of the normalised coordinates (10 coefficients)."""
    q = (points - centre) / scale_mm
    x, y, z = q[:, 0], q[:, 1], q[:, 2]
    basis = np.stack([np.ones_like(x), x, y, z, x * x, y * y, z * z, x * y, x * z, y * z], axis=1)
    return basis @ coeffs
