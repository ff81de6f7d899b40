"""OpenIGTLink encoding byte for byte: against the protocol's documented layouts
(struct formats written out here from igtl_*.h) and against the reference C++ library."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from pyigtl.messages import CRC64

from navsvc.errors import StreamingError
from navsvc.streaming import messages as m

TS = 1700000000.5  # 0.5 s is exact in binary: the fraction field is 0.5 * 2**32 = 0x80000000
MATRIX = np.array([[0.0, -1.0, 0.0, 12.5], [1.0, 0.0, 0.0, -7.25], [0.0, 0.0, 1.0, 301.0], [0, 0, 0, 1]])


def header(mtype: str, name: str, body: bytes) -> bytes:
    """The 58-byte v1 header as the protocol defines it (big-endian)."""
    return struct.pack(">H12s20sIIQQ", 1, mtype.encode(), name.encode(), 1700000000, 0x80000000,
                       len(body), CRC64(body)) + body


def packed(msg: m.MessageBase) -> bytes:
    msg.timestamp = TS
    return msg.pack()


def our_messages() -> dict[str, bytes]:
    """The same content as the C++ client's `pack` mode."""
    return {
        "STATUS": packed(m.StatusMessage(m.STATUS_NOT_READY, -5, "NoValidTarget",
                                         "no valid target: awaiting approval", device_name="NavStatus")),
        "TRAJ": packed(m.TrajectoryMessage([m.TrajectoryElement(
            "Drill1", (10.5, -20.25, 30.0), (15.0, 25.5, 90.125), 1.5, owner_name="Reference")],
            device_name="Drill1")),
        "TDATA": packed(m.TrackingDataMessage([("Drill1", MATRIX, m.TDATA_TYPE_6D)], device_name="NavTargets")),
        "STT_TDATA": packed(m.StartTrackingDataMessage(50, "Reference", device_name="NavTargets")),
        "RTS_TDATA": packed(m.RtsMessage("RTS_TDATA", 1, device_name="NavTargets")),
        "STP_TDATA": packed(m.QueryMessage("STP_TDATA", device_name="NavTargets")),
        "GET_TRANS": packed(m.QueryMessage("GET_TRANS", device_name="Drill1ToReference")),
        "GET_STATUS": packed(m.QueryMessage("GET_STATUS", device_name="NavStatus")),
        "TRANSFORM": packed(m.TransformMessage(MATRIX, device_name="Drill1ToReference")),
    }


def test_status_layout():
    body = struct.pack(">Hq20s", 13, -5, b"NoValidTarget") + b"no valid target: awaiting approval\0"
    assert our_messages()["STATUS"] == header("STATUS", "NavStatus", body)


def test_traj_layout():
    body = struct.pack(">64s32sbb4B3f3ff20s", b"Drill1", b"Trajectory", 3, 0, 255, 0, 0, 255,
                       10.5, -20.25, 30.0, 15.0, 25.5, 90.125, 1.5, b"Reference")
    assert len(body) == 150
    assert our_messages()["TRAJ"] == header("TRAJ", "Drill1", body)


def test_tdata_and_queries_layout():
    # TDATA element: name[20] type reserved, then R11 R21 R31 R12 R22 R32 R13 R23 R33 TX TY TZ
    body = struct.pack(">20sBB12f", b"Drill1", 2, 0, 0, 1, 0, -1, 0, 0, 0, 0, 1, 12.5, -7.25, 301.0)
    assert len(body) == 70
    ours = our_messages()
    assert ours["TDATA"] == header("TDATA", "NavTargets", body)
    assert ours["STT_TDATA"] == header("STT_TDATA", "NavTargets", struct.pack(">i32s", 50, b"Reference"))
    assert ours["RTS_TDATA"] == header("RTS_TDATA", "NavTargets", b"\x01")
    assert ours["STP_TDATA"] == header("STP_TDATA", "NavTargets", b"")
    assert ours["GET_TRANS"] == header("GET_TRANS", "Drill1ToReference", b"")


@pytest.mark.parametrize("mtype", ["STATUS", "TRAJ", "TDATA", "STT_TDATA", "RTS_TDATA", "TRANSFORM"])
def test_decode_round_trip(mtype):
    raw = our_messages()[mtype]
    hdr = m.parse_header(raw[:58])
    assert hdr.timestamp_s == pytest.approx(TS, abs=1e-8)
    msg = m.decode(hdr, raw[58:])
    assert msg.message_type == mtype
    again = msg.pack()
    assert again[58:] == raw[58:]


def test_v2_header_with_metadata_round_trip():
    msg = m.StatusMessage(m.STATUS_OK, 0, "", "ok", device_name="NavStatus", timestamp=TS)
    msg.header_version = 2
    msg.metadata = {"registration": "reg-7"}
    raw = msg.pack()
    hdr = m.parse_header(raw[:58])
    out = m.decode(hdr, raw[58:])
    assert (hdr.version, out.code, out.status_string, out.metadata) == (2, 1, "ok", {"registration": "reg-7"})
    assert m.content_of(hdr, raw[58:]) == struct.pack(">Hq20s", 1, 0, b"") + b"ok\0"


def test_malformed_input_refused():
    good = our_messages()["STATUS"]
    with pytest.raises(StreamingError, match="header version"):
        m.parse_header(b"\x00\x09" + good[2:58])
    with pytest.raises(StreamingError, match="limit is 1000"):
        m.parse_header(good[:42] + struct.pack(">Q", 1 << 40) + good[50:58], max_body_bytes=1000)
    with pytest.raises(StreamingError, match="non-printable"):
        m.parse_header(good[:2] + b"\xff" * 12 + good[14:58])
    corrupted = bytearray(good)
    corrupted[-3] ^= 0x01
    with pytest.raises(StreamingError, match="CRC mismatch"):
        m.decode(m.parse_header(bytes(corrupted[:58])), bytes(corrupted[58:]))
    with pytest.raises(StreamingError, match="not a multiple of 150"):
        bad = header("TRAJ", "X", b"\0" * 149)
        m.decode(m.parse_header(bad[:58]), bad[58:])


def test_fixed_fields_refuse_overlong_names():
    with pytest.raises(StreamingError, match="holds 20"):
        m.StatusMessage(1, 0, "E" * 21, "x").pack()
    with pytest.raises(StreamingError, match="'GET_TRANSFORM' is 13 bytes; the field holds 12"):
        m.QueryMessage("GET_TRANSFORM", device_name="Drill1ToReference").pack()
    with pytest.raises(StreamingError, match="device name .* holds 20"):
        m.QueryMessage("GET_TRANS", device_name="Drill1ToVeryLongReference").pack()
