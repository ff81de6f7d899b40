"""Fluoroscopy on real anatomy: the real pelvic CT projected at known C-arm poses
(navsvc.fluoro.realct). Skipped with a message when ../shared/data/real-ct-pelvis is absent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from navsvc.fluoro.attenuation import bone_attenuation
from navsvc.fluoro.pose import PoseOptions
from navsvc.fluoro.realct import (
    RealCtViewOptions,
    attenuation_from_hu,
    make_real_ct_fluoro_case,
    project_ct,
    recover,
)
from navsvc.fluoro.register import FluoroOptions, similarity_at
from navsvc.frames import WORLD
from navsvc.registration.realct import find_data_dir
from navsvc.transforms import RigidTransform

REAL_CT_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "real-ct-pelvis"


def test_attenuation_from_hu_is_water_scaled():
    hu = sitk.GetImageFromArray(np.array([[[-1000.0, -3000.0, 0.0, 1000.0]]], np.float32))
    mu = sitk.GetArrayFromImage(attenuation_from_hu(hu)).ravel()
    np.testing.assert_allclose(mu, [0.0, 0.0, 0.02, 0.04], atol=1e-7)


@pytest.fixture(scope="module")
def right_femur_only():
    if find_data_dir(REAL_CT_DIR) is None:
        pytest.skip(f"real CT data absent: expected {REAL_CT_DIR}/example_ct.nii.gz (../shared/data beside the repo)")
    return make_real_ct_fluoro_case(REAL_CT_DIR, side="right", options=RealCtViewOptions(content="femur-only"))


def test_views_are_centred_on_the_femoral_head_and_seeded(real_ct_dir):
    fc = make_real_ct_fluoro_case(real_ct_dir)  # the femur with the screws (left), whole CT in the beam
    assert fc.side == "left"
    again = project_ct(fc.case.ct, fc.isocentre_world)
    beams = [v.geometry.T_world_from_carm.rotation[:, 2] for v in fc.views]
    assert abs(float(beams[0] @ beams[1])) < 1e-9  # AP and lateral, 90 degrees apart
    for view, view2 in zip(fc.views, again, strict=True):
        assert view.line_integral.shape == (80, 80)
        np.testing.assert_array_equal(view.line_integral, view2.line_integral)  # fixed noise seed
        uv = view.geometry.project(fc.case.landmarks_ct["lesion_center"])[0]
        np.testing.assert_allclose(uv, [39.5, 39.5], atol=1e-6)  # isocentre at the femoral head
    # the lateral beam crosses both hips: far more attenuation than the AP one
    assert fc.views[1].line_integral.max() > 1.5 * fc.views[0].line_integral.max()


def test_truth_is_the_best_of_nearby_poses(right_femur_only):
    """The femur label model at the true T_world_from_mri matches the real femur's views better than
    at 4 mm shifts along each axis (the geometry chain from the case to the views is right)."""
    fc = right_femur_only
    mu = bone_attenuation(fc.case.labels)
    at_truth = np.mean(similarity_at(mu, fc.views, fc.T_world_from_mri_true, device="cpu"))
    for axis in range(3):
        for sign in (-1.0, 1.0):
            shift = np.zeros(3)
            shift[axis] = 4.0 * sign
            moved = RigidTransform.from_rotation_translation(np.eye(3), shift, WORLD, WORLD) @ fc.T_world_from_mri_true
            assert np.mean(similarity_at(mu, fc.views, moved, device="cpu")) < at_truth - 0.02, (axis, sign)


@pytest.mark.slow
def test_real_femur_recovered_from_its_own_projections(right_femur_only):
    """Right femur (no metal), views of its bone alone: from 10 deg / 10 mm off, the femoral head lands
    within 3.0 mm (measured 1.93 mm with these cheap options: the pose search, one candidate refined at
    60 / 20 iterations; 2.43 mm with the old 3-start optimiser; see docs/benchmarks.md). The whole-CT views are not recovered yet."""
    torch.manual_seed(0)
    # the views show the femur alone, so no pelvis stage
    row = recover(right_femur_only, FluoroOptions(pose=PoseOptions(n_refine=1, iterations=(60, 20)),
                                                  check_view_agreement=False, pelvis_first=False))
    assert row["start_tre_mm"] == pytest.approx(10.0, abs=1e-6)
    assert row["head_tre_mm"] < 3.0, row
    assert row["landmark_tre_mean_mm"] < 3.5, row  # measured 2.45 (2.69 with the old optimiser)
