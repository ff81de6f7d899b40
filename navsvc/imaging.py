"""Imaging I/O and geometry checks.

The volume type that crosses module boundaries is ``SimpleITK.Image``: voxels plus
the full index-to-LPS geometry (origin, spacing in mm, direction cosines). Its numpy
view (``sitk.GetArrayViewFromImage``) is in (k, j, i) = (z, y, x) order, while
SimpleITK's own sizes, spacings and indices are in (i, j, k) order. The matrix
:func:`lps_from_index_matrix` maps a continuous index (i, j, k) to LPS mm.

Reading never changes geometry (no re-centring, no reorientation on load).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from numpy.typing import ArrayLike, NDArray

from navsvc.errors import InputError, InvalidImageError, InvalidLabelsError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")
_DIRECTION_TOL = 1e-4


# -- labels -----------------------------------------------------------------------
@dataclass(frozen=True)
class LabelSpec:
    """Meaning of the integer labels in a segmentation. Necrosis voxels are part of the femur."""

    femur: int = 1
    necrosis: int = 2
    pelvis: int = 3

    @classmethod
    def parse(cls, text: str) -> LabelSpec:
        """Parse ``"femur=1,necrosis=2,pelvis=3"`` (any subset; the rest keep defaults)."""
        values: dict[str, int] = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            key, sep, val = item.partition("=")
            key = key.strip()
            if not sep or key not in ("femur", "necrosis", "pelvis"):
                raise InputError(
                    f"expected labels like 'femur=1,necrosis=2,pelvis=3', got {item!r}"
                )
            try:
                values[key] = int(val)
            except ValueError as exc:
                raise InputError(f"label {key!r} must be an integer, got {val!r}") from exc
            if values[key] <= 0:
                raise InputError(f"label {key!r} must be > 0 (0 is background), got {values[key]}")
        spec = cls(**values)
        if len({spec.femur, spec.necrosis, spec.pelvis}) != 3:
            raise InputError(f"labels must be distinct, got {spec}")
        return spec

    def as_dict(self) -> dict[str, int]:
        return {"femur": self.femur, "necrosis": self.necrosis, "pelvis": self.pelvis}

    def __str__(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.as_dict().items())


# -- geometry -----------------------------------------------------------------------
def lps_from_index_matrix(image: sitk.Image) -> NDArray[np.float64]:
    """4x4 matrix mapping a continuous index (i, j, k, 1) to LPS mm (x, y, z, 1)."""
    d = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    s = np.array(image.GetSpacing(), dtype=np.float64)
    m = np.eye(4)
    m[:3, :3] = d * s[None, :]
    m[:3, 3] = image.GetOrigin()
    return m


def lps_from_index(image: sitk.Image, index_ijk: ArrayLike) -> NDArray[np.float64]:
    """Map continuous indices (N, 3) in (i, j, k) order to LPS mm points (N, 3)."""
    m = lps_from_index_matrix(image)
    idx = np.atleast_2d(np.asarray(index_ijk, dtype=np.float64))
    out = idx @ m[:3, :3].T + m[:3, 3]
    return out[0] if np.ndim(index_ijk) == 1 else out


def index_from_lps(image: sitk.Image, points_lps: ArrayLike) -> NDArray[np.float64]:
    """Map LPS mm points (N, 3) to continuous indices (N, 3) in (i, j, k) order."""
    m = np.linalg.inv(lps_from_index_matrix(image))
    pts = np.atleast_2d(np.asarray(points_lps, dtype=np.float64))
    out = pts @ m[:3, :3].T + m[:3, 3]
    return out[0] if np.ndim(points_lps) == 1 else out


def voxel_centers_lps(image: sitk.Image, mask_zyx: NDArray[np.bool_] | None = None) -> NDArray[np.float64]:
    """LPS mm centres (N, 3) of the voxels selected by a (z, y, x) boolean mask (all if None)."""
    if mask_zyx is None:
        mask_zyx = np.ones(image.GetSize()[::-1], dtype=bool)
    kji = np.argwhere(mask_zyx)
    return lps_from_index(image, kji[:, ::-1].astype(np.float64)).reshape(-1, 3)


def corners_lps(image: sitk.Image) -> NDArray[np.float64]:
    """The 8 outer corners (voxel edges, not centres) of the image's box, LPS mm (8, 3)."""
    size = np.array(image.GetSize(), dtype=np.float64)
    lo, hi = -0.5, size - 0.5
    corners = np.array(
        [[x, y, z] for x in (lo, hi[0]) for y in (lo, hi[1]) for z in (lo, hi[2])], dtype=np.float64
    )
    return lps_from_index(image, corners)


