"""The OpenIGTLink server over real loopback sockets (port 0; waits with timeouts only)."""

from __future__ import annotations

import json
import socket
import struct
import time

import numpy as np
import pyigtl
import pytest
from pyigtl.messages import CRC64

from navsvc.errors import ConfigError, InputError, PreconditionFailed, StreamingError
from navsvc.frames import RAS_FROM_LPS_4x4
from navsvc.streaming import IgtlClient, IgtlServer, StreamConfig, Target, TargetState
from navsvc.streaming import messages as m
from navsvc.transforms import RigidTransform

ENTRY_LPS = np.array([-62.0, 31.5, -802.25])
TARGET_LPS = np.array([-84.5, 48.0, -766.0])
T_DEVICE_FROM_CT = RigidTransform.from_euler_deg([10.0, -20.0, 35.0], [400.0, -120.0, 950.0], "device", "ct")
TIMEOUT_S = 5.0


def approved(ts: float = 1795000000.25) -> TargetState:
    return TargetState("reg-42", "approved", "PASS",
                       (Target("Drill1", ENTRY_LPS, TARGET_LPS, 3.2),
                        Target("Drill2", ENTRY_LPS + [5.0, 0, 0], TARGET_LPS + [4.0, 1.0, 0], 2.5)), ts)


def expected_pose(entry: np.ndarray, target: np.ndarray, frame: str) -> np.ndarray:
    """Independent expectation of the TRANSFORM: origin at the target, z towards the entry,
    x = LPS +x made orthogonal to z, y = z x x; then expressed in the output frame."""
    z = (entry - target) / np.linalg.norm(entry - target)
    x = np.array([1.0, 0, 0]) - z[0] * z
    x /= np.linalg.norm(x)
    pose = np.eye(4)
    pose[:3, :4] = np.column_stack([x, np.cross(z, x), z, target])
    if frame == "ras":
        return RAS_FROM_LPS_4x4 @ pose @ RAS_FROM_LPS_4x4
    if frame == "device":
        return T_DEVICE_FROM_CT.matrix @ pose
    return pose


