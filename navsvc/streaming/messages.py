"""OpenIGTLink message encoding and decoding.

pyigtl's :class:`pyigtl.messages.MessageBase` supplies the 58-byte header, the CRC-64
and the version-2 extended header / metadata; pyigtl's TRANSFORM, STRING and POINT
classes are used as they are. The message types pyigtl lacks are encoded here
following the OpenIGTLink protocol (the C structs in ``igtl_status.h``,
``igtl_trajectory.h``, ``igtl_tdata.h`` of the reference library are the byte-layout
reference; all numbers big-endian):

* ``STATUS``: code uint16, subcode int64, error name char[20], status string + NUL.
* ``TRAJ``: per element (150 bytes) name char[64], group char[32], type int8,
  reserved int8, rgba uint8[4], entry float32[3], target float32[3], radius float32,
  owner char[20].
* ``TDATA``: per element (70 bytes) name char[20], type uint8, reserved uint8,
  transform float32[12] (column-major rotation then translation, as TRANSFORM).
* ``STT_TDATA``: resolution int32 (ms between frames), coordinate name char[32].
* ``RTS_TDATA``: status int8 (0 success, 1 error).
* ``GET_<TYPE>`` / ``STP_TDATA``: header only (empty body).

Decoding (:func:`parse_header`, :func:`decode`) checks the header version, the announced
body size and the CRC and raises :class:`~navsvc.errors.StreamingError` on any violation.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from pyigtl.messages import CRC64, MessageBase, PointMessage, StringMessage, TransformMessage

from navsvc.errors import StreamingError

__all__ = [
    "HEADER_SIZE",
    "Header",
    "StatusMessage",
    "TrajectoryElement",
    "TrajectoryMessage",
    "TrackingDataMessage",
    "StartTrackingDataMessage",
    "RtsMessage",
    "QueryMessage",
    "TransformMessage",
    "StringMessage",
    "PointMessage",
    "parse_header",
    "decode",
    "content_of",
    "STATUS_OK",
    "STATUS_NOT_FOUND",
    "STATUS_NOT_READY",
    "STATUS_UNKNOWN_INSTRUCTION",
    "STATUS_CONFIG_ERROR",
]

HEADER_SIZE = 58
_HEADER = struct.Struct(">H12s20sIIQQ")
_EXT_HEADER = struct.Struct(">HHII")

# STATUS codes (igtlStatusMessage.h)
STATUS_OK = 1
STATUS_UNKNOWN_ERROR = 2
STATUS_NOT_FOUND = 4
STATUS_CONFIG_ERROR = 10
STATUS_UNKNOWN_INSTRUCTION = 12
STATUS_NOT_READY = 13

TDATA_TYPE_6D = 2
TRAJ_TYPE_ENTRY_TARGET = 3

_STATUS_HEAD = struct.Struct(">Hq20s")
_TRAJ_ELEMENT = struct.Struct(">64s32sbb4B3f3ff20s")
_TDATA_ELEMENT = struct.Struct(">20sBB12f")
_STT_TDATA = struct.Struct(">i32s")
_RTS = struct.Struct(">b")


def _fixed(text: str, size: int, field: str) -> bytes:
    """ASCII text for a fixed-size char field; refuse what does not fit (no silent cut)."""
    try:
        raw = text.encode("ascii")
    except UnicodeEncodeError as exc:
        raise StreamingError(f"{field} must be ASCII, got {text!r}") from exc
    if len(raw) > size:
        raise StreamingError(f"{field} {text!r} is {len(raw)} bytes; the field holds {size}")
    return raw


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("ascii", errors="replace")


def _matrix12(matrix: ArrayLike) -> list[float]:
    """4x4 -> the 12 floats of the protocol: R11 R21 R31 R12 R22 R32 R13 R23 R33 TX TY TZ."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (4, 4):
        raise StreamingError(f"expected a 4x4 matrix, got shape {m.shape}")
    return [float(v) for v in (*m[:3, 0], *m[:3, 1], *m[:3, 2], *m[:3, 3])]


