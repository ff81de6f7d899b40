"""3D Slicer markups: a plan round-trips unchanged (LPS and RAS files); drawn plans import."""

from __future__ import annotations

import json

import numpy as np
import pytest

from navsvc.errors import MarkupsError
from navsvc.markups import fiducials, line, write_markups
from planning import (
    PlannerOptions,
    check_plan,
    plan_automatic,
    plan_from_markups,
    write_plan_markups,
)
from planning.analytic import cached_analytic_femur


@pytest.fixture(scope="module")
def case():
    f = cached_analytic_femur("left", 6.0, 13.0, 6)
    return f, plan_automatic(f.mri, f.labels, options=PlannerOptions.fan())


@pytest.mark.parametrize("system", ["LPS", "RAS"])
def test_plan_round_trips_through_markups_unchanged(tmp_path, case, system):
    f, plan = case
    path = write_plan_markups(plan, tmp_path / "plan.mrk.json", system)
    doc = json.loads(path.read_text())
    assert [m["type"] for m in doc["markups"]] == ["Line"] * 3
    first = doc["markups"][0]
    assert first["coordinateSystem"] == system and first["name"] == "Drill1"
    sign = np.array([-1.0, -1.0, 1.0]) if system == "RAS" else np.ones(3)
    np.testing.assert_array_equal(first["controlPoints"][0]["position"], sign * np.array(plan.trajectories[0].entry_lps))
    back = plan_from_markups(path, f.mri, f.labels, case_id=plan.case_id)
    assert back.trajectories == plan.trajectories  # exact: same floats, names, diameters, depths
    assert back.side == plan.side and back.lesion == plan.lesion and back.source == "slicer"
    assert check_plan(back, f.mri, f.labels).ok


def test_fiducial_pairs_and_unlabelled_lines_import(tmp_path, case):
    f, plan = case
    t1, t2 = plan.trajectories[:2]
    nodes = [
        fiducials("F", {"Drill1-entry": t1.entry_lps, "Drill1-target": t1.target_lps}),
        # a line drawn from the target outwards, with Slicer's default point labels
        line("L_1", t2.target_lps, t2.entry_lps, labels=("L_1-1", "L_1-2")),
    ]
    path = write_markups(tmp_path / "drawn.mrk.json", nodes, "RAS")
    plan2 = plan_from_markups(path, None, f.labels, diameter_mm=4.0)
    names = [t.name for t in plan2.trajectories]
    assert names == ["L1", "Drill1"]  # lines first, then fiducial pairs; '_' stripped from names
    got = {t.name: t for t in plan2.trajectories}
    np.testing.assert_allclose(got["L1"].entry_lps, t2.entry_lps, atol=1e-9)  # target picked by the head
    np.testing.assert_allclose(got["L1"].target_lps, t2.target_lps, atol=1e-9)
    np.testing.assert_allclose(got["Drill1"].target_lps, t1.target_lps, atol=1e-9)
    assert {t.diameter_mm for t in plan2.trajectories} == {4.0}


@pytest.mark.parametrize(("nodes", "message"), [
    ([fiducials("F", {"Drill1-entry": (0, 0, 0), "Drill1-target": (0, 0, 50), "tip": (1, 1, 1)})],
     "fiducial 'tip'"),
    ([fiducials("F", {"Drill1-entry": (0, 0, 0)})], "trajectory 'Drill1' has no target point"),
    ([fiducials("F", {"Drill1-entry": (0, 0, 0), "Drill1_entry": (0, 0, 1), "Drill1-target": (0, 0, 50)})],
     "more than one entry"),
    ([line("Drill1", (0, 0, 0), (0, 0, 50))], "no drill diameter"),
    ([line("1st", (0, 0, 0), (0, 0, 50))], "rename it in Slicer"),
    ([], "markups hold no trajectory"),
])
def test_bad_markups_are_refused(case, nodes, message):
    f, _ = case
    with pytest.raises(MarkupsError, match=message):
        plan_from_markups(nodes, None, f.labels)