class RawClient:
    """Decodes the byte stream straight from the protocol definition (no pyigtl)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S)
        self.buf = b""

    def _read(self, n: int) -> bytes:
        while len(self.buf) < n:
            part = self.sock.recv(65536)
            if not part:
                raise ConnectionError("closed")
            self.buf += part
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def message(self) -> tuple[str, str, float, bytes]:
        version, mtype, name, sec, frac, size, crc = struct.unpack(">H12s20sIIQQ", self._read(58))
        body = self._read(size)
        assert version == 1 and CRC64(body) == crc
        return mtype.rstrip(b"\0").decode(), name.rstrip(b"\0").decode(), sec + frac / 2**32, body

    def until_string(self, predicate) -> list[tuple[str, str, float, bytes]]:
        seen = []
        while True:
            msg = self.message()
            seen.append(msg)
            if msg[0] == "STRING" and predicate(json.loads(msg[3][4:].decode())):
                return seen


def raw_matrix(body: bytes) -> np.ndarray:
    v = struct.unpack(">12f", body)
    pose = np.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = v[0:3], v[3:6], v[6:9], v[9:12]
    return pose


@pytest.fixture
def server():
    srv = IgtlServer(StreamConfig(port=0, refresh_hz=20.0, send_timeout_s=1.0))
    srv.start()
    yield srv
    srv.stop()


def test_connect_before_approval_sees_no_target_then_targets(server):
    raw = RawClient(server.port)
    first = raw.until_string(lambda s: True)
    assert [t for t, *_ in first] == ["STATUS", "STRING"]            # nothing else before approval
    code = struct.unpack(">H", first[0][3][:2])[0]
    assert code == m.STATUS_NOT_READY
    status = json.loads(first[1][3][4:].decode())
    assert status["valid_target"] is False and status["state"] == "no_target"

    server.publish(approved())
    seen = raw.until_string(lambda s: s["state"] == "approved")
    by_name = {(t, n): (ts, body) for t, n, ts, body in seen}
    ts, body = by_name[("TRANSFORM", "Drill1ToReference")]
    assert ts == pytest.approx(1795000000.25, abs=1e-6)       # timestamp of the registration
    np.testing.assert_allclose(raw_matrix(body), expected_pose(ENTRY_LPS, TARGET_LPS, "lps"), atol=1e-4)
    assert ("TRANSFORM", "Drill2ToReference") in by_name and ("TRAJ", "Drill1") in by_name
    traj = struct.unpack(">64s32sbb4B3f3ff20s", by_name[("TRAJ", "Drill1")][1])
    np.testing.assert_allclose(traj[8:11], ENTRY_LPS, atol=1e-4)
    np.testing.assert_allclose(traj[11:14], TARGET_LPS, atol=1e-4)
    assert traj[14] == pytest.approx(1.6)                          # radius = diameter / 2
    points = by_name[("POINT", "NavPoints")][1]
    assert len(points) == 4 * 136
    names = [points[i * 136:i * 136 + 64].rstrip(b"\0").decode() for i in range(4)]
    assert names == ["Drill1-Entry", "Drill1-Target", "Drill2-Entry", "Drill2-Target"]
    assert struct.unpack(">H", by_name[("STATUS", "NavStatus")][1][:2])[0] == m.STATUS_OK
    # withdrawal: no TRANSFORM follows, only "no valid target"
    server.publish(TargetState.no_target("registration withdrawn by surgeon", "reg-42"))
    seen = raw.until_string(lambda s: s["state"] == "no_target")
    for _ in range(4):   # the next refreshes carry no TRANSFORM either
        seen += raw.until_string(lambda s: True)
    after = seen[next(i for i, x in enumerate(seen) if x[0] == "STRING" and b"withdrawn" in x[3]) - 1:]
    assert {t for t, *_ in after} == {"STATUS", "STRING"}
    raw.sock.close()


@pytest.mark.parametrize("frame", ["lps", "ras", "device"])
def test_pyigtl_client_gets_exact_matrix_in_each_frame(frame):
    config = StreamConfig(port=0, output_frame=frame, refresh_hz=50.0,
                          T_device_from_ct=T_DEVICE_FROM_CT if frame == "device" else None)
    with IgtlServer(config) as srv:
        srv.publish(approved())
        client = pyigtl.OpenIGTLinkClient("127.0.0.1", srv.port)
        try:
            msg = client.wait_for_message("Drill1ToReference", timeout=TIMEOUT_S)
            assert msg is not None, "pyigtl client received no TRANSFORM"
            np.testing.assert_allclose(msg.matrix, expected_pose(ENTRY_LPS, TARGET_LPS, frame), atol=2e-4)
            points = client.wait_for_message("NavPoints", timeout=TIMEOUT_S)
            a = {"lps": np.eye(4), "ras": RAS_FROM_LPS_4x4, "device": T_DEVICE_FROM_CT.matrix}[frame]
            np.testing.assert_allclose(points.positions[1], a[:3, :3] @ TARGET_LPS + a[:3, 3], atol=2e-4)
        finally:
            client.stop()


def test_device_frame_without_calibration_says_not_valid():
    with IgtlServer(StreamConfig(port=0, output_frame="device", refresh_hz=0)) as srv:
        srv.publish(approved())
        with IgtlClient("127.0.0.1", srv.port) as c:
            msg, seen = c.receive_until(lambda x: x.message_type == "STRING", TIMEOUT_S)
            assert [x.message_type for x in seen] == ["STATUS", "STRING"]
            assert seen[0].code == m.STATUS_NOT_READY and "calibration" in json.loads(msg.string)["reason"]
            srv.set_device_calibration(T_DEVICE_FROM_CT)
            tr, _ = c.receive_until(lambda x: x.message_type == "TRANSFORM", TIMEOUT_S)
            np.testing.assert_allclose(tr.matrix, expected_pose(ENTRY_LPS, TARGET_LPS, "device"), atol=2e-4)


def test_several_clients_at_once_and_queries():
    # no refresh: every message after the first state is a change or a query reply
    server = IgtlServer(StreamConfig(port=0, refresh_hz=0))
    server.start()
    server.publish(approved())
    clients = [IgtlClient("127.0.0.1", server.port) for _ in range(5)]
    try:
        assert server.wait_for_clients(5, TIMEOUT_S)
        for c in clients:
            c.receive_until(lambda x: x.message_type == "STRING" and "approved" in x.string, TIMEOUT_S)
        server.publish(approved(ts=1795000100.0))      # a change reaches every client
        for c in clients:
            msg, seen = c.receive_until(lambda x: x.message_type == "STRING", TIMEOUT_S)
            assert len(seen) == 7 and all(x.timestamp == pytest.approx(1795000100.0) for x in seen)
        q = clients[0]
        q.send(m.QueryMessage("GET_TRANS", device_name="Drill2ToReference"))
        reply, seen = q.receive_until(lambda x: x.message_type == "TRANSFORM", TIMEOUT_S)
        assert len(seen) == 1 and reply.device_name == "Drill2ToReference"
        np.testing.assert_allclose(reply.matrix, expected_pose(ENTRY_LPS + [5.0, 0, 0], TARGET_LPS + [4.0, 1.0, 0], "lps"), atol=2e-4)
        q.send(m.QueryMessage("GET_TRAJ", device_name="Drill1"))
        reply, seen = q.receive_until(lambda x: x.message_type == "TRAJ", TIMEOUT_S)
        assert len(seen) == 1 and reply.elements[0].name == "Drill1"
        q.send(m.QueryMessage("GET_STATUS", device_name="NavStatus"))
        reply, seen = q.receive_until(lambda x: x.message_type == "STATUS", TIMEOUT_S)
        assert len(seen) == 1 and reply.code == m.STATUS_OK
        q.send(m.QueryMessage("GET_TRANS", device_name="NoSuchTool"))
        reply, seen = q.receive_until(lambda x: x.message_type == "STATUS", TIMEOUT_S)
        assert len(seen) == 1 and reply.device_name == "NoSuchTool" and reply.code == m.STATUS_NOT_FOUND and "Drill1ToReference" in reply.status_string
        q.send(m.QueryMessage("CAPABILITY_X", device_name="Whatever"))  # logged, ignored
        q.send(m.QueryMessage("GET_POINT", device_name="NavPoints"))
        reply, seen = q.receive_until(lambda x: x.message_type == "POINT", TIMEOUT_S)
        assert len(seen) == 1 and len(reply.positions) == 4
    finally:
        for c in clients:
            c.close()
    assert server.wait_for_clients(0, TIMEOUT_S)
    server.stop()


def test_query_before_approval_answers_not_ready(server):
    with IgtlClient("127.0.0.1", server.port) as c:
        c.send(m.QueryMessage("GET_TRANS", device_name="Drill1ToReference"))
        reply, seen = c.receive_until(lambda x: x.message_type == "STATUS" and x.device_name == "Drill1ToReference", TIMEOUT_S)
        assert reply.code == m.STATUS_NOT_READY
        assert not any(x.message_type == "TRANSFORM" for x in seen)


def test_tdata_stream_start_stop_honours_interval():
    with IgtlServer(StreamConfig(port=0, refresh_hz=0)) as srv:
        srv.publish(approved())
        with IgtlClient("127.0.0.1", srv.port) as c:
            c.receive_until(lambda x: x.message_type == "STRING", TIMEOUT_S)
            c.send(m.StartTrackingDataMessage(40, "Reference", device_name="NavTargets"))
            rts, _ = c.receive_until(lambda x: x.message_type == "RTS_TDATA", TIMEOUT_S)
            assert rts.status == 0
            arrivals = []
            while len(arrivals) < 6:
                msg = c.receive(TIMEOUT_S)
                if msg.message_type == "TDATA":
                    arrivals.append(msg.received_s)
                    assert [e[0] for e in msg.elements] == ["Drill1", "Drill2"]
                    np.testing.assert_allclose(msg.elements[0][1], expected_pose(ENTRY_LPS, TARGET_LPS, "lps"), atol=2e-4)
            # 40 ms asked: 5 intervals take >= 200 ms at the sender (first arrival may lag by
            # up to 50 ms on a loaded machine), and the stream is not much slower either
            assert 0.15 < arrivals[-1] - arrivals[0] < 1.0
            c.send(m.QueryMessage("STP_TDATA", device_name="NavTargets"))
            rts, _ = c.receive_until(lambda x: x.message_type == "RTS_TDATA", TIMEOUT_S)
            c.send(m.QueryMessage("GET_STATUS", device_name="NavStatus"))   # a marker after the stop
            _, seen = c.receive_until(lambda x: x.message_type == "STATUS", TIMEOUT_S)
            time_after_stop = time.monotonic()
            srv.publish(approved(ts=1795000200.0))
            _, seen2 = c.receive_until(lambda x: x.message_type == "STRING", TIMEOUT_S)
            assert time.monotonic() - time_after_stop < TIMEOUT_S
            assert not any(x.message_type == "TDATA" for x in seen[1:] + seen2)


def _expect_closed(sock: socket.socket) -> None:
    sock.settimeout(TIMEOUT_S)
    while True:
        try:
            if not sock.recv(65536):
                return
        except ConnectionResetError:
            return


@pytest.mark.parametrize("attack", ["random", "bad_crc", "huge_body", "bad_version"])
def test_malformed_input_closes_only_that_client(server, attack):
    server.publish(approved())
    good = IgtlClient("127.0.0.1", server.port)
    bad = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT_S)
    assert server.wait_for_clients(2, TIMEOUT_S)
    query = m.QueryMessage("GET_STATUS", device_name="NavStatus").pack()
    if attack == "random":
        payload = np.random.default_rng(3).integers(1, 255, 4096, dtype=np.uint8).tobytes()
    elif attack == "bad_crc":
        payload = query[:50] + struct.pack(">Q", 12345)
    elif attack == "huge_body":
        payload = query[:42] + struct.pack(">Q", 1 << 40) + query[50:]
    else:
        payload = b"\x00\x07" + query[2:]
    bad.sendall(payload)
    _expect_closed(bad)
    bad.close()
    assert server.wait_for_clients(1, TIMEOUT_S)
    server.publish(approved(ts=1795000300.0))
    msg, _ = good.receive_until(lambda x: x.message_type == "TRANSFORM" and x.timestamp > 1795000299, TIMEOUT_S)
    good.close()


def test_stalled_client_does_not_delay_others_and_is_dropped():
    big = tuple(Target(f"D{i}", ENTRY_LPS + i, TARGET_LPS + i, 3.0) for i in range(40))
    config = StreamConfig(port=0, refresh_hz=200.0, send_timeout_s=0.5)
    with IgtlServer(config) as srv:
        srv.publish(TargetState("reg-1", "approved", "PASS", big, 1795000000.0))
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(("127.0.0.1", srv.port))                 # never reads
        good = IgtlClient("127.0.0.1", srv.port)
        assert srv.wait_for_clients(2, TIMEOUT_S)
        t0 = time.monotonic()
        latencies = []
        for _ in range(20):
            ts = time.time()
            srv.publish(TargetState("reg-1", "approved", "PASS", big, ts))
            msg, _ = good.receive_until(lambda x, ts=ts: x.message_type == "STRING" and x.timestamp >= ts - 1e-6, TIMEOUT_S)
            latencies.append(msg.received_s - ts)
        assert max(latencies) < 0.5, f"updates to a reading client delayed: {max(latencies):.3f} s"
        # the stalled one is detected (its send times out) and dropped; the other stays
        assert srv.wait_for_clients(1, TIMEOUT_S), f"stalled client not dropped after {time.monotonic() - t0:.1f} s"
        stalled.close()
        srv.publish(approved(ts=1795000400.0))
        good.receive_until(lambda x: x.message_type == "TRANSFORM" and x.timestamp > 1795000399, TIMEOUT_S)
        good.close()


def test_allow_list_refuses_other_addresses():
    with IgtlServer(StreamConfig(port=0, allow=("10.1.2.0/24",))) as srv:
        sock = socket.create_connection(("127.0.0.1", srv.port), timeout=TIMEOUT_S)
        _expect_closed(sock)
        sock.close()
        assert srv.client_count == 0 and srv.refused_count == 1


def test_dead_client_is_dropped(server):
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT_S)
    assert server.wait_for_clients(1, TIMEOUT_S)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()                                            # RST: the peer vanishes
    assert server.wait_for_clients(0, TIMEOUT_S)


def test_names_and_config_refused():
    with pytest.raises(InputError, match="20"):
        Target("A" * 21, ENTRY_LPS, TARGET_LPS, 3.0)
    srv = IgtlServer(StreamConfig(port=0, reference_name="VeryLongReference"))
    with pytest.raises(InputError, match="DrillNumberToVeryLongReference.*20"):
        srv.publish(TargetState("r", "approved", "PASS", (Target("DrillNumber", ENTRY_LPS, TARGET_LPS, 3.0),), 1.0))
    with pytest.raises(ConfigError, match="reference_name"):
        StreamConfig(reference_name="R" * 21)
    with pytest.raises(ConfigError, match="allow"):
        StreamConfig(allow=("not-an-ip",))
    with pytest.raises(ConfigError, match="to='device' from='ct'"):
        StreamConfig(T_device_from_ct=T_DEVICE_FROM_CT.inverse())
    with pytest.raises(PreconditionFailed, match="PASS or WARN"):
        TargetState("r", "approved", "FAIL", (Target("D", ENTRY_LPS, TARGET_LPS, 3.0),), 1.0)
    with pytest.raises(PreconditionFailed, match="registration id"):
        TargetState(None, "approved", "PASS", (Target("D", ENTRY_LPS, TARGET_LPS, 3.0),), 1.0)
    with pytest.raises(PreconditionFailed, match="must not carry"):
        TargetState("r", "no_target", None, (Target("D", ENTRY_LPS, TARGET_LPS, 3.0),), 1.0)
    with pytest.raises(InputError, match="apart"):
        Target("D", ENTRY_LPS, ENTRY_LPS + 0.1, 3.0)


def test_stop_releases_port_and_closes_clients():
    srv = IgtlServer(StreamConfig(port=0))
    port = srv.start()
    c = IgtlClient("127.0.0.1", port)
    assert srv.wait_for_clients(1, TIMEOUT_S)
    srv.stop()
    _expect_closed(c.sock)
    again = IgtlServer(StreamConfig(port=port))
    assert again.start() == port                 # the port is free again
    again.stop()


def test_header_version_2_stream_and_empty_name_query():
    with IgtlServer(StreamConfig(port=0, refresh_hz=0, header_version=2)) as srv:
        srv.publish(approved())
        with IgtlClient("127.0.0.1", srv.port) as c:
            msg, seen = c.receive_until(lambda x: x.message_type == "STRING", TIMEOUT_S)
            assert {x.header_version for x in seen} == {2} and json.loads(msg.string)["valid_target"]
            np.testing.assert_allclose(seen[0].matrix, expected_pose(ENTRY_LPS, TARGET_LPS, "lps"), atol=2e-4)
            c.send(m.QueryMessage("GET_TRANS", device_name=""))       # empty name: all of that type
            first = c.receive(TIMEOUT_S)
            second = c.receive(TIMEOUT_S)
            assert [first.device_name, second.device_name] == ["Drill1ToReference", "Drill2ToReference"]


def test_clearing_calibration_withdraws_device_targets():
    config = StreamConfig(port=0, refresh_hz=0, output_frame="device", T_device_from_ct=T_DEVICE_FROM_CT)
    with IgtlServer(config) as srv:
        srv.publish(approved())
        with IgtlClient("127.0.0.1", srv.port) as c:
            c.receive_until(lambda x: x.message_type == "TRANSFORM", TIMEOUT_S)
            c.receive_until(lambda x: x.message_type == "STRING", TIMEOUT_S)
            srv.set_device_calibration(None)
            msg, seen = c.receive_until(lambda x: x.message_type == "STRING", TIMEOUT_S)
            assert [x.message_type for x in seen] == ["STATUS", "STRING"] and seen[0].code == m.STATUS_NOT_READY
            assert json.loads(msg.string)["valid_target"] is False


def test_reply_queue_is_bounded_for_a_client_that_does_not_read():
    config = StreamConfig(port=0, refresh_hz=0, queue_size=4, send_buffer_bytes=4096)
    with IgtlServer(config) as srv:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", srv.port))
        sock.settimeout(TIMEOUT_S)
        query = m.QueryMessage("GET_STATUS", device_name="NavStatus").pack()
        sock.sendall(query * 3000)                        # ~290 kB of replies owed, none read yet
        deadline = time.monotonic() + TIMEOUT_S
        while not any(c.pending_bytes for c in srv.client_stats()):
            assert time.monotonic() < deadline, "the client's buffers never filled"
            time.sleep(0.01)
        other = IgtlClient("127.0.0.1", srv.port)         # the server still serves others at once
        other.receive_until(lambda x: x.message_type == "STRING", TIMEOUT_S)
        other.close()
        reader = IgtlClient.from_socket(sock)             # now drain the first socket
        replies = 0
        try:
            while True:
                msg = reader.receive(1.0)
                replies += msg.message_type == "STATUS"
        except TimeoutError:
            pass
        assert 4 <= replies < 3000 - 100, f"{replies} replies: the queue did not drop old replies"
        sock.close()


@pytest.mark.parametrize("frame", ["lps", "ras", "device"])
def test_raw_protocol_client_gets_exact_matrices_in_each_frame(frame):
    config = StreamConfig(port=0, refresh_hz=0, output_frame=frame,
                          T_device_from_ct=T_DEVICE_FROM_CT if frame == "device" else None)
    with IgtlServer(config) as srv:
        srv.publish(approved())
        raw = RawClient(srv.port)
        seen = raw.until_string(lambda s: True)
        expected = expected_pose(ENTRY_LPS, TARGET_LPS, frame)
        body = next(b for t, n, _ts, b in seen if (t, n) == ("TRANSFORM", "Drill1ToReference"))
        np.testing.assert_allclose(raw_matrix(body), expected, atol=1e-4, rtol=1e-6)
        raw.sock.sendall(m.StartTrackingDataMessage(5, "", device_name="NavTargets").pack())
        tdata = None
        while tdata is None:
            t, n, _ts, b = raw.message()
            if t == "TDATA":
                tdata = b
        assert len(tdata) == 2 * 70 and tdata[:20].rstrip(b"\0") == b"Drill1" and tdata[20] == 2
        np.testing.assert_allclose(raw_matrix(tdata[22:70]), expected, atol=1e-4, rtol=1e-6)
        # withdrawal stops TDATA too: after the no-target state only STATUS/STRING arrive
        srv.publish(TargetState.no_target("withdrawn"))
        while True:
            t, n, _ts, b = raw.message()
            if t == "STRING" and b"withdrawn" in b:
                break
        raw.sock.sendall(m.QueryMessage("GET_STATUS", device_name="NavStatus").pack())
        t, n, _ts, b = raw.message()
        assert (t, n) == ("STATUS", "NavStatus") and struct.unpack(">H", b[:2])[0] == m.STATUS_NOT_READY
        raw.sock.close()


def test_connection_churn_leaves_no_clients_and_max_clients_is_enforced():
    with IgtlServer(StreamConfig(port=0, refresh_hz=50.0, max_clients=3)) as srv:
        for _ in range(30):                                   # connect, read a little, vanish
            with IgtlClient("127.0.0.1", srv.port) as c:
                c.receive(TIMEOUT_S)
        assert srv.wait_for_clients(0, TIMEOUT_S)
        keep = [IgtlClient("127.0.0.1", srv.port) for _ in range(3)]
        assert srv.wait_for_clients(3, TIMEOUT_S)
        extra = socket.create_connection(("127.0.0.1", srv.port), timeout=TIMEOUT_S)
        _expect_closed(extra)                                 # the fourth is refused
        extra.close()
        assert srv.refused_count == 1 and srv.client_count == 3
        for c in keep:
            c.receive_until(lambda x: x.message_type == "STRING", TIMEOUT_S)
            c.close()


def test_ipv6_loopback():
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    try:
        srv = IgtlServer(StreamConfig(host="::1", port=0))
        srv.start()
    except StreamingError as exc:  # an environment without an IPv6 loopback
        pytest.skip(f"cannot listen on ::1: {exc}")
    try:
        with IgtlClient("::1", srv.port) as c:
            msg, _ = c.receive_until(lambda x: x.message_type == "STRING", TIMEOUT_S)
            assert json.loads(msg.string)["valid_target"] is False
    finally:
        srv.stop()
