"""The versioned plan model: what the robot will drill, explicit, checked and traceable.

A plan is JSON (``"schema": "navsvc.plan", "schema_version": 1``) validated by pydantic.
Every point is in the **MRI frame, LPS millimetres** (``*_lps``). Source images are
recorded with their SHA-256; :func:`load_plan` refuses a plan whose images changed.
Every validation problem becomes a :class:`~navsvc.errors.PlanError` naming the file
and field.
"""

from __future__ import annotations

import json
import math
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from navsvc.errors import InputError, PlanError
from navsvc.fileio import sha256_file
from navsvc.frames import check_igtl_device_name
from navsvc.transforms import write_json_atomic

SCHEMA = "navsvc.plan"
SCHEMA_VERSION = 1
#: Suffix a trajectory's name gets as an OpenIGTLink transform ("Drill1ToReference").
IGTL_SUFFIX = "ToReference"
_CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9]*$")
_DEPTH_TOL_MM = 0.05


def _finite3(v: tuple[float, float, float]) -> tuple[float, float, float]:
    if not all(math.isfinite(x) for x in v):
        raise ValueError(f"expected 3 finite numbers (LPS mm), got {list(v)}")
    return v


JicType = Literal["A", "B", "C1", "C2"]
Vec3 = Annotated[tuple[float, float, float], AfterValidator(_finite3)]


