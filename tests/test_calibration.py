"""Paired-fiducial calibration T_device_from_ct: exact cases, noise, refusals."""

from __future__ import annotations

import numpy as np
import pytest

from navsvc.calibration import calibrate_from_fiducials, rigid_fit
from navsvc.errors import InputError, PreconditionFailed
from navsvc.transforms import RigidTransform

# Non-trivial pose: 25/-40/70 degrees, 120 mm offsets, about a point far from the origin.
T_TRUE = RigidTransform.from_euler_deg([25.0, -40.0, 70.0], [120.0, -35.5, 410.0], "device", "ct",
                                       center_mm=[-80.0, 150.0, -600.0])
FIDUCIALS_CT = np.array([[-95.0, 140.0, -610.0], [-60.0, 170.0, -590.0], [-88.0, 190.0, -640.0],
                         [-70.0, 120.0, -570.0], [-50.0, 150.0, -630.0]])


def test_exact_pose_recovered_from_noise_free_points():
    result = calibrate_from_fiducials(FIDUCIALS_CT, T_TRUE.apply(FIDUCIALS_CT))
    assert result.T_device_from_ct.to_frame == "device" and result.T_device_from_ct.from_frame == "ct"
    np.testing.assert_allclose(result.T_device_from_ct.matrix, T_TRUE.matrix, atol=1e-9)
    assert result.fre_mm_rms < 1e-9 and result.fre_mm_max < 1e-9
    assert result.per_point_mm.shape == (5,)


def test_three_points_suffice():
    result = calibrate_from_fiducials(FIDUCIALS_CT[:3], T_TRUE.apply(FIDUCIALS_CT[:3]))
    np.testing.assert_allclose(result.T_device_from_ct.matrix, T_TRUE.matrix, atol=1e-9)


def test_noisy_fiducials_fre_and_pose_error():
    rng = np.random.default_rng(7)
    noise_mm = rng.normal(0.0, 0.2, FIDUCIALS_CT.shape)
    result = calibrate_from_fiducials(FIDUCIALS_CT, T_TRUE.apply(FIDUCIALS_CT) + noise_mm)
    # FRE is reported exactly as the residual of the fitted transform.
    resid = np.linalg.norm(result.T_device_from_ct.apply(FIDUCIALS_CT) - T_TRUE.apply(FIDUCIALS_CT) - noise_mm, axis=1)
    np.testing.assert_allclose(result.per_point_mm, resid, atol=1e-12)
    assert 0.05 < result.fre_mm_rms < 0.35
    # the pose is close: target error at the fiducials' centroid well under the noise level
    c = FIDUCIALS_CT.mean(axis=0)
    assert np.linalg.norm(result.T_device_from_ct.apply(c) - T_TRUE.apply(c)) < 0.3


def test_reflection_is_not_returned():
    mirrored = FIDUCIALS_CT * np.array([-1.0, 1.0, 1.0])   # a mirror image cannot be fitted rigidly
    m = rigid_fit(FIDUCIALS_CT, mirrored)
    assert np.linalg.det(m[:3, :3]) == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(PreconditionFailed, match="fiducial registration error too large"):
        calibrate_from_fiducials(FIDUCIALS_CT, mirrored, max_fre_mm=1.0)


def test_refuses_large_fre_and_names_worst_fiducial():
    device = T_TRUE.apply(FIDUCIALS_CT)
    device[3] += [0.0, 4.0, 0.0]
    with pytest.raises(PreconditionFailed, match=r"fiducial F4 is off by \d+\.\d+ mm"):
        calibrate_from_fiducials(FIDUCIALS_CT, device, labels=["F1", "F2", "F3", "F4", "F5"])
    # the same points pass with a generous limit
    assert calibrate_from_fiducials(FIDUCIALS_CT, device, max_fre_mm=5.0).fre_mm_max < 5.0


@pytest.mark.parametrize(
    ("ct", "dev", "pattern"),
    [
        (FIDUCIALS_CT[:2], FIDUCIALS_CT[:2], "at least 3"),
        (FIDUCIALS_CT, FIDUCIALS_CT[:4], "as many device points"),
        (FIDUCIALS_CT[:, :2], FIDUCIALS_CT[:, :2], r"\(N, 3\)"),
        (np.array([[0, 0, 0], [1, 1, 1], [2, 2, 2.0], [5, 5, 5]]), np.zeros((4, 3)), "collinear"),
        (np.array([[0, 0, 0], [0, 0, 0], [0, 0, 0.0]]), np.zeros((3, 3)), "collinear or coincident"),
        (np.array([[0, 0, np.nan], [1, 0, 0], [0, 1, 0]]), np.eye(3), "point 0 holds NaN"),
    ],
)
def test_bad_input_refused(ct, dev, pattern):
    with pytest.raises(InputError, match=pattern):
        calibrate_from_fiducials(ct, dev)
