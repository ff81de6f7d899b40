"""Rigid and composite transforms: algebra, frames, files, and the resampling direction."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from navsvc import imaging
from navsvc.errors import InputError, TransformError
from navsvc.transforms import (
    RigidTransform,
    Transform,
    compose,
    displacement_field_transform,
    read_transform,
    resample,
    rotation_matrix_from_axis_angle,
    sidecar_path,
    target_registration_errors_mm,
    write_transform,
)

RNG = np.random.default_rng(42)
POINTS = RNG.normal(size=(30, 3)) * 60 + np.array([-80.0, 20.0, 900.0])


@pytest.fixture
def T_ct_from_mri() -> RigidTransform:
    return RigidTransform.from_euler_deg((25.0, -12.0, 8.0), (31.0, -17.5, 12.25), "ct", "mri",
                                         center_mm=(-90.0, 10.0, 880.0))


# -- exact tiny cases -----------------------------------------------------------
def test_rotation_about_z_by_90_degrees_maps_x_to_y():
    T = RigidTransform.from_euler_deg((0, 0, 90), (0, 0, 0), "b", "a")
    np.testing.assert_allclose(T.apply([1.0, 0.0, 0.0]), [0.0, 1.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(T.apply_to_vectors([[0.0, 1.0, 0.0]]), [[-1.0, 0.0, 0.0]], atol=1e-12)


def test_rotation_about_a_centre_keeps_the_centre_fixed():
    c = np.array([10.0, 20.0, 30.0])
    T = RigidTransform.from_euler_deg((10, 20, 30), (0, 0, 0), "b", "a", center_mm=c)
    np.testing.assert_allclose(T.apply(c), c, atol=1e-12)
    assert T.rotation_angle_deg == pytest.approx(np.rad2deg(np.arccos((np.trace(T.rotation) - 1) / 2)))


def test_axis_angle_matches_euler():
    np.testing.assert_allclose(rotation_matrix_from_axis_angle([0, 0, 1], 90),
                               RigidTransform.from_euler_deg((0, 0, 90), (0, 0, 0), "b", "a").rotation,
                               atol=1e-12)


# -- properties -----------------------------------------------------------------
def test_inverse_round_trip(T_ct_from_mri):
    T_mri_from_ct = T_ct_from_mri.inverse()
    assert (T_mri_from_ct.to_frame, T_mri_from_ct.from_frame) == ("mri", "ct")
    np.testing.assert_allclose(T_mri_from_ct.apply(T_ct_from_mri.apply(POINTS)), POINTS, atol=1e-9)
    ident = T_mri_from_ct @ T_ct_from_mri
    np.testing.assert_allclose(ident.matrix, np.eye(4), atol=1e-12)
    assert ident.name == "T_mri_from_mri"


def test_composition_order_and_frames(T_ct_from_mri):
    T_device_from_ct = RigidTransform.from_euler_deg((0, 90, 0), (100, 0, 0), "device", "ct")
    T_device_from_mri = T_device_from_ct @ T_ct_from_mri
    assert T_device_from_mri.name == "T_device_from_mri"
    np.testing.assert_allclose(T_device_from_mri.apply(POINTS),
                               T_device_from_ct.apply(T_ct_from_mri.apply(POINTS)), atol=1e-9)
    # the other order is not the same mapping
    assert compose(T_device_from_ct, T_ct_from_mri).name == "T_device_from_mri"


def test_composing_mismatched_frames_raises(T_ct_from_mri):
    with pytest.raises(TransformError, match="cannot compose"):
        _ = T_ct_from_mri @ T_ct_from_mri


def test_non_rigid_matrices_are_refused():
    m = np.eye(4)
    m[0, 0] = 1.01
    with pytest.raises(TransformError, match="rigid"):
        RigidTransform(m, "b", "a")
    reflect = np.diag([-1.0, 1.0, 1.0, 1.0])
    with pytest.raises(TransformError, match="determinant"):
        RigidTransform(reflect, "b", "a")
    bad = np.eye(4)
    bad[0, 3] = np.nan
    with pytest.raises(TransformError, match="NaN"):
        RigidTransform(bad, "b", "a")


def test_rigid_transform_is_immutable(T_ct_from_mri):
    with pytest.raises(ValueError):
        T_ct_from_mri.matrix[0, 3] = 1.0


def test_sitk_conversion_maps_points_identically(T_ct_from_mri):
    tx = T_ct_from_mri.to_sitk()
    got = np.array([tx.TransformPoint(tuple(p)) for p in POINTS])
    np.testing.assert_allclose(got, T_ct_from_mri.apply(POINTS), atol=1e-9)
    # a centred sitk transform converts back to the same mapping
    centred = sitk.Euler3DTransform((5.0, -3.0, 2.0), 0.1, -0.2, 0.3, (1.0, 2.0, 3.0))
    back = RigidTransform.from_sitk(centred, "b", "a")
    np.testing.assert_allclose(back.apply(POINTS), [centred.TransformPoint(tuple(p)) for p in POINTS], atol=1e-9)


# -- files ----------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".h5", ".tfm"])
def test_transform_file_round_trip_maps_points_identically(tmp_path, T_ct_from_mri, suffix):
    path = write_transform(tmp_path / f"T_ct_from_mri{suffix}", T_ct_from_mri, {"method": "test"})
    assert sidecar_path(path).is_file()
    back = read_transform(path)
    assert isinstance(back, RigidTransform)
    assert back.name == "T_ct_from_mri"
    np.testing.assert_allclose(back.apply(POINTS), T_ct_from_mri.apply(POINTS), atol=1e-6)
    # SimpleITK (and so 3D Slicer) reads the same mapping without our sidecar
    plain = sitk.ReadTransform(str(path))
    np.testing.assert_allclose([plain.TransformPoint(tuple(p)) for p in POINTS], T_ct_from_mri.apply(POINTS),
                               atol=1e-6)


def test_reading_with_contradicting_frames_raises(tmp_path, T_ct_from_mri):
    path = write_transform(tmp_path / "t.h5", T_ct_from_mri)
    with pytest.raises(TransformError, match="expected to_frame 'mri'"):
        read_transform(path, to_frame="mri")


def test_reading_without_frames_needs_them_explicitly(tmp_path, T_ct_from_mri):
    path = tmp_path / "bare.tfm"
    sitk.WriteTransform(T_ct_from_mri.to_sitk(), str(path))
    with pytest.raises(TransformError, match="does not record its frames"):
        read_transform(path)
    back = read_transform(path, to_frame="ct", from_frame="mri")
    np.testing.assert_allclose(back.apply(POINTS), T_ct_from_mri.apply(POINTS), atol=1e-6)


def test_bad_transform_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_transform(tmp_path / "missing.h5", "ct", "mri")
    junk = tmp_path / "junk.tfm"
    junk.write_text("this is not a transform\n")
    with pytest.raises(TransformError, match="cannot read transform file"):
        read_transform(junk, "ct", "mri")
    with pytest.raises(InputError, match="ending in"):
        write_transform(tmp_path / "t.png", RigidTransform.identity("ct", "mri"))


def _smooth_field(reference: sitk.Image, amplitude_mm: float) -> np.ndarray:
    pts = imaging.voxel_centers_lps(reference).reshape(*reference.GetSize()[::-1], 3)
    c = pts.reshape(-1, 3).mean(axis=0)
    r = pts - c
    field = np.stack([np.sin(r[..., 1] / 40.0), np.cos(r[..., 2] / 50.0) - 1, np.sin(r[..., 0] / 45.0)], axis=-1)
    return amplitude_mm * field


def test_displacement_field_composite_write_read_and_inverse(tmp_path, T_ct_from_mri):
    grid = imaging.reference_grid((24, 20, 16), (6.0, 6.0, 8.0), (-160.0, -40.0, 820.0), pixel_type=sitk.sitkFloat64)
    field = _smooth_field(grid, 1.5)
    D_mri = displacement_field_transform(field, grid, "mri", "mri")
    T_ct_from_mri_deformable = T_ct_from_mri @ D_mri  # correct distortion in MRI space, then move
    pts = imaging.voxel_centers_lps(grid)[::97]
    expected = T_ct_from_mri.apply(pts + _field_at(field, grid, pts))
    np.testing.assert_allclose(T_ct_from_mri_deformable.apply(pts), expected, atol=1e-6)
    path = write_transform(tmp_path / "T_ct_from_mri.h5", T_ct_from_mri_deformable)
    back = read_transform(path)
    assert isinstance(back, Transform) and back.name == "T_ct_from_mri"
    np.testing.assert_allclose(back.apply(pts), expected, atol=1e-6)
    with pytest.raises(InputError, match="needs an .h5"):
        write_transform(tmp_path / "x.tfm", T_ct_from_mri_deformable)
    # numerical inverse: round trip well under 0.1 mm for a smooth 1.5 mm field
    inner = pts[np.all(imaging.contains_points(grid, pts, margin_mm=20.0)[:, None], axis=1)]
    round_trip = back.inverse().apply(back.apply(inner))
    assert np.abs(round_trip - inner).max() < 0.05


def _field_at(field: np.ndarray, grid: sitk.Image, pts: np.ndarray) -> np.ndarray:
    idx = np.round(imaging.index_from_lps(grid, pts)).astype(int)
    return field[idx[:, 2], idx[:, 1], idx[:, 0]]


def test_tre_helper(T_ct_from_mri):
    shifted = RigidTransform.from_rotation_translation(np.eye(3), (0, 0, 2.0), "ct", "ct") @ T_ct_from_mri
    np.testing.assert_allclose(target_registration_errors_mm(shifted, T_ct_from_mri, POINTS), 2.0)
    with pytest.raises(TransformError, match="same frames"):
        target_registration_errors_mm(T_ct_from_mri.inverse(), T_ct_from_mri, POINTS)


# -- the resampling direction -------------------------------------------------------
def _blob_image(centre_lps: np.ndarray, grid: sitk.Image, radius_mm: float = 6.0) -> sitk.Image:
    pts = imaging.voxel_centers_lps(grid)
    d = np.linalg.norm(pts - centre_lps, axis=1)
    arr = np.exp(-((d / radius_mm) ** 2)).astype(np.float32).reshape(grid.GetSize()[::-1])
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(grid)
    return img


def _peak_lps(img: sitk.Image) -> np.ndarray:
    arr = sitk.GetArrayFromImage(img)
    w = np.clip(arr - 0.5 * arr.max(), 0, None)
    kji = np.argwhere(w > 0)
    weights = w[w > 0]
    centre_ijk = (kji[:, ::-1] * weights[:, None]).sum(axis=0) / weights.sum()
    return imaging.lps_from_index(img, centre_ijk)


def test_resampling_needs_the_fixed_to_moving_transform():
    """Warping the MRI onto the CT takes T_mri_from_ct; the blob lands at T_ct_from_mri(p)."""
    T_ct_from_mri = RigidTransform.from_euler_deg((0, 0, 20), (12.0, -8.0, 5.0), "ct", "mri",
                                                  center_mm=(0, 0, 0))
    mri_grid = imaging.reference_grid((48, 40, 20), (1.5, 1.5, 3.0), (-36.0, -30.0, 30.0),
                                      np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]], dtype=float))  # coronal
    p_mri = np.array([5.0, 3.0, -4.0])
    mri = _blob_image(p_mri, mri_grid)
    ct_grid = imaging.reference_grid((64, 64, 64), (1.0, 1.0, 1.0), (-20.0, -40.0, -30.0))
    warped = resample(mri, ct_grid, T_ct_from_mri.inverse())
    p_ct = T_ct_from_mri.apply(p_mri)
    assert np.linalg.norm(_peak_lps(warped) - p_ct) < 0.3
    # passing the point-mapping transform instead (the classic mistake) puts it elsewhere
    wrong = resample(mri, ct_grid, T_ct_from_mri)
    arr = sitk.GetArrayFromImage(wrong)
    assert arr.max() < 0.5 or np.linalg.norm(_peak_lps(wrong) - p_ct) > 10.0


def test_resample_rejects_unknown_interpolator(oblique_image):
    with pytest.raises(InputError, match="interpolator"):
        resample(oblique_image, oblique_image, None, interpolator="cubic")
