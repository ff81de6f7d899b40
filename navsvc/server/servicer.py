"""The gRPC servicer of navsvc.v1.Navigation: decode the request, call :class:`NavService`,
encode the answer. No logic lives here; errors are NavError raised by the core and mapped to
status codes by :class:`navsvc.server.auth.AuthInterceptor`."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc

from navsvc.errors import InputError, ResourceExhausted
from navsvc.server.auth import Authenticator
from navsvc.server.core import FileRef, NavService
from navsvc.server.pb import navsvc_pb2 as pb
from navsvc.server.pb import navsvc_pb2_grpc as pb_grpc
from navsvc.server.targets import TargetSnapshot

_REG_STATE = {"queued": pb.QUEUED, "running": pb.RUNNING, "succeeded": pb.SUCCEEDED, "failed": pb.FAILED,
              "cancelled": pb.CANCELLED, "interrupted": pb.INTERRUPTED}
_DECISION = {"pending": pb.PENDING, "approved": pb.APPROVED, "rejected": pb.REJECTED}


def _p3(v: Any) -> pb.Point3:
    return pb.Point3(x=float(v[0]), y=float(v[1]), z=float(v[2]))


def _m4(rows: Any) -> pb.Matrix4x4:
    return pb.Matrix4x4(values=[float(x) for r in rows for x in r])


def _ref(msg: pb.FileRef) -> FileRef | None:
    which = msg.WhichOneof("source")
    return (which, getattr(msg, which)) if which else None


def case_pb(c: dict[str, Any]) -> pb.Case:
    return pb.Case(case_id=c["case_id"], label=c["label"], created_s=c["created_s"], plan_id=c["plan_id"],
                   registration_id=c["registration_id"], approved_registration_id=c["approved_registration_id"],
                   active=c["active"], calibration_id=c["calibration_id"])


def qa_pb(qa: dict[str, Any] | None, picture_path: str = "") -> pb.QA | None:
    if not qa:
        return None
    return pb.QA(verdict=qa.get("verdict", ""), reasons=qa.get("reasons", []),
                 figures=qa.get("figures", {}), picture_path=picture_path)


def registration_pb(r: dict[str, Any], data_dir: Any) -> pb.Registration:
    picture = ""
    if r.get("qa") and r["qa"].get("picture") and r.get("result_relpath"):
        picture = str(data_dir / r["result_relpath"] / r["qa"]["picture"])
    msg = pb.Registration(
        registration_id=r["registration_id"], case_id=r["case_id"], plan_id=r["plan_id"],
        state=_REG_STATE[r["state"]], decision=_DECISION[r["decision"]], error=r["error"] or "",
        timings_s=r["timings_s"] or {}, created_s=r["created_s"], finished_s=r["finished_s"] or 0.0,
        decided_by=r["decided_by"], decision_reason=r["decision_reason"],
    )
    qa = qa_pb(r.get("qa"), picture)
    if qa is not None:
        msg.qa.CopyFrom(qa)
    if r.get("T_ct_from_mri"):
        msg.T_ct_from_mri.CopyFrom(_m4(r["T_ct_from_mri"]))
    return msg


def event_pb(ev: dict[str, Any]) -> pb.RegistrationEvent:
    msg = pb.RegistrationEvent(registration_id=ev["registration_id"], state=_REG_STATE[ev["state"]],
                               stage=ev["stage"], fraction=ev["fraction"], message=ev["message"],
                               error=ev.get("error", ""))
    qa = qa_pb(ev.get("qa"))
    if qa is not None:
        msg.qa.CopyFrom(qa)
    return msg


def target_state_pb(s: TargetSnapshot) -> pb.TargetState:
    msg = pb.TargetState(state=s.state, case_id=s.case_id, registration_id=s.registration_id,
                         qa_verdict=s.qa_verdict, timestamp_s=s.timestamp_s, reason=s.reason,
                         device_calibrated=s.T_device_from_ct is not None)
    if s.T_device_from_ct is not None:
        msg.T_device_from_ct.CopyFrom(_m4(s.T_device_from_ct))
    for t in s.targets:
        tm = pb.Target(name=t.name, entry_lps=_p3(t.entry_lps), target_lps=_p3(t.target_lps),
                       diameter_mm=t.diameter_mm)
        device = s.in_device(t)
        if device is not None:
            tm.entry_device.CopyFrom(_p3(device[0]))
            tm.target_device.CopyFrom(_p3(device[1]))
        msg.targets.append(tm)
    return msg


class NavigationServicer(pb_grpc.NavigationServicer):
    def __init__(self, service: NavService, auth: Authenticator, refresh_hz: float, max_streams: int,
                 max_message_bytes: int = 4 << 20) -> None:
        self.svc = service
        self.max_message_bytes = max_message_bytes
        self.auth = auth
        self.refresh_s = 1.0 / refresh_hz
        self.max_streams = max_streams
        self._streams = threading.BoundedSemaphore(max_streams)

    @contextmanager
    def _stream_slot(self) -> Iterator[None]:
        """Each open stream holds an RPC thread; refuse beyond ``max_streams`` so that
        streams can never starve the other calls."""
        if not self._streams.acquire(blocking=False):
            raise ResourceExhausted(f"too many open streams (limit {self.max_streams}); close one or raise "
                                    "[server] max_streams")
        try:
            yield
        finally:
            self._streams.release()

    def _who(self, context: grpc.ServicerContext) -> Any:
        return self.auth.identify(context.invocation_metadata())

    def CreateCase(self, request: pb.CreateCaseRequest, context: grpc.ServicerContext) -> pb.Case:
        return case_pb(self.svc.create_case(self._who(context), request.label))

    def ListCases(self, request: pb.ListCasesRequest, context: grpc.ServicerContext) -> pb.ListCasesResponse:
        return pb.ListCasesResponse(cases=[case_pb(c) for c in self.svc.list_cases()])

    def GetCase(self, request: pb.GetCaseRequest, context: grpc.ServicerContext) -> pb.Case:
        return case_pb(self.svc.get_case(request.case_id))

    def Upload(self, request_iterator: Iterator[pb.UploadChunk], context: grpc.ServicerContext) -> pb.StoredFile:
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("part") != "header":
            raise InputError("upload: expected the first message to carry the header (case_id, filename, "
                             "size_bytes, sha256_hex)")
        h = first.header
        header = {"case_id": h.case_id, "filename": h.filename, "size_bytes": h.size_bytes,
                  "sha256_hex": h.sha256_hex}

        def chunks() -> Iterator[bytes]:
            for msg in request_iterator:
                if msg.WhichOneof("part") != "data":
                    raise InputError("upload: expected data chunks after the header, got a second header")
                yield msg.data

        f = self.svc.upload(self._who(context), header, chunks())
        return pb.StoredFile(upload_id=f.file_id, filename=f.filename, size_bytes=f.size_bytes,
                             sha256_hex=f.sha256)

    def LoadPlan(self, request: pb.LoadPlanRequest, context: grpc.ServicerContext) -> pb.Plan:
        p = self.svc.load_plan(self._who(context), request.case_id, _ref(request.plan), _ref(request.mri),
                               _ref(request.labels))
        return pb.Plan(
            plan_id=p["plan_id"], case_id=p["case_id"], created_s=p["created_s"],
            plan_sha256=p["plan_sha256"], mri_sha256=p["mri_sha256"], labels_sha256=p["labels_sha256"],
            trajectories=[pb.Trajectory(name=t["name"], entry_lps=_p3(t["entry_lps"]),
                                        target_lps=_p3(t["target_lps"]), diameter_mm=t["diameter_mm"],
                                        depth_mm=t["depth_mm"]) for t in p["trajectories"]],
        )

    def StartRegistration(self, request: pb.StartRegistrationRequest,
                          context: grpc.ServicerContext) -> pb.Registration:
        fluoro = [(_ref(v.image), _ref(v.geometry) if v.HasField("geometry") else None) for v in request.fluoro]
        r = self.svc.start_registration(self._who(context), request.case_id, _ref(request.ct),
                                        dict(request.options), fluoro=fluoro)
        return registration_pb(r, self.svc.store.data_dir)

    def WatchRegistration(self, request: pb.WatchRegistrationRequest,
                          context: grpc.ServicerContext) -> Iterator[pb.RegistrationEvent]:
        with self._stream_slot():
            for ev in self.svc.watch(request.registration_id, context.is_active):
                yield event_pb(ev)

    def GetRegistration(self, request: pb.GetRegistrationRequest, context: grpc.ServicerContext) -> pb.Registration:
        return registration_pb(self.svc.get_registration(request.registration_id), self.svc.store.data_dir)

    def CancelRegistration(self, request: pb.CancelRegistrationRequest,
                           context: grpc.ServicerContext) -> pb.Registration:
        r = self.svc.cancel_registration(self._who(context), request.registration_id)
        return registration_pb(r, self.svc.store.data_dir)

    def ApproveRegistration(self, request: pb.ApproveRegistrationRequest,
                            context: grpc.ServicerContext) -> pb.Registration:
        r = self.svc.approve(self._who(context), request.registration_id, request.override_reason)
        return registration_pb(r, self.svc.store.data_dir)

    def RejectRegistration(self, request: pb.RejectRegistrationRequest,
                           context: grpc.ServicerContext) -> pb.Registration:
        r = self.svc.reject(self._who(context), request.registration_id, request.reason)
        return registration_pb(r, self.svc.store.data_dir)

    def GetResultFile(self, request: pb.GetResultFileRequest,
                      context: grpc.ServicerContext) -> Iterator[pb.FileChunk]:
        path, available, sha = self.svc.result_file(request.registration_id, request.name)
        if path is None:
            yield pb.FileChunk(available=available)
            return
        size = path.stat().st_size
        chunk_bytes = max(1024, self.max_message_bytes // 2)
        with open(path, "rb") as fh:
            first = True
            while True:
                data = fh.read(chunk_bytes)
                if first:
                    yield pb.FileChunk(name=request.name, size_bytes=size, sha256_hex=sha, data=data,
                                       available=available)
                    first = False
                elif data:
                    yield pb.FileChunk(data=data)
                if not data:
                    return

    def SetCalibration(self, request: pb.SetCalibrationRequest, context: grpc.ServicerContext) -> pb.Calibration:
        which = request.WhichOneof("source")
        matrix = list(request.T_device_from_ct.values) if which == "T_device_from_ct" else None
        fids = None
        if which == "fiducials":
            fids = [(p.name, [p.ct_lps.x, p.ct_lps.y, p.ct_lps.z], [p.device.x, p.device.y, p.device.z])
                    for p in request.fiducials.pairs]
        c = self.svc.set_calibration(self._who(context), request.case_id, matrix, fids)
        return pb.Calibration(calibration_id=c["calibration_id"], case_id=c["case_id"],
                              T_device_from_ct=_m4(c["T_device_from_ct"]), fre_mm_rms=c["fre_mm_rms"],
                              fiducial_count=c["fiducial_count"], created_s=c["created_s"])

    def StreamTargets(self, request: pb.StreamTargetsRequest,
                      context: grpc.ServicerContext) -> Iterator[pb.TargetState]:
        hub = self.svc.hub
        with self._stream_slot():
            snapshot, version = hub.current()
            yield target_state_pb(snapshot)
            while context.is_active() and not hub.closed:
                snapshot, version = hub.wait(version, self.refresh_s)
                if hub.closed:
                    return
                yield target_state_pb(snapshot)

    def GetTargets(self, request: pb.GetTargetsRequest, context: grpc.ServicerContext) -> pb.TargetState:
        return target_state_pb(self.svc.hub.current()[0])

    def ListAudit(self, request: pb.ListAuditRequest, context: grpc.ServicerContext) -> pb.ListAuditResponse:
        rows = self.svc.list_audit(request.case_id, request.after_seq, request.limit)
        return pb.ListAuditResponse(entries=[pb.AuditEntry(**r) for r in rows])
