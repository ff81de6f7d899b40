"""Multi-view rigid pose recovery on a synthetic femur with known truth."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from navsvc.errors import Cancelled, InputError
from navsvc.fluoro.attenuation import AttenuationOptions, bone_attenuation
from navsvc.fluoro.drr import AttenuationVolume, render
from navsvc.fluoro.geometry import ViewGeometry, carm_pose
from navsvc.fluoro.pose import PoseOptions, perturb, register_views
from navsvc.imaging import make_image, voxel_centers_lps
from navsvc.progress import CancelToken
from navsvc.transforms import RigidTransform

HEAD = np.array([0.0, 0.0, 40.0])
LESION = HEAD + np.array([-5.0, -8.0, 8.0])


def _capsule(points, a, b, radius):
    ab = b - a
    t = np.clip(((points - a) @ ab) / (ab @ ab), 0, 1)
    return np.linalg.norm(points - (a + t[:, None] * ab), axis=1) < radius


def _femur_labels(size_z: int, origin_z_mm: float) -> sitk.Image:
    """A femur-like label map (head, neck, shaft, trochanter, lesion) on a thick-slice MRI-like grid."""
    spacing, size, origin = (1.2, 1.2, 3.5), (80, 80, size_z), np.array([-50.0, -50.0, origin_z_mm])
    grid = make_image(np.zeros(size[::-1], np.uint8), spacing, origin)
    p = voxel_centers_lps(grid)
    lab = np.zeros(len(p), np.uint8)
    neck_base = np.array([25.0, 5.0, 5.0])
    lab[np.linalg.norm(p - HEAD, axis=1) < 22] = 1
    lab[_capsule(p, HEAD, neck_base, 14)] = 1
    lab[_capsule(p, neck_base, np.array([30.0, 0.0, -100.0]), 15)] = 1
    lab[_capsule(p, np.array([35.0, 5.0, 15.0]), np.array([38.0, 5.0, -5.0]), 12)] = 1
    lab[np.linalg.norm(p - LESION, axis=1) < 7] = 2
    return make_image(lab.reshape(size[::-1]), spacing, origin)


@pytest.fixture(scope="module")
def femur_labels() -> sitk.Image:
    """The MRI's label map: its field of view cuts the shaft at z = -60 mm."""
    return _femur_labels(44, -60.0)


@pytest.fixture(scope="module")
def scene(femur_labels):
    """Two views (AP, lateral) of the femur at a known pose, rendered from a finer volume of the whole
    femur (the X-ray sees the shaft the MRI cut off) with soft tissue and detector noise, so the observed
    images are not the optimiser's own DRRs."""
    T_true = RigidTransform.from_euler_deg((5, -10, 20), (10, -20, 30), "world", "mri", center_mm=HEAD)
    iso = T_true.apply(HEAD)
    views = [ViewGeometry(1000.0, (1.0, 1.0), (128, 128), (63.5, 63.5), carm_pose(iso, 600.0, angle, 0.0), name)
             for name, angle in (("ap", 0.0), ("lat", 90.0))]
    whole_femur = _femur_labels(72, -130.0)
    fine = bone_attenuation(whole_femur, options=AttenuationOptions(spacing_mm=0.7, margin_mm=30.0, fov_taper_mm=0.0))
    arr = sitk.GetArrayFromImage(fine)
    pts = voxel_centers_lps(fine)
    # soft tissue around the bone (the attenuation volume renders bone in excess of it)
    soft = (np.linalg.norm((pts - HEAD)[:, :2], axis=1) < 80).reshape(arr.shape) * 0.018
    observed = make_image((arr + soft).astype(np.float32), fine.GetSpacing(), fine.GetOrigin(),
                          fine.GetDirection())
    with torch.no_grad():
        drrs = render(AttenuationVolume.from_image(observed), views,
                      torch.as_tensor(T_true.matrix, dtype=torch.float32), n_samples=256)
    rng = np.random.default_rng(0)
    images = [d.numpy() + rng.normal(0.0, 0.01, d.shape) for d in drrs]
    return T_true, views, images, iso


