"""Named coordinate frames and the one place where LPS and RAS meet.

Inside navsvc every point is in **LPS millimetres** (the ITK / DICOM patient frame:
+x towards the patient's Left, +y Posterior, +z Superior). RAS (+x Right, +y Anterior,
+z Superior, what 3D Slicer shows) appears only at the edges that ask for it, and is
converted here and nowhere else.

Frames:

* ``mri``    -- the preoperative MRI's patient frame (LPS mm)
* ``ct``     -- the intraoperative CT image frame (LPS mm)
* ``world``  -- the fluoroscopy / C-arm world frame (mm)
* ``carm``   -- one C-arm view's source frame (mm)
* ``device`` -- the robot base or tracker reference frame (mm)
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from navsvc.errors import InputError

MRI = "mri"
CT = "ct"
WORLD = "world"
CARM = "carm"
DEVICE = "device"
KNOWN_FRAMES = frozenset({MRI, CT, WORLD, CARM, DEVICE})

#: Diagonal flip that converts LPS coordinates to RAS and back (it is its own inverse).
RAS_FROM_LPS_3x3: NDArray[np.float64] = np.diag([-1.0, -1.0, 1.0])
RAS_FROM_LPS_4x4: NDArray[np.float64] = np.diag([-1.0, -1.0, 1.0, 1.0])

#: OpenIGTLink's device-name field holds 20 bytes.
IGTL_DEVICE_NAME_BYTES = 20


def _as_points(points: ArrayLike) -> NDArray[np.float64]:
    arr = np.asarray(points, dtype=np.float64)
    if arr.shape == (3,):
        return arr
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise InputError(f"expected points of shape (3,) or (N, 3), got {arr.shape}")
    return arr


def ras_from_lps_points(points_lps: ArrayLike) -> NDArray[np.float64]:
    """Convert points (3,) or (N, 3) from LPS mm to RAS mm."""
    return _as_points(points_lps) * np.array([-1.0, -1.0, 1.0])


def lps_from_ras_points(points_ras: ArrayLike) -> NDArray[np.float64]:
    """Convert points (3,) or (N, 3) from RAS mm to LPS mm."""
    return _as_points(points_ras) * np.array([-1.0, -1.0, 1.0])


def ras_from_lps_matrix(matrix_lps: ArrayLike) -> NDArray[np.float64]:
    """Express a 4x4 point-mapping matrix that acts on LPS points as one acting on RAS points.

    If ``M_lps`` maps LPS point p to q, the result maps RAS(p) to RAS(q):
    ``F @ M_lps @ F`` with ``F = diag(-1, -1, 1, 1)``.
    """
    m = np.asarray(matrix_lps, dtype=np.float64)
    if m.shape != (4, 4):
        raise InputError(f"expected a 4x4 matrix, got {m.shape}")
    return RAS_FROM_LPS_4x4 @ m @ RAS_FROM_LPS_4x4


def lps_from_ras_matrix(matrix_ras: ArrayLike) -> NDArray[np.float64]:
    """Inverse of :func:`ras_from_lps_matrix` (the same conjugation)."""
    return ras_from_lps_matrix(matrix_ras)


def frame_label(frame: str) -> str:
    """``'mri'`` -> ``'Mri'``; ``'drill1'`` -> ``'Drill1'`` (for device names)."""
    if not frame or not frame.replace("_", "").isalnum():
        raise InputError(f"expected a frame name of letters and digits, got {frame!r}")
    return "".join(part[:1].upper() + part[1:] for part in frame.split("_"))


def igtl_device_name(from_frame: str, to_frame: str) -> str:
    """The OpenIGTLink / Slicer device name of a transform: ``<From>To<To>``.

    ``igtl_device_name('mri', 'ct') == 'MriToCt'``; it is the name of ``T_ct_from_mri``.
    Raises :class:`InputError` if the name does not fit the protocol's 20-byte field.
    """
    name = f"{frame_label(from_frame)}To{frame_label(to_frame)}"
    check_igtl_device_name(name)
    return name


def check_igtl_device_name(name: str) -> str:
    """Refuse a device name that is empty, not ASCII, or longer than 20 bytes."""
    try:
        encoded = name.encode("ascii")
    except UnicodeEncodeError as exc:
        raise InputError(f"OpenIGTLink device name must be ASCII, got {name!r}") from exc
    if not encoded:
        raise InputError("OpenIGTLink device name must not be empty")
    if len(encoded) > IGTL_DEVICE_NAME_BYTES:
        raise InputError(
            f"OpenIGTLink device name {name!r} is {len(encoded)} bytes; the protocol allows "
            f"{IGTL_DEVICE_NAME_BYTES}. Choose a shorter name."
        )
    return name
