"""A registration case on real anatomy: the real pelvic CT in ``shared/data/real-ct-pelvis``.

The CT is real (3 mm, HU, metal screws in one femur); the "preoperative MRI" is synthesised
from its femur and hip masks (:func:`~navsvc.registration.synthetic.mri_like_from_ct_and_masks`),
given a necrotic sphere in the femoral head, and resampled onto an oblique thick-slice MRI
grid through a known rigid ``T_ct_from_mri``. Also: how well the HU bone segmentation finds
each femur against its mask (the femur with screws included).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray

from navsvc.errors import InputError
from navsvc.frames import CT, MRI
from navsvc.imaging import lps_from_index, read_image
from navsvc.registration.bone import segment_ct_bone
from navsvc.registration.synthetic import (
    SyntheticCase,
    _grid,
    mri_like_from_ct_and_masks,
    oblique_direction,
)
from navsvc.transforms import RigidTransform, resample

DEFAULT_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "real-ct-pelvis"


def find_data_dir(path: str | Path | None = None) -> Path | None:
    """The real-CT folder: ``path``, else ``../shared/data/real-ct-pelvis`` next to the checkout."""
    candidates = [Path(path)] if path else [DEFAULT_DIR, Path("/work/shared/data/real-ct-pelvis")]
    for c in candidates:
        if (c / "example_ct.nii.gz").is_file():
            return c
    return None


def load(data_dir: Path) -> dict[str, sitk.Image]:
    names = ("example_ct", "femur_left", "femur_right", "hip_left", "hip_right")
    out = {}
    for n in names:
        p = data_dir / f"{n}.nii.gz"
        if not p.is_file():
            raise InputError(f"real-CT data: {p} is missing")
        out[n] = read_image(p, n, check=False)
    out["example_ct"] = sitk.Cast(out["example_ct"], sitk.sitkFloat32)
    return out


def metal_side(data: dict[str, sitk.Image], metal_hu: float = 2000.0) -> str | None:
    """Which femur holds metal (voxels above ``metal_hu`` inside its mask), if any."""
    hu = sitk.GetArrayViewFromImage(data["example_ct"])
    counts = {s: int((hu[sitk.GetArrayViewFromImage(data[f"femur_{s}"]) > 0] > metal_hu).sum()) for s in ("left", "right")}
    side = max(counts, key=lambda s: counts[s])
    return side if counts[side] > 0 else None


def bone_segmentation_check(data: dict[str, sitk.Image], threshold_hu: float = 250.0) -> dict[str, float]:
    """Dice of the HU bone segmentation against each femur mask, within 10 mm of that mask."""
    bone = sitk.GetArrayFromImage(segment_ct_bone(data["example_ct"], threshold_hu, fill="slices")) > 0
    out: dict[str, float] = {}
    for side in ("left", "right"):
        m = sitk.Cast(data[f"femur_{side}"] > 0, sitk.sitkUInt8)
        a = sitk.GetArrayViewFromImage(m) > 0
        dist = sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(m, insideIsPositive=False, squaredDistance=False,
                                                                  useImageSpacing=True))
        # the hip bone across the joint is bone too: judge only voxels nearer this femur than the hip
        hip = sitk.Cast(data[f"hip_{side}"] > 0, sitk.sitkUInt8)
        dist_hip = sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(hip, insideIsPositive=False,
                                                                      squaredDistance=False, useImageSpacing=True))
        b = bone & (dist <= 10.0) & (dist < dist_hip)
        out[f"dice_femur_{side}"] = float(2 * (a & b).sum() / (a.sum() + b.sum()))
        out[f"recall_femur_{side}"] = float((a & b).sum() / a.sum())
    return out


def make_real_ct_case(
    data_dir: Path,
    *,
    side: str | None = None,
    rotation_deg: tuple[float, float, float] = (6.0, -8.0, 14.0),
    translation_mm: tuple[float, float, float] = (15.0, -12.0, 20.0),
    mri_spacing_mm: tuple[float, float, float] = (1.5, 1.5, 4.0),
    seed: int = 0,
    n_landmarks: int = 12,
) -> SyntheticCase:
    """The real CT with an MRI-like image of one hip (default: the femur with the screws)."""
    data = load(data_dir)
    side = side or metal_side(data) or "left"
    ct = data["example_ct"]
    femur = sitk.Cast(data[f"femur_{side}"] > 0, sitk.sitkUInt8)
    hip = sitk.Cast(data[f"hip_{side}"] > 0, sitk.sitkUInt8)
    rng = np.random.default_rng(seed)
    fem_np = sitk.GetArrayViewFromImage(femur) > 0
    pts_ct = lps_from_index(ct, np.argwhere(fem_np)[:, ::-1].astype(np.float64))
    # femoral head: the most superior 20 mm of the femur mask (z grows superior in LPS)
    top = pts_ct[pts_ct[:, 2] > pts_ct[:, 2].max() - 20.0]
    head_c = top.mean(0)
    T_ct_from_mri = RigidTransform.from_euler_deg(rotation_deg, translation_mm, CT, MRI, center_mm=head_c)
    T_mri_from_ct = T_ct_from_mri.inverse()
    # labels on the CT grid, lesion = sphere of 7 mm in the head, inside the femur
    lab = np.zeros(fem_np.shape, np.uint8)
    lab[sitk.GetArrayViewFromImage(hip) > 0] = 3
    lab[fem_np] = 1
    all_ct = lps_from_index(ct, np.indices(fem_np.shape).reshape(3, -1).T[:, ::-1].astype(np.float64))
    lesion = (np.linalg.norm(all_ct - head_c, axis=1) < 7.0).reshape(fem_np.shape) & fem_np
    lab[lesion] = 2
    labels_ct = sitk.GetImageFromArray(lab)
    labels_ct.CopyInformation(ct)
    synth = mri_like_from_ct_and_masks(ct, femur, hip, seed=seed)
    # MRI grid: oblique thick slices around the hip, in the MRI frame
    lo, hi = top.min(0) - np.array([45.0, 45.0, 60.0]), top.max(0) + np.array([45.0, 45.0, 25.0])
    box_mri = T_mri_from_ct.apply(np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1])
                                            for z in (lo[2], hi[2])]))
    d = oblique_direction((8.0, -5.0, 4.0))
    sp = np.asarray(mri_spacing_mm, dtype=np.float64)
    size, origin = _grid(box_mri.min(0), box_mri.max(0), sp, d)
    grid = sitk.Image(list(size), sitk.sitkFloat32)
    grid.SetSpacing(sp.tolist())
    grid.SetOrigin(origin.tolist())
    grid.SetDirection(d.ravel().tolist())
    mri = resample(synth, grid, T_ct_from_mri, interpolator="linear")
    labels = resample(labels_ct, grid, T_ct_from_mri, interpolator="nearest")
    in_fem = pts_ct[rng.choice(len(pts_ct), size=n_landmarks, replace=False)]
    lm_ct: dict[str, NDArray[np.float64]] = {f"femur_{k}": p for k, p in enumerate(in_fem)}
    lm_ct["lesion_center"] = head_c
    lm_mri = {k: T_mri_from_ct.apply(v) for k, v in lm_ct.items()}
    return SyntheticCase(mri, sitk.Cast(labels, sitk.sitkUInt8), ct, T_ct_from_mri, lm_mri, lm_ct,
                         name=f"real-ct-{side}", extra={"side": side, "femur_ct": femur})


#: known errors applied to the truth for :func:`gate_near_truth`: name -> (rotation about the femoral
#: head, degrees about x, y, z; translation, mm)
KNOWN_ERRORS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "truth": ((0.0, 0.0, 0.0), (0.0, 0.0, 0.0)),
    "shift 3 mm": ((0.0, 0.0, 0.0), (3.0, 0.0, 0.0)),
    "shift 5 mm": ((0.0, 0.0, 0.0), (5.0, 0.0, 0.0)),
    "rotate 10 deg": ((10.0, 0.0, 0.0), (0.0, 0.0, 0.0)),
    "rotate 20 deg": ((20.0, 0.0, 0.0), (0.0, 0.0, 0.0)),
}


def gate_near_truth(case: SyntheticCase, options: object | None = None) -> dict[str, dict[str, object]]:
    """What the QA gate says of the case's true pose and of the truth moved by each of
    :data:`KNOWN_ERRORS` (rotations about the femoral head centre, ``landmarks_ct["lesion_center"]``):
    per name, the mean landmark error that pose has (mm), the gate's verdict and its surface / Dice
    figures. Shows whether the gate's figures can tell a right pose from a wrong one on this CT."""
    from navsvc.registration.pipeline import gate_at_pose

    names = sorted(case.landmarks_mri)
    lm_mri = np.array([case.landmarks_mri[n] for n in names])
    lm_ct = np.array([case.landmarks_ct[n] for n in names])
    head = np.asarray(case.landmarks_ct["lesion_center"], dtype=np.float64)
    out: dict[str, dict[str, object]] = {}
    for name, (angles_deg, shift_mm) in KNOWN_ERRORS.items():
        error = RigidTransform.from_euler_deg(angles_deg, shift_mm, CT, CT, center_mm=head)
        T = error @ case.T_ct_from_mri_femur
        report = gate_at_pose(case.mri, case.labels, case.ct, T, options)  # type: ignore[arg-type]
        f = report.figures
        out[name] = {"tre_mean_mm": float(np.linalg.norm(T.apply(lm_mri) - lm_ct, axis=1).mean()),
                     "verdict": report.verdict,
                     **{k: f.get(k) for k in ("surface_distance_mean_mm", "surface_distance_p95_mm", "femur_dice")}}
    return out
