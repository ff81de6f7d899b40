"""The committed stubs in navsvc/server/pb are exactly what protoc generates from proto/."""

from __future__ import annotations

from pathlib import Path

import pytest

from navsvc.server import protogen


def test_committed_stubs_match_regenerated(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    written = protogen.generate(tmp_path)
    assert {p.name for p in written} == {"navsvc_pb2.py", "navsvc_pb2.pyi", "navsvc_pb2_grpc.py"}
    for path in written:
        committed = protogen.PB_DIR / path.name
        assert committed.is_file(), f"{committed} missing: run python -m navsvc.server.protogen"
        assert committed.read_text() == path.read_text(), (
            f"{committed.name} differs from protoc output: run python -m navsvc.server.protogen and commit"
        )


def test_stubs_import_and_describe_package() -> None:
    from navsvc.server.pb import navsvc_pb2, navsvc_pb2_grpc

    assert navsvc_pb2.DESCRIPTOR.package == "navsvc.v1"
    service = navsvc_pb2.DESCRIPTOR.services_by_name["Navigation"]
    assert {"CreateCase", "Upload", "LoadPlan", "StartRegistration", "WatchRegistration",
            "ApproveRegistration", "RejectRegistration", "SetCalibration", "StreamTargets",
            "ListAudit"} <= {m.name for m in service.methods}
    assert hasattr(navsvc_pb2_grpc, "NavigationServicer")
