"""`navsvc plan auto | check | show | export | import` end to end on an analytic case."""

from __future__ import annotations

import json

import numpy as np
import pytest

from navsvc import cli
from navsvc.imaging import write_image
from planning import Trajectory, load_plan, save_plan
from planning.analytic import cached_analytic_femur


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("plan-cli")
    f = cached_analytic_femur("right", 6.0, 13.0, 8)
    write_image(d / "mri.nii.gz", f.mri)
    write_image(d / "seg.nii.gz", f.labels)
    plan = d / "plan.json"
    rc = cli.main(["plan", "auto", "--mri", str(d / "mri.nii.gz"), "--seg", str(d / "seg.nii.gz"), "-o", str(plan),
                   "--drills", "3", "--case-id", "cli-01", "--markups", str(d / "plan.mrk.json"), "--ras"])
    assert rc == 0
    return d


def test_auto_writes_a_plan_and_markups(files):
    plan = load_plan(files / "plan.json")
    assert plan.case_id == "cli-01" and plan.side == "right" and len(plan.trajectories) == 3
    assert {t.diameter_mm for t in plan.trajectories} == {3.2}
    assert [i.role for i in plan.images] == ["mri", "segmentation"]
    doc = json.loads((files / "plan.mrk.json").read_text())
    assert {m["coordinateSystem"] for m in doc["markups"]} == {"RAS"}


def test_check_passes_and_writes_json(files, capsys):
    assert cli.main(["plan", "check", str(files / "plan.json"), "--json", str(files / "report.json")]) == 0
    out = capsys.readouterr().out
    assert "result: OK, all safety rules met" in out
    report = json.loads((files / "report.json").read_text())
    assert report["ok"] is True and len(report["trajectories"]) == 3


def test_show_prints_a_summary_and_writes_a_png(files, capsys):
    png = files / "review.png"
    assert cli.main(["plan", "show", str(files / "plan.json"), "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert "plan cli-01: right hip, 3 trajectory(ies)" in out and "lesion:" in out and "RAS" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


def test_check_refuses_an_unsafe_plan_with_exit_code_6(files, capsys):
    plan = load_plan(files / "plan.json")
    t = plan.trajectories[0]
    target = tuple(float(v) for v in np.add(t.target_lps, (0.0, 0.0, 30.0)))  # 30 mm up: into the joint
    moved = Trajectory(name=t.name, entry_lps=t.entry_lps, target_lps=target, diameter_mm=t.diameter_mm)
    bad = files / "bad.json"
    save_plan(plan.model_copy(update={"trajectories": (moved,)}), bad)
    assert cli.main(["plan", "check", str(bad)]) == 6
    err = capsys.readouterr().err
    assert "navsvc: error: plan cli-01 is unsafe" in err and "Drill1: articular_margin" in err


def test_check_refuses_a_changed_image(files, tmp_path, capsys):
    plan = load_plan(files / "plan.json")
    seg = tmp_path / "seg.nii.gz"
    seg.write_bytes((files / "seg.nii.gz").read_bytes() + b"\0")
    refs = tuple(i.model_copy(update={"path": str(seg)}) if i.role == "segmentation" else i for i in plan.images)
    p = save_plan(plan.model_copy(update={"images": refs}), tmp_path / "plan.json")
    assert cli.main(["plan", "check", str(p)]) == 6
    assert "does not match the plan" in capsys.readouterr().err


def test_export_then_import_round_trip(files, tmp_path):
    mrk = tmp_path / "x.mrk.json"
    assert cli.main(["plan", "export", str(files / "plan.json"), "-o", str(mrk)]) == 0
    out = tmp_path / "imported.json"
    assert cli.main(["plan", "import", str(mrk), "--mri", str(files / "mri.nii.gz"), "--seg",
                     str(files / "seg.nii.gz"), "-o", str(out), "--case-id", "cli-01"]) == 0
    assert load_plan(out).trajectories == load_plan(files / "plan.json").trajectories


def test_check_refuses_another_segmentation_given_on_the_command_line(files, tmp_path, capsys):
    other = tmp_path / "other.nii.gz"
    other.write_bytes((files / "seg.nii.gz").read_bytes() + b"\0")
    args = ["plan", "check", str(files / "plan.json"), "--seg", str(other)]
    assert cli.main(args) == 6
    assert "is not the segmentation image plan cli-01 was made on" in capsys.readouterr().err
    # the recorded segmentation itself is accepted
    assert cli.main(["plan", "check", str(files / "plan.json"), "--seg", str(files / "seg.nii.gz")]) == 0
