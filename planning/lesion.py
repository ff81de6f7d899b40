"""Lesion summary: volume, centroid, extent along the femur's axes, necrotic angles.

Pure functions on :class:`~planning.geometry.BoneFields` and
:class:`~planning.geometry.FemurAnatomy`.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from planning.geometry import BoneFields, FemurAnatomy
from planning.model import JicType, LesionSummary


def arc_deg(angles_rad: NDArray[np.float64]) -> float:
    """Smallest arc (degrees) of the circle that holds every angle (radians)."""
    if angles_rad.size == 0:
        return 0.0
    a = np.sort(np.mod(angles_rad, 2 * np.pi))
    gaps = np.diff(np.concatenate([a, [a[0] + 2 * np.pi]]))
    return float(np.rad2deg(2 * np.pi - gaps.max()))


def kerboul_grade(combined_deg: float) -> str:
    """Modified Kerboul grade of a combined necrotic angle (degrees)."""
    if combined_deg < 160:
        return "I"
    if combined_deg < 200:
        return "II"
    if combined_deg < 240:
        return "III"
    return "IV"


def necrotic_angles_deg(points_lps: NDArray[np.float64], anatomy: FemurAnatomy,
                        slab_mm: float) -> tuple[float, float]:
    """Arcs (degrees) the lesion subtends at the head centre on the mid-coronal plane
    (medial x proximal) and the mid-sagittal plane (anterior x proximal), each using the
    lesion voxels within ``slab_mm`` of the plane in the outer half of the head (the arc is
    that of the necrotic segment under the articular surface; a lesion around the centre
    would otherwise subtend every angle)."""
    rel = points_lps - anatomy.head_center_lps
    rel = rel[np.linalg.norm(rel, axis=1) >= 0.5 * anatomy.head_radius_mm]
    m, a, s = rel @ anatomy.medial, rel @ anatomy.anterior, rel @ anatomy.shaft_axis
    coronal = np.abs(a) <= slab_mm
    sagittal = np.abs(m) <= slab_mm
    return (arc_deg(np.arctan2(s[coronal], m[coronal])), arc_deg(np.arctan2(s[sagittal], a[sagittal])))


def jic_like_type(fields: BoneFields, anatomy: FemurAnatomy, slab_mm: float) -> JicType | None:
    """A JIC-like type (A, B, C1, C2) on the mid-coronal plane, or None where not derivable.

    Approximation of the Japanese Investigation Committee classification: the weight-bearing
    portion spans, along the lateral axis, the acetabular roof (pelvis voxels within
    ``slab_mm`` of the mid-coronal plane, above the head centre and within 15 mm of the head
    surface); the type follows from where the lesion's lateral boundary (lesion voxels of
    that slab above the head centre) falls: medial third A, medial two thirds B, further C1,
    beyond the acetabular edge C2. None without a pelvis label, a roof, or lesion in the slab.
    """
    pelvis = fields.pelvis_points_lps()
    lesion = fields.lesion_points_lps()
    if len(pelvis) == 0 or len(lesion) == 0:
        return None

    def frame(pts: NDArray[np.float64]) -> tuple[NDArray[np.float64], ...]:
        rel = pts - anatomy.head_center_lps
        return rel @ anatomy.lateral, rel @ anatomy.anterior, rel @ anatomy.shaft_axis, np.linalg.norm(rel, axis=1)

    x, a, z, r = frame(pelvis)
    roof = (np.abs(a) <= slab_mm) & (z > 0) & (r <= anatomy.head_radius_mm + 15.0)
    lx, la, lz, _ = frame(lesion)
    wb = (np.abs(la) <= slab_mm) & (lz > 0)
    if np.count_nonzero(roof) < 3 or not wb.any():
        return None
    medial_end, edge = float(x[roof].min()), float(x[roof].max())
    width = edge - medial_end
    lateral_limit = float(lx[wb].max())
    if width <= 0:
        return None
    if lateral_limit > edge:
        return "C2"
    if lateral_limit > medial_end + 2.0 * width / 3.0:
        return "C1"
    if lateral_limit > medial_end + width / 3.0:
        return "B"
    return "A"


def lesion_summary(fields: BoneFields, anatomy: FemurAnatomy) -> LesionSummary:
    """Summarise the lesion of ``fields`` in the femur described by ``anatomy``."""
    pts = fields.lesion_points_lps()
    count = len(pts)
    volume_mm3 = count * fields.voxel_volume_mm3
    spacing = fields.spacing_mm
    rel = pts - anatomy.head_center_lps
    axes = (anatomy.medial, anatomy.anterior, anatomy.shaft_axis)
    # extent: span of voxel centres plus one voxel's footprint along that axis
    d = np.array(fields.labels.GetDirection()).reshape(3, 3)
    extents = []
    for ax in axes:
        proj = rel @ ax
        footprint = float(np.abs(d.T @ ax) @ spacing)
        extents.append(float(np.ptp(proj)) + footprint)
    slab = 0.5 * float(spacing.max()) + 0.5
    cor, sag = necrotic_angles_deg(pts, anatomy, slab)
    combined = cor + sag
    jic = jic_like_type(fields, anatomy, slab)
    location = f"combined necrotic angle {combined:.0f} deg, modified Kerboul grade {kerboul_grade(combined)}"
    if jic is not None:
        location += f"; JIC-like type {jic}"
    head_volume = 4.0 / 3.0 * np.pi * anatomy.head_radius_mm**3
    depth = -fields.femur_sdf_zyx[fields.lesion_zyx]
    return LesionSummary(
        volume_ml=round(volume_mm3 / 1000.0, 4),
        voxel_count=int(count),
        centroid_lps=tuple(float(v) for v in pts.mean(axis=0)),  # type: ignore[arg-type]
        bbox_min_lps=tuple(float(v) for v in pts.min(axis=0)),  # type: ignore[arg-type]
        bbox_max_lps=tuple(float(v) for v in pts.max(axis=0)),  # type: ignore[arg-type]
        extent_ml_mm=round(extents[0], 2),
        extent_ap_mm=round(extents[1], 2),
        extent_si_mm=round(extents[2], 2),
        head_center_lps=tuple(float(v) for v in anatomy.head_center_lps),  # type: ignore[arg-type]
        head_radius_mm=round(anatomy.head_radius_mm, 2),
        head_involvement_percent=round(min(100.0, 100.0 * volume_mm3 / head_volume), 1),
        min_depth_mm=round(max(float(depth.min()), 0.0), 2),
        necrotic_angle_coronal_deg=round(cor, 1),
        necrotic_angle_sagittal_deg=round(sag, 1),
        combined_necrotic_angle_deg=round(combined, 1),
        jic_like_type=jic,
        location_class=location,
    )