#: a local optimisation (no search, one start) for the tests that start at or near the truth
FAST = PoseOptions(n_starts=1, n_refine=1, search_translation_mm=0.0)


@pytest.mark.slow
def test_two_views_recover_the_pose_within_a_millimetre(femur_labels, scene):
    """The product's options (search, 3 candidates refined, rotations about the lesion): measured 0.11 mm
    (the observed femur is finer and uncut, the model is the cut, 3.5 mm-slice label; with one candidate
    refined 1.9 mm); 1.0 mm is the issue's goal."""
    T_true, views, images, iso = scene
    mu = bone_attenuation(femur_labels)
    T_start = perturb(T_true, 10.0, 10.0, iso, seed=1)
    assert np.linalg.norm(T_start.apply(LESION) - T_true.apply(LESION)) > 5.0
    result = register_views(mu, views, images, T_start, PoseOptions(), rotation_centre_mri=LESION)
    tre_mm = np.linalg.norm(result.T_world_from_mri.apply(LESION) - T_true.apply(LESION))
    assert tre_mm < 1.0, tre_mm
    assert min(result.similarity_per_view) > 0.8
    assert all(f > i for f, i in zip(result.similarity_per_view, result.similarity_initial_per_view, strict=True))


def test_progress_is_reported_and_cancel_stops(femur_labels, scene):
    T_true, views, images, iso = scene
    mu = bone_attenuation(femur_labels)
    token = CancelToken()
    seen: list[float] = []

    def progress(stage: str, fraction: float, message: str) -> None:
        seen.append(fraction)
        if len(seen) == 5:
            token.cancel("technician pressed cancel")

    with pytest.raises(Cancelled, match="technician pressed cancel"):
        register_views(mu, views, images, T_true, FAST, progress=progress, cancel=token)
    assert seen == sorted(seen) and 0 < seen[-1] < 1


def test_bad_inputs(femur_labels, scene):
    T_true, views, images, _ = scene
    mu = bone_attenuation(femur_labels)
    with pytest.raises(InputError, match="one image per view"):
        register_views(mu, views, images[:1], T_true)
    with pytest.raises(InputError, match="geometry says 128x128"):
        register_views(mu, views, [images[0][:100], images[1]], T_true)
    with pytest.raises(InputError, match="initial T_world_from_mri"):
        register_views(mu, views, images, T_true.inverse())
    with pytest.raises(InputError, match="search_step_mm > 0"):
        register_views(mu, views, images, T_true, PoseOptions(search_step_mm=0.0))
    with pytest.raises(InputError, match="search_translation_mm >= 0"):
        register_views(mu, views, images, T_true, PoseOptions(search_translation_mm=-1.0))


# -- the whole fluoroscopy registration with QA -------------------------------------------
def _views(scene):
    from navsvc.fluoro.views import FluoroView

    _, views, images, _ = scene
    return [FluoroView(g, im.astype(np.float32), g.name) for g, im in zip(views, images, strict=True)]


@pytest.mark.slow
def test_register_mri_to_fluoro_passes_from_15_degrees_and_15_mm_off(femur_labels, scene):
    """The issue's rough start (15 mm and 15 degrees off), several starts, the full QA gate."""
    from navsvc.fluoro.register import FluoroOptions, register_mri_to_fluoro

    T_true, _, _, iso = scene
    T_start = perturb(T_true, 15.0, 15.0, iso, seed=4)
    assert np.linalg.norm(T_start.apply(LESION) - T_true.apply(LESION)) > 10.0
    result = register_mri_to_fluoro(femur_labels, _views(scene), FluoroOptions(pose=PoseOptions(n_starts=7)),
                                    T_world_from_mri_init=T_start)
    tre_mm = np.linalg.norm(result.T_world_from_mri.apply(LESION) - T_true.apply(LESION))
    print("tre_mm", tre_mm, result.qa.verdict, result.qa.reasons, result.qa.figures)
    # measured 0.31 mm, PASS, with the pose search (rotations about the lesion); the optimiser before it
    # ended 1.31 mm off and the curvature check FAILed that pose as "not at a maximum"
    assert tre_mm < 1.0, tre_mm
    assert result.qa.verdict in ("PASS", "WARN") and not result.qa.reasons, result.qa.reasons
    assert result.qa.figures["disagreement_mm_ap"] < 1.0


