"""3D Slicer markups JSON (``.mrk.json``): fiducial lists and lines, LPS or RAS on disk.

Points cross this module's boundary in LPS mm only (``position_lps``); the file's
``coordinateSystem`` (``LPS`` -- Slicer's default since 5.0 -- or ``RAS``) is honoured
when reading and chosen when writing. Conversion goes through :mod:`navsvc.frames`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from navsvc.errors import MarkupsError
from navsvc.frames import lps_from_ras_points, ras_from_lps_points
from navsvc.transforms import write_json_atomic

SCHEMA = (
    "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/"
    "Resources/Schema/markups-schema-v1.0.3.json#"
)
NODE_TYPES = ("Fiducial", "Line")


@dataclass(frozen=True)
class ControlPoint:
    label: str
    position_lps: tuple[float, float, float]
    description: str = ""


@dataclass(frozen=True)
class MarkupNode:
    """One markups node: a ``Fiducial`` list (any number of points) or a ``Line`` (2 points)."""

    type: str
    name: str
    points: tuple[ControlPoint, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.type not in NODE_TYPES:
            raise MarkupsError(f"markups node {self.name!r}: expected type {NODE_TYPES}, got {self.type!r}")
        if self.type == "Line" and len(self.points) != 2:
            raise MarkupsError(f"line {self.name!r}: expected 2 control points, got {len(self.points)}")

    def positions_lps(self) -> NDArray[np.float64]:
        return np.array([p.position_lps for p in self.points], dtype=np.float64).reshape(-1, 3)


def fiducials(name: str, points_lps: dict[str, Iterable[float]]) -> MarkupNode:
    """A fiducial node from ``{label: (x, y, z) LPS mm}``."""
    pts = tuple(ControlPoint(label, _vec(pos, f"{name}/{label}")) for label, pos in points_lps.items())
    return MarkupNode("Fiducial", name, pts)


def line(name: str, start_lps: Iterable[float], end_lps: Iterable[float],
         labels: tuple[str, str] = ("entry", "target")) -> MarkupNode:
    """A line node from two LPS mm points."""
    return MarkupNode("Line", name, (ControlPoint(labels[0], _vec(start_lps, name)),
                                     ControlPoint(labels[1], _vec(end_lps, name))))


def _vec(values: Iterable[float], where: str) -> tuple[float, float, float]:
    try:
        arr = np.asarray(list(values), dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise MarkupsError(f"{where}: expected a position of 3 numbers, got {values!r}") from exc
    if arr.shape != (3,) or not np.all(np.isfinite(arr)):
        raise MarkupsError(f"{where}: expected a finite 3-D position, got {arr.tolist()}")
    return (float(arr[0]), float(arr[1]), float(arr[2]))


def read_markups(path: str | os.PathLike[str]) -> list[MarkupNode]:
    """Read every fiducial and line node of a Slicer markups file, positions in LPS mm."""
    p = Path(path)
    if not p.is_file():
        raise MarkupsError(f"markups file not found: {p}")
    try:
        doc = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MarkupsError(f"{p.name}: not a readable JSON markups file: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("markups"), list):
        raise MarkupsError(f"{p.name}: expected a Slicer markups file with a 'markups' list")
    nodes: list[MarkupNode] = []
    for i, m in enumerate(doc["markups"]):
        if not isinstance(m, dict):
            raise MarkupsError(f"{p.name}: markups[{i}] is not an object")
        mtype = m.get("type")
        if mtype not in NODE_TYPES:
            raise MarkupsError(
                f"{p.name}: markups[{i}] has type {mtype!r}; navsvc reads {', '.join(NODE_TYPES)}"
            )
        system = str(m.get("coordinateSystem", "LPS")).upper()
        if system not in ("LPS", "RAS"):
            raise MarkupsError(f"{p.name}: markups[{i}] coordinateSystem must be LPS or RAS, got {system!r}")
        units = m.get("coordinateUnits", "mm")
        if units != "mm":
            raise MarkupsError(f"{p.name}: markups[{i}] coordinateUnits must be mm, got {units!r}")
        pts: list[ControlPoint] = []
        for j, cp in enumerate(m.get("controlPoints", []) or []):
            where = f"{p.name}: markups[{i}].controlPoints[{j}]"
            if not isinstance(cp, dict) or "position" not in cp:
                raise MarkupsError(f"{where}: missing 'position'")
            pos = np.asarray(_vec(cp["position"], where))
            pos_lps = lps_from_ras_points(pos) if system == "RAS" else pos
            pts.append(ControlPoint(str(cp.get("label", f"P-{j + 1}")), _vec(pos_lps, where),
                                    str(cp.get("description", ""))))
        name = str(m.get("name") or p.name.split(".")[0])
        nodes.append(MarkupNode(mtype, name, tuple(pts)))
    return nodes


def read_points(path: str | os.PathLike[str]) -> dict[str, NDArray[np.float64]]:
    """All control points of a markups file as ``{label: LPS mm (3,)}``; labels must be unique."""
    out: dict[str, NDArray[np.float64]] = {}
    for node in read_markups(path):
        for cp in node.points:
            if cp.label in out:
                raise MarkupsError(f"{Path(path).name}: control point label {cp.label!r} appears twice")
            out[cp.label] = np.array(cp.position_lps)
    return out


def write_markups(path: str | os.PathLike[str], nodes: Iterable[MarkupNode],
                  coordinate_system: str = "LPS") -> Path:
    """Write nodes as a Slicer markups file in ``coordinate_system`` (``LPS`` or ``RAS``)."""
    system = coordinate_system.upper()
    if system not in ("LPS", "RAS"):
        raise MarkupsError(f"coordinate_system must be LPS or RAS, got {coordinate_system!r}")
    markups = []
    for node in nodes:
        cps = []
        for k, cp in enumerate(node.points):
            pos = np.asarray(cp.position_lps)
            pos_out = ras_from_lps_points(pos) if system == "RAS" else pos
            cps.append({
                "id": str(k + 1), "label": cp.label, "description": cp.description,
                "associatedNodeID": "", "position": [float(v) for v in pos_out],
                "orientation": [-1.0, -0.0, -0.0, -0.0, -1.0, -0.0, 0.0, 0.0, 1.0],
                "selected": True, "locked": False, "visibility": True, "positionStatus": "defined",
            })
        markups.append({
            "type": node.type, "coordinateSystem": system, "coordinateUnits": "mm",
            "locked": False, "fixedNumberOfControlPoints": node.type == "Line",
            "labelFormat": "%N-%d", "lastUsedControlPointNumber": len(cps),
            "name": node.name, "controlPoints": cps,
        })
    return write_json_atomic(path, {"@schema": SCHEMA, "markups": markups})
