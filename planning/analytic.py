"""An analytic proximal femur with a necrotic lesion: exact geometry for planner tests.

The femur is a union of capsules (a capsule is all points within ``radius_mm`` of a
segment; a sphere is a capsule with a zero-length segment): shaft, neck, head and
greater trochanter. The lesion is a sphere in the femoral head, the pelvis a spherical
shell cap (acetabulum) over the head. Everything is built in the patient's LPS frame
for a right or a left hip, then voxelised on an oblique, anisotropic grid with a
non-zero origin -- the cases where frame bugs hide.

Distances measured here (:meth:`AnalyticFemur.surface_distance_mm`) come from dense
samples of the exact surfaces, independent of the planner's distance fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import SimpleITK as sitk
from numpy.typing import ArrayLike, NDArray
from scipy.spatial import cKDTree

from navsvc.imaging import make_image, voxel_centers_lps
from navsvc.transforms import rotation_matrix_from_euler_deg


@dataclass(frozen=True)
class Capsule:
    """All points within ``radius_mm`` of the segment ``a_lps``-``b_lps``."""

    a_lps: NDArray[np.float64]
    b_lps: NDArray[np.float64]
    radius_mm: float

    def sdf(self, points_lps: NDArray[np.float64]) -> NDArray[np.float64]:
        """Exact signed distance (mm), negative inside, of points (N, 3)."""
        ab = self.b_lps - self.a_lps
        denom = max(float(ab @ ab), 1e-12)
        t = np.clip(((points_lps - self.a_lps) @ ab) / denom, 0.0, 1.0)
        closest = self.a_lps + t[:, None] * ab
        return np.linalg.norm(points_lps - closest, axis=1) - self.radius_mm

    def surface_samples(self, step_mm: float) -> NDArray[np.float64]:
        """Points (N, 3) on the capsule's surface, about ``step_mm`` apart."""
        r = self.radius_mm
        ab = self.b_lps - self.a_lps
        length = float(np.linalg.norm(ab))
        n_sphere = max(int(4 * np.pi * r * r / step_mm**2), 64)
        sphere = _fibonacci_sphere(n_sphere) * r
        if length < 1e-9:
            return self.a_lps + sphere
        axis = ab / length
        ends = [self.a_lps + sphere[sphere @ axis <= 0], self.b_lps + sphere[sphere @ axis >= 0]]
        e1 = np.cross(axis, [1.0, 0.0, 0.0] if abs(axis[0]) < 0.9 else [0.0, 1.0, 0.0])
        e1 /= np.linalg.norm(e1)
        e2 = np.cross(axis, e1)
        n_ring = max(int(2 * np.pi * r / step_mm), 16)
        phi = np.linspace(0.0, 2 * np.pi, n_ring, endpoint=False)
        ring = r * (np.cos(phi)[:, None] * e1 + np.sin(phi)[:, None] * e2)
        ts = np.linspace(0.0, length, max(int(length / step_mm), 1) + 1)
        body = (self.a_lps + ts[:, None, None] * axis + ring[None, :, :]).reshape(-1, 3)
        return np.concatenate([body, *ends])


def _fibonacci_sphere(n: int) -> NDArray[np.float64]:
    i = np.arange(n) + 0.5
    z = 1.0 - 2.0 * i / n
    r = np.sqrt(1.0 - z * z)
    theta = np.pi * (1.0 + 5**0.5) * i
    return np.stack([r * np.cos(theta), r * np.sin(theta), z], axis=1)


