"""A small blocking OpenIGTLink client (``navsvc listen``, tests, the benchmark)."""

from __future__ import annotations

import socket
import time
from typing import Any

from navsvc.errors import StreamingError
from navsvc.streaming import messages as m


class IgtlClient:
    """Connect to an OpenIGTLink server, send messages, receive decoded ones.

    ``receive`` returns pyigtl / :mod:`navsvc.streaming.messages` objects with
    ``message_type``, ``device_name`` and ``timestamp`` (Unix seconds); ``received_s``
    is set on each to the local receipt time.
    """

    def __init__(self, host: str, port: int, timeout_s: float = 5.0,
                 max_body_bytes: int = 16 << 20) -> None:
        try:
            self.sock = socket.create_connection((host, port), timeout=timeout_s)
        except OSError as exc:
            raise StreamingError(f"cannot connect to OpenIGTLink server {host}:{port}: {exc}") from exc
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.max_body_bytes = max_body_bytes
        self._buf = bytearray()

    @classmethod
    def from_socket(cls, sock: socket.socket, max_body_bytes: int = 16 << 20) -> IgtlClient:
        """Wrap an already connected socket (e.g. one with special options)."""
        client = cls.__new__(cls)
        client.sock, client.max_body_bytes, client._buf = sock, max_body_bytes, bytearray()
        return client

    def send(self, message: m.MessageBase) -> None:
        self.sock.sendall(message.pack())

    def _read(self, n: int, deadline: float) -> bytes:
        while len(self._buf) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no complete message before the timeout")
            self.sock.settimeout(remaining)
            try:
                part = self.sock.recv(1 << 16)
            except TimeoutError as exc:
                raise TimeoutError("no complete message before the timeout") from exc
            if not part:
                raise StreamingError("connection closed by the server")
            self._buf += part
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def receive(self, timeout_s: float = 5.0) -> Any:
        """The next message (raises TimeoutError, or StreamingError when closed/malformed)."""
        deadline = time.monotonic() + timeout_s
        header = m.parse_header(self._read(m.HEADER_SIZE, deadline), self.max_body_bytes)
        body = self._read(header.body_size, deadline) if header.body_size else b""
        message = m.decode(header, body)
        message.received_s = time.time()
        return message

    def receive_until(self, predicate: Any, timeout_s: float = 5.0) -> tuple[Any, list[Any]]:
        """Receive until ``predicate(message)``; returns (that message, all received)."""
        deadline = time.monotonic() + timeout_s
        seen = []
        while True:
            msg = self.receive(max(deadline - time.monotonic(), 0.0))
            seen.append(msg)
            if predicate(msg):
                return msg, seen

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> IgtlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def describe(message: Any) -> str:
    """A one-message text summary for technicians (``navsvc listen``)."""
    mtype, name = message.message_type, message.device_name
    head = f"{message.timestamp:.6f} {mtype} {name!r}"
    if mtype == "TRANSFORM":
        rows = "; ".join(" ".join(f"{v:10.4f}" for v in row) for row in message.matrix[:3])
        return f"{head} [{rows}]"
    if mtype == "STRING":
        return f"{head} {message.string}"
    if mtype == "STATUS":
        return f"{head} code={message.code} error={message.error_name!r} {message.status_string}"
    if mtype == "TRAJ":
        parts = [f"{e.name}: entry={[round(v, 4) for v in e.entry]} target={[round(v, 4) for v in e.target]} "
                 f"radius={e.radius_mm:.3f}" for e in message.elements]
        return f"{head} " + " | ".join(parts)
    if mtype == "POINT":
        parts = [f"{n}={[round(float(v), 4) for v in xyz]}" for n, xyz in zip(message.names, message.positions, strict=True)]
        return f"{head} " + " ".join(parts)
    if mtype == "TDATA":
        parts = [f"{n}: origin={[round(float(v), 4) for v in mat[:3, 3]]}" for n, mat, _t in message.elements]
        return f"{head} " + " | ".join(parts)
    if mtype.startswith("RTS_"):
        return f"{head} status={message.status}"
    return head
