"""Render tissue codes of the continuous model onto an image grid, with partial volume.

A *view* maps image points (N, 3, LPS mm in the image's frame) to tissue codes (N,)
(it knows the pose, distortion, chemical shift...). :func:`sample_codes` evaluates the
views at every voxel centre, finds the voxels where the code changes between
neighbours, and evaluates only those again at ``subsample`` sub-voxel points, so partial
volume costs little. Channels (intensities, labels) are then read through lookup tables.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray

from navsvc.imaging import lps_from_index_matrix
from phantoms.anatomy import NECROSIS_CODES, PELVIS_CODES, label_lut

#: image points (N, 3) -> (tissue codes (N,), margin to the nearest interface (N,) mm)
log = logging.getLogger(__name__)

View = Callable[[NDArray[np.float64]], tuple[NDArray[np.uint8], NDArray[np.float64]]]
#: a block is filled from its centre only if its margin exceeds this many half-diagonals
BLOCK_SAFETY = 1.5
BLOCK_MM = 3.0
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
    ni, nj, nk = image.GetSize()
    pts = np.empty((nk, nj, ni, 3), dtype=np.float64)
    pts[...] = m[:3, 3]
    pts += (np.arange(nk, dtype=np.float64)[:, None] * m[:3, 2])[:, None, None, :]
    pts += (np.arange(nj, dtype=np.float64)[:, None] * m[:3, 1])[None, :, None, :]
    pts += (np.arange(ni, dtype=np.float64)[:, None] * m[:3, 0])[None, None, :, :]
    return pts.reshape(-1, 3)


def affine_points(matrix: NDArray[np.float64], points: NDArray[np.float64]) -> NDArray[np.float64]:
    """``matrix[:3, :3] @ p + matrix[:3, 3]`` for (N, 3) points; faster than a (N,3)@(3,3) matmul."""
    out = np.empty_like(points)
    for r in range(3):
        out[:, r] = points[:, 0] * matrix[r, 0] + points[:, 1] * matrix[r, 1] + points[:, 2] * matrix[r, 2] + matrix[r, 3]
    return out


def _apply_view(view: View, pts: NDArray[np.float64], margins: bool = False):  # noqa: ANN202
    codes = np.empty(pts.shape[0], dtype=np.uint8)
    margin = np.empty(pts.shape[0], dtype=np.float64) if margins else None
    for a in range(0, pts.shape[0], CHUNK):
        c, m = view(pts[a:a + CHUNK])
        codes[a:a + CHUNK] = c
        if margin is not None:
            margin[a:a + CHUNK] = m
    return (codes, margin) if margins else codes


def _points_at(image: sitk.Image, flat: NDArray[np.intp]) -> NDArray[np.float64]:
    """LPS centres of the voxels with flat (k, j, i)-raveled indices."""
    ni, nj, nk = image.GetSize()
    k, rem = np.divmod(flat, ni * nj)
    j, i = np.divmod(rem, ni)
    return affine_points(lps_from_index_matrix(image), np.stack([i, j, k], axis=1).astype(np.float64))


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
    points per axis at the voxels where any view's code changes.

    Speed-up: the grid is cut into blocks of about ``BLOCK_MM``; a block whose centre lies
    farther than ``BLOCK_SAFETY`` half-diagonals from every tissue interface (the views'
    margins) takes its centre's codes; only the other blocks are evaluated voxel by voxel.
    Likewise a voxel is supersampled only if an interface may pass through it (margin below
    ``BLOCK_SAFETY`` voxel half-diagonals). ``BLOCK_SAFETY = inf`` turns both off.
    """
    size = np.array(image.GetSize())
    spacing = np.array(image.GetSpacing())
    shape = tuple(size[::-1])
    b = np.maximum(1, np.round(BLOCK_MM / spacing).astype(int))  # block size (i, j, k) in voxels
    nb = -(-size // b)
    half_diag = 0.5 * float(np.linalg.norm(b * spacing))
    bi, bj, bk = (np.arange(n) for n in nb)
    kk, jj, ii = np.meshgrid(bk, bj, bi, indexing="ij")
    centres_idx = np.stack([ii.ravel() * b[0], jj.ravel() * b[1], kk.ravel() * b[2]], 1) + (b - 1) / 2.0
    block_pts = affine_points(lps_from_index_matrix(image), centres_idx.astype(np.float64))
    uniform = np.ones(block_pts.shape[0], dtype=bool)
    block_codes = []
    for v in views:
        c, m = _apply_view(v, block_pts, margins=True)
        block_codes.append(c.reshape(nb[::-1]))
        uniform &= m > BLOCK_SAFETY * half_diag

    def expand(a: NDArray) -> NDArray:
        for ax, rep in enumerate(b[::-1]):
            a = np.repeat(a, rep, axis=ax)
        return a[: shape[0], : shape[1], : shape[2]]

    refine = np.flatnonzero(~expand(uniform.reshape(nb[::-1])))
    refine_pts = _points_at(image, refine)
    centre = []
    margin = np.full(shape, np.inf)
    for v, bc in zip(views, block_codes, strict=True):
        c = np.ascontiguousarray(expand(bc))
        codes_r, margin_r = _apply_view(v, refine_pts, margins=True)
        c.ravel()[refine] = codes_r
        margin.ravel()[refine] = np.minimum(margin.ravel()[refine], margin_r)
        centre.append(c)
    edge = np.zeros(shape, dtype=bool)
    for c in centre:
        edge |= _edges(c)
    # a voxel next to a code change is mixed only if an interface passes through it
    edge &= margin < BLOCK_SAFETY * 0.5 * float(np.linalg.norm(spacing))
    boundary = np.flatnonzero(edge)
    si, sj, sk = (int(x) for x in subsample)
    offs = np.stack(np.meshgrid(*[(np.arange(n) + 0.5) / n - 0.5 for n in (si, sj, sk)], indexing="ij"), -1)
    offs_lps = offs.reshape(-1, 3) @ lps_from_index_matrix(image)[:3, :3].T
    sub_pts = (_points_at(image, boundary)[:, None, :] + offs_lps[None]).reshape(-1, 3)
    sub = [_apply_view(v, sub_pts).reshape(boundary.size, -1) for v in views]
    log.debug("sampled %d voxels: %d refined, %d boundary", int(np.prod(shape)), refine.size, boundary.size)
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