def utc_now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ImageRef(_Model):
    """A source image: its role, path (absolute, or relative to the plan file) and SHA-256."""

    role: Literal["mri", "segmentation"]
    path: str = Field(min_length=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class Margins(_Model):
    """Safety margins (mm, degrees) every trajectory of the plan must keep.

    * ``cortical_clearance_mm``: drill edge to femur surface along the path (beyond the entry zone);
    * ``articular_margin_mm``: drill tip's edge to the articular surface;
    * ``entry_zone_mm``: length after the bone entry where the drill crosses the lateral cortex
      and the clearance rule does not apply;
    * ``entry_tolerance_mm``: how far the planned entry may lie from the bone surface;
    * ``max_entry_angle_deg``: largest angle between the entry's surface normal and lateral;
    * ``lesion_reach_mm``: lesion within this distance of a tract counts as reached;
    * ``fov_margin_mm``: entry and target keep this distance from the image's edges (where a
      femur cut by the field of view has no real cortex).
    """

    cortical_clearance_mm: float = Field(default=3.0, ge=0.0, le=20.0)
    articular_margin_mm: float = Field(default=5.0, ge=0.0, le=30.0)
    entry_zone_mm: float = Field(default=10.0, ge=0.0, le=40.0)
    entry_tolerance_mm: float = Field(default=5.0, gt=0.0, le=30.0)
    max_entry_angle_deg: float = Field(default=60.0, gt=0.0, le=90.0)
    lesion_reach_mm: float = Field(default=10.0, gt=0.0, le=50.0)
    fov_margin_mm: float = Field(default=5.0, ge=0.0, le=50.0)


class Trajectory(_Model):
    """One drill tract: from ``entry_lps`` (lateral cortex) to ``target_lps`` (in the lesion).

    ``depth_mm`` is the planned drilling depth from the entry, equal to the entry-target
    distance (computed when omitted). ``name`` is short: with :data:`IGTL_SUFFIX` appended it
    must fit OpenIGTLink's 20-byte device name.
    """

    name: str
    entry_lps: Vec3
    target_lps: Vec3
    diameter_mm: float = Field(gt=0.5, le=15.0)
    depth_mm: float = Field(default=0.0, ge=0.0)

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(f"expected a name of letters and digits starting with a letter, got {v!r}")
        try:
            check_igtl_device_name(v + IGTL_SUFFIX)
        except InputError as exc:
            raise ValueError(
                f"name {v!r} is too long: {v + IGTL_SUFFIX!r} must fit OpenIGTLink's 20-byte device name"
            ) from exc
        return v

    @model_validator(mode="after")
    def _check_depth(self) -> Trajectory:
        length = self.length_mm
        if length < 1.0:
            raise ValueError(f"entry and target are {length:.3f} mm apart; expected a path of at least 1 mm")
        if self.depth_mm == 0.0:
            object.__setattr__(self, "depth_mm", round(length, 3))
        elif abs(self.depth_mm - length) > _DEPTH_TOL_MM:
            raise ValueError(
                f"depth_mm {self.depth_mm} does not match the entry-target distance {length:.3f} mm "
                f"(expected within {_DEPTH_TOL_MM} mm)"
            )
        return self

    @property
    def length_mm(self) -> float:
        return float(np.linalg.norm(np.subtract(self.target_lps, self.entry_lps)))

    @property
    def direction_lps(self) -> np.ndarray:
        """Unit vector from entry to target (the drilling direction)."""
        d = np.subtract(self.target_lps, self.entry_lps)
        return d / np.linalg.norm(d)


class LesionSummary(_Model):
    """The necrotic lesion as segmented (MRI frame, LPS mm).

    ``extent_*_mm`` are its sizes along the femur's medial-lateral, antero-posterior and
    proximal-distal (shaft) axes. ``necrotic_angle_*_deg`` are the arcs the lesion subtends
    at the head centre on the mid-coronal and mid-sagittal planes through the head centre;
    their sum is the combined necrotic angle (Kerboul), graded by the modified Kerboul
    classification (I < 160, II 160-199, III 200-239, IV >= 240 degrees). ``jic_like_type``
    approximates the JIC type (A, B, C1, C2) where a pelvis label shows the acetabular roof
    (see :func:`planning.lesion.jic_like_type`).
    """

    volume_ml: float = Field(gt=0.0)
    voxel_count: int = Field(gt=0)
    centroid_lps: Vec3
    bbox_min_lps: Vec3
    bbox_max_lps: Vec3
    extent_ml_mm: float
    extent_ap_mm: float
    extent_si_mm: float
    head_center_lps: Vec3
    head_radius_mm: float
    head_involvement_percent: float
    min_depth_mm: float
    necrotic_angle_coronal_deg: float
    necrotic_angle_sagittal_deg: float
    combined_necrotic_angle_deg: float
    jic_like_type: JicType | None = None
    location_class: str


class Plan(_Model):
    """A core-decompression plan (see the module docstring)."""

    schema_: Literal["navsvc.plan"] = Field(default="navsvc.plan", alias="schema")
    schema_version: int = SCHEMA_VERSION
    case_id: str
    side: Literal["left", "right"]
    frame: Literal["mri"] = "mri"
    images: tuple[ImageRef, ...] = ()
    labels: dict[str, int] = Field(default_factory=lambda: {"femur": 1, "necrosis": 2, "pelvis": 3})
    lesion: LesionSummary | None = None
    trajectories: tuple[Trajectory, ...] = Field(min_length=1)
    margins: Margins = Margins()
    author: str = Field(min_length=1, max_length=200)
    source: Literal["auto", "manual", "slicer"] = "manual"
    created_utc: datetime = Field(default_factory=utc_now)
    modified_utc: datetime = Field(default_factory=utc_now)
    planner: dict[str, Any] = Field(default_factory=dict)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("schema_version")
    @classmethod
    def _check_version(cls, v: int) -> int:
        if v != SCHEMA_VERSION:
            raise ValueError(f"this navsvc reads plan schema_version {SCHEMA_VERSION}, got {v}")
        return v

    @field_validator("case_id")
    @classmethod
    def _check_case_id(cls, v: str) -> str:
        if not _CASE_ID.match(v):
            raise ValueError(
                "expected a pseudonymous case id of 1-64 letters, digits, '.', '_' or '-' "
                f"(no names, no spaces), got {v!r}"
            )
        return v

    @field_validator("labels")
    @classmethod
    def _check_labels(cls, v: dict[str, int]) -> dict[str, int]:
        if set(v) - {"femur", "necrosis", "pelvis"} or not {"femur", "necrosis"} <= set(v):
            raise ValueError(f"expected labels femur, necrosis (and optionally pelvis), got {sorted(v)}")
        if len(set(v.values())) != len(v) or min(v.values()) <= 0:
            raise ValueError(f"expected distinct positive label values, got {v}")
        return v

    @model_validator(mode="after")
    def _check_all(self) -> Plan:
        names = [t.name for t in self.trajectories]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"trajectory names must be unique, got {dup} more than once")
        roles = [i.role for i in self.images]
        if len(set(roles)) != len(roles):
            raise ValueError(f"expected at most one image per role, got {roles}")
        if self.modified_utc < self.created_utc:
            raise ValueError("modified_utc is earlier than created_utc")
        return self

    def trajectory(self, name: str) -> Trajectory:
        for t in self.trajectories:
            if t.name == name:
                return t
        raise PlanError(f"plan {self.case_id}: no trajectory named {name!r}; it has {[t.name for t in self.trajectories]}")

    def image(self, role: str) -> ImageRef | None:
        return next((i for i in self.images if i.role == role), None)

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


