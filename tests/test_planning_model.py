"""The plan model: validation with specific messages, JSON round trip, image hashes."""

from __future__ import annotations

import json

import pytest

from navsvc.errors import PlanError
from planning import Plan, Trajectory, load_plan, save_plan
from planning.model import SCHEMA_VERSION, image_ref, make_plan, plan_from_dict


def _traj(**kw):
    data = {"name": "Drill1", "entry_lps": (-40.0, 20.0, 100.0), "target_lps": (15.0, 3.0, 155.0), "diameter_mm": 3.2}
    data.update(kw)
    return Trajectory(**data)


def _plan(tmp_path, **kw):
    mri = tmp_path / "mri.nii.gz"
    seg = tmp_path / "seg.nii.gz"
    mri.write_bytes(b"mri bytes")
    seg.write_bytes(b"segmentation bytes")
    fields = {"case_id": "case-0001", "side": "right", "author": "dr-a", "trajectories": (_traj(),),
              "images": (image_ref("mri", mri), image_ref("segmentation", seg))}
    fields.update(kw)
    return make_plan(**fields)


def test_depth_is_the_entry_target_distance():
    t = _traj()
    assert t.depth_mm == pytest.approx((55.0**2 + 17.0**2 + 55.0**2) ** 0.5, abs=1e-3)
    assert _traj(depth_mm=t.depth_mm).depth_mm == t.depth_mm
    with pytest.raises(ValueError, match="does not match the entry-target distance"):
        _traj(depth_mm=t.depth_mm + 1.0)


@pytest.mark.parametrize(("change", "message"), [
    ({"name": "DrillNumberTwelve"}, "must fit OpenIGTLink's 20-byte device name"),
    ({"name": "Drill 1"}, "letters and digits"),
    ({"entry_lps": (float("nan"), 0.0, 0.0)}, "finite"),
    ({"diameter_mm": 0.0}, "greater than 0.5"),
    ({"diameter_mm": 20.0}, "less than or equal to 15"),
    ({"target_lps": (-40.0, 20.0, 100.5)}, "at least 1 mm"),
])
def test_bad_trajectories_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        _traj(**change)


def test_save_load_round_trip(tmp_path):
    plan = _plan(tmp_path)
    path = save_plan(plan, tmp_path / "plan.json")
    loaded = load_plan(path)
    assert loaded == plan
    doc = json.loads(path.read_text())
    assert doc["schema"] == "navsvc.plan" and doc["schema_version"] == SCHEMA_VERSION
    assert doc["trajectories"][0]["entry_lps"] == [-40.0, 20.0, 100.0]


def test_changed_or_missing_image_is_refused(tmp_path):
    plan = _plan(tmp_path)
    path = save_plan(plan, tmp_path / "plan.json")
    (tmp_path / "seg.nii.gz").write_bytes(b"edited segmentation")
    with pytest.raises(PlanError, match=r"segmentation image .* does not match the plan: expected SHA-256"):
        load_plan(path)
    assert load_plan(path, verify_hashes=False).case_id == "case-0001"
    (tmp_path / "mri.nii.gz").unlink()
    with pytest.raises(PlanError, match="mri image not found"):
        load_plan(path)


def test_relative_image_paths_resolve_against_the_plan_folder(tmp_path):
    plan = _plan(tmp_path)
    rel = tuple(i.model_copy(update={"path": i.path.split("/")[-1]}) for i in plan.images)
    sub = tmp_path / "plans"
    sub.mkdir()
    for name in ("mri.nii.gz", "seg.nii.gz"):
        (sub / name).write_bytes((tmp_path / name).read_bytes())
    path = save_plan(plan.model_copy(update={"images": rel}), sub / "plan.json")
    assert load_plan(path).images[0].path == "mri.nii.gz"


@pytest.mark.parametrize(("edit", "message"), [
    (lambda d: d.update(schema_version=2), "this navsvc reads plan schema_version 1, got 2"),
    (lambda d: d.update(schema="something.else"), 'expected "schema": "navsvc.plan"'),
    (lambda d: d.update(case_id="Jane Doe"), "pseudonymous case id"),
    (lambda d: d.update(side="up"), "side"),
    (lambda d: d.update(trajectories=[]), "trajectories"),
    (lambda d: d.update(trajectories=d["trajectories"] * 2), "trajectory names must be unique"),
    (lambda d: d["trajectories"][0].update(depth_mm=1.0), "trajectories.0: depth_mm 1.0 does not match"),
    (lambda d: d.update(labels={"femur": 1, "necrosis": 1}), "distinct positive label values"),
    (lambda d: d.update(surgeon="x"), "surgeon: Extra inputs are not permitted"),
])
def test_bad_plan_files_name_the_field(tmp_path, edit, message):
    doc = _plan(tmp_path).to_json_dict()
    edit(doc)
    with pytest.raises(PlanError, match=message) as info:
        plan_from_dict(doc, "plan.json")
    assert str(info.value).startswith("plan.json: ")


def test_unreadable_plan_files(tmp_path):
    with pytest.raises(PlanError, match="plan file not found"):
        load_plan(tmp_path / "absent.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(PlanError, match="not a readable JSON plan"):
        load_plan(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(PlanError, match="expected a JSON object"):
        load_plan(bad)


def test_plan_lookup_helpers(tmp_path):
    plan = _plan(tmp_path)
    assert isinstance(plan, Plan)
    assert plan.trajectory("Drill1").diameter_mm == 3.2
    assert plan.image("segmentation").role == "segmentation"
    with pytest.raises(PlanError, match="no trajectory named 'Drill9'"):
        plan.trajectory("Drill9")
