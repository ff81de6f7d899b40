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
