"""Contracts of the helpers that make the registration cheaper (same results, less work)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from navsvc.imaging import index_from_lps, lps_from_index
from navsvc.registration.bone import fill_holes
from navsvc.registration.rigid import metal_exclusion, mi_region, rank_grid


@pytest.mark.parametrize("density", [0.3, 0.5, 0.7])
def test_fill_holes_equals_ndimage(density):
    rng = np.random.default_rng(int(density * 10))
    mask = rng.random((9, 14, 16)) < density
    assert (fill_holes(mask) == ndimage.binary_fill_holes(mask)).all()
    per_slice = np.stack([ndimage.binary_fill_holes(s) for s in mask])
    assert (fill_holes(mask, in_plane=True) == per_slice).all()


def test_fill_holes_fills_enclosed_marrow_only():
    shell = np.zeros((7, 9, 9), bool)
    shell[1:6, 1:8, 1:8] = True
    shell[2:5, 3:6, 3:6] = False  # marrow enclosed in 3-D
    open_top = shell.copy()
    open_top[0:3, 4, 4] = False  # a channel to the border along z
    assert fill_holes(shell)[3, 4, 4]
    assert not fill_holes(open_top)[3, 4, 4]
    assert fill_holes(open_top, in_plane=True)[3, 4, 4]  # closed within its slice


def _ct(spacing_mm: float, metal: bool) -> sitk.Image:
    n = int(round(60 / spacing_mm))
    arr = np.full((n, n, n), -100.0, np.float32)
    c = np.indices(arr.shape).transpose(1, 2, 3, 0) * spacing_mm
    arr[np.linalg.norm(c - 30.0, axis=-1) < 10.0] = 700.0
    if metal:
        arr[np.linalg.norm(c - np.array([30.0, 30.0, 45.0]), axis=-1) < 2.0] = 3000.0
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing([spacing_mm] * 3)
    return img


def test_rank_grid_is_coarse_and_keeps_metal_and_region_volume():
    fine = _ct(0.8, metal=True)
    grid = rank_grid(fine, 2.0)
    assert grid.ct.GetSpacing() == pytest.approx((2.0, 2.0, 2.0))
    assert grid.min_voxels == round(15000 * 0.8**3 / 8.0)
    # the metal and its 6 mm margin are carried onto the coarse grid
    fine_kji = np.argwhere(sitk.GetArrayFromImage(metal_exclusion(fine)) > 0)
    assert len(fine_kji) > 0
    coarse_ijk = np.round(index_from_lps(grid.ct, lps_from_index(fine, fine_kji[:, ::-1].astype(float)))).astype(int)
    coarse_ijk = np.clip(coarse_ijk, 0, np.array(grid.ct.GetSize()) - 1)
    exclude = sitk.GetArrayViewFromImage(grid.exclude)
    # covers the original (but for a few voxels at its 6.4 mm edge: the coarse ball is 8 mm)
    assert exclude[coarse_ijk[:, 2], coarse_ijk[:, 1], coarse_ijk[:, 0]].mean() > 0.99
    assert exclude.sum() * 8.0 < 4.0 * len(fine_kji) * 0.8**3  # and not much more
    # without metal, the femur region on the coarse grid covers about the physical volume of the fine one
    fine = _ct(0.8, metal=False)
    grid = rank_grid(fine, 2.0)
    femur_fine = sitk.Cast(sitk.Cast(fine, sitk.sitkFloat32) > 500, sitk.sitkUInt8)
    # the same femur on the coarse grid, as the pipeline maps it (nearest neighbour)
    femur_coarse = sitk.Resample(femur_fine, grid.ct, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    v_fine = sitk.GetArrayFromImage(mi_region(femur_fine, fine)).sum() * 0.8**3
    v_coarse = sitk.GetArrayFromImage(mi_region(femur_coarse, grid.ct, min_voxels=grid.min_voxels,
                                                    exclude=grid.exclude)).sum() * 8.0
    assert v_coarse == pytest.approx(v_fine, rel=0.15)
    # a CT at the rank spacing or coarser is used as it is
    assert rank_grid(_ct(2.0, metal=False), 2.0).ct.GetSize() == _ct(2.0, metal=False).GetSize()