def _matrix_from12(values: tuple[float, ...] | list[float]) -> np.ndarray:
    m = np.eye(4)
    m[:3, 0] = values[0:3]
    m[:3, 1] = values[3:6]
    m[:3, 2] = values[6:9]
    m[:3, 3] = values[9:12]
    return m


class _Checked(MessageBase):
    """Refuses a type (12 bytes) or device name (20 bytes) that pyigtl would silently cut."""

    def pack(self) -> bytes:
        _fixed(self._message_type, 12, "message type")
        _fixed(self.device_name, 20, "device name")
        return super().pack()


class StatusMessage(_Checked):
    """STATUS: a code (1 = OK, 13 = not ready, ...), a subcode, an error name, a text."""

    def __init__(
        self,
        code: int = STATUS_OK,
        subcode: int = 0,
        error_name: str = "",
        status_string: str = "",
        timestamp: float | None = None,
        device_name: str | None = None,
    ) -> None:
        super().__init__(timestamp=timestamp, device_name=device_name)
        self._message_type = "STATUS"
        self.code = int(code)
        self.subcode = int(subcode)
        self.error_name = error_name
        self.status_string = status_string
        self._valid_message = True

    def content_asstring(self) -> str:
        return (
            f"Code: {self.code}, subcode: {self.subcode}, error name: {self.error_name!r}, "
            f"status: {self.status_string!r}"
        )

    def _pack_content(self) -> bytes:
        text = self.status_string.encode("ascii", errors="replace")
        return (
            _STATUS_HEAD.pack(self.code, self.subcode, _fixed(self.error_name, 20, "error name"))
            + text
            + b"\0"
        )

    def _unpack_content(self, content: bytes) -> None:
        if len(content) < _STATUS_HEAD.size:
            raise StreamingError(f"STATUS body of {len(content)} bytes; expected at least 30")
        code, subcode, name = _STATUS_HEAD.unpack_from(content)
        self.code, self.subcode, self.error_name = code, subcode, _cstr(name)
        self.status_string = _cstr(content[_STATUS_HEAD.size :])


@dataclass(frozen=True)
class TrajectoryElement:
    """One TRAJ element; positions in mm in the stream's output frame, radius in mm."""

    name: str
    entry: tuple[float, float, float]
    target: tuple[float, float, float]
    radius_mm: float
    group_name: str = "Trajectory"
    rgba: tuple[int, int, int, int] = (255, 0, 0, 255)
    owner_name: str = ""
    type: int = TRAJ_TYPE_ENTRY_TARGET


class TrajectoryMessage(_Checked):
    """TRAJ: a list of trajectories (entry, target, radius)."""

    def __init__(
        self,
        elements: list[TrajectoryElement] | None = None,
        timestamp: float | None = None,
        device_name: str | None = None,
    ) -> None:
        super().__init__(timestamp=timestamp, device_name=device_name)
        self._message_type = "TRAJ"
        self.elements = list(elements or [])
        self._valid_message = True

    def content_asstring(self) -> str:
        return "\n".join(
            f"Trajectory {e.name!r}: entry {list(e.entry)}, target {list(e.target)}, radius {e.radius_mm}"
            for e in self.elements
        )

    def _pack_content(self) -> bytes:
        out = []
        for e in self.elements:
            out.append(
                _TRAJ_ELEMENT.pack(
                    _fixed(e.name, 64, "trajectory name"),
                    _fixed(e.group_name, 32, "trajectory group name"),
                    e.type,
                    0,
                    *e.rgba,
                    *e.entry,
                    *e.target,
                    e.radius_mm,
                    _fixed(e.owner_name, 20, "trajectory owner name"),
                )
            )
        return b"".join(out)

    def _unpack_content(self, content: bytes) -> None:
        if len(content) % _TRAJ_ELEMENT.size:
            raise StreamingError(
                f"TRAJ body of {len(content)} bytes is not a multiple of {_TRAJ_ELEMENT.size}"
            )
        self.elements = []
        for off in range(0, len(content), _TRAJ_ELEMENT.size):
            v = _TRAJ_ELEMENT.unpack_from(content, off)
            self.elements.append(
                TrajectoryElement(
                    name=_cstr(v[0]),
                    group_name=_cstr(v[1]),
                    type=v[2],
                    rgba=(v[4], v[5], v[6], v[7]),
                    entry=(v[8], v[9], v[10]),
                    target=(v[11], v[12], v[13]),
                    radius_mm=v[14],
                    owner_name=_cstr(v[15]),
                )
            )


