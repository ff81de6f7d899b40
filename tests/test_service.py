"""End-to-end tests of the gRPC service over real sockets (port 0), with the scripted
registration runner of service_support (the real registration is exercised by
test_service_e2e.py when that part is installed)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from service_support import (
    T_CT_FROM_MRI,
    TRAJECTORIES,
    ScriptedRunner,
    client,
    start_service,
    write_volumes,
)

from navsvc.server.pb import navsvc_pb2 as pb


@pytest.fixture
def svc(tmp_path: Path):
    runner = ScriptedRunner()
    app, port = start_service(tmp_path, runner)
    paths = write_volumes(tmp_path / "inputs")
    yield app, port, paths, runner
    app.stop(0)


def _code(call, *args) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call(*args)
    return info.value.code()


def _case_with_plan(tech, paths) -> str:
    case_id = tech.call("CreateCase", pb.CreateCaseRequest(label="left hip")).case_id
    tech.call("LoadPlan", pb.LoadPlanRequest(
        case_id=case_id, plan=pb.FileRef(server_path=str(paths["plan"])),
        mri=pb.FileRef(server_path="mri.nii.gz"),  # relative to a root
        labels=tech.file_ref(case_id, paths["labels"], server_side=False)))
    return case_id


def _register(tech, case_id, paths, **options) -> pb.Registration:
    reg = tech.call("StartRegistration", pb.StartRegistrationRequest(
        case_id=case_id, ct=pb.FileRef(server_path=str(paths["ct"])), options=options))
    events = list(tech.stream("WatchRegistration", pb.WatchRegistrationRequest(
        registration_id=reg.registration_id), timeout_s=30))
    assert events[-1].state in (pb.SUCCEEDED, pb.FAILED, pb.CANCELLED)
    return tech.call("GetRegistration", pb.GetRegistrationRequest(registration_id=reg.registration_id))


def test_health_and_reflection(svc) -> None:
    app, port, _, _ = svc
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", "navsvc.v1.Navigation"):
        resp = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    answer = next(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                            timeout=5))
    names = {s.name for s in answer.list_services_response.service}
    assert {"navsvc.v1.Navigation", "grpc.health.v1.Health"} <= names
    app.stop(0)
    # after shutdown the port no longer answers
    with pytest.raises(grpc.RpcError):
        health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)


def test_flow_approve_streams_targets_and_withdrawals(svc) -> None:
    app, port, paths, _ = svc
    tech, surgeon, viewer = client(port, "technician"), client(port, "surgeon"), client(port, "viewer")
    case_id = _case_with_plan(tech, paths)
    before = viewer.call("GetTargets", pb.GetTargetsRequest())
    assert before.state == "no_target" and not before.targets

    stream = viewer.stream("StreamTargets", pb.StreamTargetsRequest(), timeout_s=30)
    assert next(stream).state == "no_target"

    reg = _register(tech, case_id, paths)
    assert reg.state == pb.SUCCEEDED and reg.qa.verdict == "PASS" and reg.decision == pb.PENDING
    np.testing.assert_allclose(np.reshape(reg.T_ct_from_mri.values, (4, 4)), T_CT_FROM_MRI.matrix, atol=1e-12)
    # nothing streams before approval
    assert viewer.call("GetTargets", pb.GetTargetsRequest()).state == "no_target"

    approved = surgeon.call("ApproveRegistration", pb.ApproveRegistrationRequest(
        registration_id=reg.registration_id))
    assert approved.decision == pb.APPROVED and approved.decided_by == "surgeon user"
    state = next(s for s in stream if s.state == "approved")
    assert state.registration_id == reg.registration_id and state.qa_verdict == "PASS"
    expected = T_CT_FROM_MRI.apply(np.array([t["target_lps"] for t in TRAJECTORIES]))
    got = np.array([[t.target_lps.x, t.target_lps.y, t.target_lps.z] for t in state.targets])
    np.testing.assert_allclose(got, expected, atol=1e-9)
    assert [t.name for t in state.targets] == ["Drill1", "Drill2"]
    assert state.targets[0].diameter_mm == pytest.approx(3.2)
    case = viewer.call("GetCase", pb.GetCaseRequest(case_id=case_id))
    assert case.active and case.approved_registration_id == reg.registration_id
    # result files can be fetched by any role, hash-checked
    server_dir = app.store.result_dir(case_id, reg.registration_id)
    got = viewer.fetch_result(reg.registration_id, "T_ct_from_mri.h5", app.store.data_dir.parent / "fetched")
    assert got.read_bytes() == (server_dir / "T_ct_from_mri.h5").read_bytes()
    assert _code(lambda: viewer.fetch_result(reg.registration_id, "../navsvc.sqlite3", app.store.data_dir.parent)) \
        == grpc.StatusCode.NOT_FOUND

    # a new registration of the active case withdraws the targets at once
    gate = threading.Event()
    app.service.runner = ScriptedRunner(gate=gate)
    reg2 = tech.call("StartRegistration", pb.StartRegistrationRequest(
        case_id=case_id, ct=pb.FileRef(server_path=str(paths["ct"]))))
    now = viewer.call("GetTargets", pb.GetTargetsRequest())
    assert now.state == "no_target" and reg2.registration_id in now.reason
    assert next(stream).state == "no_target"
    # the older registration can no longer be approved
    assert _code(surgeon.call, "ApproveRegistration", pb.ApproveRegistrationRequest(
        registration_id=reg.registration_id)) == grpc.StatusCode.FAILED_PRECONDITION
    gate.set()
    list(tech.stream("WatchRegistration", pb.WatchRegistrationRequest(registration_id=reg2.registration_id),
                     timeout_s=30))
    surgeon.call("ApproveRegistration", pb.ApproveRegistrationRequest(registration_id=reg2.registration_id))
    assert viewer.call("GetTargets", pb.GetTargetsRequest()).state == "approved"
    # a rejection withdraws them at once
    surgeon.call("RejectRegistration", pb.RejectRegistrationRequest(registration_id=reg2.registration_id,
                                                                    reason="femur head mismatch"))
    now = viewer.call("GetTargets", pb.GetTargetsRequest())
    assert now.state == "no_target" and "femur head mismatch" in now.reason and not now.targets
    stream.cancel()

    actions = [e.action for e in viewer.call("ListAudit", pb.ListAuditRequest(case_id=case_id)).entries]
    assert actions[:3] == ["case.create", "file.upload", "plan.load"]
    assert actions.count("registration.approve") == 2 and actions[-1] == "registration.reject"


def test_roles_and_authentication(svc) -> None:
    _, port, paths, _ = svc
    tech, viewer = client(port, "technician"), client(port, "viewer")
    assert _code(viewer.call, "CreateCase", pb.CreateCaseRequest(label="x")) == grpc.StatusCode.PERMISSION_DENIED
    case_id = _case_with_plan(tech, paths)
    reg = _register(tech, case_id, paths)
    req = pb.ApproveRegistrationRequest(registration_id=reg.registration_id)
    for who in (tech, viewer):
        assert _code(who.call, "ApproveRegistration", req) == grpc.StatusCode.PERMISSION_DENIED
    assert _code(tech.call, "RejectRegistration", pb.RejectRegistrationRequest(
        registration_id=reg.registration_id)) == grpc.StatusCode.PERMISSION_DENIED
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    from navsvc.server.pb import navsvc_pb2_grpc

    stub = navsvc_pb2_grpc.NavigationStub(channel)
    assert _code(stub.ListCases, pb.ListCasesRequest()) == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as info:
        stub.ListCases(pb.ListCasesRequest(), metadata=(("authorization", "Bearer wrong-token"),))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as info:
        next(stub.StreamTargets(pb.StreamTargetsRequest()))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert viewer.call("GetRegistration", pb.GetRegistrationRequest(
        registration_id=reg.registration_id)).decision == pb.PENDING
    denied = [e for e in viewer.call("ListAudit", pb.ListAuditRequest()).entries if e.action == "auth.denied"]
    assert [(e.actor, e.role) for e in denied[:4]] == [("viewer user", "viewer"), ("technician user", "technician"),
                                                      ("viewer user", "viewer"), ("technician user", "technician")]
    assert "ApproveRegistration" in denied[1].detail and len(denied) == 7


def test_bad_inputs_get_the_right_status(svc, tmp_path: Path) -> None:
    _, port, paths, _ = svc
    tech, surgeon = client(port, "technician"), client(port, "surgeon")
    case_id = tech.call("CreateCase", pb.CreateCaseRequest(label="bad inputs")).case_id

    def load(plan: pb.FileRef, mri: pb.FileRef | None = None) -> grpc.StatusCode:
        return _code(tech.call, "LoadPlan", pb.LoadPlanRequest(
            case_id=case_id, plan=plan, mri=mri or pb.FileRef(server_path=str(paths["mri"])),
            labels=pb.FileRef(server_path=str(paths["labels"]))))

    outside = tmp_path / "secret.json"
    outside.write_text("{}")
    (tmp_path / "inputs" / "escape.json").symlink_to(outside)
    assert load(pb.FileRef(server_path=str(tmp_path / "inputs" / "nope.json"))) == grpc.StatusCode.INVALID_ARGUMENT
    assert load(pb.FileRef(server_path=str(outside))) == grpc.StatusCode.PERMISSION_DENIED
    assert load(pb.FileRef(server_path="../secret.json")) == grpc.StatusCode.PERMISSION_DENIED
    assert load(pb.FileRef(server_path=str(tmp_path / "inputs" / ".." / "secret.json"))) == \
        grpc.StatusCode.PERMISSION_DENIED
    assert load(pb.FileRef(server_path="escape.json")) == grpc.StatusCode.PERMISSION_DENIED
    assert load(pb.FileRef()) == grpc.StatusCode.INVALID_ARGUMENT
    assert load(pb.FileRef(upload_id="file-000000000000")) == grpc.StatusCode.NOT_FOUND
    corrupt = tmp_path / "inputs" / "corrupt.nii.gz"
    corrupt.write_bytes(paths["mri"].read_bytes()[:200])
    with pytest.raises(grpc.RpcError) as info:
        tech.call("LoadPlan", pb.LoadPlanRequest(
            case_id=case_id, plan=pb.FileRef(server_path=str(paths["plan"])),
            mri=pb.FileRef(server_path=str(corrupt)), labels=pb.FileRef(server_path=str(paths["labels"]))))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "MRI" in info.value.details()

    # uploads: hash mismatch, oversize (declared and actual), unknown case
    with pytest.raises(grpc.RpcError) as info:
        tech.upload(case_id, paths["mri"], sha256_hex="0" * 64)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "SHA-256" in info.value.details()
    big = tmp_path / "big.bin"
    big.write_bytes(b"\0" * 300_000)
    assert _code(tech.upload, case_id, big) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert _code(lambda: tech.upload(case_id, big, size_bytes=1000)) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert _code(tech.upload, "case-unknown", paths["mri"]) == grpc.StatusCode.NOT_FOUND
    assert not list((Path(svc[0].store.tmp_dir)).iterdir()), "failed uploads must leave no partial file"

    # unknown ids
    assert _code(tech.call, "GetCase", pb.GetCaseRequest(case_id="case-nope")) == grpc.StatusCode.NOT_FOUND
    assert _code(tech.call, "GetRegistration", pb.GetRegistrationRequest(registration_id="reg-nope")) == \
        grpc.StatusCode.NOT_FOUND
    assert _code(surgeon.call, "ApproveRegistration", pb.ApproveRegistrationRequest(
        registration_id="reg-nope")) == grpc.StatusCode.NOT_FOUND
    # registration before a plan; then a corrupt CT
    assert _code(tech.call, "StartRegistration", pb.StartRegistrationRequest(
        case_id=case_id, ct=pb.FileRef(server_path=str(paths["ct"])))) == grpc.StatusCode.FAILED_PRECONDITION
    case_id = _case_with_plan(tech, paths)
    assert _code(tech.call, "StartRegistration", pb.StartRegistrationRequest(
        case_id=case_id, ct=pb.FileRef(server_path=str(corrupt)))) == grpc.StatusCode.INVALID_ARGUMENT

    # QA gate: FAIL cannot be approved, WARN needs a reason
    fail = _register(tech, case_id, paths, test_verdict='"FAIL"')
    assert fail.qa.verdict == "FAIL"
    with pytest.raises(grpc.RpcError) as info:
        surgeon.call("ApproveRegistration", pb.ApproveRegistrationRequest(
            registration_id=fail.registration_id, override_reason="I insist"))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "FAIL" in info.value.details()
    warn = _register(tech, case_id, paths, test_verdict='"WARN"')
    assert _code(surgeon.call, "ApproveRegistration", pb.ApproveRegistrationRequest(
        registration_id=warn.registration_id)) == grpc.StatusCode.INVALID_ARGUMENT
    ok = surgeon.call("ApproveRegistration", pb.ApproveRegistrationRequest(
        registration_id=warn.registration_id, override_reason="cortex visible, checked by hand"))
    assert ok.decision == pb.APPROVED
    targets = tech.call("GetTargets", pb.GetTargetsRequest())
    assert targets.state == "approved" and targets.qa_verdict == "WARN"
    assert targets.reason == "cortex visible, checked by hand"
    assert _code(tech.call, "StartRegistration", pb.StartRegistrationRequest(
        case_id=case_id, ct=pb.FileRef(server_path=str(paths["ct"])),
        options={"x": "not json"})) == grpc.StatusCode.INVALID_ARGUMENT
    assert _code(tech.call, "StartRegistration", pb.StartRegistrationRequest(
        case_id=case_id, ct=pb.FileRef(server_path=str(paths["ct"])),
        options={"no_such_option": "1"})) == grpc.StatusCode.INVALID_ARGUMENT


def test_concurrent_clients_while_registration_runs_and_cancel(tmp_path: Path) -> None:
    gate = threading.Event()
    runner = ScriptedRunner(gate=gate)
    app, port = start_service(tmp_path, runner)
    try:
        paths = write_volumes(tmp_path / "inputs")
        tech = client(port, "technician")
        case_id = _case_with_plan(tech, paths)
        reg = tech.call("StartRegistration", pb.StartRegistrationRequest(
            case_id=case_id, ct=pb.FileRef(server_path=str(paths["ct"]))))
        assert runner.started.wait(10)
        # one registration per case at a time
        assert _code(tech.call, "StartRegistration", pb.StartRegistrationRequest(
            case_id=case_id, ct=pb.FileRef(server_path=str(paths["ct"])))) == grpc.StatusCode.FAILED_PRECONDITION
        errors: list[BaseException] = []

        def hammer(role: str) -> None:
            try:
                c = client(port, role)
                for _ in range(10):
                    c.call("ListCases", pb.ListCasesRequest(), timeout_s=5)
                    c.call("GetTargets", pb.GetTargetsRequest(), timeout_s=5)
                    got = c.call("GetRegistration", pb.GetRegistrationRequest(
                        registration_id=reg.registration_id), timeout_s=5)
                    assert got.state == pb.RUNNING
            except BaseException as exc:  # collected and re-raised in the main thread
                errors.append(exc)

        threads = [threading.Thread(target=hammer, args=(r,)) for r in ("viewer", "technician", "surgeon") * 2]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors, errors
        watch = tech.stream("WatchRegistration", pb.WatchRegistrationRequest(
            registration_id=reg.registration_id), timeout_s=30)
        first = next(watch)
        assert first.stage == "queued"
        tech.call("CancelRegistration", pb.CancelRegistrationRequest(registration_id=reg.registration_id))
        events = [first, *watch]
        assert events[-1].state == pb.CANCELLED and "cancelled by technician user" in events[-1].error
        assert [e.stage for e in events[:3]] == ["queued", "start", "rigid"]
        assert tech.call("GetRegistration", pb.GetRegistrationRequest(
            registration_id=reg.registration_id)).state == pb.CANCELLED
        assert _code(lambda: tech.fetch_result(reg.registration_id, "qa.json", tmp_path)) == \
            grpc.StatusCode.FAILED_PRECONDITION
        assert not list((app.store.data_dir / "cases" / case_id / "registrations").iterdir())
    finally:
        gate.set()
        app.stop(0)


def test_calibration_matrix_and_device_coordinates(svc) -> None:
    _, port, paths, _ = svc
    tech, surgeon = client(port, "technician"), client(port, "surgeon")
    case_id = _case_with_plan(tech, paths)
    reg = _register(tech, case_id, paths)
    surgeon.call("ApproveRegistration", pb.ApproveRegistrationRequest(registration_id=reg.registration_id))
    from navsvc.transforms import RigidTransform

    T = RigidTransform.from_euler_deg((0.0, 90.0, 0.0), (100.0, 0.0, -50.0), "device", "ct")
    cal = tech.call("SetCalibration", pb.SetCalibrationRequest(
        case_id=case_id, T_device_from_ct=pb.Matrix4x4(values=T.matrix.ravel().tolist())))
    assert cal.fre_mm_rms == 0.0 and cal.fiducial_count == 0
    state = tech.call("GetTargets", pb.GetTargetsRequest())
    assert state.device_calibrated
    t0 = state.targets[0]
    ct = np.array([t0.target_lps.x, t0.target_lps.y, t0.target_lps.z])
    np.testing.assert_allclose([t0.target_device.x, t0.target_device.y, t0.target_device.z], T.apply(ct),
                               atol=1e-9)
    sheared = np.eye(4)
    sheared[0, 1] = 0.3
    assert _code(tech.call, "SetCalibration", pb.SetCalibrationRequest(
        case_id=case_id, T_device_from_ct=pb.Matrix4x4(values=sheared.ravel().tolist()))) == \
        grpc.StatusCode.INVALID_ARGUMENT
    assert _code(tech.call, "SetCalibration", pb.SetCalibrationRequest(
        case_id=case_id, T_device_from_ct=pb.Matrix4x4(values=[1.0] * 5))) == grpc.StatusCode.INVALID_ARGUMENT


def _igtl_string(c, predicate, timeout_s: float = 10.0) -> tuple[dict, list]:
    import json

    msg, seen = c.receive_until(lambda x: x.message_type == "STRING" and predicate(json.loads(x.string)),
                                timeout_s)
    return json.loads(msg.string), seen


def test_openigtlink_follows_the_interlock(tmp_path: Path) -> None:
    from navsvc.streaming import IgtlClient

    app, port = start_service(tmp_path, igtl={"enabled": True, "port": 0, "refresh_hz": 20.0})
    try:
        assert app.igtl_port > 0
        paths = write_volumes(tmp_path / "inputs")
        tech, surgeon = client(port, "technician"), client(port, "surgeon")
        with IgtlClient("127.0.0.1", app.igtl_port) as robot, IgtlClient("127.0.0.1", app.igtl_port) as nav:
            for sub in (robot, nav):
                status, seen = _igtl_string(sub, lambda s: True)
                assert status["state"] == "no_target"
                assert not any(x.message_type in ("TRANSFORM", "TRAJ") for x in seen)
            case_id = _case_with_plan(tech, paths)
            reg = _register(tech, case_id, paths)
            status, _ = _igtl_string(robot, lambda s: True)  # a refresh: still nothing before approval
            assert status["state"] == "no_target"
            surgeon.call("ApproveRegistration", pb.ApproveRegistrationRequest(registration_id=reg.registration_id))
            for sub in (robot, nav):
                status, seen = _igtl_string(sub, lambda s: s["state"] == "approved")
                assert status["registration_id"] == reg.registration_id and status["qa_verdict"] == "PASS"
                by_name = {e.name: e for x in seen if x.message_type == "TRAJ" for e in x.elements}
                assert set(by_name) == {"Drill1", "Drill2"}
                expected = T_CT_FROM_MRI.apply(np.array(TRAJECTORIES[0]["target_lps"]))
                np.testing.assert_allclose(by_name["Drill1"].target, expected, atol=1e-3)
                assert {x.device_name for x in seen if x.message_type == "TRANSFORM"} == \
                    {"Drill1ToReference", "Drill2ToReference"}
            surgeon.call("RejectRegistration", pb.RejectRegistrationRequest(
                registration_id=reg.registration_id, reason="wrong side"))
            status, _ = _igtl_string(robot, lambda s: s["state"] == "no_target")
            assert "wrong side" in status["reason"]
            # no TRANSFORM follows the withdrawal
            _, seen = _igtl_string(robot, lambda s: True)
            _, more = _igtl_string(robot, lambda s: True)
            assert not any(x.message_type in ("TRANSFORM", "TRAJ") for x in seen + more)
    finally:
        app.stop(0)


def test_calibration_from_fiducials_reports_fre(svc) -> None:
    _, port, paths, _ = svc
    tech = client(port, "technician")
    case_id = tech.call("CreateCase", pb.CreateCaseRequest(label="cal")).case_id
    from navsvc.transforms import RigidTransform

    T = RigidTransform.from_euler_deg((5.0, -10.0, 30.0), (50.0, 20.0, -100.0), "device", "ct")
    ct = np.array([[0, 0, 0], [100, 0, 0], [0, 80, 0], [0, 0, 60], [40, 40, 40]], float)
    rng = np.random.default_rng(3)
    noise = rng.normal(0, 0.2, ct.shape)
    dev = T.apply(ct) + noise
    pairs = [pb.FiducialPair(name=f"F{i}", ct_lps=pb.Point3(x=a[0], y=a[1], z=a[2]),
                             device=pb.Point3(x=b[0], y=b[1], z=b[2])) for i, (a, b) in enumerate(zip(ct, dev, strict=True))]
    cal = tech.call("SetCalibration", pb.SetCalibrationRequest(case_id=case_id,
                                                               fiducials=pb.FiducialList(pairs=pairs)))
    assert cal.fiducial_count == 5
    # the reported FRE is the RMS residual of the returned transform on these fiducials
    M = np.reshape(cal.T_device_from_ct.values, (4, 4))
    residual = np.linalg.norm(ct @ M[:3, :3].T + M[:3, 3] - dev, axis=1)
    assert cal.fre_mm_rms == pytest.approx(float(np.sqrt(np.mean(residual**2))), abs=1e-9)
    assert 0.1 < cal.fre_mm_rms < 0.6  # 0.2 mm noise per axis
    np.testing.assert_allclose(M[:3, :3], T.rotation, atol=0.01)  # noise-limited fit
    np.testing.assert_allclose(M[:3, 3], T.translation_mm, atol=0.5)
    assert _code(tech.call, "SetCalibration", pb.SetCalibrationRequest(
        case_id=case_id, fiducials=pb.FiducialList(pairs=pairs[:2]))) == grpc.StatusCode.INVALID_ARGUMENT
    far = list(pairs)
    far[0] = pb.FiducialPair(name="F0", ct_lps=pairs[0].ct_lps, device=pb.Point3(x=999, y=0, z=0))
    with pytest.raises(grpc.RpcError) as info:
        tech.call("SetCalibration", pb.SetCalibrationRequest(case_id=case_id, fiducials=pb.FiducialList(pairs=far)))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "F0" in info.value.details()


def test_new_plan_withdraws_and_message_size_limit(tmp_path: Path) -> None:
    app, port = start_service(tmp_path, server={"max_message_bytes": 65536})
    try:
        paths = write_volumes(tmp_path / "inputs")
        tech, surgeon = client(port, "technician"), client(port, "surgeon")
        case_id = _case_with_plan(tech, paths)
        reg = _register(tech, case_id, paths)
        surgeon.call("ApproveRegistration", pb.ApproveRegistrationRequest(registration_id=reg.registration_id))
        assert tech.call("GetTargets", pb.GetTargetsRequest()).state == "approved"
        plan = tech.call("LoadPlan", pb.LoadPlanRequest(
            case_id=case_id, plan=pb.FileRef(server_path="plan.json"), mri=pb.FileRef(server_path="mri.nii.gz"),
            labels=pb.FileRef(server_path="labels.nii.gz")))
        now = tech.call("GetTargets", pb.GetTargetsRequest())
        assert now.state == "no_target" and plan.plan_id in now.reason
        # the registration was made for the old plan: it cannot be approved again
        assert _code(surgeon.call, "ApproveRegistration", pb.ApproveRegistrationRequest(
            registration_id=reg.registration_id)) == grpc.StatusCode.FAILED_PRECONDITION
        big = tmp_path / "inputs" / "big.bin"
        big.write_bytes(b"\1" * 100_000)
        with pytest.raises(grpc.RpcError) as info:
            tech.upload(case_id, big, chunk_bytes=100_000)  # one message over the 64 KiB limit
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert tech.upload(case_id, big, chunk_bytes=32_768).size_bytes == 100_000
    finally:
        app.stop(0)


def test_health_goes_not_serving_on_shutdown(tmp_path: Path) -> None:
    app, port = start_service(tmp_path)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service="navsvc.v1.Navigation"),
                                                      timeout=20)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    stopper = threading.Thread(target=app.stop, kwargs={"grace_s": 0.5})
    stopper.start()
    assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
    stopper.join(20)
    assert not stopper.is_alive()
    channel.close()


def test_streams_are_limited_and_never_starve_other_calls(tmp_path: Path) -> None:
    app, port = start_service(tmp_path, server={"max_workers": 4, "max_streams": 2})
    try:
        viewer = client(port, "viewer")
        streams = [viewer.stream("StreamTargets", pb.StreamTargetsRequest(), timeout_s=20) for _ in range(2)]
        assert all(next(s).state == "no_target" for s in streams)
        third = viewer.stream("StreamTargets", pb.StreamTargetsRequest(), timeout_s=20)
        with pytest.raises(grpc.RpcError) as info:
            next(third)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_streams" in info.value.details()
        for _ in range(5):  # unary calls still served while both streams are open
            assert viewer.call("ListCases", pb.ListCasesRequest(), timeout_s=5).cases == []
        streams[0].cancel()
        deadline = time.monotonic() + 10
        while True:  # the freed slot becomes available once the server notices the cancellation
            again = viewer.stream("StreamTargets", pb.StreamTargetsRequest(), timeout_s=20)
            try:
                assert next(again).state == "no_target"
                break
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert time.monotonic() < deadline
        again.cancel()
        streams[1].cancel()
    finally:
        app.stop(0)
