"""An OpenIGTLink server that serves many subscribers at once.

One I/O thread runs a ``selectors`` loop over the listening socket, every client
socket (non-blocking) and a wake-up socket pair; it alone reads, writes, accepts,
refreshes and drops. :meth:`IgtlServer.publish` (any thread) encodes the state once
(:func:`~navsvc.streaming.targets.render`), bumps a version number and wakes the loop,
which then sends the same bytes to every client at once.

Per client the outbox is bounded: the message being written (a partly sent chunk is
finished, never interleaved), then the *newest* state version only (intermediate
versions a slow client missed are skipped, never queued), its query replies (at most
``queue_size``, oldest dropped) and its TDATA frame when due. A stalled client
therefore never delays the others and never grows memory; one that makes no send
progress for ``send_timeout_s`` is dropped, as is one that closes, resets, sends
malformed or oversized input, or fails a CRC.

Locks (order: ``_publish_lock`` before ``_lock``; neither is ever held across a socket
call): ``IgtlServer._publish_lock`` serialises :meth:`publish` and
:meth:`set_device_calibration` (encoding included), so that states take effect in the
order they were published -- an approval followed at once by a withdrawal can never end
on the approval. ``IgtlServer._lock`` guards the current state, its version and the
client table, held only to copy or swap references.
"""

from __future__ import annotations

import ipaddress
import logging
import selectors
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

