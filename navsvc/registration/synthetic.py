"""Small analytic registration cases and MRI-like images synthesised from labels.

Two uses: (1) unit tests and quick checks need an MRI/CT pair with an exactly known
``T_ct_from_mri`` without the full phantom generator; (2) the real-CT benchmark case needs a
preoperative "MRI-like" image synthesised from segmentation masks.

The analytic femur is a union of signed-distance primitives (head sphere, neck and shaft
capsules, trochanter ellipsoid) with an acetabular cup of pelvis around the head, a
necrotic sphere in the head, a muscle-filled body and a subcutaneous fat layer. Anatomy is
defined in the MRI frame (LPS mm); the CT is sampled through the true ``T_mri_from_ct``.
Partial volume is modelled by a linear ramp of the signed distance over one voxel, and the
MRI's thick slices by averaging sub-samples along the slice normal.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray

from navsvc.frames import CT, MRI
from navsvc.imaging import LabelSpec, lps_from_index, make_image
from navsvc.transforms import RigidTransform, rotation_matrix_from_euler_deg

F = NDArray[np.float64]


# -- signed distance primitives (negative inside), points (N, 3) mm ----------------------
def _sd_sphere(p: F, c: F, r: float) -> F:
    return np.linalg.norm(p - c, axis=1) - r


def _sd_capsule(p: F, a: F, b: F, r: float) -> F:
    ab = b - a
    t = np.clip(((p - a) @ ab) / (ab @ ab), 0.0, 1.0)
    return np.linalg.norm(p - (a + t[:, None] * ab), axis=1) - r


def _sd_ellipsoid(p: F, c: F, radii: F) -> F:
    q = (p - c) / radii
    k0 = np.linalg.norm(q, axis=1)
    k1 = np.linalg.norm(q / radii, axis=1)
    return k0 * (k0 - 1.0) / np.maximum(k1, 1e-9)


@dataclass(frozen=True)
class FemurModel:
    """Analytic proximal femur + acetabulum in the MRI frame (LPS mm).

    ``side`` is "left" or "right"; lateral is +x (patient left) for a left femur.
    """

    head_center: tuple[float, float, float] = (80.0, 10.0, -40.0)
    side: str = "left"
    shaft_length_mm: float = 90.0
    lesion_offset_mm: tuple[float, float, float] = (-4.0, -3.0, 7.0)
    lesion_radius_mm: float = 8.0
    #: another patient: scales the femur about the head centre and tilts the neck (degrees)
    shape_scale: float = 1.0
    neck_tilt_deg: float = 0.0
    has_femur: bool = True

    @property
    def _lat(self) -> float:
        return 1.0 if self.side == "left" else -1.0

    def _pts(self) -> dict[str, F]:
        h = np.asarray(self.head_center, dtype=np.float64)
        s = self._lat
        k = self.shape_scale
        tilt = rotation_matrix_from_euler_deg((0.0, self.neck_tilt_deg * s, 0.0))
        neck_end = h + k * tilt @ np.array([38.0 * s, 9.0, -32.0])
        shaft_top = h + k * tilt @ np.array([50.0 * s, 10.0, -35.0])
        shaft_bottom = shaft_top + np.array([-8.0 * s, 2.0, -self.shaft_length_mm])
        troch = h + k * tilt @ np.array([57.0 * s, 16.0, -28.0])
        return {"head": h, "neck_end": neck_end, "shaft_top": shaft_top,
                "shaft_bottom": shaft_bottom, "troch": troch,
                "lesion": h + np.array(self.lesion_offset_mm) * np.array([s, 1.0, 1.0])}

    def sd_femur(self, p: F) -> F:
        if not self.has_femur:
            return np.full(len(p), 1e3)
        q = self._pts()
        k = self.shape_scale
        return np.minimum.reduce([
            _sd_sphere(p, q["head"], 22.0 * k),
            _sd_capsule(p, q["head"], q["neck_end"], 14.0 * k),
            _sd_capsule(p, q["shaft_top"], q["shaft_bottom"], 14.0 * k),
            _sd_ellipsoid(p, q["troch"], np.array([11.0, 13.0, 17.0]) * k),
        ])

    def sd_lesion(self, p: F) -> F:
        if not self.has_femur:
            return np.full(len(p), 1e3)
        return _sd_sphere(p, self._pts()["lesion"], self.lesion_radius_mm)

    def sd_pelvis(self, p: F) -> F:
        h = self._pts()["head"]
        cup = np.abs(np.linalg.norm(p - h, axis=1) - 29.0) - 4.5
        # keep the medial-superior half of the shell (the acetabulum)
        axis = np.array([-0.5 * self._lat, 0.0, 0.85])
        axis /= np.linalg.norm(axis)
        cup = np.maximum(cup, -((p - h) @ axis) - 4.0)
        ilium = _sd_capsule(p, h + np.array([-10.0 * self._lat, 5.0, 38.0]),
                            h + np.array([-25.0 * self._lat, 10.0, 70.0]), 9.0)
        return np.minimum(cup, ilium)

    def landmarks(self) -> dict[str, F]:
        """Named points on and in the femur (MRI frame, LPS mm)."""
        q = self._pts()
        s = self._lat
        return {
            "head_center": q["head"],
            "lesion_center": q["lesion"],
            "head_top": q["head"] + np.array([0.0, 0.0, 20.0]),
            "neck_mid": 0.5 * (q["head"] + q["neck_end"]),
            "trochanter": q["troch"] + np.array([6.0 * s, 0.0, 10.0]),
            "shaft_mid": 0.5 * (q["shaft_top"] + q["shaft_bottom"]),
            "shaft_low": q["shaft_top"] + 0.85 * (q["shaft_bottom"] - q["shaft_top"]),
        }

    def bounds_mm(self, margin_mm: float = 25.0) -> tuple[F, F]:
        pts = np.array(list(self._pts().values()))
        return pts.min(0) - margin_mm, pts.max(0) + margin_mm


def _ramp(sd: F, width_mm: float) -> F:
    """Partial-volume fraction inside a surface from its signed distance."""
    return np.clip(0.5 - sd / width_mm, 0.0, 1.0)


def _tissue_values(model: FemurModel, p: F, width_mm: float, modality: str) -> F:
    """Intensity at points p (MRI frame) for 'ct' (HU) or 'mri' (T1-like, arbitrary units)."""
    lo, hi = model.bounds_mm(10.0)
    centre = 0.5 * (lo + hi)
    radii = 0.5 * (hi - lo) * np.array([1.25, 1.6, 1.0]) + 15.0
    sd_body = _sd_ellipsoid(p * np.array([1, 1, 0]), centre * np.array([1, 1, 0]),
                            np.array([radii[0], radii[1], 1.0]))
    sd_muscle = sd_body + 8.0  # 8 mm subcutaneous fat
    sd_f, sd_p, sd_l = model.sd_femur(p), model.sd_pelvis(p), model.sd_lesion(p)
    cortex_mm = 2.5
    if modality == "ct":
        air, fat, muscle, cortex, marrow, lesion = -1000.0, -100.0, 45.0, 1300.0, 220.0, 420.0
    else:
        air, fat, muscle, cortex, marrow, lesion = 0.0, 950.0, 380.0, 40.0, 820.0, 260.0
    v = np.full(len(p), air)
    for sd, val in ((sd_body, fat), (sd_muscle, muscle), (sd_p, cortex), (sd_p + cortex_mm, marrow),
                    (sd_f, cortex), (sd_f + cortex_mm, marrow), (sd_l, lesion)):
        f = _ramp(sd, width_mm)
        v = v * (1.0 - f) + val * f
    return v


@dataclass
class SyntheticCase:
    """An MRI/CT pair with known truth. Landmarks: name -> (3,) LPS mm."""

    mri: sitk.Image
    labels: sitk.Image
    ct: sitk.Image
    T_ct_from_mri_femur: RigidTransform
    landmarks_mri: dict[str, F]
    landmarks_ct: dict[str, F]
    name: str = "synthetic"
    extra: dict[str, object] = field(default_factory=dict)


def oblique_direction(angles_deg: tuple[float, float, float]) -> F:
    return rotation_matrix_from_euler_deg(angles_deg)


def _grid(lo: F, hi: F, spacing: F, direction: F) -> tuple[tuple[int, int, int], F]:
    """Size and origin of a grid with ``direction`` covering the box [lo, hi]."""
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    local = corners @ direction  # coordinates along the grid axes
    llo, lhi = local.min(0), local.max(0)
    size = np.ceil((lhi - llo) / spacing).astype(int) + 1
    origin = direction @ llo
    return (int(size[0]), int(size[1]), int(size[2])), origin


def analytic_case(
    seed: int = 0,
    *,
    rotation_deg: tuple[float, float, float] = (8.0, -5.0, 12.0),
    translation_mm: tuple[float, float, float] = (12.0, -8.0, 15.0),
    mri_spacing_mm: tuple[float, float, float] = (1.4, 1.4, 3.5),
    ct_spacing_mm: tuple[float, float, float] = (1.5, 1.5, 1.5),
    mri_side: str = "left",
    ct_side: str | None = None,
    ct_without_femur: bool = False,
    ct_other_patient: bool = False,
    noise: float = 0.03,
) -> SyntheticCase:
    """A small MRI/CT pair of a proximal femur with an exactly known rigid femur motion.

    The MRI is oblique (10 degrees), anisotropic with thick slices and a non-zero origin;
    the CT is axial. ``ct_side`` builds the CT of the other hip (a wrong pairing), and
    ``ct_without_femur`` a CT of the body without any femur, ``ct_other_patient`` a CT of
    another patient's femur (bigger, other neck angle) -- all wrong pairings for QA tests.
    ``noise`` is relative to the cortex/marrow contrast. Deterministic in ``seed``.
    """
    rng = np.random.default_rng(seed)
    model = FemurModel(side=mri_side)
    ct_model = FemurModel(side=ct_side or mri_side)
    lo, hi = model.bounds_mm(22.0)
    T_ct_from_mri = RigidTransform.from_euler_deg(rotation_deg, translation_mm, CT, MRI,
                                                  center_mm=model.head_center)
    # --- MRI: oblique thick slices, slice-profile averaging
    d_mri = oblique_direction((10.0, 0.0, 6.0))
    sp_mri = np.asarray(mri_spacing_mm, dtype=np.float64)
    size_mri, origin_mri = _grid(lo, hi, sp_mri, d_mri)
    ref = make_image(np.zeros(size_mri[::-1], np.float32), sp_mri, origin_mri, d_mri.ravel())
    kji = np.indices(size_mri[::-1]).reshape(3, -1).T.astype(np.float64)
    centres = lps_from_index(ref, kji[:, ::-1])
    normal = d_mri[:, 2]
    mri_vals = np.zeros(len(centres))
    offsets = np.linspace(-0.4, 0.4, 5) * sp_mri[2]
    for off in offsets:
        mri_vals += _tissue_values(model, centres + off * normal, float(sp_mri[:2].mean()), "mri")
    mri_vals /= len(offsets)
    mri_vals += rng.normal(0.0, noise * 780.0, len(mri_vals))
    # smooth multiplicative bias field
    rel = (centres - centres.mean(0)) / 100.0
    mri_vals *= 1.0 + 0.08 * rel[:, 0] - 0.05 * rel[:, 2]
    mri = make_image(mri_vals.reshape(size_mri[::-1]).astype(np.float32), sp_mri, origin_mri, d_mri.ravel())
    spec = LabelSpec()
    lab = np.zeros(len(centres), np.uint8)
    lab[model.sd_pelvis(centres) < 0] = spec.pelvis
    lab[model.sd_femur(centres) < 0] = spec.femur
    lab[(model.sd_lesion(centres) < 0) & (model.sd_femur(centres) < 0)] = spec.necrosis
    labels = make_image(lab.reshape(size_mri[::-1]), sp_mri, origin_mri, d_mri.ravel())
    # --- CT: axial, sampled through T_mri_from_ct
    box = T_ct_from_mri.apply(np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1])
                                        for z in (lo[2], hi[2])]))
    sp_ct = np.asarray(ct_spacing_mm, dtype=np.float64)
    size_ct, origin_ct = _grid(box.min(0), box.max(0), sp_ct, np.eye(3))
    ref_ct = make_image(np.zeros(size_ct[::-1], np.float32), sp_ct, origin_ct)
    kji = np.indices(size_ct[::-1]).reshape(3, -1).T.astype(np.float64)
    ct_pts_mri = T_ct_from_mri.inverse().apply(lps_from_index(ref_ct, kji[:, ::-1]))
    if ct_side is not None and ct_side != mri_side:
        # the other hip, mirrored about the head's sagittal plane so the FOV still covers it
        hx = model.head_center[0]
        ct_pts_mri = ct_pts_mri.copy()
        ct_pts_mri[:, 0] = 2 * hx - ct_pts_mri[:, 0]
        ct_model = FemurModel(side=mri_side)
    if ct_other_patient:
        ct_model = FemurModel(side=mri_side, shape_scale=1.15, neck_tilt_deg=15.0)
    if ct_without_femur:
        ct_model = FemurModel(side=mri_side, has_femur=False)
    ct_vals = _tissue_values(ct_model, ct_pts_mri, float(sp_ct.mean()), "ct")
    ct_vals += rng.normal(0.0, noise * 400.0, len(ct_vals))
    ct = make_image(ct_vals.reshape(size_ct[::-1]).astype(np.float32), sp_ct, origin_ct)
    lm_mri = model.landmarks()
    lm_ct = {k: T_ct_from_mri.apply(v) for k, v in lm_mri.items()}
    return SyntheticCase(mri, labels, ct, T_ct_from_mri, lm_mri, lm_ct, name=f"analytic-{seed}")


# -- MRI-like image from labels and a CT (real-CT case) -------------------------------------
def mri_like_from_ct_and_masks(
    ct: sitk.Image,
    femur_mask: sitk.Image,
    pelvis_mask: sitk.Image | None,
    *,
    seed: int = 0,
    cortex_mm: float = 2.0,
    noise: float = 0.03,
) -> sitk.Image:
    """A T1-like image on the CT grid: fat bright, muscle grey, cortex dark, marrow bright.

    Tissue classes come from the CT's HU (air, fat, soft tissue) and from the bone masks
    (cortex = a ``cortex_mm`` shell inside each bone mask, marrow the rest); a bone's voxels
    are never classified from HU, so metal in the CT does not appear in the image.
    """
    rng = np.random.default_rng(seed)
    hu = sitk.GetArrayFromImage(ct).astype(np.float64)
    out = np.where(hu < -500, 0.0, np.where(hu < -30, 950.0, 380.0))
    for mask in (pelvis_mask, femur_mask):
        if mask is None:
            continue
        m = sitk.Cast(mask > 0, sitk.sitkUInt8)
        dist = sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(m, insideIsPositive=True,
                                                                   squaredDistance=False,
                                                                   useImageSpacing=True))
        inside = sitk.GetArrayFromImage(m) > 0
        out[inside] = np.where(dist[inside] > cortex_mm, 820.0, 40.0)
    img = sitk.GetImageFromArray(out.astype(np.float32))
    img.CopyInformation(ct)
    img = sitk.SmoothingRecursiveGaussian(img, float(min(ct.GetSpacing())) * 0.5)
    arr = sitk.GetArrayFromImage(img)
    arr += rng.normal(0.0, noise * 780.0, arr.shape).astype(np.float32)
    out_img = sitk.GetImageFromArray(arr)
    out_img.CopyInformation(ct)
    return out_img
