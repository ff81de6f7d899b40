"""The validation harness measures ~0 mm for the true transform and the right error for a
known perturbation; physical-phantom folders; the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from navsvc.cli import main
from navsvc.errors import ConfigError, InputError, NotFound, RegistrationFailed
from navsvc.frames import CT, MRI
from navsvc.markups import fiducials, write_markups
from navsvc.transforms import RigidTransform
from phantoms import make_case
from phantoms.physical import rigid_from_points
from phantoms.validate import (
    MethodResult,
    evaluate_case,
    get_method,
    method_names,
    perturbation_transform,
    register_method,
    run_validation,
)


@pytest.fixture(scope="module")
def case():
    return make_case(7, "small")


def test_truth_gives_zero_error_and_high_dice(case):
    r = evaluate_case(case, get_method("truth"))
    assert r["tre"]["max"] < 1e-9 and r["lesion_tre_mm"] < 1e-9
    assert r["success"] and r["tre"]["n"] == len(case.landmark_names("femur"))
    # partial volume of 3.5 mm MRI slices limits Dice; identity ("before") misses entirely
    assert r["dice_lesion"] > 0.8 and r["dice_femur"] > 0.85
    assert r["dice_lesion_before"] < 0.3


def test_perturbed_gives_the_known_error(case):
    r = evaluate_case(case, get_method("perturbed"))
    P = perturbation_transform(case)
    for n, tre in r["tre_mm"].items():
        q = case.landmarks_ct[n]
        assert tre == pytest.approx(np.linalg.norm(P.apply(q) - q), abs=1e-9), n
    # 1 mm translation plus 1 degree about the head centre: 1 mm at the head centre
    assert r["tre_mm"]["head_centre"] == pytest.approx(1.0, abs=1e-9)
    assert 0.5 < r["tre"]["mean"] < 1.8  # rotation and translation add or cancel per point


def test_dice_drops_with_a_large_error(case):
    shift = RigidTransform.from_euler_deg((0, 0, 0), (4.0, 0.0, 3.0), CT, CT)
    r = evaluate_case(case, lambda c: MethodResult(shift @ c.T_ct_from_mri_femur, 0.0))
    assert r["tre"]["max"] == pytest.approx(5.0, abs=1e-9) and not r["success"]
    assert r["dice_lesion"] < evaluate_case(case, get_method("truth"))["dice_lesion"] - 0.2


def test_a_failing_or_wrong_method_is_reported_not_raised(case):
    def failing(c):
        raise RegistrationFailed("did not converge")

    def wrong_frames(c):
        return MethodResult(c.T_ct_from_mri_femur.inverse(), 0.0)

    r = evaluate_case(case, failing)
    assert not r["success"] and "did not converge" in r["error"]
    r = evaluate_case(case, wrong_frames)
    assert not r["success"] and "expected T_ct_from_mri" in r["error"]


def test_method_registry():
    assert {"truth", "perturbed"} <= set(method_names())
    with pytest.raises(NotFound, match="unknown validation method"):
        get_method("nope")
    with pytest.raises(ConfigError, match="already registered"):
        register_method("truth", lambda c: None)
    register_method("test-identity", lambda c: MethodResult(RigidTransform.identity(CT, MRI), 0.0), replace=True)
    assert "test-identity" in method_names()


def test_run_validation_writes_report(tmp_path):
    seen = []
    report = run_validation(2, "perturbed", tmp_path / "rep", progress=lambda s, f, m: seen.append(f))
    assert report["n_cases"] == 2 and report["success_rate"] == 1.0
    assert 0.5 < report["tre_overall"]["mean"] < 1.8
    assert seen[0] == 0.0 and seen[-1] == 1.0
    on_disk = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert on_disk["tre_overall"] == pytest.approx(report["tre_overall"])
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "perturbed" in md and "tre_histogram.png" in md
    assert (tmp_path / "rep" / "figures" / "tre_histogram.png").stat().st_size > 1000
    assert len(list((tmp_path / "rep" / "figures").glob("00*_small-seed*.png"))) == 2


def test_cli_make_then_validate_folder(tmp_path, capsys):
    assert main(["phantom", "make", "--seed", "11", "--out", str(tmp_path / "cases"), "--count", "2",
                 "--set", "max_rotation_deg=10"]) == 0
    assert (tmp_path / "cases" / "case_0011" / "truth.json").is_file()
    truth = json.loads((tmp_path / "cases" / "case_0012" / "truth.json").read_text())
    assert truth["params"]["preset_values"]["max_rotation_deg"] == 10
    assert main(["validate", "--cases", str(tmp_path / "cases"), "--method", "truth", "--out",
                 str(tmp_path / "rep"), "--no-figures"]) == 0
    out = capsys.readouterr().out
    assert "2 case(s), success 100 %" in out and "TRE mean 0.000" in out
    assert main(["validate", "--cases", str(tmp_path / "nowhere"), "--method", "truth", "--out",
                 str(tmp_path / "r2")]) != 0
    assert "not found" in capsys.readouterr().err


def test_rigid_from_points_recovers_a_transform():
    rng = np.random.default_rng(0)
    T = RigidTransform.from_euler_deg((10, -20, 25), (5, -3, 40), CT, MRI)
    p = rng.uniform(-50, 50, size=(6, 3))
    fit = rigid_from_points(p, T.apply(p))
    np.testing.assert_allclose(fit.matrix, T.matrix, atol=1e-9)
    with pytest.raises(InputError, match="collinear"):
        rigid_from_points(np.outer(np.arange(4), [1, 0, 0]), np.outer(np.arange(4), [1, 0, 0]))


def test_physical_phantom_folder(tmp_path):
    """Fiducials in both scans (with localisation noise) and separate targets: the harness
    reports FRE at the fiducials and TRE at the targets of the fiducial-fit reference."""
    rng = np.random.default_rng(1)
    T = RigidTransform.from_euler_deg((5, 10, -15), (20, -10, 30), CT, MRI)
    fid = rng.uniform(-60, 60, size=(6, 3))
    tgt = rng.uniform(-30, 30, size=(3, 3))
    noise = rng.normal(scale=0.3, size=fid.shape)
    d = tmp_path / "phys"
    write_markups(d / "fiducials_mri.mrk.json", [fiducials("f", {f"F{k}": p for k, p in enumerate(fid)})])
    write_markups(d / "fiducials_ct.mrk.json",
                  [fiducials("f", {f"F{k}": p for k, p in enumerate(T.apply(fid) + noise)})], "RAS")
    write_markups(d / "targets_mri.mrk.json", [fiducials("t", {f"T{k}": p for k, p in enumerate(tgt)})])
    write_markups(d / "targets_ct.mrk.json", [fiducials("t", {f"T{k}": p for k, p in enumerate(T.apply(tgt))})])
    report = run_validation(str(d), "truth", tmp_path / "rep", figures=False)
    r = report["cases"][0]
    fit = rigid_from_points(fid, T.apply(fid) + noise)
    expected_fre = np.linalg.norm(fit.apply(fid) - (T.apply(fid) + noise), axis=1)
    assert r["fre"]["mean"] == pytest.approx(expected_fre.mean(), abs=1e-6)
    expected_tre = np.linalg.norm(fit.apply(tgt) - T.apply(tgt), axis=1)
    assert r["tre"]["mean"] == pytest.approx(expected_tre.mean(), abs=1e-6)
    assert 0.0 < r["tre"]["max"] < 1.0 and r["success"] and set(r["tre_mm"]) == {"T0", "T1", "T2"}
    # mismatched labels are a clear error
    write_markups(d / "targets_ct.mrk.json", [fiducials("t", {"T0": tgt[0], "X": tgt[1], "T2": tgt[2]})])
    with pytest.raises(InputError, match="same point labels"):
        run_validation(str(d), "truth", tmp_path / "rep2", figures=False)


def test_truth_on_a_distorted_mri_reports_the_honest_residual():
    """With gradient nonlinearity the true rigid motion cannot map the MRI landmarks exactly:
    the harness reports that residual (here computed independently)."""
    c = make_case(2, "small-distorted", modalities=())
    r = evaluate_case(c, get_method("truth"))
    femur = c.landmark_names("femur")
    expected = [np.linalg.norm(c.T_ct_from_mri_femur.apply(c.landmarks_mri[n]) - c.landmarks_ct[n]) for n in femur]
    assert r["tre"]["mean"] == pytest.approx(np.mean(expected), abs=1e-12)
    assert 0.1 < r["tre"]["mean"] < 2.0 and "dice_lesion" not in r  # no images: no Dice


def test_bad_case_folders_are_clear_errors(tmp_path):
    from phantoms import load_case

    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="not a phantom case folder"):
        load_case(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "truth.json").write_text("{not json")
    with pytest.raises(InputError, match="cannot read truth JSON"):
        load_case(bad)
    with pytest.raises(InputError, match="holds no case folders"):
        run_validation(str(tmp_path / "empty"), "truth", tmp_path / "rep")


def test_a_general_transform_result_is_measured_too(case):
    """Methods may return a navsvc.transforms.Transform (e.g. rigid + displacement field)."""
    from navsvc.transforms import displacement_field_transform

    field = displacement_field_transform(np.zeros((*case.labels_ct.GetSize()[::-1], 3)), case.labels_ct, CT, CT)
    r = evaluate_case(case, lambda c: MethodResult(field @ c.T_ct_from_mri_femur, 0.1))
    assert r["tre"]["max"] < 1e-9 and r["success"]
    assert r["dice_lesion"] == pytest.approx(evaluate_case(case, get_method("truth"))["dice_lesion"], abs=1e-9)
