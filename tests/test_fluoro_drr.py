"""The DRR renderer against analytic line integrals, and its gradients against finite differences."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from navsvc.fluoro.drr import AttenuationVolume, pose_from_params, render, rodrigues
from navsvc.fluoro.geometry import ViewGeometry, carm_pose
from navsvc.imaging import make_image, voxel_centers_lps
from navsvc.transforms import rotation_matrix_from_axis_angle

SPHERE_CENTRE = np.array([12.0, -7.0, 30.0])
SPHERE_RADIUS_MM = 25.0
MU = 0.02


def sphere_volume(spacing_mm=(1.0, 1.0, 1.25)) -> AttenuationVolume:
    """A uniform sphere with a one-voxel linear partial-volume ramp (effective radius exact)."""
    size = (64, 60, 48)
    origin = SPHERE_CENTRE - np.array(size) * np.array(spacing_mm) / 2 + np.array([1.3, -0.7, 0.4])
    grid = make_image(np.zeros(size[::-1], dtype=np.float32), spacing_mm, origin)
    r = np.linalg.norm(voxel_centers_lps(grid) - SPHERE_CENTRE, axis=1)
    # ramp over +- half a voxel around the surface
    frac = np.clip(SPHERE_RADIUS_MM - r + 0.5, 0.0, 1.0).reshape(size[::-1])
    return AttenuationVolume.from_image(make_image((MU * frac).astype(np.float32), spacing_mm, origin))


def analytic_chords(view: ViewGeometry, centre: np.ndarray, radius: float) -> np.ndarray:
    det = view.T_world_from_carm.apply(view.detector_points_carm().reshape(-1, 3))
    src = view.source_world
    d = (det - src) / np.linalg.norm(det - src, axis=1, keepdims=True)
    to_c = centre - src
    dist = np.linalg.norm(to_c - (to_c @ d.T)[:, None] * d, axis=1)
    chord = 2.0 * np.sqrt(np.clip(radius**2 - dist**2, 0.0, None))
    return chord.reshape(view.size_px[1], view.size_px[0])


@pytest.fixture(scope="module")
def views() -> list[ViewGeometry]:
    out = []
    for name, primary, secondary in (("ap", 0.0, 0.0), ("lat", 90.0, 0.0), ("oblique", 35.0, 15.0)):
        pose = carm_pose(SPHERE_CENTRE + np.array([3.0, 2.0, -4.0]), 600.0, primary, secondary)
        out.append(ViewGeometry(1000.0, (1.6, 1.4), (40, 36), (21.3, 16.8), pose, name))
    return out


def test_sphere_line_integrals_match_analytic_chords(views):
    vol = sphere_volume()
    drrs = render(vol, views, torch.eye(4, dtype=torch.float64), n_samples=256)
    for view, drr in zip(views, drrs, strict=True):
        expected = MU * analytic_chords(view, SPHERE_CENTRE, SPHERE_RADIUS_MM)
        got = drr.numpy()
        assert got.shape == expected.shape
        peak = expected.max()
        assert peak == pytest.approx(MU * 2 * SPHERE_RADIUS_MM, rel=0.02)
        interior = expected > 0.5 * peak  # away from the rim, where partial volume dominates
        rel = np.abs(got[interior] - expected[interior]) / peak
        assert rel.max() < 0.015, (view.name, rel.max())
        # at the rim the chord is steep (2*sqrt(2*R*delta)): the 1-voxel partial-volume ramp dominates
        assert np.abs(got - expected).max() < 0.12 * peak


def test_moving_the_volume_moves_the_projection(views):
    """A pose that shifts the sphere by +10 mm along x gives the same DRR as a sphere placed there."""
    vol = sphere_volume()
    shift = torch.eye(4, dtype=torch.float64)
    shift[0, 3] = 10.0
    drr = render(vol, views[:1], shift, n_samples=256)[0].numpy()
    expected = MU * analytic_chords(views[0], SPHERE_CENTRE + [10.0, 0.0, 0.0], SPHERE_RADIUS_MM)
    interior = expected > 0.5 * expected.max()
    assert np.abs(drr[interior] - expected[interior]).max() < 0.015 * expected.max()


def test_stride_renders_block_centres(views):
    vol = sphere_volume()
    full = render(vol, views[:1], torch.eye(4, dtype=torch.float64), n_samples=128, stride=1)[0]
    coarse = render(vol, views[:1], torch.eye(4, dtype=torch.float64), n_samples=128, stride=2)[0]
    assert coarse.shape == (18, 20)
    # a stride-2 sample sits at the centre of a 2x2 block: compare with the block mean
    block = full.reshape(18, 2, 20, 2).mean(dim=(1, 3))
    assert torch.abs(coarse - block).max() < 0.05 * full.max()


def test_rodrigues_matches_axis_angle():
    v = torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64)
    angle = float(torch.linalg.norm(v))
    expected = rotation_matrix_from_axis_angle((v / angle).numpy(), np.rad2deg(angle))
    np.testing.assert_allclose(rodrigues(v).numpy(), expected, atol=1e-12)
    np.testing.assert_allclose(rodrigues(torch.zeros(3, dtype=torch.float64)).numpy(), np.eye(3), atol=1e-12)


def test_gradients_match_finite_differences():
    """d(loss)/d(pose params) by autograd equals central finite differences (float64)."""
    rng = np.random.default_rng(3)
    arr = rng.random((10, 12, 14)) * 0.01
    arr[3:7, 4:9, 5:10] += 0.03
    from SimpleITK import GetImageFromArray

    img = GetImageFromArray(arr)
    img.SetSpacing((2.0, 2.0, 2.5))
    img.SetOrigin((-14.0, -12.0, -12.5))
    vol = AttenuationVolume.from_image(img, dtype=torch.float64)
    view = ViewGeometry(800.0, (2.0, 2.0), (12, 10), (5.5, 4.5), carm_pose((0, 0, 0), 500.0, 20.0, 10.0), "v")
    centre = torch.zeros(3, dtype=torch.float64)
    T0 = torch.eye(4, dtype=torch.float64)
    weights = torch.as_tensor(rng.random((10, 12)), dtype=torch.float64)

    def loss(params: torch.Tensor) -> torch.Tensor:
        drr = render(vol, [view], pose_from_params(params, T0, centre), n_samples=24)[0]
        return (drr * weights).sum()

    params = torch.tensor([0.02, -0.03, 0.05, 0.7, -0.4, 0.3], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(loss, (params,), eps=1e-5, atol=1e-6, rtol=1e-3)
