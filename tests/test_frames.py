"""LPS <-> RAS in one place, device names."""

from __future__ import annotations

import numpy as np
import pytest

from navsvc import frames
from navsvc.errors import InputError
from navsvc.transforms import RigidTransform


def test_lps_ras_points_flip_x_and_y_only():
    p_lps = np.array([10.0, -20.0, 30.0])
    np.testing.assert_array_equal(frames.ras_from_lps_points(p_lps), [-10.0, 20.0, 30.0])
    np.testing.assert_array_equal(frames.lps_from_ras_points([-10.0, 20.0, 30.0]), p_lps)


def test_lps_ras_round_trip_many_points():
    pts = np.random.default_rng(0).normal(size=(50, 3)) * 100
    np.testing.assert_allclose(frames.lps_from_ras_points(frames.ras_from_lps_points(pts)), pts)


def test_matrix_conversion_agrees_with_point_conversion():
    T = RigidTransform.from_euler_deg((10, -20, 30), (5, -6, 7), "ct", "mri")
    pts_lps = np.random.default_rng(1).normal(size=(20, 3)) * 50
    m_ras = frames.ras_from_lps_matrix(T.matrix)
    pts_ras = frames.ras_from_lps_points(pts_lps)
    mapped_ras = pts_ras @ m_ras[:3, :3].T + m_ras[:3, 3]
    np.testing.assert_allclose(mapped_ras, frames.ras_from_lps_points(T.apply(pts_lps)), atol=1e-9)
    np.testing.assert_allclose(frames.lps_from_ras_matrix(m_ras), T.matrix, atol=1e-12)
    # a pure translation of +5 mm towards the patient's left is -5 mm in RAS x
    shift = np.eye(4)
    shift[0, 3] = 5.0
    assert frames.ras_from_lps_matrix(shift)[0, 3] == -5.0


def test_bad_point_shapes_are_refused():
    with pytest.raises(InputError, match=r"expected points of shape"):
        frames.ras_from_lps_points([1.0, 2.0])
    with pytest.raises(InputError, match="4x4"):
        frames.ras_from_lps_matrix(np.eye(3))


def test_igtl_device_names():
    assert frames.igtl_device_name("mri", "ct") == "MriToCt"
    assert frames.igtl_device_name("drill1", "reference") == "Drill1ToReference"
    assert frames.check_igtl_device_name("A" * 20) == "A" * 20
    with pytest.raises(InputError, match="21 bytes"):
        frames.check_igtl_device_name("A" * 21)
    with pytest.raises(InputError, match="ASCII"):
        frames.check_igtl_device_name("Bohrer\u00fc")
    with pytest.raises(InputError, match="bytes"):
        frames.igtl_device_name("very_long_trajectory", "reference")