class TrackingDataMessage(_Checked):
    """TDATA: named 4x4 poses (``elements``: list of (name, 4x4 matrix, type))."""

    def __init__(
        self,
        elements: list[tuple[str, np.ndarray, int]] | None = None,
        timestamp: float | None = None,
        device_name: str | None = None,
    ) -> None:
        super().__init__(timestamp=timestamp, device_name=device_name)
        self._message_type = "TDATA"
        self.elements = list(elements or [])
        self._valid_message = True

    def content_asstring(self) -> str:
        return "\n".join(f"Tool {n!r} (type {t}):\n{np.asarray(m)}" for n, m, t in self.elements)

    def _pack_content(self) -> bytes:
        return b"".join(
            _TDATA_ELEMENT.pack(_fixed(name, 20, "TDATA element name"), kind, 0, *_matrix12(m))
            for name, m, kind in self.elements
        )

    def _unpack_content(self, content: bytes) -> None:
        if len(content) % _TDATA_ELEMENT.size:
            raise StreamingError(
                f"TDATA body of {len(content)} bytes is not a multiple of {_TDATA_ELEMENT.size}"
            )
        self.elements = []
        for off in range(0, len(content), _TDATA_ELEMENT.size):
            v = _TDATA_ELEMENT.unpack_from(content, off)
            self.elements.append((_cstr(v[0]), _matrix_from12(v[3:15]), v[1]))


class StartTrackingDataMessage(_Checked):
    """STT_TDATA: start a TDATA stream, at most one frame per ``resolution_ms``."""

    def __init__(
        self,
        resolution_ms: int = 0,
        coordinate_name: str = "",
        timestamp: float | None = None,
        device_name: str | None = None,
    ) -> None:
        super().__init__(timestamp=timestamp, device_name=device_name)
        self._message_type = "STT_TDATA"
        self.resolution_ms = int(resolution_ms)
        self.coordinate_name = coordinate_name
        self._valid_message = True

    def content_asstring(self) -> str:
        return f"Resolution: {self.resolution_ms} ms, coordinate name: {self.coordinate_name!r}"

    def _pack_content(self) -> bytes:
        return _STT_TDATA.pack(
            self.resolution_ms, _fixed(self.coordinate_name, 32, "coordinate name")
        )

    def _unpack_content(self, content: bytes) -> None:
        if len(content) < 4:
            raise StreamingError(f"STT_TDATA body of {len(content)} bytes; expected 36")
        self.resolution_ms = struct.unpack_from(">i", content)[0]
        self.coordinate_name = _cstr(content[4:36])


class RtsMessage(_Checked):
    """RTS_<TYPE>: the answer to STT_/STP_ (status 0 success, 1 error)."""

    def __init__(
        self,
        message_type: str = "RTS_TDATA",
        status: int = 0,
        timestamp: float | None = None,
        device_name: str | None = None,
    ) -> None:
        super().__init__(timestamp=timestamp, device_name=device_name)
        self._message_type = message_type
        self.status = int(status)
        self._valid_message = True

    def content_asstring(self) -> str:
        return f"Status: {self.status}"

    def _pack_content(self) -> bytes:
        return _RTS.pack(self.status)

    def _unpack_content(self, content: bytes) -> None:
        if len(content) < 1:
            raise StreamingError(f"{self._message_type} body is empty; expected 1 byte")
        self.status = _RTS.unpack_from(content)[0]


class QueryMessage(_Checked):
    """A header-only message: ``GET_TRANS``, ``GET_POINT``, ``GET_TRAJ``, ``GET_STATUS``,
    ``GET_STRING``, ``STP_TDATA``, ... (any body is ignored on decoding)."""

    def __init__(
        self, message_type: str = "GET_STATUS", timestamp: float | None = None, device_name: str | None = None
    ) -> None:
        super().__init__(timestamp=timestamp, device_name=device_name)
        self._message_type = message_type
        self._valid_message = True


