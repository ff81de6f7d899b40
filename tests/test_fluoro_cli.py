"""`navsvc register --fluoro` end to end on a small phantom's own views, and bad geometry errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from navsvc import cli
from navsvc.errors import InputError
from navsvc.fluoro.pose import perturb
from navsvc.fluoro.views import read_view
from navsvc.frames import MRI, WORLD
from navsvc.markups import fiducials, read_points, write_markups
from navsvc.transforms import RigidTransform, read_transform, write_transform
from phantoms import make_case

SEED = 200


@pytest.fixture(scope="module")
def case_dir(tmp_path_factory):
    case = make_case(SEED, "small", modalities=("mri", "fluoro"))
    d = case.write(tmp_path_factory.mktemp("fluoro-case") / "case")
    return case, d


def test_register_fluoro_cli_end_to_end(case_dir, tmp_path):
    """From a start 5 degrees / 5 mm off: lesion within 1.0 mm (measured 0.2-0.4 mm), every file written."""
    case, d = case_dir
    T_true = RigidTransform(case.T_ct_from_mri_femur.matrix, WORLD, MRI)
    lesion_mri, lesion_world = case.landmarks_mri["lesion_centroid"], case.landmarks_ct["lesion_centroid"]
    init = write_transform(tmp_path / "init.h5", perturb(T_true, 5.0, 5.0, lesion_world, seed=3))
    points = write_markups(tmp_path / "points.mrk.json",
                           [fiducials("plan", {"target": lesion_mri, "head": case.landmarks_mri["head_centre"]})])
    out = tmp_path / "out"
    mri = d / "mri_t1.nii.gz"
    seg = d / "labels.nii.gz"
    views = sorted((d / "fluoro").glob("view_*.nii.gz"))
    code = cli.main(["register", "--mri", str(mri), "--seg", str(seg), "--fluoro", *map(str, views),
                     "--init", str(init), "--starts", "1", "--points", str(points), "--out", str(out),
                     "--no-progress"])
    qa = json.loads((out / "qa.json").read_text())
    T = read_transform(out / "T_world_from_mri.h5", WORLD, MRI)
    tre_mm = float(np.linalg.norm(T.apply(lesion_mri) - lesion_world))
    assert tre_mm < 1.0, (tre_mm, qa["qa"])
    assert code == 0 and qa["qa"]["verdict"] in ("PASS", "WARN"), qa["qa"]
    back = read_transform(out / "T_mri_from_world.h5", MRI, WORLD)
    np.testing.assert_allclose((back @ T).matrix, np.eye(4), atol=1e-9)
    mapped = read_points(out / "points_world.mrk.json")
    assert np.linalg.norm(mapped["target"] - lesion_world) == pytest.approx(tre_mm, abs=1e-6)
    assert {p.name for p in out.glob("overlay_*.png")} == {"overlay_view_0.png", "overlay_view_1.png"}


def test_missing_or_inconsistent_geometry_is_a_clear_error(case_dir, tmp_path, capsys):
    _, d = case_dir
    view = d / "fluoro" / "view_0.nii.gz"
    lone = tmp_path / "lone.nii.gz"
    shutil.copy(view, lone)
    with pytest.raises(InputError, match="no geometry"):
        read_view(lone)
    geometry = json.loads((d / "fluoro" / "view_0.json").read_text())
    bad = tmp_path / "bad.nii.gz"
    shutil.copy(view, bad)
    (tmp_path / "bad.json").write_text(json.dumps({k: v for k, v in geometry.items() if k != "sdd_mm"}))
    with pytest.raises(InputError, match=r"missing geometry fields \['sdd_mm'\]"):
        read_view(bad)
    (tmp_path / "bad.json").write_text(json.dumps({**geometry, "size_px": [64, 80]}))
    with pytest.raises(InputError, match="image is 80x80 px but its geometry says 64x80"):
        read_view(bad)
    # the CLI maps it to the input-error exit code and names the file
    mri = d / "mri_t1.nii.gz"
    seg = d / "labels.nii.gz"
    code = cli.main(["register", "--mri", str(mri), "--seg", str(seg), "--fluoro", str(bad), str(view),
                     "--out", str(tmp_path / "o"), "--no-progress"])
    assert code == 2
    assert "bad.nii.gz" in capsys.readouterr().err
    assert not (tmp_path / "o" / "qa.json").exists()


def test_views_must_be_images(tmp_path):
    img = sitk.GetImageFromArray(np.zeros((4, 5, 6), np.float32))
    sitk.WriteImage(img, str(tmp_path / "vol.nii.gz"))
    with pytest.raises(InputError, match="expected a 2-D X-ray image"):
        read_view(tmp_path / "vol.nii.gz")
