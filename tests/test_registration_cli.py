"""`navsvc register` end to end on small analytic phantoms written to disk."""

from __future__ import annotations

import json

import numpy as np
import SimpleITK as sitk

from navsvc.cli import main
from navsvc.markups import fiducials, read_points, write_markups
from navsvc.registration.synthetic import analytic_case
from navsvc.transforms import read_transform


def _write(case, tmp_path):
    paths = {n: tmp_path / f"{n}.nii.gz" for n in ("mri", "seg", "ct")}
    sitk.WriteImage(case.mri, str(paths["mri"]))
    sitk.WriteImage(case.labels, str(paths["seg"]))
    sitk.WriteImage(case.ct, str(paths["ct"]))
    pts = tmp_path / "targets.mrk.json"
    write_markups(pts, [fiducials("targets", {"lesion": case.landmarks_mri["lesion_center"],
                                              "head": case.landmarks_mri["head_center"]})], coordinate_system="RAS")
    return paths, pts


def test_register_cli_writes_everything(tmp_path, capsys):
    case = analytic_case(2, ct_spacing_mm=(2.0, 2.0, 2.0))
    paths, pts = _write(case, tmp_path)
    out = tmp_path / "out"
    rc = main(["register", "--mri", str(paths["mri"]), "--seg", str(paths["seg"]), "--ct", str(paths["ct"]),
               "--out", str(out), "--points", str(pts), "--method", "rigid", "--no-progress"])
    assert rc == 0, capsys.readouterr()
    assert "verdict: PASS" in capsys.readouterr().out
    for name in ("T_ct_from_mri.h5", "T_mri_from_ct.h5", "qa.json", "lesion_in_ct.nii.gz", "overlay.png",
                 "points_ct.mrk.json"):
        assert (out / name).is_file(), name
    mapped = read_points(out / "points_ct.mrk.json")
    assert np.linalg.norm(mapped["lesion"] - case.landmarks_ct["lesion_center"]) < 0.2
    T = read_transform(out / "T_ct_from_mri.h5")
    T_inv = read_transform(out / "T_mri_from_ct.h5")
    p = np.array([case.landmarks_mri["head_center"]])
    assert np.abs(T_inv.apply(T.apply(p)) - p).max() < 1e-6
    assert json.loads((out / "qa.json").read_text())["qa"]["figures"]["surface_distance_mean_mm"] < 1.5


def test_register_cli_fail_exits_nonzero_and_keeps_qa(tmp_path, capsys):
    case = analytic_case(2, ct_spacing_mm=(2.0, 2.0, 2.0), ct_without_femur=True)
    paths, _ = _write(case, tmp_path)
    out = tmp_path / "out"
    rc = main(["register", "--mri", str(paths["mri"]), "--seg", str(paths["seg"]), "--ct", str(paths["ct"]),
               "--out", str(out), "--method", "rigid", "--no-progress"])
    assert rc == 7
    assert "FAILED the QA gate" in capsys.readouterr().err
    qa = json.loads((out / "qa.json").read_text())
    assert qa["verdict"] == "FAIL" and qa["qa"]["reasons"]


def test_register_cli_bad_labels(tmp_path, capsys):
    case = analytic_case(2, ct_spacing_mm=(2.0, 2.0, 2.0))
    paths, _ = _write(case, tmp_path)
    rc = main(["register", "--mri", str(paths["mri"]), "--seg", str(paths["seg"]), "--ct", str(paths["ct"]),
               "--out", str(tmp_path / "o"), "--labels", "femur=1,necrosis=5", "--no-progress"])
    assert rc == 4
    err = capsys.readouterr().err
    assert "necrosis=5" in err and "--labels" in err
