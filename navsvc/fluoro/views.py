"""Reading fluoroscopy views: an X-ray image plus its geometry (JSON sidecar or DICOM tags).

Accepted inputs per view:

* an image file (NIfTI / NRRD / MHA / PNG-free formats SimpleITK reads; 2-D, or 3-D with one
  slice) with a JSON geometry beside it (``view.nii.gz`` -> ``view.json``) or given explicitly;
* a DICOM X-ray file (XA / RF / DX) whose tags carry the geometry.

Pixel values: the JSON field ``pixel_values`` says ``"line_integral"`` (``-log(I/I0)``, what the
DRR renders) or ``"intensity"`` (detector counts; converted with ``I0`` from the JSON field
``i0`` or, if absent, the 99.5th percentile of the image). DICOM X-ray images are intensities
(bone dark) unless their Photometric Interpretation is MONOCHROME1.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray

from navsvc.errors import InputError, InvalidImageError
from navsvc.fluoro.geometry import ViewGeometry, geometry_from_dicom_tags


@dataclass
class FluoroView:
    """One view: its geometry and its line-integral image (rows, columns)."""

    geometry: ViewGeometry
    line_integral: NDArray[np.float32]
    source: str = ""


def line_integral_from_intensity(intensity: NDArray[np.floating], i0: float | None = None) -> NDArray[np.float32]:
    """``-log(I / I0)``, clipped to finite values; ``I0`` defaults to the 99.5th percentile."""
    arr = np.asarray(intensity, dtype=np.float64)
    if i0 is None:
        i0 = float(np.percentile(arr, 99.5))
    if not np.isfinite(i0) or i0 <= 0:
        raise InputError(f"expected an unattenuated intensity I0 > 0, got {i0}")
    return (-np.log(np.clip(arr, 1e-6 * i0, None) / i0)).astype(np.float32)


def _image_2d(image: sitk.Image, where: str) -> NDArray[np.float64]:
    arr = sitk.GetArrayFromImage(image)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise InvalidImageError(f"{where}: expected a 2-D X-ray image, got shape {arr.shape}")
    if arr.dtype.kind not in "iuf":
        raise InvalidImageError(f"{where}: expected a grey-scale X-ray image, got {arr.dtype}")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise InvalidImageError(f"{where}: image holds NaN or infinite pixels")
    if arr.min() == arr.max():
        raise InvalidImageError(f"{where}: image is blank (every pixel is {arr.min()})")
    return arr


def read_view(image_path: str | os.PathLike[str], geometry_path: str | os.PathLike[str] | None = None,
              name: str | None = None) -> FluoroView:
    """Read one view (see the module docstring for the accepted forms)."""
    p = Path(image_path)
    if not p.is_file():
        raise InvalidImageError(f"fluoroscopy image not found: {p}")
    view_name = name or p.name.split(".")[0]
    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(p))
        reader.ReadImageInformation()
        tags = {k: reader.GetMetaData(k) for k in reader.GetMetaDataKeys()}
        image = reader.Execute()
    except RuntimeError as exc:
        raise InvalidImageError(f"{p.name}: cannot read as an X-ray image: {str(exc).strip().splitlines()[-1]}") from exc
    arr = _image_2d(image, p.name)
    rows, cols = arr.shape
    gpath = Path(geometry_path) if geometry_path else _sidecar(p)
    if gpath is not None and gpath.is_file():
        try:
            data = json.loads(gpath.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"{gpath.name}: not a readable JSON geometry file: {exc}") from exc
        data.setdefault("name", view_name)
        geometry = ViewGeometry.from_dict(data, gpath.name)
        default_kind = "line_integral" if "line integral" in str(data.get("values", "")) else "intensity"
        kind = str(data.get("pixel_values", default_kind))
        if kind == "line_integral":
            line = arr.astype(np.float32)
        elif kind == "intensity":
            line = line_integral_from_intensity(arr, data.get("i0"))
        else:
            raise InputError(f"{gpath.name}: pixel_values must be 'line_integral' or 'intensity', got {kind!r}")
    elif "0018|1110" in tags or "0018|1164" in tags:
        geometry = geometry_from_dicom_tags(tags, (cols, rows), view_name)
        photometric = tags.get("0028|0004", "MONOCHROME2").strip()
        line = arr.astype(np.float32) if photometric == "MONOCHROME1" else line_integral_from_intensity(arr)
    elif geometry_path is not None:
        raise InputError(f"geometry file not found: {geometry_path}")
    else:
        raise InputError(
            f"{p.name}: no geometry: expected a JSON geometry beside it ({p.name.split('.')[0]}.json) or a DICOM "
            "X-ray with DistanceSourceToDetector, DistanceSourceToPatient and ImagerPixelSpacing"
        )
    if geometry.size_px != (cols, rows):
        raise InputError(f"{p.name}: image is {cols}x{rows} px but its geometry says "
                         f"{geometry.size_px[0]}x{geometry.size_px[1]}")
    return FluoroView(geometry, line, str(p))


def _sidecar(image_path: Path) -> Path | None:
    stem = image_path.name.split(".")[0]
    candidate = image_path.with_name(stem + ".json")
    return candidate if candidate.is_file() else None


def check_views_consistent(views: list[FluoroView], min_angle_deg: float = 15.0) -> None:
    """Refuse fewer than one view, duplicate names, or two views whose beams are nearly parallel
    (they add no depth information)."""
    if not views:
        raise InputError("expected at least one fluoroscopy view")
    names = [v.geometry.name for v in views]
    if len(set(names)) != len(names):
        raise InputError(f"view names must be unique, got {names}")
    for i in range(len(views)):
        for j in range(i + 1, len(views)):
            zi = views[i].geometry.T_world_from_carm.rotation[:, 2]
            zj = views[j].geometry.T_world_from_carm.rotation[:, 2]
            angle = float(np.rad2deg(np.arccos(np.clip(abs(zi @ zj), 0.0, 1.0))))
            if angle < min_angle_deg:
                raise InputError(
                    f"views {names[i]!r} and {names[j]!r} are only {angle:.1f} degrees apart; expected at least "
                    f"{min_angle_deg} degrees (for example AP and lateral)"
                )


def isocentre_estimate(views: list[FluoroView]) -> NDArray[np.float64]:
    """The point closest (least squares) to every view's principal ray, world mm."""
    a = np.zeros((3, 3))
    b = np.zeros(3)
    for v in views:
        src = v.geometry.source_world
        d = v.geometry.T_world_from_carm.rotation[:, 2]
        proj = np.eye(3) - np.outer(d, d)
        a += proj
        b += proj @ src
    if np.linalg.matrix_rank(a) < 3:
        # one view (or parallel views): the point on the principal ray at the source-to-isocentre distance
        v = views[0].geometry
        return v.source_world + v.T_world_from_carm.rotation[:, 2] * 0.6 * v.sdd_mm
    return np.linalg.solve(a, b)
