"""Bone geometry for planning: signed distance fields, femur anatomy, drill-path figures.

Pure functions on a label map (``SimpleITK.Image``) and LPS-mm points; no I/O.

Signed distances are in mm, negative inside the structure, computed with an exact
Euclidean distance transform on the label grid (voxel spacing honoured, direction
cosines orthonormal so distances in index space scaled by spacing are LPS distances),
shifted by half the finest voxel spacing so that the zero level lies between inside
and outside voxel centres, and interpolated linearly between voxel centres. Their
accuracy is bounded by the segmentation's resolution: about half the largest voxel
spacing near a surface.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage

from navsvc.errors import InvalidLabelsError
from navsvc.imaging import LabelSpec, index_from_lps, lps_from_index_matrix

log = logging.getLogger(__name__)

#: Margin (mm) kept around the femur when cropping the distance fields.
_CROP_PAD_MM = 20.0
#: The default label meanings (femur=1, necrosis=2, pelvis=3).
DEFAULT_SPEC = LabelSpec()


def signed_distance_mm(mask_zyx: NDArray[np.bool_], spacing_zyx_mm: ArrayLike) -> NDArray[np.float32]:
    """Signed Euclidean distance (mm) of a (z, y, x) mask: negative inside, positive outside."""
    spacing = np.asarray(spacing_zyx_mm, dtype=np.float64)
    inside = ndimage.distance_transform_edt(mask_zyx, sampling=spacing)
    outside = ndimage.distance_transform_edt(~mask_zyx, sampling=spacing)
    half = 0.5 * float(spacing.min())
    return np.where(mask_zyx, -(inside - half), outside - half).astype(np.float32)


@dataclass(frozen=True)
class BoneFields:
    """Femur and lesion masks with their signed distance fields (mm) on a crop of the label grid.

    ``femur_zyx`` is the femur component that holds the lesion (femur and necrosis labels
    together; necrosis is part of the femur), ``lesion_zyx`` the necrosis voxels in it,
    ``pelvis_zyx`` the pelvis label (all False when absent).
    Arrays are (z, y, x) on the crop whose first voxel has index ``crop_offset_ijk`` in the
    full label image ``labels``.
    """

    labels: sitk.Image
    crop_offset_ijk: tuple[int, int, int]
    femur_zyx: NDArray[np.bool_]
    lesion_zyx: NDArray[np.bool_]
    femur_sdf_zyx: NDArray[np.float32]
    lesion_sdf_zyx: NDArray[np.float32]
    pelvis_zyx: NDArray[np.bool_] | None = None

    @property
    def spacing_mm(self) -> NDArray[np.float64]:
        """Voxel spacing in (i, j, k) order, mm."""
        return np.array(self.labels.GetSpacing(), dtype=np.float64)

    @property
    def voxel_volume_mm3(self) -> float:
        return float(np.prod(self.spacing_mm))

    def _crop_index(self, points_lps: ArrayLike) -> NDArray[np.float64]:
        idx = index_from_lps(self.labels, np.atleast_2d(np.asarray(points_lps, dtype=np.float64)))
        return (idx - np.asarray(self.crop_offset_ijk, dtype=np.float64)).reshape(-1, 3)

    def _sample(self, field_zyx: NDArray[np.float32], points_lps: ArrayLike) -> NDArray[np.float64]:
        pts = np.asarray(points_lps, dtype=np.float64)
        shape = pts.shape[:-1]
        ijk = self._crop_index(pts.reshape(-1, 3))
        vals = ndimage.map_coordinates(field_zyx, ijk[:, ::-1].T, order=1, mode="constant",
                                       cval=_CROP_PAD_MM)
        return vals.astype(np.float64).reshape(shape)

    def femur_sdf(self, points_lps: ArrayLike) -> NDArray[np.float64]:
        """Signed distance (mm) to the femur surface at points (..., 3); negative inside."""
        return self._sample(self.femur_sdf_zyx, points_lps)

    def lesion_sdf(self, points_lps: ArrayLike) -> NDArray[np.float64]:
        """Signed distance (mm) to the lesion surface at points (..., 3); negative inside."""
        return self._sample(self.lesion_sdf_zyx, points_lps)

    def femur_normal(self, points_lps: ArrayLike, delta_mm: float = 0.75) -> NDArray[np.float64]:
        """Outward unit normals (N, 3) of the femur surface near points (N, 3): the SDF gradient."""
        pts = np.atleast_2d(np.asarray(points_lps, dtype=np.float64))
        grad = np.zeros_like(pts)
        for axis in range(3):
            step = np.zeros(3)
            step[axis] = delta_mm
            grad[:, axis] = (self.femur_sdf(pts + step) - self.femur_sdf(pts - step)) / (2 * delta_mm)
        norm = np.linalg.norm(grad, axis=1, keepdims=True)
        return grad / np.maximum(norm, 1e-9)

    def lesion_points_lps(self) -> NDArray[np.float64]:
        """LPS mm centres (N, 3) of the lesion voxels."""
        return self._crop_centers(self.lesion_zyx)

    def pelvis_points_lps(self) -> NDArray[np.float64]:
        """LPS mm centres (N, 3) of the pelvis voxels in the crop (empty without a pelvis label)."""
        if self.pelvis_zyx is None:
            return np.zeros((0, 3))
        return self._crop_centers(self.pelvis_zyx)

    def femur_points_lps(self) -> NDArray[np.float64]:
        """LPS mm centres (N, 3) of the femur voxels."""
        return self._crop_centers(self.femur_zyx)

    def _crop_centers(self, mask_zyx: NDArray[np.bool_]) -> NDArray[np.float64]:
        kji = np.argwhere(mask_zyx).astype(np.float64)
        ijk = kji[:, ::-1] + np.asarray(self.crop_offset_ijk, dtype=np.float64)
        m = lps_from_index_matrix(self.labels)
        return ijk @ m[:3, :3].T + m[:3, 3]


def bone_fields(labels: sitk.Image, spec: LabelSpec = DEFAULT_SPEC, name: str = "segmentation") -> BoneFields:
    """Femur (the connected component holding most of the lesion) and lesion fields of a label map.

    Raises :class:`InvalidLabelsError` if there is no lesion or it touches no femur voxel.
    """
    arr = sitk.GetArrayViewFromImage(labels)
    lesion_all = arr == spec.necrosis
    if not lesion_all.any():
        raise InvalidLabelsError(f"{name}: no necrosis voxels (label {spec.necrosis}); expected a lesion to plan for")
    bone = (arr == spec.femur) | lesion_all
    components, count = ndimage.label(bone)
    hits = np.bincount(components[lesion_all], minlength=count + 1)
    hits[0] = 0
    best = int(np.argmax(hits))
    femur = components == best
    if best == 0 or not (femur & (arr == spec.femur)).any():
        raise InvalidLabelsError(
            f"{name}: the necrosis (label {spec.necrosis}) touches no femur voxel (label {spec.femur}); "
            "expected the lesion inside the femur"
        )
    outside = int(np.count_nonzero(lesion_all & ~femur))
    if outside:
        log.warning("%s: %d necrosis voxels lie outside the femur component and are ignored", name, outside)
    spacing_zyx = np.array(labels.GetSpacing(), dtype=np.float64)[::-1]
    pad = np.ceil(_CROP_PAD_MM / spacing_zyx).astype(int)
    nz = np.argwhere(femur)
    lo = np.maximum(nz.min(axis=0) - pad, 0)
    hi = np.minimum(nz.max(axis=0) + pad + 1, np.array(arr.shape))
    sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    femur_c = femur[sl]
    lesion_c = lesion_all[sl] & femur_c
    return BoneFields(
        labels=labels,
        crop_offset_ijk=(int(lo[2]), int(lo[1]), int(lo[0])),
        femur_zyx=femur_c,
        lesion_zyx=lesion_c,
        femur_sdf_zyx=signed_distance_mm(femur_c, spacing_zyx),
        lesion_sdf_zyx=signed_distance_mm(lesion_c, spacing_zyx),
        pelvis_zyx=np.asarray(arr[sl] == spec.pelvis),
    )


# -- anatomy -------------------------------------------------------------------------
@dataclass(frozen=True)
class FemurAnatomy:
    """Landmarks of a proximal femur derived from its mask (LPS mm, unit vectors).

    * ``head_center_lps`` / ``head_radius_mm``: the femoral head's sphere, fitted to the
      femur's surface around the largest sphere inscribed in the femur near the lesion;
    * ``shaft_axis``: the shaft's direction, pointing proximally (towards the head's level);
    * ``medial``: from the shaft axis towards the head, perpendicular to the shaft axis;
    * ``side``: ``'right'`` when medial points to the patient's left (+x in LPS), else ``'left'``;
    * ``trochanter_tip_lps``: the most proximal femur point lateral to the shaft axis and
      away from the head (the greater trochanter's tip).
    """

    head_center_lps: NDArray[np.float64]
    head_radius_mm: float
    shaft_point_lps: NDArray[np.float64]
    shaft_axis: NDArray[np.float64]
    medial: NDArray[np.float64]
    side: str
    trochanter_tip_lps: NDArray[np.float64]

    @property
    def lateral(self) -> NDArray[np.float64]:
        return -self.medial

    @property
    def anterior(self) -> NDArray[np.float64]:
        """Unit vector towards the patient's front, perpendicular to shaft axis and medial."""
        a = np.cross(self.shaft_axis, self.medial)
        # LPS: anterior is -y
        return a if a[1] < 0 else -a

    def level_mm(self, points_lps: ArrayLike) -> NDArray[np.float64]:
        """Height (mm) along the shaft axis relative to the head centre (positive proximal)."""
        p = np.asarray(points_lps, dtype=np.float64)
        return (p - self.head_center_lps) @ self.shaft_axis

    @property
    def trochanter_level_mm(self) -> float:
        return float(self.level_mm(self.trochanter_tip_lps))

    def lateral_offset_mm(self, points_lps: ArrayLike) -> NDArray[np.float64]:
        """Distance (mm) lateral of the shaft axis line, measured along ``lateral``."""
        p = np.asarray(points_lps, dtype=np.float64)
        return (p - self.shaft_point_lps) @ self.lateral


def _fit_head_sphere(fields: BoneFields, centre0: NDArray[np.float64], radius0: float,
                     shaft_point: NDArray[np.float64]) -> tuple[NDArray[np.float64], float]:
    """Least-squares sphere through the femur's surface voxels around the head, leaving out
    the cone towards the shaft (the neck). Falls back to the inscribed sphere."""
    surface = fields.femur_zyx & ~ndimage.binary_erosion(fields.femur_zyx)
    pts = fields._crop_centers(surface)
    rel = pts - centre0
    dist = np.linalg.norm(rel, axis=1)
    to_shaft = (shaft_point - centre0) / max(float(np.linalg.norm(shaft_point - centre0)), 1e-9)
    cos = (rel @ to_shaft) / np.maximum(dist, 1e-9)
    sel = (dist <= radius0 + 8.0) & (cos < np.cos(np.deg2rad(65.0)))
    if np.count_nonzero(sel) < 50:
        return centre0, radius0
    p = pts[sel]
    a = np.hstack([2.0 * p, np.ones((len(p), 1))])
    sol, *_ = np.linalg.lstsq(a, (p * p).sum(axis=1), rcond=None)
    centre = sol[:3]
    radius = float(np.sqrt(max(sol[3] + centre @ centre, 0.0)))
    # surface voxel centres lie on average half a voxel inside the surface
    radius += 0.5 * float(np.mean(fields.spacing_mm))
    if np.linalg.norm(centre - centre0) > 0.5 * radius0 or not radius0 * 0.8 <= radius <= radius0 * 1.6 + 2.0:
        log.warning("femoral head sphere fit disagrees with the inscribed sphere; using the inscribed sphere")
        return centre0, radius0
    return centre, radius


def femur_anatomy(fields: BoneFields) -> FemurAnatomy:
    """Find head, shaft axis, medial direction, side and greater trochanter from the femur mask."""
    femur_pts = fields.femur_points_lps()
    depth = -fields.femur_sdf_zyx[fields.femur_zyx].astype(np.float64)
    lesion_c = fields.lesion_points_lps().mean(axis=0)
    near = np.linalg.norm(femur_pts - lesion_c, axis=1) <= 40.0
    if not near.any():
        near = np.ones(len(femur_pts), dtype=bool)
    k = int(np.argmax(np.where(near, depth, -np.inf)))
    head_c = femur_pts[k]
    head_r = float(depth[k])
    up = np.array([0.0, 0.0, 1.0])
    distal = femur_pts[(femur_pts - head_c) @ up < -2.0 * head_r]
    axis = up
    if len(distal) >= 100 and np.ptp(distal @ up) >= 20.0:
        centred = distal - distal.mean(axis=0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        axis = vt[0] / np.linalg.norm(vt[0])
        if axis @ up < 0:
            axis = -axis
        shaft_p = distal.mean(axis=0)
    else:
        log.warning("femur shaft too short in the image to fit its axis; using the image's superior axis")
        shaft_p = femur_pts[(femur_pts - head_c) @ up < -head_r].mean(axis=0) if np.any(
            (femur_pts - head_c) @ up < -head_r) else femur_pts.mean(axis=0)
    head_c, head_r = _fit_head_sphere(fields, head_c, head_r, shaft_p)
    v = head_c - shaft_p
    v = v - (v @ axis) * axis
    if np.linalg.norm(v) < 1e-6:
        raise InvalidLabelsError("femur: the head lies on the shaft axis; cannot tell medial from lateral")
    medial = v / np.linalg.norm(v)
    side = "right" if medial[0] > 0 else "left"
    lateral_off = (femur_pts - shaft_p) @ (-medial)
    away = np.linalg.norm(femur_pts - head_c, axis=1) > 1.5 * head_r
    cand = (lateral_off > 0) & away
    if cand.any():
        levels = (femur_pts - head_c) @ axis
        gt = femur_pts[int(np.argmax(np.where(cand, levels, -np.inf)))]
    else:
        gt = head_c.copy()
    return FemurAnatomy(head_c, head_r, shaft_p, axis, medial, side, gt)


# -- drill paths ------------------------------------------------------------------------
@dataclass(frozen=True)
class PathFigures:
    """Measured figures of one straight drill path from ``entry`` to ``target`` (mm, degrees).

    * ``length_mm``: entry to target;
    * ``bone_entry_lps`` / ``entry_offset_mm``: where the path first enters the femur, and
      how far that is from the planned entry (``nan`` if it never enters);
    * ``max_outside_mm`` / ``max_outside_at_mm``: the largest excursion outside the femur
      between the bone entry and the target, and its distance from the entry (<= 0: inside);
    * ``min_clearance_mm`` / ``min_clearance_at_mm``: the smallest distance from the drill's
      edge (axis distance minus radius) to the femur surface, beyond the entry zone;
    * ``tip_clearance_mm``: the drill tip's edge to the femur (articular) surface;
    * ``target_lesion_sdf_mm``: signed distance of the target to the lesion (<= 0: inside);
    * ``entry_angle_deg``: angle between the outward surface normal at the bone entry and
      the lateral direction; ``entry_level_mm``: the bone entry's height relative to the head
      centre; ``entry_lateral_mm``: its offset lateral of the shaft axis;
    * ``entry_depth_mm``: how deep inside the femur the planned entry lies (<= 0: on or
      outside the surface).
    """

    length_mm: float
    bone_entry_lps: NDArray[np.float64]
    entry_offset_mm: float
    max_outside_mm: float
    max_outside_at_mm: float
    min_clearance_mm: float
    min_clearance_at_mm: float
    tip_clearance_mm: float
    target_lesion_sdf_mm: float
    entry_angle_deg: float
    entry_level_mm: float
    entry_lateral_mm: float
    entry_depth_mm: float = 0.0


def measure_path(
    fields: BoneFields,
    anatomy: FemurAnatomy,
    entry_lps: ArrayLike,
    target_lps: ArrayLike,
    diameter_mm: float,
    entry_zone_mm: float,
    step_mm: float = 0.25,
) -> PathFigures:
    """Measure a straight path on the bone fields (see :class:`PathFigures`)."""
    entry = np.asarray(entry_lps, dtype=np.float64)
    target = np.asarray(target_lps, dtype=np.float64)
    length = float(np.linalg.norm(target - entry))
    n = max(int(np.ceil(length / step_mm)), 1) + 1
    s = np.linspace(0.0, length, n)
    u = (target - entry) / max(length, 1e-9)
    pts = entry + s[:, None] * u
    sdf = fields.femur_sdf(pts)
    radius = diameter_mm / 2.0
    inside = np.flatnonzero(sdf <= 0.0)
    nan3 = np.full(3, np.nan)
    if inside.size == 0:
        k = int(np.argmax(sdf))
        return PathFigures(length, nan3, float("nan"), float(sdf.max()), float(s[k]), float("-inf"),
                           float(s[k]), float(-sdf[-1] - radius), float(fields.lesion_sdf(target)),
                           float("nan"), float("nan"), float("nan"))
    first = int(inside[0])
    if first > 0:  # refine the crossing linearly
        a, b = sdf[first - 1], sdf[first]
        s_entry = s[first - 1] + (s[first] - s[first - 1]) * a / (a - b)
    else:
        s_entry = 0.0
    bone_entry = entry + s_entry * u
    after = s >= s_entry + 0.5 * step_mm
    if after.any():
        k = int(np.argmax(np.where(after, sdf, -np.inf)))
        max_out, max_out_at = float(sdf[k]), float(s[k])
    else:
        max_out, max_out_at = float(sdf[-1]), length
    zone = s >= s_entry + entry_zone_mm
    if zone.any():
        clear = np.where(zone, -sdf - radius, np.inf)
        k = int(np.argmin(clear))
        min_clear, min_clear_at = float(clear[k]), float(s[k])
    else:
        min_clear, min_clear_at = float(-sdf[-1] - radius), length
    normal = fields.femur_normal(bone_entry[None, :])[0]
    angle = float(np.rad2deg(np.arccos(np.clip(normal @ anatomy.lateral, -1.0, 1.0))))
    return PathFigures(
        length_mm=length,
        bone_entry_lps=bone_entry,
        entry_offset_mm=float(s_entry),
        max_outside_mm=max_out,
        max_outside_at_mm=max_out_at,
        min_clearance_mm=min_clear,
        min_clearance_at_mm=min_clear_at,
        tip_clearance_mm=float(-sdf[-1] - radius),
        target_lesion_sdf_mm=float(fields.lesion_sdf(target)),
        entry_angle_deg=angle,
        entry_level_mm=float(anatomy.level_mm(bone_entry)),
        entry_lateral_mm=float(anatomy.lateral_offset_mm(bone_entry)),
        entry_depth_mm=float(-sdf[0]),
    )


def segment_distances_mm(points_lps: NDArray[np.float64], a_lps: ArrayLike, b_lps: ArrayLike) -> NDArray[np.float64]:
    """Distance (mm) of points (N, 3) to the segment from ``a`` to ``b``."""
    a = np.asarray(a_lps, dtype=np.float64)
    b = np.asarray(b_lps, dtype=np.float64)
    ab = b - a
    t = np.clip(((points_lps - a) @ ab) / max(float(ab @ ab), 1e-12), 0.0, 1.0)
    return np.linalg.norm(points_lps - (a + t[:, None] * ab), axis=1)


def lesion_reach_fraction(fields: BoneFields, segments_lps: list[tuple[ArrayLike, ArrayLike]],
                          reach_mm: float) -> float:
    """Fraction of the lesion's voxels within ``reach_mm`` of any drill tract (segment)."""
    pts = fields.lesion_points_lps()
    if len(pts) == 0 or not segments_lps:
        return 0.0
    dist = np.min([segment_distances_mm(pts, a, b) for a, b in segments_lps], axis=0)
    return float(np.mean(dist <= reach_mm))
