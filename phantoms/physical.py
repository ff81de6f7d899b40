"""Physical phantoms: scans of a real object with fiducial markups in both scans.

Folder layout (only the two fiducial files are required)::

    fiducials_mri.mrk.json   fiducials_ct.mrk.json     same labels in both (>= 3 points)
    targets_mri.mrk.json     targets_ct.mrk.json       optional targets (not used in the fit)
    mri_t1.nii.gz  labels.nii.gz  ct.nii.gz  labels_ct.nii.gz   optional images

There is no exact truth: the reference ``T_ct_from_mri`` is the least-squares rigid fit
of the fiducials (its residual is reported as ``fit_fre_mm``). The harness measures a
method's fiducial registration error (FRE) at the fiducials and its target registration
error (TRE) at the targets.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

from navsvc.calibration import rigid_fit
from navsvc.errors import InputError, MarkupsError
from navsvc.frames import CT, MRI
from navsvc.imaging import read_image
from navsvc.markups import read_points
from navsvc.transforms import RigidTransform


def rigid_from_points(points_from: ArrayLike, points_to: ArrayLike, to_frame: str = CT,
                      from_frame: str = MRI) -> RigidTransform:
    """Least-squares rigid T with ``T(points_from[i]) ~ points_to[i]`` (Kabsch / Umeyama, no scale).

    Needs >= 3 non-collinear point pairs (N, 3), LPS mm.
    """
    a = np.asarray(points_from, dtype=np.float64)
    b = np.asarray(points_to, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2 or a.shape[1] != 3 or a.shape[0] < 3:
        raise InputError(f"expected two (N, 3) point sets with N >= 3, got {a.shape} and {b.shape}")
    s = np.linalg.svd(a - a.mean(0), compute_uv=False)
    if s[1] < 1e-6 * max(s[0], 1e-12):
        raise InputError("the fiducials are collinear (or coincide); expected at least 3 spread points")
    return RigidTransform(rigid_fit(a, b), to_frame, from_frame)


def load_physical_case(d: Path):  # noqa: ANN201
    from phantoms.case import IMAGE_FILES, Case

    f_mri, f_ct = d / "fiducials_mri.mrk.json", d / "fiducials_ct.mrk.json"
    for f in (f_mri, f_ct):
        if not f.is_file():
            raise InputError(f"{d}: not a phantom case folder (no truth.json) and no {f.name} for a physical phantom")
    fid_mri, fid_ct = read_points(f_mri), read_points(f_ct)
    _check_same_labels(fid_mri, fid_ct, f_mri, f_ct)
    tgt_mri: dict[str, np.ndarray] = {}
    tgt_ct: dict[str, np.ndarray] = {}
    t_mri, t_ct = d / "targets_mri.mrk.json", d / "targets_ct.mrk.json"
    if t_mri.is_file() or t_ct.is_file():
        tgt_mri, tgt_ct = read_points(t_mri), read_points(t_ct)
        _check_same_labels(tgt_mri, tgt_ct, t_mri, t_ct)
    clash = set(fid_mri) & set(tgt_mri)
    if clash:
        raise MarkupsError(f"{d}: labels {sorted(clash)} are both fiducials and targets; expected distinct labels")
    names = list(fid_mri)
    fit = rigid_from_points([fid_mri[n] for n in names], [fid_ct[n] for n in names])
    fre = np.linalg.norm(fit.apply(np.array([fid_mri[n] for n in names])) - np.array([fid_ct[n] for n in names]), axis=1)
    imgs = {a: (read_image(d / f) if (d / f).is_file() else None) for a, f in IMAGE_FILES.items()}
    structure = {**dict.fromkeys(fid_mri, "fiducial"), **dict.fromkeys(tgt_mri, "target")}
    return Case(
        seed=0, preset="physical", side="unknown", mri=imgs["mri"], mri_fluid=imgs["mri_fluid"],
        labels=imgs["labels"], ct=imgs["ct"], labels_ct=imgs["labels_ct"],
        landmarks_mri={**fid_mri, **tgt_mri}, landmarks_ct={**fid_ct, **tgt_ct}, landmark_structure=structure,
        T_ct_from_mri_femur=fit, T_ct_from_mri_pelvis=fit,
        params={"name": d.name, "fit_fre_mm": fre.tolist(), "n_fiducials": len(names), "n_targets": len(tgt_mri)},
        kind="physical", source_dir=d,
    )


def _check_same_labels(a: dict, b: dict, fa: Path, fb: Path) -> None:
    if set(a) != set(b):
        raise MarkupsError(
            f"{fa.name} and {fb.name} must hold the same point labels; only in the first: "
            f"{sorted(set(a) - set(b))}, only in the second: {sorted(set(b) - set(a))}"
        )
    if len(a) < 3 and fa.name.startswith("fiducials"):
        raise MarkupsError(f"{fa.name}: expected at least 3 fiducials, got {len(a)}")
