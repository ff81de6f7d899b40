"""Vectorised signed-distance primitives (numpy), LPS mm.

Every function takes points of shape (N, 3) in mm and returns (N,) signed distances in mm:
negative inside, positive outside. Sphere, capsule and slab are exact distances; the
ellipsoid is the usual first-order bound (exact on the axes, within a few per cent near
the surface for the moderate eccentricities used here). The smooth union is the
polynomial smooth minimum (blend width ``k_mm``).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

F64 = NDArray[np.float64]


def norm(v: F64) -> F64:
    """Row-wise Euclidean norm of (N, 3)."""
    return np.sqrt(np.einsum("ij,ij->i", v, v))


def sphere(p: F64, centre: F64, radius_mm: float) -> F64:
    return norm(p - centre) - radius_mm


def capsule(p: F64, a: F64, b: F64, radius_mm: float) -> F64:
    """Distance to the segment a-b minus ``radius_mm``."""
    ab = b - a
    t = np.clip(((p - a) @ ab) / float(ab @ ab), 0.0, 1.0)
    return norm(p - (a + t[:, None] * ab)) - radius_mm


def ellipsoid(p: F64, centre: F64, axes: F64, radii_mm: F64) -> F64:
    """Ellipsoid with orthonormal ``axes`` (3, 3: one unit axis per row) and semi-axes ``radii_mm``."""
    q = (p - centre) @ axes.T  # coordinates along the ellipsoid's axes
    k0 = norm(q / radii_mm)
    k1 = norm(q / radii_mm**2)
    safe = k1 > 1e-9  # at the very centre the bound is 0/0: the distance there is -min(radii)
    return np.where(safe, k0 * (k0 - 1.0) / np.where(safe, k1, 1.0), -float(np.min(radii_mm)))


def elliptic_cylinder_z(p: F64, centre_xy: F64, semi_axes_mm: F64) -> F64:
    """Infinite cylinder along z with an elliptic cross-section (approximate distance)."""
    q = (p[:, :2] - centre_xy) / semi_axes_mm
    return (np.linalg.norm(q, axis=1) - 1.0) * float(np.min(semi_axes_mm))


def smooth_union(d1: F64, d2: F64, k_mm: float) -> F64:
    """Polynomial smooth minimum of two distances; ``k_mm`` = 0 gives the plain union."""
    if k_mm <= 0:
        return np.minimum(d1, d2)
    h = np.clip(0.5 + 0.5 * (d2 - d1) / k_mm, 0.0, 1.0)
    return d2 * (1.0 - h) + d1 * h - k_mm * h * (1.0 - h)


def smoothstep(x: F64 | float, lo: float, hi: float) -> F64:
    t = np.clip((np.asarray(x, dtype=np.float64) - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def unit(v: F64) -> F64:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def orthonormal_frame(primary: F64, hint: F64) -> F64:
    """Rows (e0, e1, e2): e0 along ``primary``, e1 the part of ``hint`` orthogonal to it."""
    e0 = unit(primary)
    e1 = unit(np.asarray(hint, dtype=np.float64) - (hint @ e0) * e0)
    return np.stack([e0, e1, np.cross(e0, e1)])


def find_surface(f, inside: F64, outside: F64, iterations: int = 50) -> F64:  # noqa: ANN001
    """Bisection between point pairs where ``f`` changes sign; returns (N, 3) points on f = 0.

    ``f`` maps (N, 3) -> (N,). Each pair must bracket a sign change (checked).
    """
    a = np.atleast_2d(np.asarray(inside, dtype=np.float64)).copy()
    b = np.atleast_2d(np.asarray(outside, dtype=np.float64)).copy()
    neg_a = f(a) < 0
    if np.any(neg_a == (f(b) < 0)):
        raise ValueError("find_surface: a point pair does not bracket the surface")
    for _ in range(iterations):
        m = 0.5 * (a + b)
        same = (f(m) < 0) == neg_a
        a[same] = m[same]
        b[~same] = m[~same]
    return 0.5 * (a + b)