@dataclass(frozen=True)
class AnalyticFemur:
    """Exact femur, lesion and acetabulum of one hip, plus the voxelised images.

    ``mri`` is a T1-like image (marrow bright, lesion dark), ``labels`` holds femur=1,
    necrosis=2 (inside the femur), pelvis=3, both on the same oblique grid.
    """

    side: str
    parts: tuple[Capsule, ...]
    head_center_lps: NDArray[np.float64]
    head_radius_mm: float
    neck_axis: NDArray[np.float64]          # unit, from the neck-shaft junction towards the head
    shaft_axis: NDArray[np.float64]         # unit, proximal
    medial: NDArray[np.float64]             # unit
    lesion_center_lps: NDArray[np.float64]
    lesion_radius_mm: float
    mri: sitk.Image
    labels: sitk.Image

    def femur_sdf(self, points_lps: ArrayLike) -> NDArray[np.float64]:
        """min over capsules: its sign is exact (inside < 0); its value only bounds depth."""
        p = np.atleast_2d(np.asarray(points_lps, dtype=np.float64))
        return np.min([c.sdf(p) for c in self.parts], axis=0)

    def lesion_sdf(self, points_lps: ArrayLike) -> NDArray[np.float64]:
        """Exact signed distance (mm) to the lesion sphere (the lesion lies inside the head)."""
        p = np.atleast_2d(np.asarray(points_lps, dtype=np.float64))
        return np.linalg.norm(p - self.lesion_center_lps, axis=1) - self.lesion_radius_mm

    def surface_tree(self, step_mm: float = 0.4) -> cKDTree:
        """KD-tree of dense samples of the femur's outer surface (each capsule's surface
        outside every other capsule)."""
        keep = []
        for i, c in enumerate(self.parts):
            pts = c.surface_samples(step_mm)
            others = [o.sdf(pts) for j, o in enumerate(self.parts) if j != i]
            mask = np.min(others, axis=0) > 0 if others else np.ones(len(pts), bool)
            keep.append(pts[mask])
        return cKDTree(np.concatenate(keep))

    def surface_distance_mm(self, points_lps: ArrayLike, tree: cKDTree | None = None) -> NDArray[np.float64]:
        """Unsigned distance (mm) of points (N, 3) to the femur surface (dense-sample estimate,
        error below 0.3 mm)."""
        tree = tree or self.surface_tree()
        d, _ = tree.query(np.atleast_2d(np.asarray(points_lps, dtype=np.float64)))
        return np.asarray(d, dtype=np.float64)