def test_views_that_disagree_fail(femur_labels, scene):
    """The lateral image exchanged for one of a different patient pose: the gate must FAIL."""
    from navsvc.fluoro.register import FluoroOptions, register_mri_to_fluoro
    from navsvc.fluoro.views import FluoroView

    T_true, views, images, iso = scene
    T_other = perturb(T_true, 12.0, 15.0, iso, seed=7)
    fine = bone_attenuation(femur_labels, options=AttenuationOptions(spacing_mm=1.0))
    with torch.no_grad():
        other = render(AttenuationVolume.from_image(fine), views[1:],
                       torch.as_tensor(T_other.matrix, dtype=torch.float32), n_samples=192)[0].numpy()
    fviews = [FluoroView(views[0], images[0].astype(np.float32)), FluoroView(views[1], other.astype(np.float32))]
    result = register_mri_to_fluoro(femur_labels, fviews, FluoroOptions(pose=FAST),
                                    T_world_from_mri_init=T_true)
    assert result.qa.verdict == "FAIL", result.qa.to_dict()


def test_single_view_warns_and_parallel_views_are_refused(femur_labels, scene):
    from navsvc.fluoro.register import FluoroOptions, register_mri_to_fluoro
    from navsvc.fluoro.views import FluoroView

    fviews = _views(scene)
    result = register_mri_to_fluoro(femur_labels, fviews[:1], FluoroOptions(pose=FAST),
                                    T_world_from_mri_init=scene[0])
    assert result.qa.verdict in ("WARN", "FAIL") and any("single view" in r for r in result.qa.reasons)
    twin = FluoroView(ViewGeometry(**{**fviews[0].geometry.__dict__, "name": "ap2"}), fviews[0].line_integral)
    with pytest.raises(InputError, match="degrees apart"):
        register_mri_to_fluoro(femur_labels, [fviews[0], twin])


def test_overlay_png_shows_every_view(tmp_path, femur_labels, scene):
    from navsvc.fluoro.figures import femur_surface_points_mri, write_overlay

    T_true = scene[0]
    surface = femur_surface_points_mri(femur_labels)
    # boundary voxels lie on the femur's surface: about the head radius (22 mm) from the head centre
    near_head = surface[np.linalg.norm(surface - HEAD, axis=1) < 30]
    assert np.median(np.linalg.norm(near_head - HEAD, axis=1)) == pytest.approx(21.0, abs=2.0)
    out = write_overlay(tmp_path / "fluoro_overlay.png", _views(scene), femur_labels, T_true, {"lesion": LESION})
    import matplotlib.image

    img = matplotlib.image.imread(out)
    assert img.shape[1] > img.shape[0] > 200  # two panels side by side


@pytest.mark.slow
def test_bench_fluoro_runs_and_writes_json(tmp_path):
    """`navsvc bench fluoro` on one small phantom case: every configuration reported, JSON written."""
    import json

    from navsvc import cli

    out = tmp_path / "fluoro.json"
    assert cli.main(["bench", "fluoro", "--cases", "1", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert set(data["summary"]) == {"two-view", "single-view", "one-start"}
    assert len(data["rows"]) == 3
    for row in data["rows"]:
        assert np.isfinite(row["lesion_tre_mm"]) and row["start_tre_mm"] == pytest.approx(data["rows"][0]["start_tre_mm"])
        assert row["verdict"] in ("PASS", "WARN", "FAIL")
