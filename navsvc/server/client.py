"""A thin client of navsvc.v1 for the CLI, the demo and tests.

``NavClient(address, token)`` holds a channel whose every call carries the bearer token;
``stub`` is the generated stub. Helpers cover what needs more than one message: chunked
uploads with the SHA-256 declared up front.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc

from navsvc.server.pb import navsvc_pb2 as pb
from navsvc.server.pb import navsvc_pb2_grpc as pb_grpc

CHUNK_BYTES = 1024 * 1024


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK_BYTES), b""):
            h.update(block)
    return h.hexdigest()


def upload_messages(case_id: str, path: Path, chunk_bytes: int = CHUNK_BYTES,
                    sha256_hex: str | None = None, size_bytes: int | None = None) -> Iterator[pb.UploadChunk]:
    """The header then the content of ``path`` in chunks (``sha256_hex``/``size_bytes``
    override the declared values, for tests of the server's checks)."""
    size = path.stat().st_size if size_bytes is None else size_bytes
    yield pb.UploadChunk(header=pb.UploadHeader(case_id=case_id, filename=path.name, size_bytes=size,
                                                sha256_hex=sha256_hex or file_sha256(path)))
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk_bytes), b""):
            yield pb.UploadChunk(data=block)


class NavClient:
    """A channel to a navsvc service with a bearer token on every call."""

    def __init__(self, address: str, token: str, *, root_cert: bytes | None = None,
                 client_key: bytes | None = None, client_cert: bytes | None = None,
                 server_name: str | None = None, max_message_bytes: int = 4 * CHUNK_BYTES) -> None:
        opts: list[tuple[str, Any]] = [("grpc.max_receive_message_length", max_message_bytes),
                                       ("grpc.max_send_message_length", max_message_bytes)]
        if server_name:
            opts.append(("grpc.ssl_target_name_override", server_name))
        if root_cert is not None:
            creds = grpc.ssl_channel_credentials(root_cert, client_key, client_cert)
            self.channel = grpc.secure_channel(address, creds, options=opts)
        else:
            self.channel = grpc.insecure_channel(address, options=opts)
        self.token = token
        self.metadata = (("authorization", f"Bearer {token}"),)
        self.stub = pb_grpc.NavigationStub(self.channel)

    def wait_ready(self, timeout_s: float = 10.0) -> None:
        grpc.channel_ready_future(self.channel).result(timeout=timeout_s)

    def call(self, method: str, request: Any, timeout_s: float | None = 60.0) -> Any:
        return getattr(self.stub, method)(request, metadata=self.metadata, timeout=timeout_s)

    def stream(self, method: str, request: Any, timeout_s: float | None = None) -> Any:
        return getattr(self.stub, method)(request, metadata=self.metadata, timeout=timeout_s)

    def upload(self, case_id: str, path: str | os.PathLike[str], **kw: Any) -> pb.StoredFile:
        """Upload a local file (chunked, SHA-256 declared up front); raises InputError when the
        local file is missing."""
        from navsvc.errors import InputError

        p = Path(path)
        if not p.is_file():
            raise InputError(f"local file not found: {p} (use --server-paths for files on the server)")
        return self.stub.Upload(upload_messages(case_id, p, **kw), metadata=self.metadata, timeout=600)

    def file_ref(self, case_id: str, path: str | os.PathLike[str], server_side: bool) -> pb.FileRef:
        """A reference to a file: its server-side path, or an upload of the local file."""
        if server_side:
            return pb.FileRef(server_path=str(path))
        return pb.FileRef(upload_id=self.upload(case_id, path).upload_id)

    def fetch_result(self, registration_id: str, name: str, out_dir: str | os.PathLike[str]) -> Path:
        """Download a result file of a registration into ``out_dir`` (atomically), checking its
        size and SHA-256; returns its path."""
        from navsvc.errors import InputError

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        stream = self.stream("GetResultFile", pb.GetResultFileRequest(registration_id=registration_id, name=name),
                             timeout_s=600)
        local = Path(name).name  # never write outside out_dir, whatever the name
        tmp = out / f".{local}.part"
        h = hashlib.sha256()
        size, sha = -1, ""
        try:
            with open(tmp, "wb") as fh:
                for chunk in stream:
                    if chunk.name:
                        size, sha = chunk.size_bytes, chunk.sha256_hex
                    h.update(chunk.data)
                    fh.write(chunk.data)
            if tmp.stat().st_size != size or h.hexdigest() != sha:
                raise InputError(f"{name}: received {tmp.stat().st_size} bytes with SHA-256 {h.hexdigest()[:12]}..., "
                                 f"expected {size} bytes and {sha[:12]}...; fetch it again")
            dst = out / local
            os.replace(tmp, dst)
            return dst
        finally:
            tmp.unlink(missing_ok=True)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> NavClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def nav_error_from_rpc(exc: grpc.RpcError) -> Exception:
    """The NavError a CLI should raise for a failed call (so exit codes follow the status)."""
    from navsvc import errors

    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    by_code = {
        grpc.StatusCode.INVALID_ARGUMENT: errors.InputError,
        grpc.StatusCode.NOT_FOUND: errors.NotFound,
        grpc.StatusCode.FAILED_PRECONDITION: errors.PreconditionFailed,
        grpc.StatusCode.PERMISSION_DENIED: errors.PermissionDenied,
        grpc.StatusCode.UNAUTHENTICATED: errors.Unauthenticated,
        grpc.StatusCode.RESOURCE_EXHAUSTED: errors.ResourceExhausted,
        grpc.StatusCode.CANCELLED: errors.Cancelled,
        grpc.StatusCode.UNIMPLEMENTED: errors.NotBuiltYet,
    }
    if code == grpc.StatusCode.UNAVAILABLE:
        return errors.StreamingError(f"the service is not reachable: {details}; is `navsvc serve` running?")
    cls = by_code.get(code, errors.NavError)
    return cls(f"{details} [{code.name if code else 'error'}]")