def make_analytic_femur(
    side: str = "right",
    lesion_radius_mm: float = 8.0,
    lesion_depth_mm: float = 12.0,
    seed: int = 0,
    spacing_mm: tuple[float, float, float] = (1.2, 1.4, 2.0),
    grid_euler_deg: tuple[float, float, float] = (6.0, -8.0, 14.0),
    origin_shift_lps: tuple[float, float, float] = (-31.0, 17.0, 112.0),
    neck_shaft_angle_deg: float = 130.0,
    anteversion_deg: float = 12.0,
) -> AnalyticFemur:
    """Build an analytic hip and voxelise it.

    The lesion centre sits ``lesion_depth_mm`` from the head centre in the antero-superior
    direction; ``seed`` jitters that direction and the image noise. Returns
    :class:`AnalyticFemur` with ``mri`` (float32) and ``labels`` (uint8) on an oblique grid
    (``grid_euler_deg``) with anisotropic ``spacing_mm`` and a non-zero origin.
    """
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    rng = np.random.default_rng(seed)
    shift = np.asarray(origin_shift_lps, dtype=np.float64)
    up = np.array([0.0, 0.0, 1.0])
    medial = np.array([1.0, 0.0, 0.0]) if side == "right" else np.array([-1.0, 0.0, 0.0])
    anterior = np.array([0.0, -1.0, 0.0])
    rise = np.deg2rad(neck_shaft_angle_deg - 90.0)
    av = np.deg2rad(anteversion_deg)
    horizontal = np.cos(av) * medial + np.sin(av) * anterior
    neck_axis = np.cos(rise) * horizontal + np.sin(rise) * up
    junction = shift.copy()
    head_r = 22.0
    head_c = junction + 55.0 * neck_axis
    lateral = -medial
    parts = (
        Capsule(junction - 75.0 * up, junction + 5.0 * up, 14.0),                 # shaft
        Capsule(junction, head_c, 13.0),                                          # neck
        Capsule(head_c, head_c, head_r),                                          # head
        Capsule(junction + 6.0 * lateral, junction + 8.0 * lateral + 25.0 * up, 10.0),  # trochanter
    )
    direction = 0.75 * up + 0.45 * anterior + 0.25 * medial + 0.15 * rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    lesion_c = head_c + lesion_depth_mm * direction
    if lesion_depth_mm + lesion_radius_mm > head_r - 0.5:
        raise ValueError("lesion must stay inside the femoral head: expected "
                         f"depth + radius <= {head_r - 0.5} mm, got {lesion_depth_mm + lesion_radius_mm}")

    # oblique grid covering the region of interest
    rot = rotation_matrix_from_euler_deg(grid_euler_deg)
    lo_box = np.minimum(junction - 75.0 * up, head_c - 40.0) - 5.0
    hi_box = np.maximum(head_c + 40.0, junction + 25.0 * lateral + 45.0 * up) + 5.0
    lo_box[:2] = np.minimum(lo_box[:2], (junction + 30.0 * lateral)[:2] - 5.0)
    hi_box[:2] = np.maximum(hi_box[:2], (junction + 30.0 * lateral)[:2] + 5.0)
    corners = np.array([[x, y, z] for x in (lo_box[0], hi_box[0]) for y in (lo_box[1], hi_box[1])
                        for z in (lo_box[2], hi_box[2])])
    local = corners @ rot  # coordinates along the grid axes (rot columns)
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    lo_local = local.min(axis=0)
    size = np.ceil((local.max(axis=0) - lo_local) / spacing).astype(int) + 1
    origin = rot @ lo_local
    ref = make_image(np.zeros(size[::-1], dtype=np.uint8), spacing, origin, rot.ravel())
    pts = voxel_centers_lps(ref)
    femur_sdf = np.min([c.sdf(pts) for c in parts], axis=0)
    femur = femur_sdf <= 0
    lesion = femur & (np.linalg.norm(pts - lesion_c, axis=1) <= lesion_radius_mm)
    dist_head = np.linalg.norm(pts - head_c, axis=1)
    cup_axis = up + 0.3 * medial
    cup_axis /= np.linalg.norm(cup_axis)
    cos_cup = ((pts - head_c) @ cup_axis) / np.maximum(dist_head, 1e-9)
    pelvis = (dist_head >= head_r + 2.0) & (dist_head <= head_r + 7.0) & (cos_cup >= np.cos(np.deg2rad(70)))
    lab = np.zeros(len(pts), dtype=np.uint8)
    lab[pelvis] = 3
    lab[femur] = 1
    lab[lesion] = 2
    shape = tuple(size[::-1])
    labels = make_image(lab.reshape(shape), spacing, origin, rot.ravel())
    intensity = np.choose(lab, [200.0, 520.0, 160.0, 430.0]) + rng.normal(0.0, 12.0, size=lab.shape)
    mri = make_image(intensity.reshape(shape).astype(np.float32), spacing, origin, rot.ravel())
    return AnalyticFemur(
        side=side, parts=parts, head_center_lps=head_c, head_radius_mm=head_r, neck_axis=neck_axis,
        shaft_axis=up, medial=medial, lesion_center_lps=lesion_c, lesion_radius_mm=lesion_radius_mm,
        mri=mri, labels=labels,
    )


@lru_cache(maxsize=16)
def cached_analytic_femur(side: str = "right", lesion_radius_mm: float = 8.0, lesion_depth_mm: float = 12.0,
                          seed: int = 0) -> AnalyticFemur:
    """:func:`make_analytic_femur` with default geometry, built once per argument set (tests)."""
    return make_analytic_femur(side, lesion_radius_mm, lesion_depth_mm, seed)
