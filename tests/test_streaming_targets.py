"""Targets, drill frames and rendering (pure; no sockets)."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from navsvc.errors import InputError, PreconditionFailed
from navsvc.frames import ras_from_lps_points
from navsvc.streaming import messages as m
from navsvc.streaming.files import load_targets_json
from navsvc.streaming.targets import Target, TargetState, drill_frame_lps, render, target_pose
from navsvc.transforms import RigidTransform

T_DEVICE_FROM_CT = RigidTransform.from_euler_deg([-15.0, 30.0, 120.0], [-250.0, 80.0, 1020.0], "device", "ct")


def random_targets(n: int, seed: int = 11) -> list[Target]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        target = rng.uniform(-300, 300, 3)
        direction = rng.normal(size=3)
        out.append(Target(f"T{i}", target + 80.0 * direction / np.linalg.norm(direction), target, 3.0))
    return out


def test_drill_frame_is_rigid_with_origin_at_target_and_z_towards_entry():
    for t in random_targets(50) + [Target("Axial", [1.0, 2.0, 50.0], [1.0, 2.0, 0.0], 3.0),
                                   Target("AlongX", [80.0, 0.5, 0.0], [0.0, 0.0, 0.0], 3.0)]:
        pose = drill_frame_lps(t)
        r = pose[:3, :3]
        np.testing.assert_allclose(r.T @ r, np.eye(3), atol=1e-12)
        assert np.linalg.det(r) == pytest.approx(1.0, abs=1e-12)
        np.testing.assert_allclose(pose[:3, 3], t.target_lps, atol=1e-12)
        # the entry lies on +z at the path length
        np.testing.assert_allclose(pose @ [0, 0, t.path_length_mm, 1], [*t.entry_lps, 1], atol=1e-9)
        # x: the LPS x axis (y axis if the path is within 25 deg of x) made orthogonal to z
        ref = np.eye(3)[0] if abs(r[0, 2]) <= np.cos(np.radians(25.0)) else np.eye(3)[1]
        assert abs(r[:, 0] @ np.cross(ref, r[:, 2])) < 1e-12 and r[:, 0] @ ref > 0


def test_output_frames_map_the_same_points():
    for t in random_targets(10, seed=3):
        along = [0, 0, t.path_length_mm, 1]
        ras = target_pose(t, "ras")
        np.testing.assert_allclose(ras[:3, 3], ras_from_lps_points(t.target_lps), atol=1e-9)
        np.testing.assert_allclose((ras @ along)[:3], ras_from_lps_points(t.entry_lps), atol=1e-9)
        assert np.linalg.det(ras[:3, :3]) == pytest.approx(1.0, abs=1e-12)
        dev = target_pose(t, "device", T_DEVICE_FROM_CT)
        np.testing.assert_allclose((dev @ along)[:3], T_DEVICE_FROM_CT.apply(t.entry_lps), atol=1e-9)
        np.testing.assert_allclose(dev[:3, 3], T_DEVICE_FROM_CT.apply(t.target_lps), atol=1e-9)
    with pytest.raises(PreconditionFailed, match="T_device_from_ct"):
        target_pose(random_targets(1)[0], "device", None)


def test_render_valid_and_not_valid():
    ts = 1795000000.5
    targets = tuple(random_targets(3))
    valid = render(TargetState("reg", "approved", "WARN", targets, ts), "lps", None, "Reference")
    assert valid.valid and set(valid.by_type) == {"TRANSFORM", "TRAJ", "POINT", "STATUS", "STRING", "TDATA"}
    assert sorted(valid.by_type["TRANSFORM"]) == ["T0ToReference", "T1ToReference", "T2ToReference"]
    assert valid.blob == b"".join([*(valid.by_type["TRANSFORM"][f"T{i}ToReference"] + valid.by_type["TRAJ"][f"T{i}"]
                                     for i in range(3)), valid.by_type["POINT"]["NavPoints"],
                                   valid.by_type["STATUS"]["NavStatus"], valid.by_type["STRING"]["NavStatus"]])
    status = json.loads(valid.by_type["STRING"]["NavStatus"][58 + 4:].decode())
    assert status == {**status, "state": "approved", "valid_target": True, "qa_verdict": "WARN",
                      "registration_id": "reg", "frame": "ct_lps", "targets": ["T0", "T1", "T2"], "timestamp_s": ts}
    none = render(TargetState.no_target("rejected by surgeon", "reg", ts), "ras", None, "Reference")
    assert not none.valid and set(none.by_type) == {"STATUS", "STRING"} and none.tdata == b""
    code, _sub, name = struct.unpack(">Hq20s", none.by_type["STATUS"]["NavStatus"][58:88])
    assert code == m.STATUS_NOT_READY and name.rstrip(b"\0") == b"NoValidTarget"
    # device frame without a calibration: an explicit "not valid", never a CT-frame pose
    nocal = render(TargetState("reg", "approved", "PASS", targets, ts), "device", None, "Reference")
    assert not nocal.valid and "TRANSFORM" not in nocal.by_type and "calibration" in nocal.reason


def test_bringup_state_is_marked():
    r = render(TargetState(None, "bringup", None, tuple(random_targets(1)), 10.0), "lps", None, "Ref")
    status = json.loads(r.by_type["STRING"]["NavStatus"][58 + 4:].decode())
    assert status["bringup"] is True and "not from a registration" in status["warning"]


def test_targets_and_states_compare_by_value():
    a = Target("D", [0, 0, 0], [0, 0, 10], 3.0)
    assert a == Target("D", np.array([0.0, 0, 0]), (0, 0, 10), 3) and hash(a) == hash(Target("D", [0, 0, 0], [0, 0, 10], 3.0))
    assert a != Target("D", [0, 0, 0], [0, 0, 10.5], 3.0)
    s1 = TargetState("r", "approved", "PASS", (a,), 5.0)
    assert s1 == TargetState("r", "approved", "PASS", [a], 5.0) and s1 != TargetState.no_target("x", "r", 5.0)
    with pytest.raises(ValueError, match="read-only"):
        a.entry_lps[0] = 1.0


def test_target_validation():
    with pytest.raises(InputError, match="diameter_mm"):
        Target("D", [0, 0, 0], [0, 0, 10], 0.0)
    with pytest.raises(InputError, match="letters"):
        Target("1bad", [0, 0, 0], [0, 0, 10], 3.0)
    with pytest.raises(InputError, match="3 finite"):
        Target("D", [0, 0, np.inf], [0, 0, 10], 3.0)
    with pytest.raises(InputError, match="unique"):
        TargetState("r", "approved", "PASS", (Target("D", [0, 0, 0], [0, 0, 10], 3.0),) * 2, 1.0)


def test_targets_json(tmp_path):
    p = tmp_path / "t.json"
    p.write_text(json.dumps({"coordinate_system": "RAS", "targets": [
        {"name": "Drill1", "entry": [1.0, 2.0, 3.0], "target": [4.0, 5.0, 60.0], "diameter_mm": 2.5}]}))
    (t,) = load_targets_json(p)
    np.testing.assert_allclose(t.entry_lps, [-1.0, -2.0, 3.0])
    np.testing.assert_allclose(t.target_lps, [-4.0, -5.0, 60.0])
    p.write_text(json.dumps({"targets": [{"name": "Drill1", "entry": [1, 2, 3]}]}))
    with pytest.raises(InputError, match=r"targets\[0\]: missing field\(s\) \['target', 'diameter_mm'\]"):
        load_targets_json(p)
    with pytest.raises(InputError, match="not found"):
        load_targets_json(tmp_path / "nope.json")
