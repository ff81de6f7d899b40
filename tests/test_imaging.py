"""Imaging I/O: formats, geometry checks, label checks, index <-> LPS."""

from __future__ import annotations

import os

import numpy as np
import pytest
import SimpleITK as sitk

from navsvc import imaging
from navsvc.errors import InputError, InvalidImageError, InvalidLabelsError
from navsvc.imaging import LabelSpec


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_formats_round_trip_geometry_and_voxels(tmp_path, oblique_image, suffix):
    path = imaging.write_image(tmp_path / f"vol{suffix}", oblique_image)
    back = imaging.read_image(path)
    assert back.GetSize() == oblique_image.GetSize()
    np.testing.assert_allclose(back.GetSpacing(), oblique_image.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(back.GetOrigin(), oblique_image.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(back.GetDirection(), oblique_image.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(oblique_image), rtol=1e-6)
    # no temporary files left behind
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_dicom_series_folder(tmp_path, oblique_image):
    img = sitk.Cast(oblique_image, sitk.sitkInt16)
    series = tmp_path / "series"
    series.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    direction = img.GetDirection()
    uid = "1.2.826.0.1.3680043.2.1125.1.12345"
    for k in range(img.GetDepth()):
        sl = img[:, :, k]
        origin = img.TransformIndexToPhysicalPoint((0, 0, k))
        for tag, value in [
            ("0020|000e", uid),
            ("0020|000d", uid + ".1"),
            ("0008|0060", "MR"),
            ("0020|0032", "\\".join(f"{v:.6f}" for v in origin)),
            ("0020|0037", "\\".join(f"{v:.6f}" for v in (direction[0], direction[3], direction[6],
                                                         direction[1], direction[4], direction[7]))),
            ("0020|0013", str(k + 1)),
        ]:
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(series / f"slice{k:03d}.dcm"))
        writer.Execute(sl)
    back = imaging.read_image(series)
    assert back.GetSize() == img.GetSize()
    np.testing.assert_allclose(back.GetOrigin(), img.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(back.GetSpacing(), img.GetSpacing(), atol=1e-3)
    np.testing.assert_allclose(back.GetDirection(), img.GetDirection(), atol=1e-5)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(img))


def test_index_lps_matrix_matches_sitk(oblique_image):
    idx = np.array([[0, 0, 0], [3, 5, 7], [22.5, 16, 10]], dtype=float)
    expected = [oblique_image.TransformContinuousIndexToPhysicalPoint(tuple(i)) for i in idx]
    np.testing.assert_allclose(imaging.lps_from_index(oblique_image, idx), expected, atol=1e-9)
    np.testing.assert_allclose(imaging.index_from_lps(oblique_image, expected), idx, atol=1e-9)
    inside = imaging.contains_points(oblique_image, np.array(expected[:2]) )
    assert inside.tolist() == [True, True]
    far = imaging.lps_from_index(oblique_image, np.array([[-3.0, 0, 0]]))
    assert not imaging.contains_points(oblique_image, far)[0]


# -- refusals -------------------------------------------------------------------
def test_missing_file(tmp_path):
    with pytest.raises(InvalidImageError, match="file not found"):
        imaging.read_image(tmp_path / "nope.nii.gz")


def test_unreadable_file(tmp_path):
    bad = tmp_path / "mri.nii.gz"
    bad.write_bytes(os.urandom(4096))
    with pytest.raises(InvalidImageError, match=r"mri.nii.gz: cannot read .* as an image"):
        imaging.read_image(bad)


def test_two_dimensional_image(tmp_path):
    path = tmp_path / "slice.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.random.default_rng(0).random((10, 12)).astype(np.float32)), str(path))
    with pytest.raises(InvalidImageError, match="expected a 3-D image, got"):
        imaging.read_image(path)


def _write_nrrd(path, space_directions: str, data: np.ndarray) -> None:
    header = (
        "NRRD0004\ntype: float\ndimension: 3\nspace: left-posterior-superior\n"
        f"sizes: {data.shape[2]} {data.shape[1]} {data.shape[0]}\n"
        f"space directions: {space_directions}\nkinds: domain domain domain\nendian: little\n"
        "encoding: raw\nspace origin: (0,0,0)\n\n"
    )
    path.write_bytes(header.encode() + data.astype("<f4").tobytes())


def test_zero_spacing_is_refused(tmp_path):
    path = tmp_path / "flat.nrrd"
    _write_nrrd(path, "(1,0,0) (0,1,0) (0,0,0)", np.random.default_rng(0).random((3, 4, 5)))
    with pytest.raises(InvalidImageError, match=r"flat.nrrd: (expected voxel spacing > 0|cannot read)"):
        imaging.read_image(path)


def test_sheared_direction_is_refused(tmp_path):
    path = tmp_path / "sheared.nrrd"
    _write_nrrd(path, "(1,0,0) (0.5,1,0) (0,0,2)", np.random.default_rng(0).random((3, 4, 5)))
    with pytest.raises(InvalidImageError, match="orthonormal direction"):
        imaging.read_image(path)


def test_nan_voxels_are_refused(tmp_path, oblique_image):
    arr = sitk.GetArrayFromImage(oblique_image)
    arr[2, 3, 4] = np.nan
    arr[5, 6, 7] = np.inf
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(oblique_image)
    path = imaging.write_image(tmp_path / "nan.mha", img)
    with pytest.raises(InvalidImageError, match="2 voxels are NaN or infinite"):
        imaging.read_image(path)


def test_blank_image_is_refused(tmp_path, oblique_image):
    blank = sitk.Image(oblique_image.GetSize(), sitk.sitkFloat32)
    blank.CopyInformation(oblique_image)
    path = imaging.write_image(tmp_path / "blank.nii.gz", blank)
    with pytest.raises(InvalidImageError, match="blank"):
        imaging.read_image(path)


def test_write_refuses_unknown_suffix(tmp_path, oblique_image):
    with pytest.raises(InputError, match="ending in"):
        imaging.write_image(tmp_path / "x.png", oblique_image)


# -- label maps -----------------------------------------------------------------
def _labels(values: dict[int, int], dtype=np.uint8) -> sitk.Image:
    arr = np.zeros((6, 8, 10), dtype=dtype)
    flat = arr.reshape(-1)
    pos = 0
    for label, count in values.items():
        flat[pos:pos + count] = label
        pos += count
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.8, 0.8, 3.5))
    return img


