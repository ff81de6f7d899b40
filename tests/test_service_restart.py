"""Crash recovery: a real `navsvc serve` subprocess killed with SIGKILL and started again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from service_support import (
    T_CT_FROM_MRI,
    TRAJECTORIES,
    client,
    seed_registration,
    write_toml_config,
    write_volumes,
)

from navsvc.server.pb import navsvc_pb2 as pb
from navsvc.store import Store
from navsvc.streaming import IgtlClient

REPO = Path(__file__).resolve().parents[1]


def _start(config: Path, ports_file: Path) -> tuple[subprocess.Popen, dict]:
    ports_file.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "navsvc.cli", "serve", "--config", str(config),
                             "--ports-file", str(ports_file)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not ports_file.exists():  # written atomically once the server is serving
        if proc.poll() is not None:
            raise AssertionError(f"serve exited with {proc.returncode}: {proc.stderr.read().decode()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("serve did not start within 60 s")
        time.sleep(0.05)  # polling a file the subprocess writes; no fixed wait for readiness
    return proc, json.loads(ports_file.read_text())


def _targets_ct(state: pb.TargetState) -> np.ndarray:
    return np.array([[t.target_lps.x, t.target_lps.y, t.target_lps.z] for t in state.targets])


def test_sigkill_after_approval_and_during_registration(tmp_path: Path) -> None:
    paths = write_volumes(tmp_path / "inputs")
    case_a, reg_a = seed_registration(tmp_path, paths)
    # a second case whose registration was running when the process died
    store = Store(tmp_path / "data")
    case_b = store.create_case("interrupted")["case_id"]
    plan_a = store.latest_plan(case_a)
    store.add_plan(case_b, plan_a["plan_file"], plan_a["mri_file"], plan_a["labels_file"], TRAJECTORIES)
    reg_b = store.add_registration(case_b, store.latest_plan(case_b)["plan_id"],
                                   store.get_registration(reg_a)["ct_file"], {})["registration_id"]
    store.set_registration_state(reg_b, "running")
    store.close()

    config = write_toml_config(tmp_path, igtl=True)
    proc, ports = _start(config, tmp_path / "ports.json")
    try:
        surgeon = client(ports["grpc_port"], "surgeon")
        assert surgeon.call("GetRegistration", pb.GetRegistrationRequest(registration_id=reg_b)).state == \
            pb.INTERRUPTED
        assert surgeon.call("GetTargets", pb.GetTargetsRequest()).state == "no_target"
        surgeon.call("ApproveRegistration", pb.ApproveRegistrationRequest(registration_id=reg_a))
        assert surgeon.call("GetTargets", pb.GetTargetsRequest()).state == "approved"
        surgeon.close()
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()

    proc, ports = _start(config, tmp_path / "ports.json")
    try:
        viewer = client(ports["grpc_port"], "viewer")
        health = health_pb2_grpc.HealthStub(viewer.channel)
        assert health.Check(health_pb2.HealthCheckRequest(service="navsvc.v1.Navigation"), timeout=5).status == \
            health_pb2.HealthCheckResponse.SERVING
        state = viewer.call("GetTargets", pb.GetTargetsRequest())
        assert state.state == "approved" and state.registration_id == reg_a and state.case_id == case_a
        expected = T_CT_FROM_MRI.apply(np.array([t["target_lps"] for t in TRAJECTORIES]))
        np.testing.assert_allclose(_targets_ct(state), expected, atol=1e-9)
        streamed = next(viewer.stream("StreamTargets", pb.StreamTargetsRequest(), timeout_s=10))
        assert streamed.state == "approved" and len(streamed.targets) == len(TRAJECTORIES)
        # and over OpenIGTLink: the state sent at connect carries the approved targets
        with IgtlClient("127.0.0.1", ports["igtl_port"]) as robot:
            msg, seen = robot.receive_until(lambda x: x.message_type == "STRING", 10)
            status = json.loads(msg.string)
            assert status["state"] == "approved" and status["registration_id"] == reg_a
            got = {e.name: e.target for x in seen if x.message_type == "TRAJ" for e in x.elements}
            np.testing.assert_allclose([got[t["name"]] for t in TRAJECTORIES], expected, atol=1e-3)
        audit = [e.action for e in viewer.call("ListAudit", pb.ListAuditRequest()).entries]
        assert "registration.interrupted" in audit and "registration.approve" in audit
        # graceful stop on SIGTERM
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_tampered_result_is_not_streamed_after_restart(tmp_path: Path) -> None:
    paths = write_volumes(tmp_path / "inputs")
    case_a, reg_a = seed_registration(tmp_path, paths)
    store = Store(tmp_path / "data")
    store.approve(reg_a, "surgeon user", "")
    result = store.data_dir / store.get_registration(reg_a)["result_relpath"] / "T_ct_from_mri.h5"
    store.close()
    result.write_bytes(result.read_bytes() + b"tampered")
    config = write_toml_config(tmp_path, igtl=False)
    proc, ports = _start(config, tmp_path / "ports.json")
    try:
        state = client(ports["grpc_port"], "viewer").call("GetTargets", pb.GetTargetsRequest())
        assert state.state == "no_target" and "SHA-256" in state.reason and not state.targets
    finally:
        proc.kill()
        proc.wait(30)
