"""Interoperability with the OpenIGTLink reference implementation (C++ library).

A client built from tests/igtl_ref_client/igtl_ref_client.cxx (after the library's
Receiver/ReceiveClient.cxx example) against libopenigtlink-dev; scripts/setup.sh
installs the library and g++. The client unpacks every message with the library
(CRC checked) and prints its content; we compare with the exact expected values.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from navsvc.frames import RAS_FROM_LPS_4x4
from navsvc.streaming import IgtlServer, StreamConfig, Target, TargetState
from navsvc.streaming import messages as m
from navsvc.transforms import RigidTransform

SOURCE = Path(__file__).parent / "igtl_ref_client" / "igtl_ref_client.cxx"
INCLUDE = Path("/usr/include/openigtlink")
ENTRY_LPS = np.array([-62.0, 31.5, -802.25])
TARGET_LPS = np.array([-84.5, 48.0, -766.0])
TS = 1795000000.25
T_DEVICE_FROM_CT = RigidTransform.from_euler_deg([12.0, -33.0, 71.0], [-310.0, 95.0, 870.0], "device", "ct")


@pytest.fixture(scope="module")
def ref_client(tmp_path_factory) -> Path:
    """Compile the reference client once per session (about 1 s)."""
    gxx = shutil.which("g++")
    if gxx is None or not (INCLUDE / "igtlClientSocket.h").exists():
        pytest.skip("OpenIGTLink C++ library or g++ missing: run scripts/setup.sh "
                    "(apt packages libopenigtlink-dev, openigtlink-examples, g++)")
    tag = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]
    binary = tmp_path_factory.mktemp("igtl_ref_client") / f"igtl_ref_client-{tag}"
    subprocess.run([gxx, "-O1", f"-I{INCLUDE}", str(SOURCE), "-lOpenIGTLink", "-o", str(binary)],
                   check=True, capture_output=True, timeout=120)
    return binary


def run_client(binary: Path, port: int, count: int, *queries: str) -> list[list[str]]:
    out = subprocess.run([str(binary), "recv", "127.0.0.1", str(port), str(count), *queries],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, f"reference client failed ({out.returncode}): {out.stdout}{out.stderr}"
    return [line.split("\t") for line in out.stdout.splitlines()]


def drill_pose(entry: np.ndarray, target: np.ndarray) -> np.ndarray:
    z = (entry - target) / np.linalg.norm(entry - target)
    x = np.array([1.0, 0, 0]) - z[0] * z
    x /= np.linalg.norm(x)
    pose = np.eye(4)
    pose[:3, :4] = np.column_stack([x, np.cross(z, x), z, target])
    return pose


def state() -> TargetState:
    return TargetState("reg-9", "approved", "WARN", (Target("Drill1", ENTRY_LPS, TARGET_LPS, 3.0),), TS)


def test_byte_for_byte_against_reference_library(ref_client):
    import test_streaming_protocol as proto  # same tests folder (pytest prepends it to sys.path)

    out = subprocess.run([str(ref_client), "pack"], capture_output=True, text=True, timeout=30, check=True)
    reference = {k: bytes.fromhex(v) for k, v in (ln.split("\t") for ln in out.stdout.split("\n") if ln)}
    ours = proto.our_messages()
    assert set(reference) == set(ours)
    for mtype, ref in reference.items():
        mine = ours[mtype]
        # identical except the timestamp's fraction word (bytes 38..42): the C++ TimeStamp
        # rounds 0.5 s to 0x7fffffff where 0.5 * 2**32 = 0x80000000 exactly (0.23 ns apart)
        assert mine[:38] == ref[:38] and mine[42:] == ref[42:], f"{mtype} differs from the C++ library"
        assert abs(int.from_bytes(mine[38:42], "big") - int.from_bytes(ref[38:42], "big")) <= 1


@pytest.mark.parametrize("frame", ["lps", "ras", "device"])
def test_reference_client_receives_and_decodes_our_stream(ref_client, frame):
    calibration = T_DEVICE_FROM_CT if frame == "device" else None
    with IgtlServer(StreamConfig(port=0, output_frame=frame, refresh_hz=0, T_device_from_ct=calibration)) as srv:
        srv.publish(state())
        lines = run_client(ref_client, srv.port, 5)   # TRANSFORM, TRAJ, POINT, STATUS, STRING
    assert [ln[0] for ln in lines if ln[0] in ("TRANSFORM", "TRAJ", "POINT", "STATUS", "STRING")] == \
        ["TRANSFORM", "TRAJ", "POINT", "STATUS", "STRING"]
    if frame == "device":
        pose = T_DEVICE_FROM_CT.matrix @ drill_pose(ENTRY_LPS, TARGET_LPS)
        entry, target = T_DEVICE_FROM_CT.apply(ENTRY_LPS), T_DEVICE_FROM_CT.apply(TARGET_LPS)
    else:
        flip = RAS_FROM_LPS_4x4 if frame == "ras" else np.eye(4)
        pose = flip @ drill_pose(ENTRY_LPS, TARGET_LPS) @ flip
        entry, target = flip[:3, :3] @ ENTRY_LPS, flip[:3, :3] @ TARGET_LPS
    rows = {ln[0]: ln for ln in lines}
    tr = rows["TRANSFORM"]
    assert tr[1] == "Drill1ToReference" and tr[2] == "1795000000.250000000"
    # float32 on the wire: 1e-4 mm / 1e-6 relative on rotations
    np.testing.assert_allclose(np.array(tr[3:15], float).reshape(3, 4), pose[:3], atol=1e-4, rtol=1e-6)
    el = rows["TRAJ_EL"]
    assert el[1:4] == ["Drill1", "Trajectory", "3"] and el[-1] == "Reference"
    np.testing.assert_allclose(np.array(el[4:11], float), [*entry, *target, 1.5], atol=1e-4, rtol=1e-6)
    pts = [ln for ln in lines if ln[0] == "POINT_EL"]
    assert [p[1] for p in pts] == ["Drill1-Entry", "Drill1-Target"]
    np.testing.assert_allclose(np.array(pts[1][3:7], float), [*target, 1.5], atol=1e-4, rtol=1e-6)
    assert pts[1][2] == "Drill1" and pts[1][7] == "Reference"
    assert rows["STATUS"][3:5] == ["1", "0"]
    assert '"state": "approved"' in rows["STRING"][4] and '"qa_verdict": "WARN"' in rows["STRING"][4]


def test_reference_client_queries_and_tdata(ref_client):
    with IgtlServer(StreamConfig(port=0, refresh_hz=0)) as srv:
        # before approval: not-ready status, then the queries' answers
        lines = run_client(ref_client, srv.port, 3, "GET_TRANS:Drill1ToReference")
        assert [ln[0] for ln in lines] == ["STATUS", "STRING", "STATUS"]
        assert lines[0][3] == str(m.STATUS_NOT_READY) and lines[2][1:2] == ["Drill1ToReference"]
        assert lines[2][3] == str(m.STATUS_NOT_READY) and lines[2][5:7] == ["NoValidTarget", lines[2][6]] and lines[2][6].startswith("no valid target")
        srv.publish(state())
        lines = run_client(ref_client, srv.port, 5 + 3 + 3, "GET_TRANS:Drill1ToReference",
                           "GET_STATUS:Nope", "STT_TDATA:20")
    messages = [ln for ln in lines if not ln[0].endswith("_EL")]
    assert [ln[0] for ln in messages[:5]] == ["TRANSFORM", "TRAJ", "POINT", "STATUS", "STRING"]
    replies = messages[5:]
    assert [r[0] for r in replies[:3]] == ["TRANSFORM", "STATUS", "RTS_TDATA"]
    assert replies[1][1] == "Nope" and replies[1][3] == str(m.STATUS_NOT_FOUND)
    assert replies[2][3] == "0"
    td = [ln for ln in lines if ln[0] == "TDATA_EL"]
    assert len(td) >= 2 and td[0][1:3] == ["Drill1", "2"]
    np.testing.assert_allclose(np.array(td[0][3:15], float).reshape(3, 4),
                               drill_pose(ENTRY_LPS, TARGET_LPS)[:3], atol=2e-5)
