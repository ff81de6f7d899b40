"""C-arm view geometry: intrinsics, extrinsics, projection, rays, JSON and DICOM.

Per view, the ``carm`` frame has its origin at the X-ray source (focal spot), +z along the
principal ray towards the detector, +x along detector columns (increasing ``u``) and +y along
detector rows (increasing ``v``). The detector plane is ``z = sdd_mm``. A pixel centre
``(u, v)`` (column, row; 0-based) lies at ``((u - u0) * su, (v - v0) * sv, sdd)`` in the carm
frame, where ``(u0, v0)`` is the principal point (the foot of the principal ray) and
``(su, sv)`` the pixel spacing in mm. ``T_world_from_carm`` places the view in the world
frame (LPS mm; for phantoms the world frame is the intraoperative CT frame).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from navsvc.errors import InputError
from navsvc.frames import CARM, WORLD
from navsvc.transforms import RigidTransform, rotation_matrix_from_axis_angle, write_json_atomic


@dataclass(frozen=True)
class ViewGeometry:
    """One fluoroscopy view. Sizes are (columns, rows) = (width, height); lengths in mm."""

    sdd_mm: float
    pixel_spacing_mm: tuple[float, float]
    size_px: tuple[int, int]
    principal_point_px: tuple[float, float]
    T_world_from_carm: RigidTransform
    name: str = "view"

    def __post_init__(self) -> None:
        where = f"view {self.name!r}"
        if not np.isfinite(self.sdd_mm) or self.sdd_mm <= 0:
            raise InputError(f"{where}: expected source-to-detector distance > 0 mm, got {self.sdd_mm}")
        su, sv = self.pixel_spacing_mm
        if not (np.isfinite(su) and np.isfinite(sv)) or su <= 0 or sv <= 0:
            raise InputError(f"{where}: expected pixel spacing > 0 mm, got {self.pixel_spacing_mm}")
        w, h = self.size_px
        if int(w) < 2 or int(h) < 2:
            raise InputError(f"{where}: expected a detector of at least 2x2 pixels, got {self.size_px}")
        u0, v0 = self.principal_point_px
        if not (-0.5 * w <= u0 <= 1.5 * w and -0.5 * h <= v0 <= 1.5 * h):
            raise InputError(
                f"{where}: principal point {self.principal_point_px} px lies far outside the "
                f"{w}x{h} detector; check the geometry (pixels, not mm?)"
            )
        if (self.T_world_from_carm.to_frame, self.T_world_from_carm.from_frame) != (WORLD, CARM):
            raise InputError(f"{where}: expected T_world_from_carm, got {self.T_world_from_carm.name}")

    # -- geometry -----------------------------------------------------------------
    @property
    def source_world(self) -> NDArray[np.float64]:
        return self.T_world_from_carm.translation_mm.copy()

    def detector_points_carm(self, stride: int = 1) -> NDArray[np.float64]:
        """Pixel centres of every ``stride``-th pixel in the carm frame, shape (H', W', 3)."""
        w, h = self.size_px
        su, sv = self.pixel_spacing_mm
        u0, v0 = self.principal_point_px
        u = np.arange(0, w, stride, dtype=np.float64) + (stride - 1) / 2.0
        v = np.arange(0, h, stride, dtype=np.float64) + (stride - 1) / 2.0
        uu, vv = np.meshgrid(u, v)
        return np.stack([(uu - u0) * su, (vv - v0) * sv, np.full_like(uu, self.sdd_mm)], axis=-1)

    def project(self, points_world: ArrayLike) -> NDArray[np.float64]:
        """Project world points (N, 3) to detector pixel coordinates (N, 2) as (u, v)."""
        p = self.T_world_from_carm.inverse().apply(np.atleast_2d(points_world))
        if np.any(p[:, 2] <= 0):
            raise InputError(f"view {self.name!r}: a point lies behind the X-ray source")
        su, sv = self.pixel_spacing_mm
        u0, v0 = self.principal_point_px
        return np.stack([u0 + self.sdd_mm * p[:, 0] / p[:, 2] / su, v0 + self.sdd_mm * p[:, 1] / p[:, 2] / sv], axis=1)

    def magnification_at(self, point_world: ArrayLike) -> float:
        """Detector magnification (sdd / source-to-point depth) at a world point."""
        p = self.T_world_from_carm.inverse().apply(np.asarray(point_world, dtype=np.float64))
        return float(self.sdd_mm / p[2])

    # -- serialisation --------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "sdd_mm": float(self.sdd_mm),
            "pixel_spacing_mm": [float(s) for s in self.pixel_spacing_mm],
            "size_px": [int(s) for s in self.size_px],
            "principal_point_px": [float(c) for c in self.principal_point_px],
            "T_world_from_carm": self.T_world_from_carm.matrix.tolist(),
            "conventions": (
                "carm frame: origin at the source, +z principal ray to the detector, +x along columns (u), "
                "+y along rows (v); detector plane z = sdd_mm; world frame LPS mm"
            ),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "geometry") -> ViewGeometry:
        """From our JSON (``T_world_from_carm``, carm origin at the source) or the phantoms' JSON
        (``T_ct_from_carm`` with its carm origin at the isocentre and the source at ``z = -sad_mm``)."""
        if "T_world_from_carm" not in data and "T_ct_from_carm" in data:
            if "sad_mm" not in data:
                raise InputError(f"{where}: T_ct_from_carm (isocentre origin) needs sad_mm, the source-to-isocentre "
                                 "distance")
            shift = np.eye(4)
            shift[2, 3] = -float(data["sad_mm"])
            data = {**data, "T_world_from_carm": (np.asarray(data["T_ct_from_carm"], dtype=np.float64)
                                                  @ shift).tolist()}
        missing = [k for k in ("sdd_mm", "pixel_spacing_mm", "size_px", "principal_point_px", "T_world_from_carm")
                   if k not in data]
        if missing:
            raise InputError(f"{where}: missing geometry fields {missing}; expected sdd_mm, pixel_spacing_mm, "
                             "size_px, principal_point_px, T_world_from_carm (4x4)")
        try:
            matrix = np.asarray(data["T_world_from_carm"], dtype=np.float64)
            spacing = tuple(float(s) for s in data["pixel_spacing_mm"])
            size = tuple(int(s) for s in data["size_px"])
            pp = tuple(float(c) for c in data["principal_point_px"])
            sdd = float(data["sdd_mm"])
        except (TypeError, ValueError) as exc:
            raise InputError(f"{where}: malformed geometry value: {exc}") from exc
        if matrix.shape != (4, 4) or len(spacing) != 2 or len(size) != 2 or len(pp) != 2:
            raise InputError(f"{where}: expected a 4x4 pose and 2-vectors for spacing, size and principal point")
        try:
            pose = RigidTransform(matrix, WORLD, CARM)
        except Exception as exc:  # TransformError: not rigid
            raise InputError(f"{where}: T_world_from_carm is not a rigid transform: {exc}") from exc
        return cls(sdd, (spacing[0], spacing[1]), (size[0], size[1]), (pp[0], pp[1]), pose,
                   str(data.get("name", where)))

    def write(self, path: str | os.PathLike[str]) -> Path:
        return write_json_atomic(path, self.to_dict())

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> ViewGeometry:
        p = Path(path)
        if not p.is_file():
            raise InputError(f"geometry file not found: {p}")
        try:
            data = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"{p.name}: not a readable JSON geometry file: {exc}") from exc
        return cls.from_dict(data, p.name)


def carm_pose(
    isocentre_world: ArrayLike,
    sid_mm: float,
    primary_angle_deg: float = 0.0,
    secondary_angle_deg: float = 0.0,
) -> RigidTransform:
    """``T_world_from_carm`` of an isocentric C-arm, world frame LPS (patient supine).

    At angles (0, 0) the view is AP: the source lies posterior (+y) of the isocentre at
    ``sid_mm`` (source-to-isocentre distance), the beam points anterior (-y), detector columns
    (+u) run to the patient's right (-x) and rows (+v) towards the feet (-z), which keeps the
    carm frame right-handed. The primary angle (LAO
    positive, DICOM Positioner Primary Angle) rotates the C-arm about the patient's long axis;
    the secondary angle (cranial positive) about the left-right axis.
    """
    iso = np.asarray(isocentre_world, dtype=np.float64)
    # AP base pose: columns towards the patient's right (-x), rows towards the feet (-z), beam anterior (-y)
    base = np.column_stack([[-1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, -1.0, 0.0]])
    r_primary = rotation_matrix_from_axis_angle([0.0, 0.0, 1.0], -primary_angle_deg)
    r_secondary = rotation_matrix_from_axis_angle([1.0, 0.0, 0.0], secondary_angle_deg)
    rot = r_primary @ r_secondary @ base
    source = iso - rot[:, 2] * sid_mm
    m = np.eye(4)
    m[:3, :3] = rot
    m[:3, 3] = source
    return RigidTransform(m, WORLD, CARM)


def geometry_from_dicom_tags(tags: Mapping[str, str], size_px: tuple[int, int], name: str = "view",
                             isocentre_world: ArrayLike = (0.0, 0.0, 0.0)) -> ViewGeometry:
    """Geometry of a DICOM X-ray (XA / RF / DX) from its tags (SimpleITK metadata keys, e.g. ``0018|1110``).

    Uses DistanceSourceToDetector (0018,1110), DistanceSourceToPatient (0018,1111),
    ImagerPixelSpacing (0018,1164, row\\column spacing), PositionerPrimaryAngle (0018,1510) and
    PositionerSecondaryAngle (0018,1511). The principal point is the detector centre. World frame:
    LPS with the isocentre at ``isocentre_world``.
    """
    def number(tag: str, label: str, default: float | None = None) -> float:
        raw = tags.get(tag)
        if raw is None or str(raw).strip() == "":
            if default is None:
                raise InputError(f"{name}: DICOM tag {label} ({tag}) is missing; it is needed for the geometry")
            return default
        try:
            return float(str(raw).split("\\")[0])
        except ValueError as exc:
            raise InputError(f"{name}: DICOM tag {label} ({tag}) is not a number: {raw!r}") from exc

    sdd = number("0018|1110", "DistanceSourceToDetector")
    sdp = number("0018|1111", "DistanceSourceToPatient")
    spacing_raw = tags.get("0018|1164")
    if not spacing_raw:
        raise InputError(f"{name}: DICOM tag ImagerPixelSpacing (0018|1164) is missing")
    try:
        row_spacing, col_spacing = (float(v) for v in str(spacing_raw).split("\\")[:2])
    except ValueError as exc:
        raise InputError(f"{name}: ImagerPixelSpacing must be 'row\\column', got {spacing_raw!r}") from exc
    if sdp >= sdd:
        raise InputError(
            f"{name}: DistanceSourceToPatient ({sdp} mm) must be smaller than DistanceSourceToDetector ({sdd} mm)"
        )
    primary = number("0018|1510", "PositionerPrimaryAngle", 0.0)
    secondary = number("0018|1511", "PositionerSecondaryAngle", 0.0)
    w, h = size_px
    pose = carm_pose(isocentre_world, sdp, primary, secondary)
    return ViewGeometry(sdd, (col_spacing, row_spacing), (w, h), ((w - 1) / 2.0, (h - 1) / 2.0), pose, name)
