"""The QA gate: exact verdicts on hand-made figures, and the figures' own maths."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from navsvc.registration.qa import (
    femur_dice,
    gate,
    inverse_consistency_mm,
    jacobian_determinant_range,
)
from navsvc.registration.result import QAThresholds
from navsvc.transforms import RigidTransform

GOOD = {"surface_distance_mean_mm": 0.5, "surface_distance_p95_mm": 1.2, "femur_dice": 0.9,
        "jacobian_min": 0.9, "inverse_consistency_mm": 0.01, "femur_in_ct_fraction": 1.0,
        "rotation_deg": 20.0, "similarity_before": 0.1, "similarity_after": 0.9}


def test_gate_pass_warn_fail():
    limits = QAThresholds()
    assert gate(GOOD, limits).verdict == "PASS"
    warn = gate({**GOOD, "surface_distance_mean_mm": 2.0}, limits)
    assert warn.verdict == "WARN" and "2.00 mm" in warn.reasons[0]
    for key, value, words in [("surface_distance_mean_mm", 3.0, "surface distance"),
                              ("jacobian_min", -0.1, "folds"),
                              ("inverse_consistency_mm", 0.8, "disagree"),
                              ("femur_dice", 0.4, "Dice"),
                              ("rotation_deg", 170.0, "implausible"),
                              ("targets_outside_ct", 1.0, "outside"),
                              ("tre_max_mm", 2.5, "TRE")]:
        report = gate({**GOOD, key: value}, limits)
        assert report.verdict == "FAIL", key
        assert any(words in r for r in report.reasons), (key, report.reasons)
    assert gate({**GOOD, "similarity_after": 0.05}, limits).verdict == "WARN"
    assert gate(GOOD, limits, extra_fail=["did not converge"]).verdict == "FAIL"
    d = gate(GOOD, limits).to_dict()
    assert d["verdict"] == "PASS" and d["figures"]["femur_dice"] == 0.9


def _ball(center_vox, radius_vox, size=(30, 32, 34)):
    zz, yy, xx = np.indices(size[::-1])
    arr = ((xx - center_vox[0]) ** 2 + (yy - center_vox[1]) ** 2 + (zz - center_vox[2]) ** 2) <= radius_vox**2
    img = sitk.GetImageFromArray(arr.astype(np.uint8))
    img.SetSpacing((1.5, 1.5, 1.5))
    return img


def test_dice_exact_and_shifted():
    a = _ball((15, 16, 17), 8)
    assert femur_dice(a, a) == 1.0
    b = _ball((17, 16, 17), 8)
    inter = np.logical_and(sitk.GetArrayViewFromImage(a), sitk.GetArrayViewFromImage(b)).sum()
    expected = 2 * inter / (sitk.GetArrayViewFromImage(a).sum() + sitk.GetArrayViewFromImage(b).sum())
    assert femur_dice(a, b) == np.float64(expected)
    assert femur_dice(a, sitk.Image(a.GetSize(), sitk.sitkUInt8)) == 0.0


def test_inverse_consistency_and_jacobian():
    T = RigidTransform.from_euler_deg((5, 10, -3), (1, 2, 3), "ct", "mri")
    pts = np.random.default_rng(0).normal(0, 50, (20, 3))
    assert inverse_consistency_mm(T, T.inverse(), pts) < 1e-9
    wrong = RigidTransform.from_euler_deg((0, 0, 0), (1, 0, 0), "mri", "ct")
    assert inverse_consistency_mm(T, T.inverse() @ RigidTransform(wrong.matrix, "ct", "ct"), pts) > 0.99
    assert jacobian_determinant_range(None) == (1.0, 1.0)
    # u(x) = 0.1 x along x: Jacobian determinant 1.1 inside; ITK's one-sided boundary gives 1.05
    xx = np.indices((8, 9, 10))[2].astype(np.float64) * 2.0
    field = np.zeros((8, 9, 10, 3))
    field[..., 0] = 0.1 * xx
    img = sitk.GetImageFromArray(field, isVector=True)
    img.SetSpacing((2.0, 2.0, 2.0))
    jmin, jmax = jacobian_determinant_range(img)
    assert abs(jmin - 1.05) < 1e-6 and abs(jmax - 1.1) < 1e-6


def test_gate_never_passes_a_ct_too_coarse_to_verify():
    """On a 3 mm CT the surface and Dice figures cannot tell a correct fit from one 5 mm off (measured
    on the real CT): the gate says so instead of PASS, and a figure failure names the voxel size."""
    limits = QAThresholds()
    assert gate({**GOOD, "ct_voxel_max_mm": 2.0}, limits).verdict == "PASS"
    coarse = gate({**GOOD, "ct_voxel_max_mm": 3.0}, limits)
    assert coarse.verdict == "WARN" and "too coarse" in coarse.reasons[0]
    failed = gate({**GOOD, "ct_voxel_max_mm": 3.0, "femur_dice": 0.5}, limits)
    assert failed.verdict == "FAIL"
    assert "limited by the voxel size" in failed.reasons[0]
    assert "voxel size" not in gate({**GOOD, "femur_dice": 0.5}, limits).reasons[0]
