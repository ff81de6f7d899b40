"""An OpenIGTLink server that serves many subscribers at once.

Threads: one accept thread, one refresh thread, and per client one reader thread
(parses queries) and one writer thread (the only thread that sends on that socket).
A publish encodes the state once (:func:`~navsvc.streaming.targets.render`) and hands
the same bytes to every client's outbox; a client's outbox holds only the newest
state (a slot, replaced) plus a bounded deque of query replies, so a slow or stalled
client never delays the others and never grows memory. A client whose send does not
complete within ``send_timeout_s`` is dropped, as is one that closes, sends malformed
or oversized input, or fails its CRC.

Locks: ``IgtlServer._lock`` guards the client table and the current state;
``_Client._cond`` guards that client's outbox. No code holds both at once, and no
lock is held across a socket send.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass

from navsvc.errors import ConfigError, InputError, StreamingError
from navsvc.frames import CT, DEVICE, check_igtl_device_name
from navsvc.streaming import messages as m
from navsvc.streaming.targets import (
    OUTPUT_FRAMES,
    STATUS_DEVICE,
    Rendered,
    TargetState,
    render,
    transform_device_name,
)
from navsvc.transforms import RigidTransform

log = logging.getLogger(__name__)

#: GET_ query type -> the message type it asks for.
QUERIES = {
    "GET_TRANS": "TRANSFORM",
    "GET_TRANSFORM": "TRANSFORM",
    "GET_POINT": "POINT",
    "GET_TRAJ": "TRAJ",
    "GET_STATUS": "STATUS",
    "GET_STRING": "STRING",
    "GET_TDATA": "TDATA",
}
_TARGET_TYPES = ("TRANSFORM", "POINT", "TRAJ", "TDATA")
_MIN_TDATA_INTERVAL_S = 0.001


@dataclass(frozen=True)
class StreamConfig:
    """Server settings.

    ``allow``: client addresses or networks (``"127.0.0.1"``, ``"10.0.0.0/24"``,
    ``"::1"``); others are refused at connect. ``output_frame``: ``"lps"`` (CT LPS),
    ``"ras"`` (CT RAS, 3D Slicer) or ``"device"`` (through ``T_device_from_ct``).
    ``refresh_hz``: periodic re-send of the current state (keepalive); 0 disables.
    ``queue_size``: query replies kept per client (oldest dropped beyond).
    ``max_body_bytes``: larger incoming bodies close that client.
    ``send_timeout_s``: a client that accepts no data for this long is dropped.
    ``header_version``: 1 (OpenIGTLink 1/2, what most clients read) or 2 (v3 header).
    """

    host: str = "127.0.0.1"
    port: int = 18944
    refresh_hz: float = 20.0
    allow: tuple[str, ...] = ("127.0.0.1", "::1")
    output_frame: str = "lps"
    T_device_from_ct: RigidTransform | None = None
    reference_name: str = "Reference"
    queue_size: int = 64
    max_body_bytes: int = 65536
    max_clients: int = 64
    send_timeout_s: float = 2.0
    header_version: int = 1

    def __post_init__(self) -> None:
        if not (0 <= int(self.port) <= 65535):
            raise ConfigError(f"port: expected 0..65535, got {self.port}")
        if not (0.0 <= self.refresh_hz <= 1000.0):
            raise ConfigError(f"refresh_hz: expected 0..1000, got {self.refresh_hz}")
        if self.output_frame not in OUTPUT_FRAMES:
            raise ConfigError(f"output_frame: expected one of {OUTPUT_FRAMES}, got {self.output_frame!r}")
        if self.queue_size < 1 or self.max_clients < 1 or self.max_body_bytes < 64:
            raise ConfigError(
                f"expected queue_size >= 1, max_clients >= 1, max_body_bytes >= 64, got "
                f"{self.queue_size}, {self.max_clients}, {self.max_body_bytes}"
            )
        if self.send_timeout_s <= 0:
            raise ConfigError(f"send_timeout_s: expected > 0, got {self.send_timeout_s}")
        if self.header_version not in (1, 2):
            raise ConfigError(f"header_version: expected 1 or 2, got {self.header_version}")
        try:
            check_igtl_device_name(self.reference_name)
        except InputError as exc:
            raise ConfigError(f"reference_name: {exc}") from exc
        if not self.reference_name.isalnum():
            raise ConfigError(f"reference_name: expected letters and digits, got {self.reference_name!r}")
        _check_calibration(self.T_device_from_ct)
        object.__setattr__(self, "allow", tuple(self.allow))
        allowed_networks(self.allow)


def allowed_networks(allow: tuple[str, ...]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """Parse the allow-list; raises :class:`ConfigError` naming a bad entry."""
    nets = []
    for entry in allow:
        try:
            nets.append(ipaddress.ip_network(entry, strict=False))
        except ValueError as exc:
            raise ConfigError(f"allow: {entry!r} is not an IP address or network ({exc})") from exc
    return nets


def _is_allowed(address: str, nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == n.version and ip in n for n in nets)


def _check_calibration(T_device_from_ct: RigidTransform | None) -> None:
    if T_device_from_ct is None:
        return
    if not isinstance(T_device_from_ct, RigidTransform):
        raise ConfigError(f"T_device_from_ct: expected a RigidTransform, got {type(T_device_from_ct).__name__}")
    if (T_device_from_ct.to_frame, T_device_from_ct.from_frame) != (DEVICE, CT):
        raise ConfigError(
            f"T_device_from_ct: expected frames to={DEVICE!r} from={CT!r}, got "
            f"to={T_device_from_ct.to_frame!r} from={T_device_from_ct.from_frame!r}"
        )


class _Client:
    """One subscriber: its socket, its outbox and its two threads."""

    def __init__(self, server: IgtlServer, sock: socket.socket, address: tuple, rendered: Rendered) -> None:
        self.server = server
        self.sock = sock
        self.peer = f"{address[0]}:{address[1]}"
        self._cond = threading.Condition()
        self._rendered = rendered  # newest state; sent when _state_pending
        self._state_pending = True  # the current state goes out as soon as we connect
        self._replies: deque[bytes] = deque()
        self._tdata_interval_s: float | None = None
        self._next_tdata_s = 0.0
        self._closed = False
        self.close_reason = ""
        self.bytes_sent = 0
        self._reader = threading.Thread(target=self._read_loop, name=f"igtl-read-{self.peer}", daemon=True)
        self._writer = threading.Thread(target=self._write_loop, name=f"igtl-write-{self.peer}", daemon=True)

    def start(self) -> None:
        self._reader.start()
        self._writer.start()

    # -- outbox (called from other threads; never blocks on the socket) ---------
    def offer_state(self, rendered: Rendered) -> None:
        with self._cond:
            self._rendered = rendered
            self._state_pending = True
            self._cond.notify()

    def offer_reply(self, raw: bytes) -> None:
        with self._cond:
            if len(self._replies) >= self.server.config.queue_size:
                self._replies.popleft()
                log.warning("client %s: reply queue full, dropped the oldest reply", self.peer)
            self._replies.append(raw)
            self._cond.notify()

    def set_tdata_interval(self, interval_s: float | None) -> None:
        with self._cond:
            self._tdata_interval_s = interval_s
            self._next_tdata_s = time.monotonic()
            self._cond.notify()

    def close(self, reason: str) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self.close_reason = reason
            self._cond.notify()
        log.info("client %s closed: %s", self.peer, reason)
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.server._forget(self)

    def join(self, timeout_s: float) -> None:
        for t in (self._reader, self._writer):
            if t.is_alive() and t is not threading.current_thread():
                t.join(timeout_s)

    # -- writer -------------------------------------------------------------
    def _next_chunk(self) -> bytes | None:
        """Wait for something to send; None when closed."""
        with self._cond:
            while True:
                if self._closed:
                    return None
                now = time.monotonic()
                tdata_due = self._tdata_interval_s is not None and now >= self._next_tdata_s
                if self._replies or self._state_pending or tdata_due:
                    break
                wait_s = None
                if self._tdata_interval_s is not None:
                    wait_s = max(self._next_tdata_s - now, 0.0)
                self._cond.wait(wait_s)
            chunks = []
            rendered = self._rendered
            if self._state_pending:  # the state first: on connect it precedes any reply
                chunks.append(rendered.blob)
                self._state_pending = False
            chunks += self._replies
            self._replies.clear()
            if tdata_due and self._tdata_interval_s is not None:
                if rendered.tdata:
                    chunks.append(rendered.tdata)
                self._next_tdata_s = max(self._next_tdata_s + self._tdata_interval_s, now)
            return b"".join(chunks)

    def _write_loop(self) -> None:
        while True:
            chunk = self._next_chunk()
            if chunk is None:
                return
            if not chunk:
                continue
            try:
                self.sock.sendall(chunk)
            except TimeoutError:
                self.close(f"stalled: could not send for {self.server.config.send_timeout_s} s")
                return
            except OSError as exc:
                self.close(f"send failed: {exc}")
                return
            self.bytes_sent += len(chunk)

    # -- reader -------------------------------------------------------------
    def _recv_exact(self, n: int) -> bytes | None:
        buf = bytearray()
        while len(buf) < n:
            if self._closed:
                return None
            try:
                part = self.sock.recv(min(n - len(buf), 1 << 16))
            except TimeoutError:
                continue  # idle client; liveness is checked by the writer and TCP keepalive
            except OSError:
                return None
            if not part:
                return None
            buf += part
        return bytes(buf)

    def _read_loop(self) -> None:
        max_body = self.server.config.max_body_bytes
        while True:
            raw = self._recv_exact(m.HEADER_SIZE)
            if raw is None:
                self.close("connection closed by peer")
                return
            try:
                header = m.parse_header(raw, max_body)
                body = self._recv_exact(header.body_size) if header.body_size else b""
                if body is None:
                    self.close("connection closed by peer in a message body")
                    return
                message = m.decode(header, body)
            except StreamingError as exc:
                log.warning("client %s sent malformed input: %s", self.peer, exc)
                self.close(f"malformed input: {exc}")
                return
            self.server._handle_incoming(self, header, message)


class IgtlServer:
    """OpenIGTLink target server. See the module doc and docs/openigtlink.md."""

    def __init__(self, config: StreamConfig | None = None) -> None:
        self.config = config or StreamConfig()
        self._nets = allowed_networks(self.config.allow)
        self._lock = threading.Lock()
        self._clients_changed = threading.Condition(self._lock)
        self._clients: list[_Client] = []
        self._T_device_from_ct = self.config.T_device_from_ct
        self._state = TargetState.no_target("no registration published yet")
        self._rendered = self._render(self._state, self._T_device_from_ct)
        self._stop = threading.Event()
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self.refused_count = 0
        self.port: int | None = None

    # -- public API -----------------------------------------------------------
    def start(self) -> int:
        """Bind and start serving; returns the bound port (``port=0`` picks a free one)."""
        if self._listener is not None:
            raise StreamingError("server already started")
        host = self.config.host
        try:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            listener = socket.create_server((host, self.config.port), family=family, backlog=64)
        except OSError as exc:
            raise StreamingError(f"cannot listen on {host}:{self.config.port}: {exc}") from exc
        listener.settimeout(0.2)
        self._listener = listener
        self.port = int(listener.getsockname()[1])
        self._threads = [threading.Thread(target=self._accept_loop, name="igtl-accept", daemon=True)]
        if self.config.refresh_hz > 0:
            self._threads.append(threading.Thread(target=self._refresh_loop, name="igtl-refresh", daemon=True))
        for t in self._threads:
            t.start()
        log.info("OpenIGTLink server on %s:%d (frame %s, refresh %.1f Hz, allow %s)", host, self.port,
                 self.config.output_frame, self.config.refresh_hz, ",".join(self.config.allow))
        return self.port

    def publish(self, state: TargetState) -> None:
        """Make ``state`` current and hand it to every client at once (non-blocking).

        Raises :class:`InputError` if a device name would not fit the protocol.
        """
        if not isinstance(state, TargetState):
            raise InputError(f"expected a TargetState, got {type(state).__name__}")
        for t in state.targets:
            transform_device_name(t.name, self.config.reference_name)
        with self._lock:
            rendered = self._render(state, self._T_device_from_ct)
            self._state, self._rendered = state, rendered
            clients = list(self._clients)
        for c in clients:
            c.offer_state(rendered)

    def set_device_calibration(self, T_device_from_ct: RigidTransform | None) -> None:
        """Set (or clear with None) ``T_device_from_ct``; re-sends the current state."""
        _check_calibration(T_device_from_ct)
        with self._lock:
            self._T_device_from_ct = T_device_from_ct
            rendered = self._render(self._state, T_device_from_ct)
            self._rendered = rendered
            clients = list(self._clients)
        for c in clients:
            c.offer_state(rendered)

    @property
    def current(self) -> Rendered:
        with self._lock:
            return self._rendered

    @property
    def client_count(self) -> int:
        with self._lock:
            return len(self._clients)

    def wait_for_clients(self, count: int, timeout_s: float) -> bool:
        """Block until exactly ``count`` clients are connected (True) or the timeout (False)."""
        with self._clients_changed:
            return self._clients_changed.wait_for(lambda: len(self._clients) == count, timeout_s)

    def stop(self) -> None:
        """Close every client, stop the threads and release the port."""
        self._stop.set()
        for t in self._threads:
            t.join(2.0)
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            clients = list(self._clients)
        for c in clients:
            c.close("server stopping")
        for c in clients:
            c.join(2.0)
        log.info("OpenIGTLink server stopped")

    def __enter__(self) -> IgtlServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- internals --------------------------------------------------------------
    def _render(self, state: TargetState, T_device_from_ct: RigidTransform | None) -> Rendered:
        return render(state, self.config.output_frame, T_device_from_ct,
                      self.config.reference_name, self.config.header_version)

    def _forget(self, client: _Client) -> None:
        with self._clients_changed:
            if client in self._clients:
                self._clients.remove(client)
                self._clients_changed.notify_all()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                sock, address = self._listener.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                if not self._stop.is_set():
                    log.error("accept failed: %s", exc)
                return
            self._admit(sock, address)

    def _admit(self, sock: socket.socket, address: tuple) -> None:
        peer = f"{address[0]}:{address[1]}"
        if not _is_allowed(address[0], self._nets):
            self.refused_count += 1
            log.warning("refused OpenIGTLink client %s: not in the allow-list", peer)
            sock.close()
            return
        sock.settimeout(self.config.send_timeout_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for opt, value in (("TCP_KEEPIDLE", 5), ("TCP_KEEPINTVL", 2), ("TCP_KEEPCNT", 3)):
            if hasattr(socket, opt):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, opt), value)
        with self._clients_changed:
            if len(self._clients) >= self.config.max_clients:
                self.refused_count += 1
                log.warning("refused OpenIGTLink client %s: %d clients already", peer, len(self._clients))
                sock.close()
                return
            client = _Client(self, sock, address, self._rendered)
            self._clients.append(client)
            self._clients_changed.notify_all()
        log.info("OpenIGTLink client %s connected", peer)
        client.start()

    def _refresh_loop(self) -> None:
        period_s = 1.0 / self.config.refresh_hz
        while not self._stop.wait(period_s):
            with self._lock:
                rendered = self._rendered
                clients = list(self._clients)
            for c in clients:
                c.offer_state(rendered)

    def _handle_incoming(self, client: _Client, header: m.Header, message: object) -> None:
        mtype = header.message_type
        if mtype in QUERIES:
            client.offer_reply(self._answer_query(QUERIES[mtype], header.device_name))
        elif mtype == "STT_TDATA":
            resolution_ms = getattr(message, "resolution_ms", 0)
            interval_s = max(resolution_ms / 1000.0, _MIN_TDATA_INTERVAL_S)
            ok = 0 <= resolution_ms <= 3_600_000
            client.offer_reply(self._pack(m.RtsMessage("RTS_TDATA", 0 if ok else 1,
                                                       device_name=header.device_name)))
            if ok:
                log.info("client %s: TDATA stream every %.3f s", client.peer, interval_s)
                client.set_tdata_interval(interval_s)
        elif mtype == "STP_TDATA":
            client.set_tdata_interval(None)
            client.offer_reply(self._pack(m.RtsMessage("RTS_TDATA", 0, device_name=header.device_name)))
        else:
            log.info("client %s sent %s %r: ignored", client.peer, mtype, header.device_name)

    def _pack(self, message: m.MessageBase) -> bytes:
        message.header_version = self.config.header_version
        return message.pack()

    def _answer_query(self, wanted_type: str, device_name: str) -> bytes:
        rendered = self.current
        found = rendered.by_type.get(wanted_type, {})
        if wanted_type in _TARGET_TYPES and not rendered.valid:
            return self._pack(m.StatusMessage(
                m.STATUS_NOT_READY, 0, "NoValidTarget",
                f"no valid target: {rendered.reason or 'no approved registration'}",
                device_name=device_name or STATUS_DEVICE))
        if not device_name and found:
            return b"".join(found.values())
        if device_name in found:
            return found[device_name]
        names = ", ".join(sorted(found)) or "none"
        return self._pack(m.StatusMessage(
            m.STATUS_NOT_FOUND, 0, "UnknownDevice",
            f"no {wanted_type} named {device_name!r}; available: {names}",
            device_name=device_name or STATUS_DEVICE))