def contains_points(image: sitk.Image, points_lps: ArrayLike, margin_mm: float = 0.0) -> NDArray[np.bool_]:
    """True where a point lies inside the image's field of view, at least ``margin_mm`` from its edge."""
    idx = index_from_lps(image, np.atleast_2d(points_lps))
    spacing = np.array(image.GetSpacing())
    size = np.array(image.GetSize())
    lo = -0.5 + margin_mm / spacing
    hi = size - 0.5 - margin_mm / spacing
    return np.all((idx >= lo) & (idx <= hi), axis=1)


def make_image(
    array_zyx: ArrayLike,
    spacing_mm: Iterable[float],
    origin_lps: Iterable[float] = (0.0, 0.0, 0.0),
    direction: Iterable[float] | None = None,
) -> sitk.Image:
    """Build an image from a (z, y, x) array and its geometry ((i, j, k)-ordered spacing)."""
    img = sitk.GetImageFromArray(np.asarray(array_zyx))
    img.SetSpacing(tuple(float(s) for s in spacing_mm))
    img.SetOrigin(tuple(float(o) for o in origin_lps))
    if direction is not None:
        img.SetDirection(tuple(float(d) for d in np.asarray(direction, dtype=np.float64).ravel()))
    return img


def describe(image: sitk.Image) -> str:
    """One line: size, spacing, origin, orientation, type."""
    d = np.array(image.GetDirection()).reshape(3, 3)
    orient = sitk.DICOMOrientImageFilter_GetOrientationFromDirectionCosines(d.ravel().tolist())
    return (
        f"{'x'.join(map(str, image.GetSize()))} voxels, spacing "
        f"{'x'.join(f'{s:.3g}' for s in image.GetSpacing())} mm, origin "
        f"({', '.join(f'{o:.1f}' for o in image.GetOrigin())}) LPS mm, {orient}, "
        f"{image.GetPixelIDTypeAsString()}"
    )


