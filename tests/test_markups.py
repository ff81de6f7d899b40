"""3D Slicer markups: LPS/RAS on disk, LPS inside, round trips, refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest

from navsvc.errors import MarkupsError
from navsvc.markups import fiducials, line, read_markups, read_points, write_markups

POINTS = {"head_centre": (-85.25, 12.5, 905.0), "lesion": (-80.0, 5.125, 915.75), "gt": (-120.0, 20.0, 860.0)}


@pytest.mark.parametrize("system", ["LPS", "RAS"])
def test_round_trip_gives_the_same_points(tmp_path, system):
    nodes = [fiducials("Landmarks", POINTS), line("Drill1", (-130.0, 25.0, 850.0), (-82.0, 6.0, 912.0))]
    path = write_markups(tmp_path / "pts.mrk.json", nodes, coordinate_system=system)
    back = read_markups(path)
    assert [n.type for n in back] == ["Fiducial", "Line"]
    assert [n.name for n in back] == ["Landmarks", "Drill1"]
    for label, pos in POINTS.items():
        np.testing.assert_allclose(read_points(path)[label] if label != "gt" else back[0].points[2].position_lps, pos)
    np.testing.assert_allclose(back[1].positions_lps(), [[-130.0, 25.0, 850.0], [-82.0, 6.0, 912.0]])


def test_ras_file_stores_flipped_coordinates(tmp_path):
    path = write_markups(tmp_path / "ras.mrk.json", [fiducials("F", {"a": (1.0, 2.0, 3.0)})], "RAS")
    doc = json.loads(path.read_text())
    assert doc["markups"][0]["coordinateSystem"] == "RAS"
    assert doc["markups"][0]["controlPoints"][0]["position"] == [-1.0, -2.0, 3.0]


def test_slicer_written_ras_file_is_read_as_lps(tmp_path):
    # the shape 3D Slicer 5 writes (trimmed)
    doc = {
        "@schema": "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/Schema/markups-schema-v1.0.3.json#",
        "markups": [{
            "type": "Fiducial", "coordinateSystem": "RAS", "coordinateUnits": "mm",
            "controlPoints": [{"id": "1", "label": "F-1", "position": [10.0, -20.0, 30.0]}],
        }],
    }
    path = tmp_path / "F.mrk.json"
    path.write_text(json.dumps(doc))
    np.testing.assert_allclose(read_points(path)["F-1"], [-10.0, 20.0, 30.0])


def test_bad_markups(tmp_path):
    with pytest.raises(MarkupsError, match="not found"):
        read_markups(tmp_path / "none.mrk.json")
    (tmp_path / "a.mrk.json").write_text("{not json")
    with pytest.raises(MarkupsError, match="not a readable JSON"):
        read_markups(tmp_path / "a.mrk.json")
    (tmp_path / "b.mrk.json").write_text(json.dumps({"markups": [{"type": "Curve", "controlPoints": []}]}))
    with pytest.raises(MarkupsError, match="type 'Curve'"):
        read_markups(tmp_path / "b.mrk.json")
    (tmp_path / "c.mrk.json").write_text(json.dumps({"markups": [{"type": "Fiducial", "coordinateSystem": "XYZ"}]}))
    with pytest.raises(MarkupsError, match="LPS or RAS"):
        read_markups(tmp_path / "c.mrk.json")
    (tmp_path / "d.mrk.json").write_text(json.dumps(
        {"markups": [{"type": "Fiducial", "controlPoints": [{"label": "x", "position": [1, "a", 3]}]}]}))
    with pytest.raises(MarkupsError):
        read_markups(tmp_path / "d.mrk.json")
    with pytest.raises(MarkupsError, match="2 control points"):
        from navsvc.markups import ControlPoint, MarkupNode
        MarkupNode("Line", "L", (ControlPoint("a", (0.0, 0.0, 0.0)),))
    dup = write_markups(tmp_path / "dup.mrk.json", [fiducials("A", {"p": (0, 0, 0)}), fiducials("B", {"p": (1, 1, 1)})])
    with pytest.raises(MarkupsError, match="appears twice"):
        read_points(dup)
