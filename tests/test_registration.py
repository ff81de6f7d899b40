"""MRI -> CT registration on small analytic phantoms with exactly known femur motion.

Figures asserted here were measured on the phantoms below (seeded); tolerances are about
2-3x the measured values so that a real regression (a lost sub-voxel refinement, a frame
mix-up, a broken inverse) fails while noise does not.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from navsvc.errors import Cancelled, InvalidImageError, InvalidLabelsError
from navsvc.progress import CancelToken
from navsvc.registration import RegistrationOptions, register_mri_to_ct, write_result
from navsvc.registration.synthetic import analytic_case
from navsvc.transforms import RigidTransform, read_transform, resample


def _lm(case):
    names = sorted(case.landmarks_mri)
    return (np.array([case.landmarks_mri[n] for n in names]), np.array([case.landmarks_ct[n] for n in names]))


@pytest.fixture(scope="module")
def case():
    return analytic_case(0, rotation_deg=(12.0, -8.0, 20.0), translation_mm=(25.0, -15.0, 20.0))


@pytest.fixture(scope="module")
def rigid_result(case):
    return register_mri_to_ct(case.mri, case.labels, case.ct, RegistrationOptions(method="rigid"),
                              landmarks=_lm(case), targets_mri=_lm(case)[0])


def test_rigid_recovers_known_transform(case, rigid_result):
    lm_mri, lm_ct = _lm(case)
    tre = np.linalg.norm(rigid_result.T_ct_from_mri.apply(lm_mri) - lm_ct, axis=1)
    # measured ~0.03 mean / 0.04 max mm on this phantom
    assert tre.mean() < 0.1
    assert tre.max() < 0.15
    assert rigid_result.qa.verdict == "PASS", rigid_result.qa.reasons
    assert rigid_result.qa.figures["tre_max_mm"] == pytest.approx(tre.max())
    assert rigid_result.qa.figures["surface_distance_mean_mm"] < 1.0
    assert set(rigid_result.timings_s) >= {"checks", "surfaces", "rigid_surface", "rigid_intensity", "qa", "total"}


def test_both_directions_agree(case, rigid_result):
    lm_mri, _ = _lm(case)
    back = rigid_result.T_mri_from_ct.apply(rigid_result.T_ct_from_mri.apply(lm_mri))
    assert np.abs(back - lm_mri).max() < 1e-6
    assert rigid_result.T_ct_from_mri.name == "T_ct_from_mri"
    assert rigid_result.T_mri_from_ct.name == "T_mri_from_ct"
    # T_mri_from_ct resamples the MRI labels onto the CT: the lesion lands on the true lesion
    true_lesion = case.T_ct_from_mri_femur.apply(case.landmarks_mri["lesion_center"])
    on_ct = resample(sitk.Cast(case.labels == 2, sitk.sitkUInt8), case.ct, rigid_result.T_mri_from_ct, interpolator="nearest")
    idx = case.ct.TransformPhysicalPointToIndex(tuple(true_lesion))
    assert on_ct[idx] == 1


@pytest.mark.slow
def test_large_pose_needs_no_initialisation():
    """30 degrees and 40 mm between the scans: the global surface stage finds the pose."""
    c = analytic_case(3, rotation_deg=(10.0, -15.0, 30.0), translation_mm=(40.0, -25.0, 30.0),
                      ct_spacing_mm=(2.0, 2.0, 2.0))
    r = register_mri_to_ct(c.mri, c.labels, c.ct, RegistrationOptions(method="rigid"), landmarks=_lm(c))
    assert r.qa.verdict == "PASS", r.qa.reasons
    assert r.qa.figures["tre_max_mm"] < 0.25
    assert r.qa.figures["rotation_deg"] == pytest.approx(c.T_ct_from_mri_femur.rotation_angle_deg, abs=0.2)


@pytest.mark.parametrize("wrong", ["other_hip", "no_femur", "other_patient"])
def test_gate_fails_wrong_registrations(wrong):
    kwargs = {"other_hip": {"ct_side": "right"}, "no_femur": {"ct_without_femur": True},
              "other_patient": {"ct_other_patient": True}}[wrong]
    c = analytic_case(1, ct_spacing_mm=(2.0, 2.0, 2.0), **kwargs)
    r = register_mri_to_ct(c.mri, c.labels, c.ct, RegistrationOptions(method="rigid", ransac_starts=1))
    assert r.qa.verdict == "FAIL"
    assert any("surface distance" in reason for reason in r.qa.reasons), r.qa.reasons
    assert r.qa.figures["surface_distance_mean_mm"] > 2.5


def test_bad_inputs_raise_clear_errors(case):
    no_lesion = sitk.Cast(case.labels == 1, sitk.sitkUInt8)
    with pytest.raises(InvalidLabelsError, match="necrosis"):
        register_mri_to_ct(case.mri, no_lesion, case.ct)
    shifted = sitk.Image(case.labels)
    shifted.SetOrigin([o + 5.0 for o in case.labels.GetOrigin()])
    with pytest.raises(InvalidImageError, match="grid"):
        register_mri_to_ct(case.mri, shifted, case.ct)
    normalised = sitk.RescaleIntensity(case.ct, 0.0, 1.0)
    with pytest.raises(InvalidImageError, match="Hounsfield"):
        register_mri_to_ct(case.mri, case.labels, normalised)


def test_cancel_raises_cancelled(case):
    token = CancelToken()
    token.cancel("operator stopped it")
    with pytest.raises(Cancelled, match="operator"):
        register_mri_to_ct(case.mri, case.labels, case.ct, RegistrationOptions(method="rigid"), cancel=token)


def test_write_result_files(tmp_path, case, rigid_result):
    files = write_result(rigid_result, tmp_path, mri=case.mri, labels=case.labels, ct=case.ct,
                         points_mri=case.landmarks_mri)
    for name in ("T_ct_from_mri.h5", "T_mri_from_ct.h5", "qa.json", "lesion_in_ct.nii.gz", "overlay.png",
                 "points_ct.mrk.json", "T_ct_from_mri.h5.json"):
        assert (tmp_path / name).is_file(), name
    T = read_transform(files["T_ct_from_mri"])
    assert isinstance(T, RigidTransform) and (T.to_frame, T.from_frame) == ("ct", "mri")
    assert np.allclose(T.matrix, rigid_result.T_ct_from_mri.matrix, atol=1e-9)
    qa = json.loads((tmp_path / "qa.json").read_text())
    assert qa["verdict"] == "PASS" and qa["method"] == "rigid" and "versions" in qa
    from navsvc.markups import read_points

    pts = read_points(tmp_path / "points_ct.mrk.json")
    err = np.linalg.norm(pts["lesion_center"] - case.landmarks_ct["lesion_center"])
    assert err < 0.15
    lesion = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "lesion_in_ct.nii.gz")))
    assert set(np.unique(lesion)) == {0, 2}
