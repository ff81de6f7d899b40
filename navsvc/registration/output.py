"""Files of a registration: transforms, QA JSON, the lesion on the CT grid, an overlay picture."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray

from navsvc.frames import CT
from navsvc.imaging import LabelSpec, write_image
from navsvc.markups import fiducials, write_markups
from navsvc.registration.result import RegistrationResult
from navsvc.transforms import resample, write_json_atomic, write_transform

log = logging.getLogger(__name__)


def lesion_on_ct(labels: sitk.Image, ct: sitk.Image, result: RegistrationResult, spec: LabelSpec) -> sitk.Image:
    """The necrosis label (value ``spec.necrosis``, else 0) resampled onto the CT grid (UInt8)."""
    lesion = sitk.Cast(labels == spec.necrosis, sitk.sitkFloat32)
    on_ct = resample(lesion, ct, result.T_mri_from_ct, interpolator="linear")
    out = sitk.Cast(on_ct >= 0.5, sitk.sitkUInt8) * spec.necrosis
    return sitk.Cast(out, sitk.sitkUInt8)


def overlay_png(path: Path, ct: sitk.Image, lesion_ct: sitk.Image, femur_ct: sitk.Image, title: str) -> Path:
    """Three orthogonal CT slices through the lesion centre with lesion (red) and femur (yellow) contours."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ct_a = sitk.GetArrayFromImage(ct).astype(np.float32)
    les = sitk.GetArrayFromImage(lesion_ct) > 0
    fem = sitk.GetArrayFromImage(femur_ct) > 0
    ref = les if les.any() else fem
    c = np.round(np.argwhere(ref).mean(0)).astype(int) if ref.any() else np.array(ct_a.shape) // 2
    sp = ct.GetSpacing()
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4))
    views = [(ct_a[c[0]], les[c[0]], fem[c[0]], sp[1] / sp[0], "axial"),
             (ct_a[:, c[1]], les[:, c[1]], fem[:, c[1]], sp[2] / sp[0], "coronal"),
             (ct_a[:, :, c[2]], les[:, :, c[2]], fem[:, :, c[2]], sp[2] / sp[1], "sagittal")]
    for ax, (img, lm, fm, aspect, name) in zip(axes, views, strict=True):
        origin = "upper" if name == "axial" else "lower"
        ax.imshow(img, cmap="gray", vmin=-200, vmax=1200, aspect=aspect, origin=origin)
        if fm.any():
            ax.contour(fm, levels=[0.5], colors="yellow", linewidths=0.8, origin=origin)
        if lm.any():
            ax.contour(lm, levels=[0.5], colors="red", linewidths=1.0, origin=origin)
        ax.set_title(name)
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    tmp = path.with_name(".tmp-" + path.name)
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def write_result(
    result: RegistrationResult,
    out_dir: str | os.PathLike[str],
    *,
    mri: sitk.Image,
    labels: sitk.Image,
    ct: sitk.Image,
    points_mri: dict[str, NDArray[np.float64]] | None = None,
    spec: LabelSpec | None = None,
) -> dict[str, Path]:
    """Write T_ct_from_mri.h5, T_mri_from_ct.h5 (+ JSON sidecars), qa.json, lesion_in_ct.nii.gz,
    overlay.png and, with ``points_mri`` (name -> (3,) LPS mm), points_ct.mrk.json (LPS)."""
    spec = spec or LabelSpec()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"method": result.method, "verdict": result.qa.verdict, "versions": result.versions}
    files: dict[str, Path] = {
        "T_ct_from_mri": write_transform(out / "T_ct_from_mri.h5", result.T_ct_from_mri, meta),
        "T_mri_from_ct": write_transform(out / "T_mri_from_ct.h5", result.T_mri_from_ct, meta),
        "qa": write_json_atomic(out / "qa.json", result.to_dict()),
    }
    lesion = lesion_on_ct(labels, ct, result, spec)
    files["lesion"] = write_image(out / "lesion_in_ct.nii.gz", lesion)
    femur = sitk.Cast(resample(sitk.Cast((labels == spec.femur) | (labels == spec.necrosis), sitk.sitkUInt8), ct,
                               result.T_mri_from_ct, interpolator="nearest"), sitk.sitkUInt8)
    files["overlay"] = overlay_png(out / "overlay.png", ct, lesion, femur,
                                   f"{result.method}: {result.qa.verdict}")
    if points_mri:
        mapped = {name: result.T_ct_from_mri.apply(np.asarray(p, dtype=np.float64)) for name, p in points_mri.items()}
        files["points"] = write_markups(out / "points_ct.mrk.json", [fiducials(f"points_{CT}", mapped)])
    return files
