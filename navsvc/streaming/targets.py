"""What is streamed: targets, the stream state, and its rendering into OpenIGTLink bytes.

Pure functions and immutable data; no sockets here.

Drill frame of a trajectory (the TRANSFORM ``<Name>To<Reference>`` maps points of this
frame into the reference frame): origin at the target point; +z along the drill path,
from the target towards the entry; +x the component of the reference frame's first
axis (LPS +x in the CT) orthogonal to z (the second axis where the path lies within
25 degrees of the first); +y = z cross x. The frame is fixed in the CT (LPS); the RAS
and device outputs express the same frame in those references:

* ``lps``:    ``M = M_ct_from_drill``
* ``ras``:    ``M = F @ M_ct_from_drill @ F`` with ``F = diag(-1, -1, 1, 1)`` (a proper
  rotation again; origin and z axis are the target and drill direction in RAS)
* ``device``: ``M = T_device_from_ct @ M_ct_from_drill``
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from numpy.typing import ArrayLike, NDArray

from navsvc import frames
from navsvc.errors import InputError, PreconditionFailed
from navsvc.streaming import messages as m
from navsvc.transforms import RigidTransform

#: Stream states.
NO_TARGET = "no_target"
APPROVED = "approved"
BRINGUP = "bringup"
STATES = (NO_TARGET, APPROVED, BRINGUP)

#: Output frames.
OUTPUT_FRAMES = ("lps", "ras", "device")

#: Fixed device names of the stream (all fit the 20-byte field).
STATUS_DEVICE = "NavStatus"  # STRING (JSON) and STATUS
POINTS_DEVICE = "NavPoints"  # POINT list: <Name>-Entry, <Name>-Target
TDATA_DEVICE = "NavTargets"  # TDATA stream: one element per trajectory

_MIN_PATH_MM = 1.0
_QA_STREAMABLE = ("PASS", "WARN")


def _vec3(value: ArrayLike, field_name: str) -> NDArray[np.float64]:
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape != (3,) or not np.all(np.isfinite(arr)):
        raise InputError(f"{field_name}: expected 3 finite numbers (mm), got {np.asarray(value).tolist()}")
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True, eq=False)
class Target:
    """A planned drill trajectory in the CT frame (LPS mm).

    ``name`` becomes the trajectory's device names (``<name>To<Reference>``, TRAJ
    ``<name>``); letters, digits and ``_`` only, starting with a letter.
    """

    name: str
    entry_lps: NDArray[np.float64]
    target_lps: NDArray[np.float64]
    diameter_mm: float

    def __post_init__(self) -> None:
        if not (isinstance(self.name, str) and self.name[:1].isalpha()
                and self.name.replace("_", "").isalnum() and self.name.isascii()):
            raise InputError(
                f"target name: expected ASCII letters/digits/_ starting with a letter, got {self.name!r}"
            )
        frames.check_igtl_device_name(self.name)
        object.__setattr__(self, "entry_lps", _vec3(self.entry_lps, f"target {self.name} entry_lps"))
        object.__setattr__(self, "target_lps", _vec3(self.target_lps, f"target {self.name} target_lps"))
        d = float(self.diameter_mm)
        if not (math.isfinite(d) and 0.0 < d <= 20.0):
            raise InputError(f"target {self.name}: expected diameter_mm in (0, 20], got {self.diameter_mm}")
        object.__setattr__(self, "diameter_mm", d)
        length = float(np.linalg.norm(self.entry_lps - self.target_lps))
        if length < _MIN_PATH_MM:
            raise InputError(
                f"target {self.name}: entry and target are {length:.3f} mm apart; expected at least "
                f"{_MIN_PATH_MM} mm to define a drill direction"
            )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Target):
            return NotImplemented
        return (self.name == other.name and self.diameter_mm == other.diameter_mm
                and bool(np.array_equal(self.entry_lps, other.entry_lps))
                and bool(np.array_equal(self.target_lps, other.target_lps)))

    def __hash__(self) -> int:
        return hash((self.name, self.diameter_mm, self.entry_lps.tobytes(), self.target_lps.tobytes()))

    @property
    def path_length_mm(self) -> float:
        return float(np.linalg.norm(self.entry_lps - self.target_lps))


@dataclass(frozen=True)
class TargetState:
    """What the stream says now. ``timestamp_s`` (Unix seconds) is the time of the
    registration (or bring-up configuration) the targets come from; every message
    carries it.

    Contract: ``no_target`` carries no targets; ``approved`` needs a registration id, a
    QA verdict PASS or WARN and at least one target; ``bringup`` (fixed targets for
    hardware bring-up, no registration) needs at least one target.
    """

    registration_id: str | None
    state: str
    qa_verdict: str | None
    targets: tuple[Target, ...]
    timestamp_s: float
    reason: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", tuple(self.targets))
        if self.state not in STATES:
            raise InputError(f"state: expected one of {STATES}, got {self.state!r}")
        if not math.isfinite(float(self.timestamp_s)) or self.timestamp_s < 0:
            raise InputError(f"timestamp_s: expected Unix seconds >= 0, got {self.timestamp_s}")
        if self.state == NO_TARGET and self.targets:
            raise PreconditionFailed("a no_target state must not carry targets")
        if self.state != NO_TARGET and not self.targets:
            raise InputError(f"state {self.state!r} needs at least one target, got none")
        if self.state == APPROVED:
            if not self.registration_id:
                raise PreconditionFailed("an approved state needs the registration id it comes from")
            if (self.qa_verdict or "").upper() not in _QA_STREAMABLE:
                raise PreconditionFailed(
                    f"only a registration with QA verdict PASS or WARN may stream, got {self.qa_verdict!r}"
                )
        names = [t.name for t in self.targets]
        if len(set(names)) != len(names):
            raise InputError(f"target names must be unique, got {names}")

    @classmethod
    def no_target(cls, reason: str, registration_id: str | None = None,
                  timestamp_s: float | None = None) -> TargetState:
        """The explicit "no valid target" state."""
        return cls(registration_id, NO_TARGET, None, (),
                   time.time() if timestamp_s is None else timestamp_s, reason)

    @property
    def valid(self) -> bool:
        return self.state != NO_TARGET


def drill_frame_lps(target: Target) -> NDArray[np.float64]:
    """``M_ct_from_drill`` (4x4): the drill frame of ``target`` in CT LPS (module doc)."""
    z = target.entry_lps - target.target_lps
    z = z / np.linalg.norm(z)
    ref = np.array([1.0, 0.0, 0.0])
    if abs(float(z @ ref)) > math.cos(math.radians(25.0)):
        ref = np.array([0.0, 1.0, 0.0])
    x = ref - (ref @ z) * z
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    mat = np.eye(4)
    mat[:3, 0], mat[:3, 1], mat[:3, 2], mat[:3, 3] = x, y, z, target.target_lps
    return mat


def reference_from_ct(
    output_frame: str, T_device_from_ct: RigidTransform | None
) -> tuple[NDArray[np.float64], NDArray[np.float64] | None]:
    """(``A``, ``B``) such that a drill pose in the output frame is ``A @ M_ct_from_drill @ B``
    and a CT point p maps to ``A[:3,:3] @ p + A[:3,3]`` (``B`` is None except for RAS)."""
    if output_frame == "lps":
        return np.eye(4), None
    if output_frame == "ras":
        return frames.RAS_FROM_LPS_4x4, frames.RAS_FROM_LPS_4x4
    if output_frame == "device":
        if T_device_from_ct is None:
            raise PreconditionFailed("output frame 'device' needs T_device_from_ct; none is set")
        return np.asarray(T_device_from_ct.matrix), None
    raise InputError(f"output_frame: expected one of {OUTPUT_FRAMES}, got {output_frame!r}")


def target_pose(target: Target, output_frame: str,
                T_device_from_ct: RigidTransform | None = None) -> NDArray[np.float64]:
    """The 4x4 TRANSFORM matrix ``<Name>To<Reference>`` sent for ``target``."""
    a, b = reference_from_ct(output_frame, T_device_from_ct)
    pose = a @ drill_frame_lps(target)
    return pose @ b if b is not None else pose


def _to_output(points_lps: NDArray[np.float64], output_frame: str,
               T_device_from_ct: RigidTransform | None) -> NDArray[np.float64]:
    a, _ = reference_from_ct(output_frame, T_device_from_ct)
    return np.asarray(points_lps) @ a[:3, :3].T + a[:3, 3]


def transform_device_name(target_name: str, reference_name: str) -> str:
    """Slicer-style ``<From>To<To>`` name, e.g. ``Drill1ToReference``; refuses > 20 bytes."""
    return frames.check_igtl_device_name(f"{target_name}To{reference_name}")


@dataclass(frozen=True)
class Rendered:
    """A state encoded once for every client.

    ``blob``: every message of the state, concatenated (what a client gets on connect,
    on change and on each refresh); ``by_type``: message type -> {device name -> bytes}
    for GET_ queries; ``tdata``: the TDATA message bytes (empty when not valid);
    ``valid``: whether targets are streamed; ``reason``: why not, if not.
    """

    state: TargetState
    blob: bytes
    by_type: dict[str, dict[str, bytes]]
    tdata: bytes
    valid: bool
    reason: str


def status_json(state: TargetState, output_frame: str, reference_name: str,
                valid: bool, reason: str) -> str:
    """The NavStatus STRING payload (ASCII JSON)."""
    payload = {
        "registration_id": state.registration_id,
        "state": state.state if valid else NO_TARGET,
        "valid_target": valid,
        "qa_verdict": state.qa_verdict,
        "frame": {"lps": "ct_lps", "ras": "ct_ras", "device": "device"}[output_frame],
        "reference": reference_name,
        "targets": [t.name for t in state.targets] if valid else [],
        "timestamp_s": state.timestamp_s,
        "time_utc": datetime.fromtimestamp(state.timestamp_s, UTC).isoformat(),
        "reason": reason,
    }
    if state.state == BRINGUP and valid:
        payload["bringup"] = True
        payload["warning"] = "fixed bring-up targets, not from a registration"
    return json.dumps(payload, sort_keys=True)


def render(state: TargetState, output_frame: str, T_device_from_ct: RigidTransform | None,
           reference_name: str, header_version: int = 1) -> Rendered:
    """Encode ``state`` into the messages of the stream (see docs/openigtlink.md).

    Valid state: one TRANSFORM and one TRAJ per target, the POINT list, STATUS OK, the
    NavStatus STRING (in that order). Not valid (no target, or the device frame asked
    for without a calibration): STATUS "not ready" and the NavStatus STRING only.
    """
    ts = state.timestamp_s
    reason = state.reason
    valid = state.valid
    if valid and output_frame == "device" and T_device_from_ct is None:
        valid, reason = False, "output frame is 'device' but no device calibration is set"
    by_type: dict[str, dict[str, bytes]] = {}
    order: list[bytes] = []

    def add(msg: m.MessageBase) -> bytes:
        msg.header_version = header_version
        raw = msg.pack()
        by_type.setdefault(msg.message_type, {})[msg.device_name] = raw
        order.append(raw)
        return raw

    tdata = b""
    if valid:
        tdata_elements = []
        point_xyz, point_names, point_groups, point_radius = [], [], [], []
        for t in state.targets:
            pose = target_pose(t, output_frame, T_device_from_ct)
            add(m.TransformMessage(pose, timestamp=ts,
                                   device_name=transform_device_name(t.name, reference_name)))
            entry, tgt = _to_output(np.stack([t.entry_lps, t.target_lps]), output_frame, T_device_from_ct)
            add(m.TrajectoryMessage(
                [m.TrajectoryElement(t.name, tuple(entry), tuple(tgt), t.diameter_mm / 2.0,
                                     owner_name=reference_name)],
                timestamp=ts, device_name=t.name))
            tdata_elements.append((t.name, pose, m.TDATA_TYPE_6D))
            point_xyz += [entry, tgt]
            point_names += [f"{t.name}-Entry", f"{t.name}-Target"]
            point_groups += [t.name, t.name]
            point_radius += [t.diameter_mm / 2.0, t.diameter_mm / 2.0]
        # the protocol's POINT field is a radius (igtl_point.h); pyigtl calls it "diameters"
        add(m.PointMessage(np.array(point_xyz), names=point_names, groups=point_groups,
                           diameters=point_radius, owners=reference_name, timestamp=ts,
                           device_name=POINTS_DEVICE))
        add(m.StatusMessage(m.STATUS_OK, 0, "", f"{state.state}: targets valid",
                            timestamp=ts, device_name=STATUS_DEVICE))
        td = m.TrackingDataMessage(tdata_elements, timestamp=ts, device_name=TDATA_DEVICE)
        td.header_version = header_version
        tdata = td.pack()
        by_type["TDATA"] = {TDATA_DEVICE: tdata}
    else:
        add(m.StatusMessage(m.STATUS_NOT_READY, 0, "NoValidTarget",
                            f"no valid target: {reason or 'no approved registration'}",
                            timestamp=ts, device_name=STATUS_DEVICE))
    add(m.StringMessage(status_json(state, output_frame, reference_name, valid, reason),
                        timestamp=ts, device_name=STATUS_DEVICE))
    return Rendered(state, b"".join(order), by_type, tdata, valid, reason)