#: GET_ query type -> the message type it asks for. (The protocol's query for TRANSFORM
#: is GET_TRANS: "GET_TRANSFORM" would not fit the 12-byte type field.)
QUERIES = {
    "GET_TRANS": "TRANSFORM",
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
    ``send_buffer_bytes``: kernel send buffer per client (SO_SNDBUF); it bounds how much
    already-encoded (possibly outdated) data can wait for a slow client. None: OS default.
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
    send_buffer_bytes: int | None = 65536
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
        if self.send_buffer_bytes is not None and self.send_buffer_bytes < 4096:
            raise ConfigError(f"send_buffer_bytes: expected >= 4096 or None, got {self.send_buffer_bytes}")
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


@dataclass(frozen=True)
class ClientStats:
    """``pending_bytes``: encoded but not yet accepted by the peer (> 0: slow or stalled)."""

    peer: str
    bytes_sent: int
    pending_bytes: int


class _Client:
    """One subscriber's socket and outbox; touched only by the I/O thread."""

    def __init__(self, sock: socket.socket, address: tuple, now: float) -> None:
        self.sock = sock
        self.peer = f"{address[0]}:{address[1]}"
        self.rbuf = bytearray()
        self.out: memoryview | None = None  # chunk being written
        self.sent_version = -1  # state version last queued (-1: the state goes out at once)
        self.replies: deque[bytes] = deque()
        self.tdata_interval_s: float | None = None
        self.next_tdata_s = 0.0
        self.last_progress_s = now
        self.writing = False  # registered for EVENT_WRITE
        self.closed = False
        self.bytes_sent = 0


class IgtlServer:
    """OpenIGTLink target server. See the module doc and docs/openigtlink.md."""

    def __init__(self, config: StreamConfig | None = None) -> None:
        self.config = config or StreamConfig()
        self._nets = allowed_networks(self.config.allow)
        self._publish_lock = threading.Lock()  # serialises publish / set_device_calibration
        self._lock = threading.Lock()
        self._clients_changed = threading.Condition(self._lock)
        self._clients: dict[socket.socket, _Client] = {}
        self._T_device_from_ct = self.config.T_device_from_ct
        self._state = TargetState.no_target("no registration published yet")
        self._rendered = self._render(self._state, self._T_device_from_ct)
        self._version = 0
        self._stop = threading.Event()
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.refused_count = 0
        self.dropped: list[tuple[str, str]] = []  # (peer, reason), most recent last
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
        listener.setblocking(False)
        self._listener = listener
        self.port = int(listener.getsockname()[1])
        self._thread = threading.Thread(target=self._io_loop, name="igtl-io", daemon=True)
        self._thread.start()
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
        with self._publish_lock:  # publishes take effect in call order (approve, then withdraw)
            rendered = self._render(state, self._T_device_from_ct)
            with self._lock:
                previous = self._state
                self._state, self._rendered = state, rendered
                self._version += 1
        if (previous.state, previous.registration_id) != (state.state, state.registration_id):
            log.info("stream state %s (registration %s, QA %s, %d target(s), valid=%s)%s", state.state,
                     state.registration_id, state.qa_verdict, len(state.targets), rendered.valid,
                     f": {rendered.reason}" if rendered.reason else "")
        self._wake()

    def set_device_calibration(self, T_device_from_ct: RigidTransform | None) -> None:
        """Set (or clear with None) ``T_device_from_ct``; re-sends the current state."""
        _check_calibration(T_device_from_ct)
        with self._publish_lock:
            rendered = self._render(self._state, T_device_from_ct)
            with self._lock:
                self._T_device_from_ct = T_device_from_ct
                self._rendered = rendered
                self._version += 1
        self._wake()

    @property
    def current(self) -> Rendered:
        with self._lock:
            return self._rendered

    @property
    def client_count(self) -> int:
        with self._lock:
            return len(self._clients)

    def client_stats(self) -> list[ClientStats]:
        """A snapshot per connected client, for monitoring."""
        with self._lock:
            clients = list(self._clients.values())
        return [ClientStats(c.peer, c.bytes_sent, len(c.out) if c.out is not None else 0) for c in clients]

    def wait_for_clients(self, count: int, timeout_s: float) -> bool:
        """Block until exactly ``count`` clients are connected (True) or the timeout (False)."""
        with self._clients_changed:
            return self._clients_changed.wait_for(lambda: len(self._clients) == count, timeout_s)

    def stop(self) -> None:
        """Close every client, stop the I/O thread and release the port."""
        self._stop.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(5.0)
        for sock in (self._wake_r, self._wake_w):
            sock.close()
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

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # a wake-up is already pending (or we are stopping)

    def _io_loop(self) -> None:
        assert self._listener is not None
        sel = selectors.DefaultSelector()
        self._sel = sel
        sel.register(self._listener, selectors.EVENT_READ, "listen")
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        try:
            self._serve(sel)
        except Exception:
            log.exception("OpenIGTLink I/O loop failed; closing every client")
            raise
        finally:
            for client in list(self._clients.values()):
                self._drop(client, "server stopping")
            sel.close()
            self._listener.close()

    def _serve(self, sel: selectors.BaseSelector) -> None:
        period_s = 1.0 / self.config.refresh_hz if self.config.refresh_hz > 0 else None
        next_refresh_s = time.monotonic() + period_s if period_s else float("inf")
        while not self._stop.is_set():
            now = time.monotonic()
            deadline = min([next_refresh_s, now + 0.25] +
                           [c.next_tdata_s for c in self._clients.values() if c.tdata_interval_s])
            for key, mask in sel.select(max(deadline - now, 0.0)):
                if key.data == "listen":
                    self._accept()
                elif key.data == "wake":
                    try:
                        while self._wake_r.recv(4096):
                            pass
                    except BlockingIOError:
                        pass
                elif mask & selectors.EVENT_READ:
                    try:
                        self._read(key.data)
                    except Exception:  # a bug must cost one client, not the stream
                        log.exception("client %s: unexpected error handling its input", key.data.peer)
                        self._drop(key.data, "internal error handling its input")
            now = time.monotonic()
            if now >= next_refresh_s and period_s:
                with self._lock:
                    self._version += 1
                next_refresh_s = max(next_refresh_s + period_s, now)
            with self._lock:
                rendered, version = self._rendered, self._version
            for client in list(self._clients.values()):
                self._flush(client, rendered, version, now)

    def _accept(self) -> None:
        assert self._listener is not None
        while True:
            try:
                sock, address = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
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
        if len(self._clients) >= self.config.max_clients:
            self.refused_count += 1
            log.warning("refused OpenIGTLink client %s: %d clients already", peer, len(self._clients))
            sock.close()
            return
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if self.config.send_buffer_bytes is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.config.send_buffer_bytes)
        for opt, value in (("TCP_KEEPIDLE", 5), ("TCP_KEEPINTVL", 2), ("TCP_KEEPCNT", 3)):
            if hasattr(socket, opt):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, opt), value)
        client = _Client(sock, address, time.monotonic())
        self._sel.register(sock, selectors.EVENT_READ, client)
        with self._clients_changed:
            self._clients[sock] = client
            self._clients_changed.notify_all()
        log.info("OpenIGTLink client %s connected", peer)

    def _drop(self, client: _Client, reason: str) -> None:
        client.closed = True
        with self._clients_changed:
            if self._clients.pop(client.sock, None) is None:
                return
            self._clients_changed.notify_all()
        self.dropped.append((client.peer, reason))
        del self.dropped[:-100]
        log.info("client %s dropped: %s", client.peer, reason)
        try:
            self._sel.unregister(client.sock)
        except (KeyError, ValueError):
            pass
        try:
            client.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        client.sock.close()

    def _read(self, client: _Client) -> None:
        try:
            data = client.sock.recv(1 << 16)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._drop(client, f"connection error: {exc}")
            return
        if not data:
            self._drop(client, "connection closed by peer")
            return
        client.rbuf += data
        buf = client.rbuf
        while len(buf) >= m.HEADER_SIZE and not client.closed:
            try:
                header = m.parse_header(bytes(buf[: m.HEADER_SIZE]), self.config.max_body_bytes)
                end = m.HEADER_SIZE + header.body_size
                if len(buf) < end:
                    return
                message = m.decode(header, bytes(buf[m.HEADER_SIZE:end]))
            except StreamingError as exc:
                log.warning("client %s sent malformed input: %s", client.peer, exc)
                self._drop(client, f"malformed input: {exc}")
                return
            del buf[:end]
            self._handle_incoming(client, header, message)

    def _flush(self, client: _Client, rendered: Rendered, version: int, now: float) -> None:
        """Send what the client is owed, without blocking; keep the rest for later."""
        while True:
            if client.out is None:
                chunks = []
                if client.sent_version != version:  # only the newest state, never a backlog
                    chunks.append(rendered.blob)
                    client.sent_version = version
                chunks += client.replies
                client.replies.clear()
                if client.tdata_interval_s is not None and now >= client.next_tdata_s:
                    if rendered.tdata:
                        chunks.append(rendered.tdata)
                    client.next_tdata_s = max(client.next_tdata_s + client.tdata_interval_s, now)
                if not chunks:
                    break
                client.out = memoryview(chunks[0] if len(chunks) == 1 else b"".join(chunks))
                client.last_progress_s = now
            try:
                n = client.sock.send(client.out)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError as exc:
                self._drop(client, f"send failed: {exc}")
                return
            if n:
                client.last_progress_s = now
                client.bytes_sent += n
                client.out = client.out[n:]
            if client.out is not None and len(client.out) == 0:
                client.out = None
                continue
            if n == 0:
                break
        want_write = client.out is not None
        if want_write and now - client.last_progress_s > self.config.send_timeout_s:
            self._drop(client, f"stalled: no data accepted for {self.config.send_timeout_s} s")
            return
        if want_write != client.writing:
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if want_write else 0)
            self._sel.modify(client.sock, events, client)
            client.writing = want_write

    def _handle_incoming(self, client: _Client, header: m.Header, message: object) -> None:
        mtype = header.message_type
        if mtype in QUERIES:
            self._reply(client, self._answer_query(QUERIES[mtype], header.device_name))
        elif mtype == "STT_TDATA":
            resolution_ms = getattr(message, "resolution_ms", 0)
            interval_s = max(resolution_ms / 1000.0, _MIN_TDATA_INTERVAL_S)
            ok = 0 <= resolution_ms <= 3_600_000
            self._reply(client, self._pack(m.RtsMessage("RTS_TDATA", 0 if ok else 1,
                                                        device_name=header.device_name)))
            if ok:
                log.info("client %s: TDATA stream every %.3f s", client.peer, interval_s)
                client.tdata_interval_s = interval_s
                client.next_tdata_s = time.monotonic()
        elif mtype == "STP_TDATA":
            client.tdata_interval_s = None
            self._reply(client, self._pack(m.RtsMessage("RTS_TDATA", 0, device_name=header.device_name)))
        else:
            log.info("client %s sent %s %r: ignored", client.peer, mtype, header.device_name)

    def _reply(self, client: _Client, raw: bytes) -> None:
        if client.closed:
            return
        if len(client.replies) >= self.config.queue_size and client.out is None:
            with self._lock:  # a burst of queries: move replies to the socket first
                rendered, version = self._rendered, self._version
            self._flush(client, rendered, version, time.monotonic())
        if len(client.replies) >= self.config.queue_size:
            client.replies.popleft()
            log.warning("client %s: reply queue full, dropped the oldest reply", client.peer)
        client.replies.append(raw)

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
