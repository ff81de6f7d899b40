"""Crash recovery: a real `navsvc serve` subprocess killed with SIGKILL and started again."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
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
    log = ports_file.with_suffix(f".{time.monotonic_ns()}.log")  # a file: a full pipe would block the server
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "navsvc.cli", "serve", "--log-json", "--config", str(config),
                                 "--ports-file", str(ports_file)], cwd=REPO, env=env,
                                stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.monotonic() + 60
    while not ports_file.exists():  # written atomically once the server is serving
        if proc.poll() is not None:
            raise AssertionError(f"serve exited with {proc.returncode}: {log.read_text()}")
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


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("navsvc.registration") is None,
                    reason="the registration part is not merged yet")
def test_sigkill_during_a_real_registration(tmp_path: Path) -> None:
    from navsvc.imaging import write_image
    from phantoms import make_case
    from planning import plan_automatic, save_plan

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    case = make_case(1, "small")
    for name, image in (("mri", case.mri), ("labels", case.labels), ("ct", case.ct)):
        write_image(inputs / f"{name}.nii.gz", image)
    save_plan(plan_automatic(case.mri, case.labels, mri_path=str(inputs / "mri.nii.gz"),
                             seg_path=str(inputs / "labels.nii.gz")), inputs / "plan.json")
    config = write_toml_config(tmp_path, igtl=False)
    proc, ports = _start(config, tmp_path / "ports.json")
    try:
        tech = client(ports["grpc_port"], "technician")
        case_id = tech.call("CreateCase", pb.CreateCaseRequest(label="kill me")).case_id
        tech.call("LoadPlan", pb.LoadPlanRequest(case_id=case_id, plan=pb.FileRef(server_path="plan.json"),
                                                 mri=pb.FileRef(server_path="mri.nii.gz"),
                                                 labels=pb.FileRef(server_path="labels.nii.gz")))
        reg = tech.call("StartRegistration", pb.StartRegistrationRequest(
            case_id=case_id, ct=pb.FileRef(server_path="ct.nii.gz")))
        for ev in tech.stream("WatchRegistration", pb.WatchRegistrationRequest(
                registration_id=reg.registration_id), timeout_s=120):
            if ev.state == pb.RUNNING and ev.stage not in ("queued", "start"):
                break  # the registration itself is computing
        tech.close()
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    proc, ports = _start(config, tmp_path / "ports.json")
    try:
        tech = client(ports["grpc_port"], "technician")
        got = tech.call("GetRegistration", pb.GetRegistrationRequest(registration_id=reg.registration_id))
        assert got.state == pb.INTERRUPTED and "start it again" in got.error
        assert not list((tmp_path / "data" / "cases" / case_id / "registrations").glob(".tmp-*"))
        events = list(tech.stream("WatchRegistration", pb.WatchRegistrationRequest(
            registration_id=reg.registration_id), timeout_s=10))
        assert len(events) == 1 and events[0].state == pb.INTERRUPTED
        # the case accepts a new registration at once; SIGTERM during it: graceful, marked interrupted
        again = tech.call("StartRegistration", pb.StartRegistrationRequest(
            case_id=case_id, ct=pb.FileRef(server_path="ct.nii.gz")))
        for ev in tech.stream("WatchRegistration", pb.WatchRegistrationRequest(
                registration_id=again.registration_id), timeout_s=120):
            if ev.state == pb.RUNNING and ev.stage not in ("queued", "start"):
                break
        tech.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    proc, ports = _start(config, tmp_path / "ports.json")
    try:
        tech = client(ports["grpc_port"], "technician")
        got = tech.call("GetRegistration", pb.GetRegistrationRequest(registration_id=again.registration_id))
        assert got.state == pb.INTERRUPTED and "shutting down" in got.error
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
