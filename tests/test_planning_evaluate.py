"""The planner evaluation tool: exact tiny cases of its independent clearance, one seed end to end."""

from __future__ import annotations

import numpy as np
import pytest

from planning.evaluate import (
    evaluate,
    format_table,
    parse_overrides,
    parse_seeds,
    true_clearance_mm,
)


def test_parse_seeds_and_overrides():
    assert parse_seeds("0-3,7, 9") == [0, 1, 2, 3, 7, 9]
    assert parse_overrides(["mri_orientation=axial", "mri_spacing_mm=[1.5, 1.5, 4.0]"]) == {
        "mri_orientation": "axial", "mri_spacing_mm": [1.5, 1.5, 4.0]}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_overrides(["axial"])


def test_true_clearance_in_a_cylinder_is_exact():
    # a cylinder of radius 10 mm along z; a 4 mm drill whose axis runs 2.5 mm off the cylinder's
    # axis: its edge is 10 - 2.5 - 2 = 5.5 mm from the wall
    def inside(p):
        return np.hypot(p[:, 0], p[:, 1]) < 10.0

    c = true_clearance_mm(inside, np.array([2.5, 0.0, 0.0]), np.array([2.5, 0.0, 60.0]), 2.0, zone_mm=10.0)
    assert c == pytest.approx(5.5, abs=0.1)  # 24 directions around the axis, bisection to 0.05 mm


def test_evaluate_one_seed():
    rows = evaluate([0])
    assert [r["setting"] for r in rows] == ["core 8 mm", "fan 3x3.2 mm"]
    for r in rows:
        assert r["found"] and r["side_ok"]
        # the planner's clearance is conservative: the true clearance is at least as large
        assert r["true_min_clearance_mm"] >= r["min_clearance_mm"] - 0.5
        assert r["true_min_clearance_mm"] >= 3.0
    assert "plans found 2/2, side correct 2/2" in format_table(rows)