def _format_validation(exc: ValidationError, where: str) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err.get("loc", ())) or "(top level)"
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}")
    return f"{where}: invalid plan: " + "; ".join(parts)


def plan_from_dict(data: Any, where: str = "plan") -> Plan:
    """Validate a JSON-like dict as a :class:`Plan`; problems raise :class:`PlanError`."""
    if not isinstance(data, dict):
        raise PlanError(f"{where}: expected a JSON object, got {type(data).__name__}")
    if data.get("schema") != SCHEMA:
        raise PlanError(f"{where}: expected \"schema\": \"{SCHEMA}\", got {data.get('schema')!r}; is this a navsvc plan?")
    try:
        return Plan.model_validate(data)
    except ValidationError as exc:
        raise PlanError(_format_validation(exc, where)) from exc


def make_plan(**fields: Any) -> Plan:
    """Build a :class:`Plan` from keyword fields; problems raise :class:`PlanError`."""
    try:
        return Plan(**fields)
    except ValidationError as exc:
        raise PlanError(_format_validation(exc, "plan")) from exc


def image_ref(role: str, path: str | os.PathLike[str]) -> ImageRef:
    """Record an image file: absolute path and SHA-256."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{role}: file not found: {p}")
    return ImageRef(role=role, path=str(p.resolve()), sha256=sha256_file(p))  # type: ignore[arg-type]


def resolve_image_path(ref: ImageRef, plan_path: str | os.PathLike[str] | None) -> Path:
    """An image's path: as recorded if absolute, else relative to the plan file's folder."""
    p = Path(ref.path)
    if not p.is_absolute() and plan_path is not None:
        p = Path(plan_path).resolve().parent / p
    return p


def verify_image_hashes(plan: Plan, plan_path: str | os.PathLike[str] | None = None) -> None:
    """Refuse a plan whose recorded images are missing or differ from their SHA-256."""
    for ref in plan.images:
        p = resolve_image_path(ref, plan_path)
        if not p.is_file():
            raise PlanError(
                f"plan {plan.case_id}: {ref.role} image not found: {p}; restore it, or re-plan on the new image"
            )
        digest = sha256_file(p)
        if digest != ref.sha256:
            raise PlanError(
                f"plan {plan.case_id}: {ref.role} image {p} does not match the plan: expected SHA-256 "
                f"{ref.sha256[:12]}..., got {digest[:12]}...; the image changed since planning, re-plan on it"
            )


def save_plan(plan: Plan, path: str | os.PathLike[str]) -> Path:
    """Write a plan as JSON, atomically."""
    return write_json_atomic(path, plan.to_json_dict())


def load_plan(path: str | os.PathLike[str], verify_hashes: bool = True) -> Plan:
    """Read and validate a plan; with ``verify_hashes`` its images must match their SHA-256."""
    p = Path(path)
    if not p.is_file():
        raise PlanError(f"plan file not found: {p}")
    try:
        data = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PlanError(f"{p.name}: not a readable JSON plan: {exc}") from exc
    plan = plan_from_dict(data, p.name)
    if verify_hashes:
        verify_image_hashes(plan, p)
    return plan