def test_label_counts():
    counts = imaging.check_label_map(_labels({1: 100, 2: 7, 3: 50}))
    assert counts == {"femur": 100, "necrosis": 7, "pelvis": 50}


def test_empty_lesion_is_refused_with_a_clear_message():
    with pytest.raises(InvalidLabelsError, match=r"label necrosis=2 has 0 voxels.*labels found: 1: 100 voxels"):
        imaging.check_label_map(_labels({1: 100}))


def test_custom_label_values():
    spec = LabelSpec.parse("femur=5,necrosis=6")
    assert spec.as_dict() == {"femur": 5, "necrosis": 6, "pelvis": 3}
    assert imaging.check_label_map(_labels({5: 30, 6: 3}), spec)["necrosis"] == 3
    with pytest.raises(InputError, match="expected labels like"):
        LabelSpec.parse("femur:1")
    with pytest.raises(InputError, match="distinct"):
        LabelSpec.parse("femur=2,necrosis=2")
    with pytest.raises(InputError, match="> 0"):
        LabelSpec.parse("femur=0")


def test_intensity_image_is_not_a_label_map(oblique_image):
    with pytest.raises(InvalidLabelsError, match="non-integer values"):
        imaging.check_label_map(oblique_image)


def test_integral_float_labels_are_accepted_and_cast(tmp_path):
    img = _labels({1: 100, 2: 7}, dtype=np.float64)
    path = imaging.write_image(tmp_path / "seg.nii.gz", img)
    lab = imaging.read_label_map(path)
    assert lab.GetPixelID() == sitk.sitkUInt8
    assert imaging.check_label_map(lab)["necrosis"] == 7


def test_necrosis_without_femur_is_refused():
    with pytest.raises(InvalidLabelsError, match="must lie in the femur"):
        imaging.check_label_map(_labels({2: 10}), required=("necrosis",))


def test_same_grid_check(oblique_image):
    other = sitk.Image(oblique_image)
    other.SetOrigin((0.0, 0.0, 0.0))
    with pytest.raises(InvalidImageError, match="must be on the grid of mri: origin"):
        imaging.check_same_grid(oblique_image, other, "mri", "segmentation")


def test_resample_isotropic_keeps_extent(oblique_image):
    iso = imaging.resample_isotropic(oblique_image, 1.5)
    box_old = imaging.corners_lps(oblique_image)
    box_new = imaging.corners_lps(iso)
    assert np.abs(box_old - box_new).max() < 1.5


def test_real_ct_reads_with_its_geometry(real_ct_dir):
    ct = imaging.read_image(real_ct_dir / "example_ct.nii.gz")
    assert ct.GetSize() == (122, 101, 112)
    np.testing.assert_allclose(ct.GetSpacing(), (3.0, 3.0, 3.0), atol=1e-4)
    np.testing.assert_allclose(np.array(ct.GetDirection()).reshape(3, 3), np.diag([-1.0, -1.0, 1.0]), atol=1e-6)
    femur = imaging.read_label_map(real_ct_dir / "femur_left.nii.gz", LabelSpec(), required=("femur",))
    assert imaging.check_label_map(femur, required=("femur",))["femur"] > 1000
    imaging.check_same_grid(ct, femur, "CT", "femur mask")
