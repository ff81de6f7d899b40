"""The planner on real anatomy: the femur masks of a real pelvic CT (3 mm voxels, see
../shared/data/README.md) with a synthetic lesion in each femoral head. The side comes from
the file names (femur_left / femur_right), distances from nearest-voxel lookups in the mask,
independently of the planner's distance fields."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from navsvc.imaging import index_from_lps, voxel_centers_lps
from planning import PlannerOptions, check_plan, plan_automatic
from planning.geometry import bone_fields, femur_anatomy

TOL_MM = 1.5  # half the 3 mm voxel


def _case(real_ct_dir, side):
    ct = sitk.ReadImage(str(real_ct_dir / "example_ct.nii.gz"), sitk.sitkFloat32)
    femur = sitk.GetArrayFromImage(sitk.ReadImage(str(real_ct_dir / f"femur_{side}.nii.gz"))) > 0.5
    hip = sitk.GetArrayFromImage(sitk.ReadImage(str(real_ct_dir / f"hip_{side}.nii.gz"))) > 0.5
    depth = ndimage.distance_transform_edt(femur, sampling=3.0)
    centre = voxel_centers_lps(ct).reshape(femur.shape + (3,))
    head = centre[np.unravel_index(np.argmax(depth), femur.shape)]
    lesion = femur & (np.linalg.norm(centre - (head + [0.0, 0.0, 6.0]), axis=-1) <= 9.0)
    lab = np.zeros(femur.shape, np.uint8)
    lab[hip] = 3
    lab[femur] = 1
    lab[lesion] = 2
    labels = sitk.GetImageFromArray(lab)
    labels.CopyInformation(ct)
    return ct, labels, femur, head


def _in_mask(ct, mask, pts):
    idx = np.rint(index_from_lps(ct, pts.reshape(-1, 3))).astype(int)
    ok = np.all((idx >= 0) & (idx < np.array(ct.GetSize())), axis=1)
    out = np.zeros(len(idx), bool)
    out[ok] = mask[idx[ok, 2], idx[ok, 1], idx[ok, 0]]
    return out


@pytest.mark.parametrize("side", ["left", "right"])
def test_side_of_real_femurs(real_ct_dir, side):
    _, labels, _, _ = _case(real_ct_dir, side)
    assert femur_anatomy(bone_fields(labels)).side == side


def test_plan_on_a_real_right_femur(real_ct_dir):
    ct, labels, femur, head = _case(real_ct_dir, "right")
    options = PlannerOptions()
    plan = plan_automatic(ct, labels, options=options)
    (t,) = plan.trajectories
    e, g, u, r = np.asarray(t.entry_lps), np.asarray(t.target_lps), t.direction_lps, t.diameter_mm / 2
    lab = sitk.GetArrayViewFromImage(labels)
    assert _in_mask(ct, lab == 2, g[None])[0], "target in the lesion"
    assert e[0] < head[0] - 20.0, "entry lateral of the head (a right hip: lateral is -x in LPS)"
    s = np.arange(options.entry_zone_mm, t.length_mm, 1.0)
    axis = e + s[:, None] * u
    e1 = np.cross(u, [0.0, 0.0, 1.0])
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(u, e1)
    phi = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    ring = axis[:, None, :] + (r + options.cortical_clearance_mm - TOL_MM) * (
        np.cos(phi)[None, :, None] * e1 + np.sin(phi)[None, :, None] * e2)
    assert _in_mask(ct, femur, ring).all(), "clearance kept along the path"
    assert check_plan(plan, ct, labels).ok
