"""Lesion summary: volume, centroid, extent along the femur's axes, necrotic angles.

Pure functions on :class:`~planning.geometry.BoneFields` and
:class:`~planning.geometry.FemurAnatomy`.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from planning.geometry import BoneFields, FemurAnatomy
from planning.model import LesionSummary


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
    """Arcs (degrees) the lesion voxels subtend at the head centre on the mid-coronal plane
    (medial x proximal) and the mid-sagittal plane (anterior x proximal), each using the
    voxels within ``slab_mm`` of the plane."""
    rel = points_lps - anatomy.head_center_lps
    m, a, s = rel @ anatomy.medial, rel @ anatomy.anterior, rel @ anatomy.shaft_axis
    coronal = np.abs(a) <= slab_mm
    sagittal = np.abs(m) <= slab_mm
    return (arc_deg(np.arctan2(s[coronal], m[coronal])), arc_deg(np.arctan2(s[sagittal], a[sagittal])))


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
        location_class=f"combined necrotic angle {combined:.0f} deg, modified Kerboul grade {kerboul_grade(combined)}",
    )
