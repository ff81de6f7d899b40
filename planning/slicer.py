"""3D Slicer interoperability: plans as markups (``.mrk.json``), LPS or RAS on disk.

Export: one ``Line`` node per trajectory, named as the trajectory, control points
labelled ``entry`` and ``target``; the target's description holds ``diameter_mm=<d>``.

Import (a plan drawn in Slicer), either form:

* a ``Line`` per trajectory; its points are taken as entry and target by their labels
  (``entry`` / ``target``, any case, optionally prefixed as in ``Drill1-entry``), otherwise
  the point nearer the femoral head centre is the target;
* ``Fiducial`` points in pairs labelled ``<Name>-entry`` / ``<Name>-target`` (also ``_`` or
  a space as separator, or ``entry1`` / ``target1``, or a single ``entry`` / ``target``).

A trajectory's diameter comes from a control point description ``diameter_mm=<d>``, else
from the ``diameter_mm`` argument. Coordinates are converted by :mod:`navsvc.markups`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from navsvc.errors import MarkupsError, PlanError
from navsvc.imaging import LabelSpec
from navsvc.markups import ControlPoint, MarkupNode, read_markups, write_markups
from planning.geometry import DEFAULT_SPEC, bone_fields, femur_anatomy
from planning.lesion import lesion_summary
from planning.model import Margins, Plan, Trajectory, image_ref, make_plan

_KIND = re.compile(r"^(?:(?P<name>[A-Za-z][A-Za-z0-9]*)[-_ ])?(?P<kind>entry|target)(?P<idx>\d*)$", re.I)
_DIAMETER = re.compile(r"diameter_mm\s*=\s*([0-9.eE+-]+)")
_STRIP = re.compile(r"[-_ ]")


def plan_to_markups(plan: Plan) -> list[MarkupNode]:
    """One ``Line`` node per trajectory (LPS mm inside; choose LPS or RAS when writing)."""
    nodes = []
    for t in plan.trajectories:
        nodes.append(MarkupNode("Line", t.name, (
            ControlPoint("entry", t.entry_lps, f"{plan.case_id} {t.name} entry"),
            ControlPoint("target", t.target_lps, f"diameter_mm={t.diameter_mm!r}"),
        )))
    return nodes


def write_plan_markups(plan: Plan, path: str | os.PathLike[str], coordinate_system: str = "LPS") -> Path:
    """Write :func:`plan_to_markups` to a Slicer ``.mrk.json`` file in LPS or RAS."""
    return write_markups(path, plan_to_markups(plan), coordinate_system)


def _diameter(points: Sequence[ControlPoint], where: str) -> float | None:
    for cp in points:
        m = _DIAMETER.search(cp.description)
        if m:
            try:
                return float(m.group(1))
            except ValueError as exc:
                raise MarkupsError(f"{where}: cannot read the diameter in {cp.description!r}") from exc
    return None


def _trajectory_name(raw: str, fallback: str) -> str:
    name = _STRIP.sub("", raw or "")
    if not name:
        return fallback
    if not re.match(r"^[A-Za-z][A-Za-z0-9]*$", name):
        raise MarkupsError(
            f"markups name {raw!r}: expected letters and digits starting with a letter (it names the "
            "trajectory); rename it in Slicer"
        )
    return name


def _pairs_from_nodes(nodes: Sequence[MarkupNode], head_center_lps: np.ndarray) -> list[tuple[str, ControlPoint, ControlPoint]]:
    """(name, entry, target) per trajectory found in the nodes."""
    out: list[tuple[str, ControlPoint, ControlPoint]] = []
    groups: dict[str, dict[str, ControlPoint]] = {}
    for node in nodes:
        if node.type == "Line":
            a, b = node.points
            ka, kb = (_KIND.match(p.label) for p in (a, b))
            if ka and kb and {ka["kind"].lower(), kb["kind"].lower()} == {"entry", "target"}:
                entry, target = (a, b) if ka["kind"].lower() == "entry" else (b, a)
            else:
                da, db = (np.linalg.norm(np.subtract(p.position_lps, head_center_lps)) for p in (a, b))
                entry, target = (a, b) if da > db else (b, a)
            out.append((_trajectory_name(node.name, f"Drill{len(out) + 1}"), entry, target))
            continue
        for cp in node.points:
            m = _KIND.match(cp.label.strip())
            if not m:
                raise MarkupsError(
                    f"fiducial {cp.label!r} in {node.name!r}: expected labels like 'Drill1-entry' and "
                    "'Drill1-target' (or 'entry'/'target'); rename the point in Slicer"
                )
            key = m["name"] or (f"Drill{m['idx']}" if m["idx"] else _trajectory_name(node.name, "Drill1"))
            slot = groups.setdefault(key, {})
            kind = m["kind"].lower()
            if kind in slot:
                raise MarkupsError(f"fiducials: trajectory {key!r} has more than one {kind} point")
            slot[kind] = cp
    for key, slot in groups.items():
        missing = {"entry", "target"} - set(slot)
        if missing:
            raise MarkupsError(f"fiducials: trajectory {key!r} has no {' and no '.join(sorted(missing))} point")
        out.append((_trajectory_name(key, key), slot["entry"], slot["target"]))
    if not out:
        raise MarkupsError("markups hold no trajectory: expected lines, or entry/target fiducials")
    return out


def plan_from_markups(
    markups: str | os.PathLike[str] | Sequence[MarkupNode],
    mri: sitk.Image | None,
    labels: sitk.Image,
    spec: LabelSpec = DEFAULT_SPEC,
    *,
    diameter_mm: float | None = None,
    side: str | None = None,
    case_id: str | None = None,
    author: str = "slicer",
    mri_path: str | None = None,
    seg_path: str | None = None,
    margins: Margins | None = None,
) -> Plan:
    """A plan from trajectories drawn in Slicer (see the module doc), MRI frame LPS mm.

    The lesion summary and (unless ``side`` is given) the side come from ``labels``. The plan
    is not checked here: run :func:`planning.checks.check_plan` on it. ``mri`` is unused
    except for its path's hash (``mri_path``); it may be None.
    """
    nodes = read_markups(markups) if isinstance(markups, str | os.PathLike) else list(markups)
    fields = bone_fields(labels, spec)
    anatomy = femur_anatomy(fields)
    trajectories = []
    for name, entry, target in _pairs_from_nodes(nodes, anatomy.head_center_lps):
        d = _diameter((entry, target), name)
        if d is None:
            d = diameter_mm
        if d is None:
            raise MarkupsError(
                f"trajectory {name!r}: no drill diameter (no 'diameter_mm=<d>' description); pass diameter_mm"
            )
        try:
            trajectories.append(Trajectory(name=name, entry_lps=entry.position_lps,
                                           target_lps=target.position_lps, diameter_mm=d))
        except ValueError as exc:
            raise PlanError(f"trajectory {name!r} from markups: {exc}") from exc
    images = []
    if mri_path is not None:
        images.append(image_ref("mri", mri_path))
    if seg_path is not None:
        images.append(image_ref("segmentation", seg_path))
    return make_plan(
        case_id=case_id or "slicer-plan", side=side or anatomy.side, images=tuple(images),
        labels=spec.as_dict(), lesion=lesion_summary(fields, anatomy), trajectories=tuple(trajectories),
        margins=margins or Margins(), author=author, source="slicer",
    )
