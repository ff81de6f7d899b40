"""Transforms with named frames: rigid (4x4, LPS mm), composite and displacement-field.

Naming: a transform is named for what it does to **points**, read right to left.
``T_ct_from_mri`` maps a point given in MRI coordinates to the same anatomical point
in CT coordinates, and composition reads naturally::

    T_device_from_mri = T_device_from_ct @ T_ct_from_mri

Resampling direction: ITK, SimpleITK and elastix *resample* a moving image onto a
fixed (reference) grid with the transform that maps **fixed points to moving points**.
To warp the MRI onto the CT grid you therefore need ``T_mri_from_ct``; to move a
planned target from the MRI into the CT you need ``T_ct_from_mri``. Keep both;
:func:`resample` takes the first, :meth:`Transform.apply` uses the second.

ITK transform files (``.h5``, ``.tfm``) do not record frames. :func:`write_transform`
writes a JSON sidecar (``<file>.json``) that does; :func:`read_transform` checks it.
In 3D Slicer a loaded ITK transform file is taken as a *resampling* transform, so
``T_mri_from_ct.h5`` applied to the MRI node in Slicer moves it onto the CT.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from numpy.typing import ArrayLike, NDArray

from navsvc.errors import InputError, TransformError

_ORTHO_TOL = 1e-6


def _points(points: ArrayLike) -> tuple[NDArray[np.float64], bool]:
    arr = np.asarray(points, dtype=np.float64)
    single = arr.shape == (3,)
    if single:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise InputError(f"expected points of shape (3,) or (N, 3), got {np.shape(points)}")
    return arr, single


def _check_frames(outer_from: str, inner_to: str) -> None:
    if outer_from != inner_to:
        raise TransformError(
            f"cannot compose: left transform maps from frame {outer_from!r}, "
            f"right transform maps to frame {inner_to!r}; expected them to be the same"
        )


def rotation_matrix_from_euler_deg(angles_deg: ArrayLike) -> NDArray[np.float64]:
    """3x3 rotation ``Rz @ Ry @ Rx`` for angles (rx, ry, rz) in degrees about the LPS axes."""
    rx, ry, rz = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
    cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
    r_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    r_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    r_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return r_z @ r_y @ r_x


def rotation_matrix_from_axis_angle(axis: ArrayLike, angle_deg: float) -> NDArray[np.float64]:
    """3x3 rotation by ``angle_deg`` about the unit vector ``axis`` (right-hand rule)."""
    a = np.asarray(axis, dtype=np.float64)
    norm = np.linalg.norm(a)
    if norm == 0:
        raise InputError("rotation axis must not be the zero vector")
    a = a / norm
    theta = np.deg2rad(angle_deg)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(theta) * k + (1 - np.cos(theta)) * (k @ k)


@dataclass(frozen=True)
class RigidTransform:
    """An immutable rigid transform ``T_{to}_from_{from}`` acting on LPS-mm points.

    ``matrix`` is the 4x4 homogeneous matrix M with ``q = M[:3,:3] @ p + M[:3,3]`` for a
    point p in ``from_frame`` and its image q in ``to_frame``. The rotation part must be
    orthonormal with determinant +1.
    """

    matrix: NDArray[np.float64]
    to_frame: str
    from_frame: str

    def __post_init__(self) -> None:
        m = np.array(self.matrix, dtype=np.float64, copy=True)
        if m.shape != (4, 4):
            raise TransformError(f"expected a 4x4 matrix, got shape {m.shape}")
        if not np.all(np.isfinite(m)):
            raise TransformError("transform matrix holds NaN or infinite values")
        if not np.allclose(m[3], [0, 0, 0, 1], atol=1e-12):
            raise TransformError(f"expected last row [0, 0, 0, 1], got {m[3].tolist()}")
        r = m[:3, :3]
        err = float(np.abs(r.T @ r - np.eye(3)).max())
        if err > _ORTHO_TOL or np.linalg.det(r) < 0:
            raise TransformError(
                f"expected a rigid rotation (orthonormal, det +1), got deviation {err:.2e} "
                f"and determinant {np.linalg.det(r):.6f}"
            )
        m.setflags(write=False)
        object.__setattr__(self, "matrix", m)
        for name in (self.to_frame, self.from_frame):
            if not isinstance(name, str) or not name:
                raise TransformError(f"frame names must be non-empty strings, got {name!r}")

    # -- construction -------------------------------------------------------
    @classmethod
    def identity(cls, to_frame: str, from_frame: str) -> RigidTransform:
        return cls(np.eye(4), to_frame, from_frame)

    @classmethod
    def from_rotation_translation(
        cls,
        rotation: ArrayLike,
        translation_mm: ArrayLike,
        to_frame: str,
        from_frame: str,
        center_mm: ArrayLike = (0.0, 0.0, 0.0),
    ) -> RigidTransform:
        """``q = R @ (p - c) + c + t``: rotate about ``center_mm`` then translate."""
        r = np.asarray(rotation, dtype=np.float64)
        c = np.asarray(center_mm, dtype=np.float64)
        t = np.asarray(translation_mm, dtype=np.float64)
        m = np.eye(4)
        m[:3, :3] = r
        m[:3, 3] = c + t - r @ c
        return cls(m, to_frame, from_frame)

    @classmethod
    def from_euler_deg(
        cls,
        angles_deg: ArrayLike,
        translation_mm: ArrayLike,
        to_frame: str,
        from_frame: str,
        center_mm: ArrayLike = (0.0, 0.0, 0.0),
    ) -> RigidTransform:
        """Rotation ``Rz @ Ry @ Rx`` (degrees, about ``center_mm``) then translation (mm)."""
        return cls.from_rotation_translation(
            rotation_matrix_from_euler_deg(angles_deg), translation_mm, to_frame, from_frame, center_mm
        )

    # -- properties ---------------------------------------------------------
    @property
    def rotation(self) -> NDArray[np.float64]:
        return self.matrix[:3, :3]

    @property
    def translation_mm(self) -> NDArray[np.float64]:
        return self.matrix[:3, 3]

    @property
    def rotation_angle_deg(self) -> float:
        """Angle of the rotation part, in degrees (0..180)."""
        cos = (np.trace(self.rotation) - 1.0) / 2.0
        return float(np.rad2deg(np.arccos(np.clip(cos, -1.0, 1.0))))

    @property
    def name(self) -> str:
        return f"T_{self.to_frame}_from_{self.from_frame}"

    # -- algebra ------------------------------------------------------------
    def apply(self, points: ArrayLike) -> NDArray[np.float64]:
        """Map points (3,) or (N, 3) from ``from_frame`` to ``to_frame``."""
        p, single = _points(points)
        q = p @ self.rotation.T + self.translation_mm
        return q[0] if single else q

    def apply_to_vectors(self, vectors: ArrayLike) -> NDArray[np.float64]:
        """Rotate direction vectors (no translation)."""
        v, single = _points(vectors)
        w = v @ self.rotation.T
        return w[0] if single else w

    def inverse(self) -> RigidTransform:
        m = np.eye(4)
        m[:3, :3] = self.rotation.T
        m[:3, 3] = -self.rotation.T @ self.translation_mm
        return RigidTransform(m, self.from_frame, self.to_frame)

    def __matmul__(self, other: RigidTransform | Transform) -> Any:
        if isinstance(other, RigidTransform):
            _check_frames(self.from_frame, other.to_frame)
            return RigidTransform(self.matrix @ other.matrix, self.to_frame, other.from_frame)
        if isinstance(other, Transform):
            return self.as_transform() @ other
        return NotImplemented

    # -- SimpleITK ----------------------------------------------------------
    def to_sitk(self) -> sitk.Transform:
        """A SimpleITK ``Euler3DTransform`` that maps points exactly as ``apply`` does."""
        tx = sitk.Euler3DTransform()
        tx.SetMatrix(self.rotation.flatten().tolist(), 1e-5)
        tx.SetTranslation(self.translation_mm.tolist())
        return tx

    def as_transform(self) -> Transform:
        return Transform(self.to_sitk(), self.to_frame, self.from_frame)

    @classmethod
    def from_sitk(cls, tx: sitk.Transform, to_frame: str, from_frame: str) -> RigidTransform:
        """From any SimpleITK linear transform whose matrix is a rotation."""
        linear: Any = _downcast(tx)
        if not hasattr(linear, "GetMatrix"):
            raise TransformError(f"expected a linear (matrix) transform, got {linear.GetName()}")
        a = np.array(linear.GetMatrix(), dtype=np.float64).reshape(3, 3)
        t = np.array(linear.GetTranslation(), dtype=np.float64)
        c = np.array(linear.GetCenter(), dtype=np.float64) if hasattr(linear, "GetCenter") else np.zeros(3)
        m = np.eye(4)
        m[:3, :3] = a
        m[:3, 3] = t + c - a @ c
        return cls(m, to_frame, from_frame)

    def __repr__(self) -> str:
        return (
            f"{self.name}(angle={self.rotation_angle_deg:.3f} deg, "
            f"translation_mm={np.round(self.translation_mm, 3).tolist()})"
        )


def _downcast(tx: sitk.Transform) -> sitk.Transform:
    downcast = getattr(tx, "Downcast", None)
    return downcast() if callable(downcast) else tx


@dataclass(frozen=True)
class Transform:
    """Any point mapping ``T_{to}_from_{from}`` backed by a SimpleITK transform.

    Used for composites that include a displacement field. ``sitk_transform`` maps points
    in ``from_frame`` (LPS mm) to ``to_frame`` (LPS mm). A displacement field's vectors are
    in mm, defined on a grid in ``from_frame``: ``q = p + u(p)``.
    """

    sitk_transform: sitk.Transform
    to_frame: str
    from_frame: str
    #: The numerically exact inverse where one is known (e.g. a field integrated from -v).
    _inverse: sitk.Transform | None = field(default=None, repr=False, compare=False)

    @property
    def name(self) -> str:
        return f"T_{self.to_frame}_from_{self.from_frame}"

    def apply(self, points: ArrayLike) -> NDArray[np.float64]:
        """Map points (3,) or (N, 3) from ``from_frame`` to ``to_frame``."""
        p, single = _points(points)
        tx = self.sitk_transform
        q = np.array([tx.TransformPoint(tuple(map(float, row))) for row in p], dtype=np.float64)
        return q[0] if single else q

    def __matmul__(self, other: RigidTransform | Transform) -> Transform:
        if isinstance(other, RigidTransform):
            other = other.as_transform()
        if not isinstance(other, Transform):
            return NotImplemented
        _check_frames(self.from_frame, other.to_frame)
        # ITK composite transforms apply the *last* listed transform first.
        composite = sitk.CompositeTransform([self.sitk_transform, other.sitk_transform])
        inv = None
        if self._inverse is not None and other._inverse is not None:
            inv = sitk.CompositeTransform([other._inverse, self._inverse])
        return Transform(composite, self.to_frame, other.from_frame, inv)

    def inverse(self) -> Transform:
        """The inverse mapping. Exact for linear parts and for fields given with their inverse;
        otherwise a displacement field is inverted numerically (fixed-point iteration)."""
        if self._inverse is not None:
            return Transform(self._inverse, self.from_frame, self.to_frame, self.sitk_transform)
        inv = _invert_sitk(self.sitk_transform)
        return Transform(inv, self.from_frame, self.to_frame, self.sitk_transform)

    def with_inverse(self, inverse: Transform) -> Transform:
        """Attach a known inverse (frames must be swapped)."""
        if inverse.to_frame != self.from_frame or inverse.from_frame != self.to_frame:
            raise TransformError(
                f"expected an inverse mapping {self.to_frame!r} -> {self.from_frame!r}, got "
                f"{inverse.from_frame!r} -> {inverse.to_frame!r}"
            )
        return Transform(self.sitk_transform, self.to_frame, self.from_frame, inverse.sitk_transform)


def _flatten(tx: sitk.Transform) -> list[sitk.Transform]:
    tx = _downcast(tx)
    if isinstance(tx, sitk.CompositeTransform):
        out: list[sitk.Transform] = []
        for i in range(tx.GetNumberOfTransforms()):
            out.extend(_flatten(tx.GetNthTransform(i)))
        return out
    return [tx]


def _invert_sitk(tx: sitk.Transform) -> sitk.Transform:
    parts = _flatten(tx)
    inverted: list[sitk.Transform] = []
    for part in reversed(parts):
        if isinstance(part, sitk.DisplacementFieldTransform):
            field_img = part.GetDisplacementField()
            inv_field = sitk.InvertDisplacementField(
                field_img,
                maximumNumberOfIterations=50,
                maxErrorToleranceThreshold=0.001,
                meanErrorToleranceThreshold=0.0001,
                enforceBoundaryCondition=True,
            )
            inverted.append(sitk.DisplacementFieldTransform(sitk.Cast(inv_field, sitk.sitkVectorFloat64)))
        else:
            inv = part.GetInverse()
            inverted.append(inv)
    return inverted[0] if len(inverted) == 1 else sitk.CompositeTransform(inverted)


def displacement_field_transform(
    field_mm: ArrayLike,
    reference: sitk.Image,
    to_frame: str,
    from_frame: str,
) -> Transform:
    """A :class:`Transform` ``q = p + u(p)`` from a displacement field in mm.

    ``field_mm`` has shape (Z, Y, X, 3) in numpy order (k, j, i), vector components in
    LPS (x, y, z) mm, sampled on the grid of ``reference`` (which lies in ``from_frame``).
    """
    arr = np.asarray(field_mm, dtype=np.float64)
    size_zyx = reference.GetSize()[::-1]
    if arr.shape != (*size_zyx, 3):
        raise TransformError(f"expected a field of shape {(*size_zyx, 3)}, got {arr.shape}")
    img = sitk.GetImageFromArray(arr, isVector=True)
    img.CopyInformation(reference)
    return Transform(sitk.DisplacementFieldTransform(img), to_frame, from_frame)


AnyTransform = RigidTransform | Transform


# -- files ----------------------------------------------------------------------
_SUFFIXES = (".h5", ".hdf5", ".tfm", ".txt", ".mat")


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    return p.with_name(p.name + ".json")


def write_transform(
    path: str | os.PathLike[str], transform: AnyTransform, metadata: dict[str, Any] | None = None
) -> Path:
    """Write an ITK transform file (readable by SimpleITK and 3D Slicer) and its JSON sidecar.

    The file holds ``transform`` as a point mapping from ``from_frame`` to ``to_frame``.
    Written atomically: a reader never sees a half-written file.
    """
    p = Path(path)
    if p.suffix.lower() not in _SUFFIXES:
        raise InputError(f"expected a transform file ending in one of {_SUFFIXES}, got {p.name!r}")
    sitk_tx = transform.to_sitk() if isinstance(transform, RigidTransform) else transform.sitk_transform
    has_field = any(isinstance(t, sitk.DisplacementFieldTransform) for t in _flatten(sitk_tx))
    if has_field and p.suffix.lower() not in (".h5", ".hdf5"):
        raise InputError(f"a displacement-field transform needs an .h5 file, got {p.name!r}")
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=p.suffix, dir=p.parent)
    os.close(fd)
    try:
        sitk.WriteTransform(sitk_tx, tmp)
        os.replace(tmp, p)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    meta = {
        "name": transform.name,
        "to_frame": transform.to_frame,
        "from_frame": transform.from_frame,
        "maps": "points from from_frame to to_frame",
        "coordinate_system": "LPS",
        "units": "mm",
        "kind": "rigid" if isinstance(transform, RigidTransform) else "composite",
    }
    if isinstance(transform, RigidTransform):
        meta["matrix"] = transform.matrix.tolist()
    meta.update(metadata or {})
    write_json_atomic(sidecar_path(p), meta)
    return p


def read_transform(
    path: str | os.PathLike[str], to_frame: str | None = None, from_frame: str | None = None
) -> AnyTransform:
    """Read an ITK transform file. Frames come from the sidecar or the arguments (and must agree).

    Returns a :class:`RigidTransform` when the file holds one rigid linear transform,
    otherwise a :class:`Transform`.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"transform file not found: {p}")
    side = sidecar_path(p)
    meta: dict[str, Any] = {}
    if side.is_file():
        try:
            meta = json.loads(side.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise TransformError(f"cannot read transform sidecar {side}: {exc}") from exc
    for arg, key in ((to_frame, "to_frame"), (from_frame, "from_frame")):
        if arg is not None and key in meta and meta[key] != arg:
            raise TransformError(f"{p.name}: expected {key} {arg!r}, the file says {meta[key]!r}")
    to_f = to_frame or meta.get("to_frame")
    from_f = from_frame or meta.get("from_frame")
    if not to_f or not from_f:
        raise TransformError(
            f"{p.name} does not record its frames (no sidecar {side.name}); "
            "pass to_frame and from_frame explicitly"
        )
    try:
        tx = sitk.ReadTransform(str(p))
    except RuntimeError as exc:
        raise TransformError(f"cannot read transform file {p}: {str(exc).strip().splitlines()[-1]}") from exc
    parts = _flatten(tx)
    if len(parts) == 1 and hasattr(parts[0], "GetMatrix"):
        try:
            return RigidTransform.from_sitk(parts[0], to_f, from_f)
        except TransformError:
            pass
    composite = parts[0] if len(parts) == 1 else sitk.CompositeTransform(parts)
    return Transform(composite, to_f, from_f)


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> Path:
    """Write JSON to ``path`` via a temporary file and rename (no half-written file is visible)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=p.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2, default=_json_default)
            fh.write("\n")
        os.replace(tmp, p)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return p


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def target_registration_errors_mm(
    T_estimated: AnyTransform, T_true: AnyTransform, points: ArrayLike
) -> NDArray[np.float64]:
    """Per-point distance (mm) between the estimated and the true mapping of ``points``."""
    if (T_estimated.to_frame, T_estimated.from_frame) != (T_true.to_frame, T_true.from_frame):
        raise TransformError(
            f"cannot compare {T_estimated.name} with {T_true.name}: expected the same frames"
        )
    p, _ = _points(points)
    return np.linalg.norm(T_estimated.apply(p) - T_true.apply(p), axis=1)


def compose(*transforms: AnyTransform) -> AnyTransform:
    """``compose(A, B, C) == A @ B @ C`` (C applied first)."""
    if not transforms:
        raise TransformError("compose needs at least one transform")
    out: Any = transforms[0]
    for t in transforms[1:]:
        out = out @ t
    return out


def resample(
    moving: sitk.Image,
    reference: sitk.Image,
    T_moving_from_reference: AnyTransform | None = None,
    *,
    interpolator: str = "linear",
    default_value: float = 0.0,
) -> sitk.Image:
    """Resample ``moving`` onto the grid of ``reference``.

    ``T_moving_from_reference`` maps points of the reference (fixed) frame to the moving
    frame -- the ITK resampling convention. To warp the MRI onto the CT, pass
    ``T_mri_from_ct``; ``None`` means both images share one frame.
    ``interpolator``: ``linear``, ``nearest`` (for labels), ``bspline`` or ``label``
    (label-Gaussian, smooth label boundaries).
    """
    interp = {
        "linear": sitk.sitkLinear,
        "nearest": sitk.sitkNearestNeighbor,
        "bspline": sitk.sitkBSpline,
        "label": sitk.sitkLabelGaussian,
    }.get(interpolator)
    if interp is None:
        raise InputError(f"expected interpolator linear|nearest|bspline|label, got {interpolator!r}")
    if T_moving_from_reference is None:
        tx: sitk.Transform = sitk.Transform(3, sitk.sitkIdentity)
    elif isinstance(T_moving_from_reference, RigidTransform):
        tx = T_moving_from_reference.to_sitk()
    else:
        tx = T_moving_from_reference.sitk_transform
    return sitk.Resample(moving, reference, tx, interp, default_value, moving.GetPixelID())

