"""The deformable stage's field algebra (exact, cheap) and its never-worse-than-rigid rule."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from navsvc.registration import RegistrationOptions, register_mri_to_ct
from navsvc.registration.deformable import mind_ssc, velocity_transform
from navsvc.registration.qa import jacobian_determinant_range
from navsvc.registration.synthetic import analytic_case
from navsvc.transforms import RigidTransform


def _grid():
    g = sitk.Image([20, 22, 18], sitk.sitkFloat32)
    g.SetSpacing((4.0, 4.0, 4.0))
    g.SetOrigin((10.0, -30.0, 50.0))
    return g


def test_velocity_field_round_trip_and_no_folding():
    g = _grid()
    torch.manual_seed(0)
    coarse = torch.randn(1, 3, 4, 4, 4) * 0.7  # voxels; ~3 mm peak displacement, like a distortion
    v = torch.nn.functional.interpolate(coarse, size=(18, 22, 20), mode="trilinear", align_corners=True)
    D, field = velocity_transform(v, g)
    inner = np.array([[x, y, z] for x in (30.0, 50.0) for y in (-10.0, 20.0) for z in (70.0, 90.0)])
    moved = D.apply(inner)
    assert np.linalg.norm(moved - inner, axis=1).max() > 0.5  # a real deformation
    back = D.inverse().apply(moved)
    assert np.abs(back - inner).max() < 0.1  # exact-ish inverse from -v
    jmin, jmax = jacobian_determinant_range(field)
    assert jmin > 0.0 and jmax < 3.0
    # composed with a rigid transform: the two directions still agree
    rigid = RigidTransform.from_euler_deg((5.0, -3.0, 8.0), (4.0, 2.0, -6.0), "ct", "mri", center_mm=(40, 0, 80))
    T_mri_from_ct = rigid.inverse() @ D
    T_ct_from_mri = D.inverse() @ rigid
    p_mri = rigid.inverse().apply(inner)
    assert np.abs(T_mri_from_ct.apply(T_ct_from_mri.apply(p_mri)) - p_mri).max() < 0.1


def test_mind_ssc_is_modality_independent():
    torch.manual_seed(0)
    x = torch.nn.functional.avg_pool3d(torch.rand(1, 1, 20, 20, 20), 3, 1, 1)
    a, b = mind_ssc(x), mind_ssc(1.0 - 2.0 * x)  # inverted contrast
    assert a.shape == (1, 12, 20, 20, 20)
    assert torch.allclose(a, b, atol=1e-4)
    assert not torch.allclose(a, mind_ssc(torch.roll(x, 2, dims=2)), atol=1e-2)


@pytest.mark.slow
def test_full_pipeline_never_worse_than_rigid():
    c = analytic_case(4, ct_spacing_mm=(2.0, 2.0, 2.0))
    names = sorted(c.landmarks_mri)
    lm = (np.array([c.landmarks_mri[n] for n in names]), np.array([c.landmarks_ct[n] for n in names]))
    r = register_mri_to_ct(c.mri, c.labels, c.ct, RegistrationOptions(method="navsvc"), landmarks=lm)
    tre_full = np.linalg.norm(r.T_ct_from_mri.apply(lm[0]) - lm[1], axis=1)
    tre_rigid = np.linalg.norm(r.T_ct_from_mri_rigid.apply(lm[0]) - lm[1], axis=1)
    assert tre_full.max() <= tre_rigid.max() + 0.02
    assert r.qa.verdict == "PASS", r.qa.reasons
    assert r.qa.figures["inverse_consistency_mm"] < 0.1
    assert "deformable" in r.timings_s and r.stages["deformable"]["device"] in ("cpu", "cuda")