# --- decoding ----------------------------------------------------------------------


@dataclass(frozen=True)
class Header:
    """The fields of the 58-byte OpenIGTLink header."""

    version: int
    message_type: str
    device_name: str
    timestamp_s: float
    body_size: int
    crc: int


def _printable(raw: bytes, field: str) -> str:
    text = raw.split(b"\0", 1)[0]
    if any(b < 0x20 or b > 0x7E for b in text):
        raise StreamingError(f"header {field} holds non-printable bytes: {raw!r}")
    return text.decode("ascii")


def parse_header(raw: bytes, max_body_bytes: int | None = None) -> Header:
    """Parse and validate a 58-byte header.

    Raises :class:`StreamingError` for a wrong length, a header version other than
    1..3, a non-printable type or device name, or a body larger than ``max_body_bytes``.
    """
    if len(raw) != HEADER_SIZE:
        raise StreamingError(f"expected a {HEADER_SIZE}-byte header, got {len(raw)} bytes")
    version, mtype, name, sec, frac, body_size, crc = _HEADER.unpack(raw)
    if version not in (1, 2, 3):
        raise StreamingError(f"expected header version 1, 2 or 3, got {version}")
    message_type = _printable(mtype, "type")
    if not message_type:
        raise StreamingError("header type is empty")
    device_name = _printable(name, "device name")
    if max_body_bytes is not None and body_size > max_body_bytes:
        raise StreamingError(
            f"{message_type} header announces a {body_size}-byte body; the limit is {max_body_bytes}"
        )
    from pyigtl.messages import _igtl_frac_to_nanosec

    timestamp_s = sec + _igtl_frac_to_nanosec(frac) * 1e-9
    return Header(version, message_type, device_name, timestamp_s, body_size, crc)


def content_of(header: Header, body: bytes) -> bytes:
    """The message content of ``body``: without the v2 extended header and metadata."""
    if header.version < 2:
        return body
    if len(body) < _EXT_HEADER.size:
        raise StreamingError(f"version-{header.version} body too short for its extended header")
    ext_size, meta_head, meta_body, _msg_id = _EXT_HEADER.unpack_from(body)
    end = len(body) - meta_head - meta_body
    if ext_size < _EXT_HEADER.size or end < ext_size:
        raise StreamingError("extended header sizes do not fit the body")
    return body[ext_size:end]


_CLASSES: dict[str, type[MessageBase]] = {
    "TRANSFORM": TransformMessage,
    "STRING": StringMessage,
    "POINT": PointMessage,
    "STATUS": StatusMessage,
    "TRAJ": TrajectoryMessage,
    "TDATA": TrackingDataMessage,
    "STT_TDATA": StartTrackingDataMessage,
}


def decode(header: Header, body: bytes) -> Any:
    """Check the CRC and decode a message; unknown types become a :class:`QueryMessage`
    (header fields only). Raises :class:`StreamingError` on a CRC mismatch or a body
    that does not fit its type."""
    if len(body) != header.body_size:
        raise StreamingError(f"expected a {header.body_size}-byte body, got {len(body)} bytes")
    crc = CRC64(body)
    if crc != header.crc:
        raise StreamingError(
            f"CRC mismatch on {header.message_type} {header.device_name!r}: "
            f"header says {header.crc:#018x}, body gives {crc:#018x}"
        )
    mtype = header.message_type
    message: MessageBase
    if mtype in _CLASSES:
        message = _CLASSES[mtype]()
    elif mtype.startswith("RTS_"):
        message = RtsMessage(mtype)
    else:
        message = QueryMessage(mtype)
    fields = {
        "header_version": header.version,
        "message_type": mtype,
        "device_name": header.device_name,
        "timestamp": header.timestamp_s,
        "body_size": header.body_size,
    }
    try:
        message.unpack(fields, body)
    except StreamingError:
        raise
    except (struct.error, ValueError, UnicodeDecodeError, TypeError) as exc:
        raise StreamingError(f"cannot decode {mtype} {header.device_name!r}: {exc}") from exc
    return message