def check_geometry(image: sitk.Image, name: str = "image") -> sitk.Image:
    """Refuse an image that is not 3-D, has spacing <= 0, a non-orthonormal direction,
    non-finite voxels or geometry, or is empty. Returns the image unchanged."""
    if image.GetDimension() != 3:
        raise InvalidImageError(f"{name}: expected a 3-D image, got {image.GetDimension()}-D")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InvalidImageError(
            f"{name}: expected a scalar image, got {image.GetNumberOfComponentsPerPixel()} components per voxel"
        )
    size = image.GetSize()
    if min(size) < 1 or int(np.prod(size)) == 0:
        raise InvalidImageError(f"{name}: the image is empty (size {size})")
    spacing = np.array(image.GetSpacing())
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise InvalidImageError(f"{name}: expected voxel spacing > 0 mm, got {spacing.tolist()}")
    origin = np.array(image.GetOrigin())
    if not np.all(np.isfinite(origin)):
        raise InvalidImageError(f"{name}: origin is not finite: {origin.tolist()}")
    d = np.array(image.GetDirection()).reshape(3, 3)
    dev = float(np.abs(d.T @ d - np.eye(3)).max()) if np.all(np.isfinite(d)) else np.inf
    if dev > _DIRECTION_TOL:
        raise InvalidImageError(
            f"{name}: expected orthonormal direction cosines, got deviation {dev:.2e} "
            f"(direction {np.round(d, 4).tolist()}); the file's orientation is corrupt or sheared"
        )
    arr = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(arr.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        if bad:
            raise InvalidImageError(f"{name}: {bad} voxels are NaN or infinite; expected finite values")
    lo, hi = arr.min(), arr.max()
    if lo == hi:
        raise InvalidImageError(f"{name}: the image is blank (every voxel is {lo}); expected image content")
    return image


def _exists_readable(path: Path, name: str) -> None:
    if not path.exists():
        raise InvalidImageError(f"{name}: file not found: {path}")
    if not os.access(path, os.R_OK):
        raise InvalidImageError(f"{name}: file is not readable (permissions): {path}")


def read_image(path: str | os.PathLike[str], name: str | None = None, *, check: bool = True) -> sitk.Image:
    """Read a 3-D image: NIfTI, NRRD, MHA/MHD, a single DICOM file, or a DICOM series folder.

    Raises :class:`InvalidImageError` naming the file when it is missing, unreadable,
    or (with ``check``) fails :func:`check_geometry`.
    """
    p = Path(path)
    label = name or p.name
    _exists_readable(p, label)
    try:
        if p.is_dir():
            reader = sitk.ImageSeriesReader()
            series = reader.GetGDCMSeriesIDs(str(p))
            if not series:
                raise InvalidImageError(f"{label}: folder {p} holds no DICOM series")
            if len(series) > 1:
                raise InvalidImageError(
                    f"{label}: folder {p} holds {len(series)} DICOM series; expected one "
                    "(put each series in its own folder)"
                )
            files = reader.GetGDCMSeriesFileNames(str(p), series[0])
            reader.SetFileNames(files)
            image = reader.Execute()
        else:
            image = sitk.ReadImage(str(p))
    except RuntimeError as exc:
        msg = str(exc).strip().splitlines()
        detail = next((m for m in reversed(msg) if m.strip()), "unknown reader error")
        raise InvalidImageError(
            f"{label}: cannot read {p} as an image (expected NIfTI, NRRD, MHA or DICOM): {detail}"
        ) from exc
    if image.GetDimension() == 2 and p.is_file():
        raise InvalidImageError(f"{label}: expected a 3-D image, got a 2-D image ({p})")
    if check:
        check_geometry(image, label)
    return image


def check_label_map(
    labels: sitk.Image,
    spec: LabelSpec = LabelSpec(),
    required: Iterable[str] = ("femur", "necrosis"),
    name: str = "segmentation",
    min_voxels: Mapping[str, int] | None = None,
) -> dict[str, int]:
    """Check a segmentation and return voxel counts per named label.

    Rules: integer voxel type (a float image whose values are all integers is accepted
    with a warning and should be cast with :func:`as_label_map`); each required label
    present with at least ``min_voxels`` voxels (default 1); necrosis lies inside the femur
    (necrosis voxels are femur by definition, so it must touch femur voxels).
    """
    if labels.GetDimension() != 3:
        raise InvalidLabelsError(f"{name}: expected a 3-D label map, got {labels.GetDimension()}-D")
    arr = sitk.GetArrayViewFromImage(labels)
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise InvalidLabelsError(
                f"{name}: expected an integer label map, got {labels.GetPixelIDTypeAsString()} with "
                "non-integer values (is this an intensity image rather than a segmentation?)"
            )
        log.warning("%s: label map stored as %s; values are integral, treating as labels",
                    name, labels.GetPixelIDTypeAsString())
    values, counts = np.unique(np.asarray(arr).astype(np.int64), return_counts=True)
    present = dict(zip(values.tolist(), counts.tolist(), strict=True))
    if np.any(values < 0):
        raise InvalidLabelsError(f"{name}: negative label values {values[values < 0].tolist()}")
    spec_map = spec.as_dict()
    out: dict[str, int] = {k: int(present.get(v, 0)) for k, v in spec_map.items()}
    minimum = dict(min_voxels or {})
    for key in required:
        if key not in spec_map:
            raise InputError(f"unknown label name {key!r}; expected one of {sorted(spec_map)}")
        need = int(minimum.get(key, 1))
        if out[key] < need:
            found = ", ".join(f"{v}: {c} voxels" for v, c in present.items() if v != 0) or "none"
            raise InvalidLabelsError(
                f"{name}: label {key}={spec_map[key]} has {out[key]} voxels, expected at least {need} "
                f"(labels found: {found}). Check --labels or the segmentation."
            )
    if out["necrosis"] and out["femur"] == 0:
        raise InvalidLabelsError(f"{name}: necrosis is labelled but no femur is; necrosis must lie in the femur")
    return out


def as_label_map(labels: sitk.Image) -> sitk.Image:
    """Cast a label map with integral values to UInt8 or UInt16 (geometry unchanged)."""
    arr = sitk.GetArrayFromImage(labels)
    target = np.uint8 if arr.max() < 256 else np.uint16
    if arr.dtype == target:
        return labels
    out = sitk.GetImageFromArray(np.round(arr).astype(target))
    out.CopyInformation(labels)
    return out


def read_label_map(
    path: str | os.PathLike[str],
    spec: LabelSpec = LabelSpec(),
    required: Iterable[str] = ("femur", "necrosis"),
    name: str | None = None,
) -> sitk.Image:
    """Read and check a segmentation (see :func:`check_label_map`); returns an unsigned integer image."""
    p = Path(path)
    label = name or p.name
    image = read_image(p, label, check=False)
    if image.GetDimension() != 3:
        raise InvalidLabelsError(f"{label}: expected a 3-D label map, got {image.GetDimension()}-D")
    check_label_map(image, spec, required, label)
    return as_label_map(image)


def check_same_grid(a: sitk.Image, b: sitk.Image, name_a: str, name_b: str, tol_mm: float = 1e-3) -> None:
    """Refuse two images that do not share size, spacing, origin and direction."""
    problems = []
    if a.GetSize() != b.GetSize():
        problems.append(f"size {a.GetSize()} vs {b.GetSize()}")
    if not np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tol_mm):
        problems.append(f"spacing {a.GetSpacing()} vs {b.GetSpacing()}")
    if not np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tol_mm):
        problems.append(f"origin {a.GetOrigin()} vs {b.GetOrigin()}")
    if not np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-4):
        problems.append("direction cosines differ")
    if problems:
        raise InvalidImageError(
            f"{name_b} must be on the grid of {name_a}: " + "; ".join(problems)
        )


