"""`navsvc stream` (bring-up server, in a subprocess) and `navsvc listen` (in-process)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from navsvc.cli import main
from navsvc.markups import fiducials, write_markups
from navsvc.transforms import RigidTransform

ROOT = Path(__file__).resolve().parents[1]


def start_stream(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, "-m", "navsvc.cli", "stream", "--port", "0", "--duration", "30", *extra],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line, found = "", None
    for _ in range(3):   # readline blocks until the server says where it listens (or exits)
        line += proc.stdout.readline()
        found = re.search(r"serving .* on 127\.0\.0\.1:(\d+)", line)
        if found:
            break
    if not found:
        proc.kill()
        pytest.fail(f"stream did not start: {line}{proc.stderr.read()}")
    return proc, int(found.group(1))


def write_targets(tmp_path: Path, system: str = "RAS") -> Path:
    path = tmp_path / "targets.json"
    path.write_text(json.dumps({"coordinate_system": system, "targets": [
        {"name": "Drill1", "entry": [62.0, -31.5, -802.25], "target": [84.5, -48.0, -766.0], "diameter_mm": 3.0}]}))
    return path


def test_stream_bringup_then_listen_with_query(tmp_path, capsys):
    proc, port = start_stream(tmp_path, "--targets", str(write_targets(tmp_path)), "--frame", "lps")
    try:
        code = main(["listen", "--port", str(port), "--count", "6", "--timeout", "10",
                     "--query", "GET_TRANS:Drill1ToReference"])
    finally:
        proc.terminate()
        proc.wait(10)
    out = capsys.readouterr().out.splitlines()
    assert code == 0 and out[0] == f"connected to 127.0.0.1:{port}"
    status = json.loads(next(ln for ln in out if " STRING 'NavStatus' " in ln).split(" 'NavStatus' ", 1)[1])
    assert status["state"] == "bringup" and status["bringup"] is True and status["valid_target"] is True
    transform = next(ln for ln in out if " TRANSFORM 'Drill1ToReference' " in ln)
    # RAS (62, -31.5) in the file is LPS (-62, 31.5); the TRANSFORM's origin is the target in LPS
    origin = [float(row.split()[3]) for row in transform.split("[", 1)[1].rstrip("]").split(";")]
    np.testing.assert_allclose(origin, [-84.5, 48.0, -766.0], atol=1e-4)


def test_stream_device_frame_from_fiducials(tmp_path, capsys):
    T_true = RigidTransform.from_euler_deg([0.0, 0.0, 90.0], [100.0, 0.0, 0.0], "device", "ct")
    pts = {"F1": [0.0, 0.0, 0.0], "F2": [50.0, 0.0, 0.0], "F3": [0.0, 40.0, 0.0], "F4": [0.0, 0.0, 30.0]}
    write_markups(tmp_path / "ct.mrk.json", [fiducials("ct", pts)])
    write_markups(tmp_path / "dev.mrk.json",
                  [fiducials("dev", {k: T_true.apply(v) for k, v in pts.items()})])
    proc, port = start_stream(tmp_path, "--targets", str(write_targets(tmp_path, "RAS")), "--frame", "device",
                              "--fiducials-ct", str(tmp_path / "ct.mrk.json"),
                              "--fiducials-device", str(tmp_path / "dev.mrk.json"))
    try:
        assert main(["listen", "--port", str(port), "--count", "5", "--timeout", "10"]) == 0
    finally:
        proc.terminate()
        proc.wait(10)
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if " TRANSFORM 'Drill1ToReference' " in ln)
    origin = [float(row.split()[3]) for row in line.split("[", 1)[1].rstrip("]").split(";")]
    np.testing.assert_allclose(origin, T_true.apply([-84.5, 48.0, -766.0]), atol=1e-3)


def test_stream_refuses_bad_targets(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"targets": [{"name": "ThisNameIsFarTooLongForIgtl", "entry": [0, 0, 0],
                                            "target": [0, 0, 10], "diameter_mm": 3}]}))
    assert main(["stream", "--targets", str(bad), "--port", "0", "--duration", "0.1"]) == 2
    assert "targets[0]" in capsys.readouterr().err
    bad.write_text("{not json")
    assert main(["stream", "--targets", str(bad), "--port", "0", "--duration", "0.1"]) == 2


def test_listen_reports_unreachable_server(capsys):
    import socket

    with socket.socket() as s:          # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["listen", "--port", str(port), "--timeout", "2"]) == 13
    assert "cannot connect" in capsys.readouterr().err


def test_bench_streaming_smoke(tmp_path, capsys):
    """The benchmark runs end to end and records a genuinely stalled client (no timing asserted)."""
    out = tmp_path / "streaming.json"
    assert main(["bench", "streaming", "--subscribers", "2", "--rates", "200", "--duration", "0.3",
                 "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["subscribers"], r["stalled_subscriber"]) for r in rows] == [(2, False), (2, True)]
    for r in rows:
        assert r["delivered_per_s_min"] > 0 and r["latency_ms_p50"] > 0
    assert rows[1]["stalled_client_pending_bytes"] > 0 and rows[1]["clients_connected_at_end"] == 1
    assert "OpenIGTLink streaming" in capsys.readouterr().out
