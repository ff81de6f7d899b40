"""Registration on the project's phantoms (phantoms.make_case) and on the real CT."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from navsvc.registration import realct
from navsvc.registration.rigid import fat_shift_corrected


def test_rigid_on_small_phantom_with_articulated_hip():
    from navsvc.registration.validation_methods import METHOD_OPTIONS, run_case
    from phantoms.case import make_case
    from phantoms.validate import evaluate_case

    case = make_case(105, "small")  # patient 20 deg / 35 mm, femur articulated 34 deg
    r = evaluate_case(case, lambda c: run_case(c, METHOD_OPTIONS["rigid"]))
    # measured 0.13 mean / 0.30 max mm (benchmark run of 2026-11-24)
    assert r["tre"]["mean"] < 0.3
    assert r["tre"]["max"] < 0.6
    assert r["success"] and r["extra"]["verdict"] == "PASS"
    assert r["dice_lesion"] > 0.85


def test_fat_shift_correction_moves_marrow_back():
    arr = np.zeros((12, 14, 16), np.float32)
    arr[4:8, 5:9, 7:11] = 100.0  # "marrow" seen 2 voxels (3 mm) towards +x
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((1.5, 1.5, 2.0))
    femur = np.zeros_like(arr, dtype=np.uint8)
    femur[3:9, 4:10, 4:10] = 1  # the water-based label (true place)
    fem = sitk.GetImageFromArray(femur)
    fem.CopyInformation(img)
    out = sitk.GetArrayFromImage(fat_shift_corrected(img, fem, np.array([3.0, 0.0, 0.0])))
    assert np.allclose(out[4:8, 5:9, 5:9], 100.0)  # marrow back at x 5..8 inside the label
    assert np.allclose(out[4:8, 5:9, 10], 100.0)  # outside the label nothing moves


def test_real_ct_bone_segmentation_finds_both_femurs():
    d = realct.find_data_dir()
    if d is None:
        pytest.skip("shared/data/real-ct-pelvis not present")
    data = realct.load(d)
    assert realct.metal_side(data) == "left"
    seg = realct.bone_segmentation_check(data, 105.0)
    # measured: left (screws) recall 0.93, right recall 0.87 / Dice 0.92
    assert seg["recall_femur_left"] > 0.88
    assert seg["recall_femur_right"] > 0.82
    assert seg["dice_femur_right"] > 0.88


def test_real_ct_registration_recovers_known_transform():
    """The real 3 mm CT with screws in the left femur, an MRI-like image synthesised from its masks
    under a known 17 deg / 28 mm transform. The registration sees no CT mask and not the truth."""
    d = realct.find_data_dir()
    if d is None:
        pytest.skip("shared/data/real-ct-pelvis not present (real-CT registration case not run)")
    from navsvc.registration import RegistrationOptions, register_mri_to_ct

    case = realct.make_real_ct_case(d)
    assert case.extra["side"] == "left"
    names = sorted(case.landmarks_mri)
    lm_mri = np.array([case.landmarks_mri[n] for n in names])
    lm_ct = np.array([case.landmarks_ct[n] for n in names])
    r = register_mri_to_ct(case.mri, case.labels, case.ct, RegistrationOptions(method="rigid"))
    tre = np.linalg.norm(r.T_ct_from_mri.apply(lm_mri) - lm_ct, axis=1)
    # measured 0.23 mean / 0.30 max mm (noise seeds 0-2: 0.16-0.23 mean, max <= 0.31);
    # before the whole-FOV start and the metal-free MI region: 20 mm
    assert tre.mean() < 0.6
    assert tre.max() < 1.0
    assert r.stages["rigid_surface"]["start"].startswith("image")
    # 3 mm voxels: the gate cannot verify sub-millimetre accuracy there and says why
    assert r.qa.verdict != "PASS"
    assert any("too coarse" in reason for reason in r.qa.reasons), r.qa.reasons


def test_real_ct_gate_cannot_tell_right_from_wrong_poses():
    """Why a CT over 2 mm never PASSes: on the real 3 mm CT the gate's figures at the true pose and at
    poses 3-8 mm off are nearly the same (measured 2.69 mm / Dice 0.556 at the truth, 3.20 / 0.522 at
    20 degrees about the head), and none of them PASSes."""
    d = realct.find_data_dir()
    if d is None:
        pytest.skip("shared/data/real-ct-pelvis not present (real-CT gate case not run)")
    g = realct.gate_near_truth(realct.make_real_ct_case(d))
    assert g["truth"]["tre_mean_mm"] == pytest.approx(0.0, abs=1e-9)
    assert g["shift 5 mm"]["tre_mean_mm"] == pytest.approx(5.0, abs=1e-6)
    assert all(v["verdict"] != "PASS" for v in g.values())
    surface = [v["surface_distance_mean_mm"] for v in g.values()]
    assert max(surface) - min(surface) < 0.8
    assert 2.0 < g["truth"]["surface_distance_mean_mm"] < 3.3


def _grid_image(arr: np.ndarray, spacing=(3.0, 3.0, 3.0)) -> sitk.Image:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin((-20.0, 10.0, 5.0))
    return img


def test_mi_region_grows_on_a_coarse_ct_and_leaves_metal_out():
    from navsvc.registration.rigid import mi_region

    femur = np.zeros((30, 32, 34), np.uint8)
    femur[12:18, 13:19, 14:20] = 1  # 216 voxels of 3 mm
    ct = np.full(femur.shape, 40.0, np.float32)
    ct[15, 16, 17] = 3000.0  # a screw voxel inside the femur
    fem_img, ct_img = _grid_image(femur), _grid_image(ct)
    fixed = mi_region(fem_img, ct_img, 6.0, min_voxels=10, metal_margin_mm=3.0)
    arr = sitk.GetArrayFromImage(fixed)
    # enough voxels at once: the femur dilated by 6 mm = 2 voxels (ball), metal and a 1-voxel ball around it out
    assert arr[12:18, 13:19, 14:20].sum() == 216 - 19  # ITK ball of radius 1: 19 voxels
    assert arr[15, 16, 17] == 0 and arr[10, 16, 17] == 1 and arr[9, 16, 17] == 0
    grown = sitk.GetArrayFromImage(mi_region(fem_img, ct_img, 6.0, min_voxels=3000, metal_margin_mm=3.0))
    assert 3000 <= grown.sum() < 6000  # the margin grew by whole CT voxels until 3000 voxels
    assert grown[7, 16, 17] == 1
    capped = sitk.GetArrayFromImage(mi_region(fem_img, ct_img, 6.0, min_voxels=10**6, max_margin_mm=9.0))
    assert capped[9, 16, 17] == 1 and capped[8, 16, 17] == 0  # never beyond max_margin_mm (3 voxels)


def test_near_poses_keeps_ct_points_near_the_plausible_femur():
    from navsvc.registration.bone import Surface
    from navsvc.registration.rigid import near_poses

    mri_pts = np.array([[0.0, 0.0, 0.0], [10.0, 10.0, 10.0]])
    ct_pts = np.array([[5.0, 5.0, 5.0], [65.0, 5.0, 5.0], [205.0, 5.0, 5.0], [-69.0, 0.0, 0.0]])
    surf = Surface(ct_pts, np.tile([0.0, 0.0, 1.0], (4, 1)))
    shifted = np.eye(4)
    shifted[0, 3] = 200.0
    assert len(near_poses(surf, mri_pts, [np.eye(4)], 60.0)) == 2  # (5,5,5) and (65,5,5); -69 is beyond 60
    kept = near_poses(surf, mri_pts, [np.eye(4), shifted], 60.0)
    assert len(kept) == 3 and kept.points_mm[-1][0] == 205.0
