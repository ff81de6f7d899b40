"""Planning geometry: exact tiny cases, then anatomy and lesion figures on analytic femurs
(oblique, anisotropic grids with a non-zero origin; both sides)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from navsvc.errors import InvalidLabelsError
from navsvc.imaging import make_image
from planning.analytic import cached_analytic_femur
from planning.geometry import bone_fields, femur_anatomy, segment_distances_mm, signed_distance_mm
from planning.lesion import arc_deg, kerboul_grade, lesion_summary, necrotic_angles_deg


def test_signed_distance_tiny_case():
    # a 1-D run of 5 inside voxels on a 0.5 mm grid along x (z, y, x array)
    mask = np.zeros((1, 1, 11), dtype=bool)
    mask[0, 0, 3:8] = True
    sdf = signed_distance_mm(mask, (1.0, 1.0, 0.5))[0, 0]
    # voxel 5 is the centre: 2.5 voxels = 1.25 mm from the surface (between voxels 2|3 and 7|8)
    assert sdf[5] == pytest.approx(-1.25)
    assert sdf[3] == pytest.approx(-0.25)
    assert sdf[2] == pytest.approx(0.25)
    assert sdf[0] == pytest.approx(1.25)


def test_arc_and_grade_tiny_cases():
    assert arc_deg(np.deg2rad([10.0, 50.0, 30.0])) == pytest.approx(40.0)
    assert arc_deg(np.deg2rad([350.0, 20.0])) == pytest.approx(30.0)  # wraps through 0
    assert arc_deg(np.array([])) == 0.0
    assert [kerboul_grade(a) for a in (159.9, 160, 199.9, 200, 240)] == ["I", "II", "II", "III", "IV"]


def test_segment_distance_tiny_case():
    pts = np.array([[0.0, 3.0, 0.0], [-4.0, 0.0, 0.0], [5.0, 0.0, 2.0]])
    d = segment_distances_mm(pts, (0, 0, 0), (10, 0, 0))
    np.testing.assert_allclose(d, [3.0, 4.0, 2.0])


@pytest.mark.parametrize("side", ["right", "left"])
def test_anatomy_matches_the_analytic_femur(side):
    f = cached_analytic_femur(side)
    anatomy = femur_anatomy(bone_fields(f.labels))
    assert anatomy.side == side
    # sphere fitted to the surface voxels of a 1.2 x 1.4 x 2.0 mm grid (measured: 0.14 / 0.24 mm
    # off, radius 22.14 / 22.17 mm for 22)
    assert np.linalg.norm(anatomy.head_center_lps - f.head_center_lps) < 0.5
    assert anatomy.head_radius_mm == pytest.approx(f.head_radius_mm, abs=0.4)
    assert np.degrees(np.arccos(anatomy.shaft_axis @ f.shaft_axis)) < 2.0
    assert np.degrees(np.arccos(anatomy.medial @ f.medial)) < 15.0  # anteversion 12 deg
    # trochanter tip: top of its capsule (junction + 25 mm + 10 mm radius) relative to the head
    true_level = (f.parts[3].b_lps[2] + 10.0) - f.head_center_lps[2]
    assert anatomy.trochanter_level_mm == pytest.approx(true_level, abs=2.0)


def test_lesion_summary_matches_the_analytic_lesion():
    f = cached_analytic_femur("right", 8.0, 12.0)
    fields = bone_fields(f.labels)
    summary = lesion_summary(fields, femur_anatomy(fields))
    true_ml = 4.0 / 3.0 * np.pi * 8.0**3 / 1000.0
    assert summary.volume_ml == pytest.approx(true_ml, rel=0.08)
    assert np.linalg.norm(np.subtract(summary.centroid_lps, f.lesion_center_lps)) < 0.6
    for extent in (summary.extent_ml_mm, summary.extent_ap_mm, summary.extent_si_mm):
        assert extent == pytest.approx(16.0, abs=3.0)
    # the lesion reaches to 22 - (12 + 8) = 2 mm below the articular surface
    assert summary.min_depth_mm == pytest.approx(2.0, abs=1.2)
    assert summary.head_involvement_percent == pytest.approx(100 * (8 / 22) ** 3, abs=1.5)
    assert summary.location_class.startswith("combined necrotic angle")


def test_necrotic_angles_exact_for_a_sphere_in_both_planes():
    # a lesion sphere of radius 6 mm centred 12 mm above the head centre subtends 2*asin(6/12)
    # = 60 deg in both the mid-coronal and the mid-sagittal plane
    f = cached_analytic_femur("right")
    anatomy = femur_anatomy(bone_fields(f.labels))
    rng = np.random.default_rng(7)
    p = rng.normal(size=(20000, 3))
    p = p / np.linalg.norm(p, axis=1, keepdims=True) * 6.0 * rng.uniform(0, 1, (20000, 1)) ** (1 / 3)
    pts = anatomy.head_center_lps + 12.0 * anatomy.shaft_axis + p
    coronal, sagittal = necrotic_angles_deg(pts, anatomy, slab_mm=0.4)
    assert coronal == pytest.approx(60.0, abs=3.0)
    assert sagittal == pytest.approx(60.0, abs=3.0)


def test_bone_fields_refuses_a_missing_or_detached_lesion():
    arr = np.zeros((6, 7, 8), dtype=np.uint8)
    arr[1:5, 1:6, 1:4] = 1
    img = make_image(arr, (1.0, 1.0, 2.0), (5.0, -3.0, 7.0))
    with pytest.raises(InvalidLabelsError, match="no necrosis voxels"):
        bone_fields(img)
    arr2 = arr.copy()
    arr2[1:3, 1:3, 6:8] = 2  # necrosis, not touching the femur
    with pytest.raises(InvalidLabelsError, match="touches no femur voxel"):
        bone_fields(make_image(arr2, (1.0, 1.0, 2.0), (5.0, -3.0, 7.0)))


@pytest.mark.parametrize(("side", "radius", "depth", "expected"), [
    ("right", 5.0, 14.0, "B"), ("left", 5.0, 14.0, "B"), ("right", 12.0, 8.0, "C1"), ("left", 12.0, 8.0, "C1")])
def test_jic_like_type_on_the_analytic_hip(side, radius, depth, expected):
    # acetabular roof of the analytic pelvis on the mid-coronal plane: from 29 mm medial to
    # 23 mm lateral of the head centre, thirds at -11.6 and +5.9 mm; the small lesion's lateral
    # boundary lies near +1 mm (B), the large one's near +10 mm (C1)
    f = cached_analytic_femur(side, radius, depth, 1)
    fields = bone_fields(f.labels)
    summary = lesion_summary(fields, femur_anatomy(fields))
    assert summary.jic_like_type == expected
    assert summary.location_class.endswith(f"JIC-like type {expected}")
    arr = sitk.GetArrayFromImage(f.labels)
    arr[arr == 3] = 0  # no pelvis: not derivable
    no_pelvis = sitk.GetImageFromArray(arr)
    no_pelvis.CopyInformation(f.labels)
    fields2 = bone_fields(no_pelvis)
    assert lesion_summary(fields2, femur_anatomy(fields2)).jic_like_type is None
