"""Digital phantoms: the ground truth is exact, reproducible and consistent across modalities."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from navsvc.errors import ConfigError
from navsvc.imaging import check_geometry, check_label_map, index_from_lps
from navsvc.markups import read_points
from navsvc.transforms import read_transform
from phantoms import PRESETS, load_case, make_case
from phantoms.anatomy import HipModel
from phantoms.modalities import chemical_shift_mm
from phantoms.pose import distort, distortion_mm, undistort

SEED = 3


@pytest.fixture(scope="module")
def case():
    return make_case(SEED, "small")


def _label_at(labels: sitk.Image, point_lps: np.ndarray) -> int:
    ijk = np.round(index_from_lps(labels, point_lps)).astype(int)
    return int(sitk.GetArrayViewFromImage(labels)[ijk[2], ijk[1], ijk[0]])


def _arrays(c):
    return {k: sitk.GetArrayFromImage(getattr(c, k)) for k in ("mri", "mri_fluid", "labels", "ct", "labels_ct")}


def test_same_seed_gives_the_same_case(case):
    again = make_case(SEED, "small")
    a, b = _arrays(case), _arrays(again)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    for n in case.landmarks_mri:
        np.testing.assert_array_equal(case.landmarks_mri[n], again.landmarks_mri[n])
    np.testing.assert_array_equal(case.T_ct_from_mri_femur.matrix, again.T_ct_from_mri_femur.matrix)
    other = make_case(SEED + 1, "small", modalities=())  # truth only: cheap
    assert other.params["anatomy"] != case.params["anatomy"]
    assert not np.allclose(other.T_ct_from_mri_femur.matrix, case.T_ct_from_mri_femur.matrix)


def test_geometry_is_clinical_and_oblique(case):
    for img in (case.mri, case.mri_fluid, case.labels, case.ct, case.labels_ct):
        check_geometry(img)
    sp = case.mri.GetSpacing()
    assert sp[2] / sp[0] >= 1.8  # thick slices
    assert 60 <= case.mri.GetSize()[0] <= 72 and 16 <= case.mri.GetSize()[2] <= 24
    d = np.array(case.mri.GetDirection()).reshape(3, 3)
    assert np.abs(d - np.eye(3)).max() > 0.1  # non-identity direction
    assert np.linalg.norm(case.mri.GetOrigin()) > 10.0
    assert case.labels.GetPixelID() == sitk.sitkUInt8
    counts = check_label_map(case.labels, required=("femur", "necrosis", "pelvis"))
    assert counts["necrosis"] > 20 and counts["femur"] > 1000 and counts["pelvis"] > 500


def test_landmarks_and_truth_are_exact(case):
    names = list(case.landmarks_mri)
    assert len(names) >= 20 and set(names) == set(case.landmarks_ct)
    for needed in ("lesion_centroid", "head_centre", "greater_trochanter_tip", "lesser_trochanter",
                   "acetabulum_roof", "lesion_boundary_1", "head_surface_superior", "neck_surface_superior"):
        assert needed in names
    assert len(case.landmark_names("femur")) >= 15 and len(case.landmark_names("pelvis")) >= 5
    # the lesion and head landmarks are inside both images (others may fall outside a small field)
    outside = case.params["landmarks_outside_fov"]
    for n in ("lesion_centroid", "head_centre", *[f"lesion_boundary_{k}" for k in range(1, 7)]):
        assert n not in outside["mri"] and n not in outside["ct"], n
    assert len(outside["mri"]) <= 4 and len(outside["ct"]) <= 4
    for n in names:
        T = case.T_ct_from_mri_femur if case.landmark_structure[n] == "femur" else case.T_ct_from_mri_pelvis
        np.testing.assert_allclose(T.apply(case.landmarks_mri[n]), case.landmarks_ct[n], atol=1e-9)
        np.testing.assert_allclose(case.map_mri_to_ct(case.landmarks_mri[n], case.landmark_structure[n]),
                                   case.landmarks_ct[n], atol=1e-9)
    # the femur rotates about the head centre: both motions agree there
    h = case.landmarks_mri["head_centre"]
    np.testing.assert_allclose(case.T_ct_from_mri_femur.apply(h), case.T_ct_from_mri_pelvis.apply(h), atol=1e-9)


def test_surface_landmarks_lie_on_the_continuous_surfaces(case):
    model = HipModel(case.params["anatomy"])
    for n in case.landmark_names("femur"):
        x = case.landmarks_mri[n]
        if n.startswith("lesion_boundary"):
            assert abs(model.lesion_sdf(x[None])[0]) < 1e-6, n
        elif n.startswith(("head_surface", "neck_surface", "shaft_", "greater_", "lesser_")):
            assert abs(model.femur_sdf(x[None])[0]) < 1e-6, n
    for n in case.landmark_names("pelvis"):
        assert abs(model.pelvis_sdf(case.landmarks_mri[n][None])[0]) < 1e-6, n


def test_lesion_landmark_sits_in_the_lesion_in_both_renderings(case):
    """The lesion centroid is lesion in the MRI labels and, at its intraop position, in the
    labels rendered on the CT grid; a point of healthy femur is femur in both."""
    assert _label_at(case.labels, case.landmarks_mri["lesion_centroid"]) == 2
    assert _label_at(case.labels_ct, case.landmarks_ct["lesion_centroid"]) == 2
    # the CT image itself: trabecular-range HU at the lesion, cortical HU in the shaft wall
    ct = sitk.GetArrayViewFromImage(case.ct)
    ijk = np.round(index_from_lps(case.ct, case.landmarks_ct["lesion_centroid"])).astype(int)
    assert 100 < ct[ijk[2], ijk[1], ijk[0]] < 500
    # the pelvis transform is not the femur's: mapping the greater trochanter with it misses
    gt = case.landmarks_mri["greater_trochanter_tip"]
    wrong = case.T_ct_from_mri_pelvis.apply(gt)
    assert np.linalg.norm(wrong - case.landmarks_ct["greater_trochanter_tip"]) > 3.0


def test_lesion_volume_agrees_across_modalities(case):
    true_mm3 = case.params["lesion_volume_mm3"]
    v_mri = float((sitk.GetArrayViewFromImage(case.labels) == 2).sum() * np.prod(case.labels.GetSpacing()))
    v_ct = float((sitk.GetArrayViewFromImage(case.labels_ct) == 2).sum() * np.prod(case.labels_ct.GetSpacing()))
    # partial-volume error: measured 0.2-1.6 % (MRI, 3.5 mm slices) and 0.1-1.2 % (CT) on seeds 0-5
    assert v_mri == pytest.approx(true_mm3, rel=0.05)
    assert v_ct == pytest.approx(true_mm3, rel=0.03)
    assert 0.02 < case.params["lesion_head_fraction"] < 0.6


def test_contrasts_are_tissue_like(case):
    lab = sitk.GetArrayViewFromImage(case.labels)
    t1 = sitk.GetArrayViewFromImage(case.mri)
    fluid = sitk.GetArrayViewFromImage(case.mri_fluid)
    les, femur = lab == 2, lab == 1
    assert np.median(t1[les]) < 0.7 * np.median(t1[femur])  # lesion dark on T1 (fatty marrow bright)
    assert np.median(fluid[les]) > 2.0 * np.median(fluid[femur])  # lesion bright on STIR
    ct = sitk.GetArrayViewFromImage(case.ct)
    lab_ct = sitk.GetArrayViewFromImage(case.labels_ct)
    assert np.percentile(ct[lab_ct == 1], 99) > 1000  # cortical bone
    assert -1100 < np.percentile(ct[lab_ct == 0], 5) < -60  # fat and air outside the bone
    assert 20 < np.median(ct[lab_ct == 0]) < 70  # mostly muscle


def test_pose_within_the_stated_ranges():
    sides = set()
    for seed in range(6):
        c = make_case(seed, "small", modalities=())
        sides.add(c.side)
        rel = c.T_ct_from_mri_pelvis.inverse() @ c.T_ct_from_mri_femur
        assert 15.0 - 1e-9 <= c.T_ct_from_mri_pelvis.rotation_angle_deg <= 30.0 + 1e-9
        move = c.landmarks_ct["head_centre"] - c.landmarks_mri["head_centre"]
        assert 20.0 - 1e-9 <= np.linalg.norm(move) <= 40.0 + 1e-9
        assert np.abs(c.params["pose"]["femur_flexion_abduction_rotation_deg"]).max() <= 20.0
        assert rel.rotation_angle_deg > 1.0
        assert 80.0 <= abs(c.landmarks_mri["head_centre"][0]) <= 105.0  # off the isocentre
    assert sides == {"left", "right"}


def test_overrides_and_bad_options():
    c = make_case(1, "small", modalities=(), max_rotation_deg=0, max_translation_mm=0, max_femur_deg=0,
                  side="left", lesion_size="large", arco_stage=3)
    np.testing.assert_allclose(c.T_ct_from_mri_femur.matrix, np.eye(4), atol=1e-12)
    assert c.side == "left" and c.params["anatomy"]["lesion"]["size"] == "large"
    assert c.params["anatomy"]["lesion"]["collapse_mm"] > 1.0
    with pytest.raises(ConfigError, match="unknown phantom option"):
        make_case(1, "small", modalities=(), max_rotation=3)
    with pytest.raises(ConfigError, match="preset"):
        make_case(1, "huge")
    with pytest.raises(ConfigError, match="modality"):
        make_case(1, "small", modalities=("pet",))
    with pytest.raises(ConfigError, match="lesion_size"):
        make_case(1, "small", modalities=(), lesion_size="xl")
    with pytest.raises(ConfigError, match="max_rotation_deg: expected a value like 30.0"):
        make_case(1, "small", modalities=(), max_rotation_deg="abc")
    with pytest.raises(ConfigError, match="mri_spacing_mm"):
        make_case(1, "small", modalities=(), mri_spacing_mm=[1.0, 1.0])
    with pytest.raises(ConfigError, match="side"):
        make_case(1, "small", modalities=(), side="middle")


def test_write_load_round_trip(case, tmp_path):
    out = case.write(tmp_path / "c")
    for f in ("mri_t1.nii.gz", "mri_fluid.nii.gz", "labels.nii.gz", "ct.nii.gz", "labels_ct.nii.gz",
              "landmarks_mri.mrk.json", "landmarks_ct.mrk.json", "landmarks.json", "truth.json",
              "T_ct_from_mri_femur.h5", "T_ct_from_mri_femur.h5.json", "README.txt"):
        assert (out / f).is_file(), f
    back = load_case(out)
    a, b = _arrays(case), _arrays(back)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        # NIfTI stores the orientation in single precision
        assert getattr(case, k).GetDirection() == pytest.approx(getattr(back, k).GetDirection(), abs=1e-6)
        assert getattr(case, k).GetOrigin() == pytest.approx(getattr(back, k).GetOrigin(), abs=1e-4)
    for n in case.landmarks_mri:
        np.testing.assert_allclose(back.landmarks_mri[n], case.landmarks_mri[n], atol=1e-12)
        np.testing.assert_allclose(back.landmarks_ct[n], case.landmarks_ct[n], atol=1e-12)
    np.testing.assert_allclose(back.T_ct_from_mri_femur.matrix, case.T_ct_from_mri_femur.matrix, atol=1e-12)
    h5 = read_transform(out / "T_ct_from_mri_femur.h5")
    assert (h5.to_frame, h5.from_frame) == ("ct", "mri")
    np.testing.assert_allclose(h5.matrix, case.T_ct_from_mri_femur.matrix, atol=1e-9)
    mk = read_points(out / "landmarks_ct.mrk.json")
    np.testing.assert_allclose(mk["lesion_centroid"], case.landmarks_ct["lesion_centroid"], atol=1e-6)
    assert back.params == case.params
    assert "left" in (out / "README.txt").read_text() or "right" in (out / "README.txt").read_text()


def test_distortion_model_round_trip_and_size():
    d = {"magnitude_at_150_mm": 1.5, "axis_coefficients": [1.0, -0.7, 0.8], "through_plane_coefficient": 0.3}
    assert np.linalg.norm(distortion_mm(np.array([[150.0, 0, 0]]), d)) == pytest.approx(1.5, abs=1e-12)
    rng = np.random.default_rng(0)
    x = rng.uniform(-200, 200, size=(200, 3))
    np.testing.assert_allclose(undistort(distort(x, d), d), x, atol=1e-9)
    assert chemical_shift_mm(1.5, 200.0, 1.8) == pytest.approx(3.5 * 42.577 * 1.5 / 200.0 * 1.8)


@pytest.fixture(scope="module")
def distorted():
    return make_case(SEED, "small-distorted", modalities=("mri",))


def test_distorted_mri_moves_landmarks_honestly(case, distorted):
    """With gradient nonlinearity the MRI shows the bone displaced by ~0.5-2 mm; the truth
    mapping still hits the true CT positions exactly, and the CT truth is unchanged."""
    femur = distorted.landmark_names("femur")
    shift = np.array([np.linalg.norm(distorted.landmarks_mri[n] - case.landmarks_mri[n]) for n in femur])
    assert 0.2 < shift.mean() < 2.0 and shift.max() < 3.0
    for n in femur:
        np.testing.assert_allclose(distorted.landmarks_ct[n], case.landmarks_ct[n], atol=1e-9)
        np.testing.assert_allclose(distorted.map_mri_to_ct(distorted.landmarks_mri[n]), distorted.landmarks_ct[n],
                                   atol=1e-6)
    rigid = np.array([np.linalg.norm(distorted.T_ct_from_mri_femur.apply(distorted.landmarks_mri[n])
                                     - distorted.landmarks_ct[n]) for n in femur])
    assert rigid.max() > 0.2  # a rigid map of the distorted image cannot be exact
    # same grid as the undistorted case; the lesion is still lesion where the MRI shows it
    assert distorted.mri.GetOrigin() == case.mri.GetOrigin()
    assert _label_at(distorted.labels, distorted.landmarks_mri["lesion_centroid"]) == 2


def test_chemical_shift_moves_fat_signal_only():
    """Fat signal shifts along the readout direction; the labels (water) do not move."""
    on = make_case(SEED, "small", modalities=("mri",), chemical_shift=True, bandwidth_hz_per_px=120.0,
                   mri_noise_fraction=0.0, mri_fluid=False)
    off = make_case(SEED, "small", modalities=("mri",), mri_noise_fraction=0.0, mri_fluid=False)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(on.labels), sitk.GetArrayViewFromImage(off.labels))
    a, b = sitk.GetArrayFromImage(on.mri), sitk.GetArrayFromImage(off.mri)
    assert np.abs(a - b).max() > 200  # fat edges move by ~2 px
    assert np.median(np.abs(a - b)) < 1.0  # flat regions unchanged
    shift_px = on.params["mri"]["chemical_shift_mm"] / on.mri.GetSpacing()[on.params["mri"]["readout_axis"]]
    assert shift_px == pytest.approx(3.5 * 42.577 * 1.5 / 120.0, rel=1e-9)


def test_presets_are_consistent():
    for name, p in PRESETS.items():
        p.validate()
        assert p.name == name
    assert PRESETS["small"].gradient_nonlinearity_mm_at_150 == 0 and not PRESETS["small"].chemical_shift
    assert PRESETS["realistic-distorted"].gradient_nonlinearity_mm_at_150 > 0
    assert PRESETS["cbct"].ct_fov_radius_mm > 0
    assert PRESETS["realistic"].mri_spacing_mm[0] <= 0.8


def test_block_skipping_renders_exactly_like_brute_force(monkeypatch):
    """Uniform blocks filled from their centre, and supersampling only where an interface
    crosses the voxel, give the same images as brute-force rendering."""
    import phantoms.render as render

    opts = {"mri_fluid": False, "mri_fov_mm": (90.0, 60.0, 90.0), "ct_fov_mm": (90.0, 90.0, 90.0)}
    fast = make_case(2, "small-distorted", **opts)
    monkeypatch.setattr(render, "BLOCK_SAFETY", np.inf)  # every voxel evaluated, every edge supersampled
    slow = make_case(2, "small-distorted", **opts)
    for k in ("mri", "labels", "ct", "labels_ct"):
        np.testing.assert_array_equal(sitk.GetArrayViewFromImage(getattr(fast, k)),
                                      sitk.GetArrayViewFromImage(getattr(slow, k)), err_msg=k)


def test_lesion_variants_size_oedema_collapse():
    fr = [make_case(5, "small", modalities=(), lesion_size=s).params["lesion_head_fraction"]
          for s in ("small", "medium", "large")]
    assert 0.03 < fr[0] < fr[1] < fr[2] < 0.55
    assert fr[0] < 0.15 and fr[2] > 0.22
    # stage 3 depresses the head surface over the lesion; stage 2 leaves the sphere intact
    s2 = make_case(5, "small", modalities=(), arco_stage=2, oedema=False)
    s3 = make_case(5, "small", modalities=(), arco_stage=3)
    m2, m3 = HipModel(s2.params["anatomy"]), HipModel(s3.params["anatomy"])
    top = m3.collapse_point[None]
    assert m2.femur_sdf(top)[0] == pytest.approx(0.0, abs=1e-9)
    assert m3.femur_sdf(top)[0] == pytest.approx(s3.params["anatomy"]["lesion"]["collapse_mm"], abs=1e-9)
    # oedema: bright on the fluid-sensitive MRI around the lesion, absent without it
    opts = {"modalities": ("mri",), "arco_stage": 3, "mri_noise_fraction": 0.0, "mri_fov_mm": (90.0, 60.0, 90.0)}
    with_o = make_case(5, "small", oedema=True, **opts)
    no_o = make_case(5, "small", oedema=False, **opts)
    for c, bright in ((with_o, True), (no_o, False)):
        fluid = sitk.GetArrayViewFromImage(c.mri_fluid)
        femur = sitk.GetArrayViewFromImage(c.labels) == 1  # femur outside the lesion
        n_bright = int((fluid[femur] > 500).sum())
        assert (n_bright > 50) == bright, (bright, n_bright)