def write_image(path: str | os.PathLike[str], image: sitk.Image, compress: bool = True) -> Path:
    """Write an image atomically (temporary file + rename). Format from the suffix."""
    p = Path(path)
    if not any(p.name.lower().endswith(s) for s in IMAGE_SUFFIXES):
        raise InputError(f"expected an image file name ending in one of {IMAGE_SUFFIXES}, got {p.name!r}")
    p.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".nii.gz" if p.name.lower().endswith(".nii.gz") else p.suffix
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=p.parent)
    os.close(fd)
    try:
        sitk.WriteImage(image, tmp, compress)
        os.replace(tmp, p)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return p


def reference_grid(
    size: Iterable[int],
    spacing_mm: Iterable[float],
    origin_lps: Iterable[float],
    direction: Iterable[float] | None = None,
    pixel_type: int = sitk.sitkFloat32,
) -> sitk.Image:
    """An empty image defining a sampling grid ((i, j, k)-ordered size and spacing)."""
    img = sitk.Image([int(s) for s in size], pixel_type)
    img.SetSpacing([float(s) for s in spacing_mm])
    img.SetOrigin([float(o) for o in origin_lps])
    if direction is not None:
        img.SetDirection([float(d) for d in np.asarray(direction, dtype=np.float64).ravel()])
    return img


def resample_isotropic(image: sitk.Image, spacing_mm: float, interpolator: int = sitk.sitkLinear) -> sitk.Image:
    """Resample onto a grid with the same extent and direction and isotropic ``spacing_mm``."""
    old_spacing = np.array(image.GetSpacing())
    old_size = np.array(image.GetSize())
    new_size = np.maximum(1, np.round(old_size * old_spacing / spacing_mm)).astype(int)
    # keep the outer box: first voxel centre shifts by half the spacing difference
    d = np.array(image.GetDirection()).reshape(3, 3)
    shift = d @ ((spacing_mm - old_spacing) / 2.0)
    ref = reference_grid(new_size.tolist(), [spacing_mm] * 3, (np.array(image.GetOrigin()) + shift).tolist(),
                         image.GetDirection(), image.GetPixelID())
    return sitk.Resample(image, ref, sitk.Transform(3, sitk.sitkIdentity), interpolator, 0.0, image.GetPixelID())
