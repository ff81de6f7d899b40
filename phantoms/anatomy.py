"""A continuous (signed-distance) model of one hip: proximal femur with a necrotic lesion,
pelvis with acetabulum, joint space, muscle, fat and skin.

All coordinates are LPS mm in the **anatomy frame**, which is the undistorted MRI frame
(the MRI scanner's patient coordinates, isocentre at the origin). The femur, the pelvis
and the soft tissue are evaluated at separate points (:meth:`HipModel.classify`), so a
renderer can pose each structure on its own (the femur rotates about the femoral head
centre relative to the pelvis; soft tissue deforms) and still use one exact model.

Shape parameters come from :func:`sample_anatomy` (random within anatomical ranges, by
seed) and are plain JSON-serialisable numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import numpy as np
from numpy.typing import NDArray

from phantoms import sdf
from phantoms.sdf import F64, unit

LESION_SIZES = ("small", "medium", "large")


class Tissue(IntEnum):
    """Tissue code of a point. Femur = CORTICAL..OEDEMA, necrosis = NECROSIS, RIM."""

    AIR = 0
    SKIN = 1
    FAT = 2
    MUSCLE = 3
    CORTICAL = 4  # femur cortical shell (incl. subchondral plate)
    TRABECULAR = 5  # femur cancellous bone with fatty marrow
    MARROW = 6  # femur medullary canal (fatty marrow)
    NECROSIS = 7  # necrotic core
    RIM = 8  # sclerotic rim of the lesion (part of the lesion)
    OEDEMA = 9  # bone-marrow oedema around the lesion (femur, not lesion)
    PELVIS_CORTICAL = 10
    PELVIS_TRABECULAR = 11
    JOINT = 12  # cartilage and synovial fluid in the joint space


N_TISSUES = len(Tissue)
FEMUR_CODES = (Tissue.CORTICAL, Tissue.TRABECULAR, Tissue.MARROW, Tissue.NECROSIS, Tissue.RIM, Tissue.OEDEMA)
NECROSIS_CODES = (Tissue.NECROSIS, Tissue.RIM)
PELVIS_CODES = (Tissue.PELVIS_CORTICAL, Tissue.PELVIS_TRABECULAR)


def label_lut() -> NDArray[np.uint8]:
    """Tissue code -> label value (0 background, 1 femur, 2 necrosis, 3 pelvis)."""
    lut = np.zeros(N_TISSUES, dtype=np.uint8)
    lut[list(FEMUR_CODES)] = 1
    lut[list(NECROSIS_CODES)] = 2
    lut[list(PELVIS_CODES)] = 3
    return lut


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def sample_anatomy(
    rng: np.random.Generator,
    side: str,
    lesion_size: str | None = None,
    arco_stage: int | None = None,
    oedema: bool | None = None,
) -> dict[str, Any]:
    """Random anatomical parameters (mm, degrees) of one hip, within adult ranges.

    ``side`` is ``"left"`` or ``"right"``; lesion variant arguments left as None are drawn
    by ``rng`` too. The femoral head centre lies 80-105 mm lateral of the MRI isocentre.
    """
    lat = 1.0 if side == "left" else -1.0  # LPS: +x is the patient's left
    size = lesion_size or LESION_SIZES[int(rng.integers(0, 3))]
    stage = int(arco_stage if arco_stage is not None else rng.choice([2, 3]))
    has_oedema = bool(oedema if oedema is not None else (stage == 3 or rng.uniform() < 0.5))
    r_head = _u(rng, 21.0, 26.0)
    # semi-axes chosen so the lesion occupies about 5-12 / 15-28 / 30-45 % of the head volume
    lesion_radii = {"small": (12.5, 10.0, 8.5), "medium": (18.5, 15.5, 12.0), "large": (23.0, 19.5, 16.0)}[size]
    params: dict[str, Any] = {
        "side": side,
        "lateral_sign": lat,
        "head_centre_mm": [lat * _u(rng, 80.0, 105.0), _u(rng, -15.0, 15.0), _u(rng, -25.0, 25.0)],
        "head_radius_mm": r_head,
        "neck_shaft_angle_deg": _u(rng, 122.0, 138.0),
        "anteversion_deg": _u(rng, 5.0, 25.0),
        "neck_length_mm": _u(rng, 46.0, 56.0),
        "neck_radius_mm": _u(rng, 13.5, 16.0),
        "shaft_radius_mm": _u(rng, 13.0, 15.5),
        "shaft_adduction_deg": _u(rng, 5.0, 10.0),
        "shaft_length_mm": 170.0,
        "cortex_head_mm": _u(rng, 1.2, 2.0),
        "cortex_shaft_mm": _u(rng, 4.0, 6.5),
        "canal_start_mm": _u(rng, 55.0, 70.0),
        "greater_trochanter_radii_mm": [_u(rng, 13.0, 16.0), _u(rng, 11.0, 14.0), _u(rng, 18.0, 23.0)],
        "lesser_trochanter_radius_mm": _u(rng, 7.0, 9.0),
        "lesser_trochanter_level_mm": _u(rng, 38.0, 48.0),
        "joint_space_mm": _u(rng, 3.0, 4.0),
        "acetabulum_wall_mm": _u(rng, 9.0, 13.0),
        "acetabulum_inclination_deg": _u(rng, 38.0, 48.0),
        "acetabulum_anteversion_deg": _u(rng, 12.0, 22.0),
        "pelvis_cortex_mm": _u(rng, 1.2, 2.0),
        "body_centre_xy_mm": [_u(rng, -10.0, 10.0), _u(rng, -10.0, 10.0)],
        "body_semi_axes_mm": [_u(rng, 175.0, 195.0), _u(rng, 115.0, 140.0)],
        "skin_mm": _u(rng, 1.5, 2.5),
        "subcutaneous_fat_mm": _u(rng, 12.0, 35.0),
        "fat_planes": [
            {"normal": unit(rng.normal(size=3)).tolist(), "offset_mm": _u(rng, -60.0, 60.0)}
            for _ in range(4)
        ],
        "lesion": {
            "size": size,
            "arco_stage": stage,
            "oedema": has_oedema,
            "depth_fraction": _u(rng, 0.45, 0.6),
            "direction_jitter": rng.normal(scale=0.15, size=3).tolist(),
            "radii_mm": [r * _u(rng, 0.9, 1.1) for r in lesion_radii],
            "axis_twist_deg": _u(rng, 0.0, 180.0),
            "rim_mm": _u(rng, 1.2, 2.2),
            "oedema_mm": _u(rng, 6.0, 14.0) if has_oedema else 0.0,
            "collapse_mm": _u(rng, 1.5, 3.0) if stage >= 3 else 0.0,
        },
    }
    # cancellous-bone texture: plane waves of 3-8 mm wavelength in the bone's own frame
    params["texture_waves"] = [
        {"k_per_mm": (unit(rng.normal(size=3)) * 2 * np.pi / _u(rng, 3.0, 8.0)).tolist(),
         "phase": _u(rng, 0.0, 2 * np.pi)}
        for _ in range(8)
    ]
    return params


@dataclass
class HipModel:
    """The continuous hip built from :func:`sample_anatomy` parameters (see module doc)."""

    params: dict[str, Any]

    def __post_init__(self) -> None:
        p = self.params
        self._cache: dict[Any, Any] = {}
        s = float(p["lateral_sign"])
        self.lat = np.array([s, 0.0, 0.0])  # lateral unit vector
        up, ant = np.array([0.0, 0.0, 1.0]), np.array([0.0, -1.0, 0.0])
        self.H = np.array(p["head_centre_mm"], dtype=np.float64)
        self.r_head = float(p["head_radius_mm"])
        # shaft axis, pointing distally: down, tilted so the knee lies medial of the hip
        a = np.deg2rad(p["shaft_adduction_deg"])
        self.distal = unit(-np.cos(a) * up - np.sin(a) * self.lat)
        # neck axis (junction -> head): the distal axis rotated by the neck-shaft angle towards
        # medial in the coronal plane, then anteverted about the shaft axis
        nsa = np.deg2rad(p["neck_shaft_angle_deg"])
        medial_perp = unit(-self.lat - (-self.lat @ self.distal) * self.distal)
        head_dir = np.cos(nsa) * self.distal + np.sin(nsa) * medial_perp
        av = np.deg2rad(p["anteversion_deg"])
        ant_perp = unit(ant - (ant @ self.distal) * self.distal)
        # rotate about the shaft axis so the head points anteriorly by the anteversion angle
        comp_d = (head_dir @ self.distal) * self.distal
        radial = head_dir - comp_d
        rn = np.linalg.norm(radial)
        radial_u = radial / rn
        self.head_dir = unit(comp_d + rn * (np.cos(av) * radial_u + np.sin(av) * ant_perp))
        self.J = self.H - p["neck_length_mm"] * self.head_dir  # neck-shaft junction on the shaft axis
        self.shaft_top = self.J - 18.0 * self.distal
        self.shaft_bottom = self.J + p["shaft_length_mm"] * self.distal
        post = -ant
        gt = p["greater_trochanter_radii_mm"]
        self.gt_centre = self.J + 0.55 * gt[0] * self.lat + 6.0 * post - 8.0 * self.distal
        self.gt_axes = sdf.orthonormal_frame(self.lat, post)
        self.gt_axes = np.stack([self.gt_axes[0], self.gt_axes[1], self.gt_axes[2]])
        self.gt_radii = np.array(gt)
        self.lt_centre = self.J + p["lesser_trochanter_level_mm"] * self.distal + 10.0 * (-self.lat) + 8.0 * post
        self.lt_dir = unit(-self.lat + post)
        self.neck_mid = 0.5 * (self.H + self.J)
        # lesion: anterosuperior head
        les = p["lesion"]
        u = unit(up + 0.7 * ant + 0.15 * self.lat + np.array(les["direction_jitter"]))
        self.lesion_dir = u
        self.lesion_centre = self.H + les["depth_fraction"] * self.r_head * u
        tw = np.deg2rad(les["axis_twist_deg"])
        f0 = sdf.orthonormal_frame(u, ant if abs(u @ ant) < 0.9 else self.lat)
        e1 = np.cos(tw) * f0[1] + np.sin(tw) * f0[2]
        self.lesion_axes = np.stack([u, e1, np.cross(u, e1)])
        self.lesion_radii = np.array(les["radii_mm"])
        self.collapse_point = self.H + self.r_head * u
        # acetabulum opening: lateral, tilted down by the inclination and forward by anteversion
        inc, aav = np.deg2rad(p["acetabulum_inclination_deg"]), np.deg2rad(p["acetabulum_anteversion_deg"])
        self.cup_open = unit(np.cos(inc) * self.lat - np.sin(inc) * up + np.tan(aav) * ant)
        # pelvis primitives (anatomy frame)
        self.ilium_centre = self.H + 58.0 * up + 8.0 * (-self.lat) + 10.0 * post
        self.ilium_axes = sdf.orthonormal_frame(unit(self.lat + 0.35 * ant), up)
        self.ilium_radii = np.array([8.0, 60.0, 45.0])
        self.column = (self.H + 12.0 * up - 6.0 * self.lat, self.ilium_centre - 25.0 * up)
        pubic_end = np.array([s * 18.0, self.H[1] - 32.0, self.H[2] - 22.0])
        self.pubis = (self.H + 20.0 * ant - 12.0 * up - 8.0 * self.lat, pubic_end)
        self.ischium = (self.H + 14.0 * post - 20.0 * up - 6.0 * self.lat,
                        self.H + 26.0 * post - 58.0 * up - 14.0 * self.lat)
        # bounding boxes (anatomy frame) to skip far points cheaply
        pts_f = np.array([self.H, self.J, self.shaft_top, self.shaft_bottom, self.gt_centre, self.lt_centre])
        self.femur_box = (pts_f.min(0) - 30.0, pts_f.max(0) + 30.0)
        # conservative bounding ball of head, neck and trochanters (smooth unions add < 3 mm)
        prox = np.array([self.H, self.J, self.gt_centre, self.lt_centre, self.shaft_top])
        self.prox_centre = prox.mean(0)
        reach = [self.r_head, p["neck_radius_mm"], float(self.gt_radii.max()), p["lesser_trochanter_radius_mm"],
                 p["shaft_radius_mm"]]
        self.prox_radius = float(max(np.linalg.norm(q - self.prox_centre) + r for q, r in zip(prox, reach, strict=True))) + 6.0
        r_out = self.r_head + p["joint_space_mm"] + p["acetabulum_wall_mm"] + 4.0
        boxes = [(self.H - r_out, self.H + r_out),
                 (self.ilium_centre - self.ilium_radii.max(), self.ilium_centre + self.ilium_radii.max())]
        boxes += [(np.minimum(a, b) - r, np.maximum(a, b) + r)
                  for (a, b), r in ((self.column, 15.0), (self.pubis, 8.5), (self.ischium, 11.0))]
        margin = 10.0  # smooth-union blends reach a few mm beyond the primitives
        self.pelvis_box = (np.min([b[0] for b in boxes], 0) - margin, np.max([b[1] for b in boxes], 0) + margin)

    def texture(self, x: F64) -> F64:
        """Smooth zero-mean texture of unit variance (N,) at anatomy-frame points (N, 3): the
        cancellous bone's structure, fixed to the bone so it moves with it."""
        waves = self.params.get("texture_waves", [])
        if not waves:
            return np.zeros(x.shape[0])
        t = np.zeros(x.shape[0])
        for w in waves:
            t += np.sin(x @ np.asarray(w["k_per_mm"]) + w["phase"])
        return t * np.sqrt(2.0 / len(waves))

    # -- signed distances ------------------------------------------------------------
    def femur_sdf(self, x: F64) -> F64:
        """Outer surface of the femur (mm, negative inside), incl. the head collapse."""
        p = self.params
        d_head = sdf.sphere(x, self.H, self.r_head)
        c = p["lesion"]["collapse_mm"]
        if c > 0:
            w = np.clip(1.0 - np.linalg.norm(x - self.collapse_point, axis=1) / (0.9 * self.lesion_radii[0]), 0, 1)
            d_head = d_head + c * w * w * (3 - 2 * w)
        d = sdf.smooth_union(d_head, sdf.capsule(x, self.H, self.J, p["neck_radius_mm"]), 4.0)
        d = sdf.smooth_union(d, sdf.capsule(x, self.shaft_top, self.shaft_bottom, p["shaft_radius_mm"]), 8.0)
        d = sdf.smooth_union(d, sdf.ellipsoid(x, self.gt_centre, self.gt_axes, self.gt_radii), 6.0)
        lt = sdf.sphere(x, self.lt_centre, p["lesser_trochanter_radius_mm"])
        return sdf.smooth_union(d, lt, 5.0)

    def cortex_mm(self, x: F64) -> F64:
        """Local cortical thickness: thin in head and neck, thick along the diaphysis."""
        p = self.params
        s = (x - self.J) @ self.distal
        return p["cortex_head_mm"] + (p["cortex_shaft_mm"] - p["cortex_head_mm"]) * sdf.smoothstep(s, 30.0, 80.0)

    def lesion_ellipsoid_sdf(self, x: F64) -> F64:
        return sdf.ellipsoid(x, self.lesion_centre, self.lesion_axes, self.lesion_radii)

    def lesion_sdf(self, x: F64) -> F64:
        """The necrotic lesion (core + sclerotic rim): the ellipsoid inside the femur's
        cancellous bone (below the subchondral plate). Negative inside."""
        inner = self.femur_sdf(x) + self.cortex_mm(x)
        return np.maximum(self.lesion_ellipsoid_sdf(x), inner)

    def pelvis_sdf(self, x: F64) -> F64:
        p = self.params
        r_cav = self.r_head + p["joint_space_mm"]
        wall = p["acetabulum_wall_mm"]
        r = np.linalg.norm(x - self.H, axis=1)
        cup = np.abs(r - (r_cav + 0.5 * wall)) - 0.5 * wall - 2.0
        cup = np.maximum(cup, (x - self.H) @ self.cup_open - 0.12 * self.r_head)
        d = sdf.smooth_union(cup, sdf.ellipsoid(x, self.ilium_centre, self.ilium_axes, self.ilium_radii), 8.0)
        d = sdf.smooth_union(d, sdf.capsule(x, *self.column, 15.0), 8.0)
        d = sdf.smooth_union(d, sdf.capsule(x, *self.pubis, 8.5), 6.0)
        d = sdf.smooth_union(d, sdf.capsule(x, *self.ischium, 11.0), 6.0)
        return np.maximum(d, r_cav - r)  # carve the cavity that holds head and joint space

    def joint_mask(self, x: F64) -> NDArray[np.bool_]:
        """Joint space (cartilage, fluid) between head and acetabulum, in the pelvis frame."""
        r = np.linalg.norm(x - self.H, axis=1)
        cov = (x - self.H) @ self.cup_open < 0.12 * self.r_head
        return (r < self.r_head + self.params["joint_space_mm"]) & cov

    def body_sdf(self, x: F64) -> F64:
        p = self.params
        return sdf.elliptic_cylinder_z(x, np.array(p["body_centre_xy_mm"]), np.array(p["body_semi_axes_mm"]))

    # -- classification ---------------------------------------------------------------
    def classify(self, x_femur: F64, x_pelvis: F64 | None = None, x_soft: F64 | None = None) -> NDArray[np.uint8]:
        """Tissue code (:class:`Tissue`) of each point (see :meth:`classify_with_margin`)."""
        return self.classify_with_margin(x_femur, x_pelvis, x_soft)[0]

    def classify_with_margin(self, x_femur: F64, x_pelvis: F64 | None = None,
                             x_soft: F64 | None = None) -> tuple[NDArray[np.uint8], F64]:
        """Tissue code (:class:`Tissue`) of each point and a margin (mm): an estimate of the
        distance to the nearest tissue interface (soft-tissue distances scaled by 0.6, to allow for
        a soft-tissue deformation that stretches space up to 1.6x). Renderers treat a block of
        voxels as uniform only when the margin at its centre clearly exceeds its size.

        ``x_femur``, ``x_pelvis``, ``x_soft``: (N, 3) anatomy-frame positions of the same N
        image points as seen by the femur, the pelvis and the soft tissue (identical in the
        MRI; different in a posed scan). Priority: femur > pelvis > joint > soft tissue.
        """
        x_pelvis = x_femur if x_pelvis is None else x_pelvis
        x_soft = x_femur if x_soft is None else x_soft
        p = self.params
        n = x_femur.shape[0]
        out = np.zeros(n, dtype=np.uint8)
        # soft tissue
        d_body = self.body_sdf(x_soft)
        inside = d_body < 0
        skin, fat = p["skin_mm"], p["subcutaneous_fat_mm"]
        out[inside] = Tissue.MUSCLE
        out[inside & (d_body > -(skin + fat))] = Tissue.FAT
        out[inside & (d_body > -skin)] = Tissue.SKIN
        margin = np.minimum(np.minimum(np.abs(d_body), np.abs(d_body + skin)), np.abs(d_body + skin + fat))
        muscle = out == Tissue.MUSCLE
        for plane in p["fat_planes"]:
            dist = np.abs((x_soft - self.H) @ np.array(plane["normal"]) - plane["offset_mm"])
            out[muscle & (dist < 0.9)] = Tissue.FAT
            np.minimum(margin, np.abs(dist - 0.9), out=margin)
        margin *= 0.6  # the soft-tissue deformation stretches space by at most ~1.6x
        # joint space and pelvis
        box = _in_box(x_pelvis, self.pelvis_box)
        np.minimum(margin, np.where(box, np.inf, _box_distance(x_pelvis, self.pelvis_box)), out=margin)
        sel = np.flatnonzero(box)
        if sel.size:
            xp = x_pelvis[sel]
            r = sdf.norm(xp - self.H)
            r_cav = self.r_head + p["joint_space_mm"]
            plane = (xp - self.H) @ self.cup_open - 0.12 * self.r_head
            out[sel[(r < r_cav) & (plane < 0)]] = Tissue.JOINT
            m = np.where(r > r_cav, r - r_cav, np.minimum(r_cav - r, np.abs(plane)))
            d_p = self.pelvis_sdf(xp)
            in_p = d_p < 0
            out[sel[in_p]] = Tissue.PELVIS_TRABECULAR
            out[sel[in_p & (d_p > -p["pelvis_cortex_mm"])]] = Tissue.PELVIS_CORTICAL
            m = np.minimum(m, np.where(in_p, np.minimum(-d_p, np.abs(d_p + p["pelvis_cortex_mm"])), d_p))
            margin[sel] = np.minimum(margin[sel], m)
        # femur
        box = _in_box(x_femur, self.femur_box)
        np.minimum(margin, np.where(box, np.inf, _box_distance(x_femur, self.femur_box)), out=margin)
        sel = np.flatnonzero(box)
        if sel.size:
            bound = np.minimum(sdf.sphere(x_femur[sel], self.prox_centre, self.prox_radius),
                               sdf.capsule(x_femur[sel], self.shaft_top, self.shaft_bottom,
                                           self.params["shaft_radius_mm"] + 10.0))
            margin[sel] = np.minimum(margin[sel], np.where(bound < 0, np.inf, bound))
            sel = sel[bound < 0]
        if sel.size:
            xf = x_femur[sel]
            d_f = self.femur_sdf(xf)
            in_f = d_f < 0
            margin[sel] = np.minimum(margin[sel], np.abs(d_f))
            sel, xf, d_f = sel[in_f], xf[in_f], d_f[in_f]
            codes = np.full(sel.size, Tissue.TRABECULAR, dtype=np.uint8)
            s_axis = (xf - self.J) @ self.distal - p["canal_start_mm"]
            codes[s_axis > 0] = Tissue.MARROW
            d_l = self.lesion_ellipsoid_sdf(xf)
            les = p["lesion"]
            m = np.minimum(np.abs(s_axis), np.minimum(np.abs(d_l), np.abs(d_l + les["rim_mm"])))
            if les["oedema_mm"] > 0:
                codes[(d_l < les["oedema_mm"]) & (codes == Tissue.TRABECULAR)] = Tissue.OEDEMA
                m = np.minimum(m, np.abs(d_l - les["oedema_mm"]))
            codes[d_l < 0] = Tissue.RIM
            codes[d_l < -les["rim_mm"]] = Tissue.NECROSIS
            cortex = self.cortex_mm(xf)
            codes[d_f > -cortex] = Tissue.CORTICAL
            m = np.minimum(m, np.abs(d_f + cortex))
            out[sel] = codes
            margin[sel] = np.minimum(margin[sel], m)
        return out, margin

    # -- landmarks --------------------------------------------------------------------
    def lesion_centroid_and_volume(self, step_mm: float = 0.5) -> tuple[F64, float]:
        """Centroid (LPS mm) and volume (mm^3) of the lesion, integrated on a fine grid."""
        key = ("lesion", step_mm)
        if key not in self._cache:
            self._cache[key] = self._lesion_centroid_and_volume(step_mm)
        c, v = self._cache[key]
        return c.copy(), v

    def _lesion_centroid_and_volume(self, step_mm: float) -> tuple[F64, float]:
        r = float(self.lesion_radii.max()) + 1.0
        ax = np.arange(-r, r + 1e-9, step_mm)
        g = np.stack(np.meshgrid(ax, ax, ax, indexing="ij"), -1).reshape(-1, 3) + self.lesion_centre
        inside = self.lesion_sdf(g) < 0
        return g[inside].mean(axis=0), float(inside.sum() * step_mm**3)

    def landmarks(self) -> tuple[dict[str, F64], dict[str, str]]:
        """Anatomical landmarks (anatomy frame, LPS mm) and the structure each belongs to
        (``"femur"`` or ``"pelvis"``). Surface points are found by bisection (< 1e-6 mm)."""
        pts: dict[str, F64] = {}
        up, ant = np.array([0.0, 0.0, 1.0]), np.array([0.0, -1.0, 0.0])
        centroid, _ = self.lesion_centroid_and_volume()
        pts["lesion_centroid"] = centroid
        dirs = np.concatenate([self.lesion_axes, -self.lesion_axes])
        far = centroid + 60.0 * dirs
        b = sdf.find_surface(self.lesion_sdf, np.repeat(centroid[None], 6, 0), far)
        for k in range(6):
            pts[f"lesion_boundary_{k + 1}"] = b[k]
        pts["head_centre"] = self.H.copy()
        head_dirs = np.array([unit(up - 0.3 * self.lat), unit(ant + 0.3 * up), unit(-ant + 0.3 * up),
                              unit(-self.lat + 0.2 * up)])
        hs = sdf.find_surface(self.femur_sdf, np.repeat(self.H[None], 4, 0), self.H + 40.0 * head_dirs)
        for k, name in enumerate(("superior", "anterior", "posterior", "medial")):
            pts[f"head_surface_{name}"] = hs[k]
        nf = sdf.orthonormal_frame(self.head_dir, up)
        neck_dirs = np.array([nf[1], nf[2], -nf[1]])
        ns = sdf.find_surface(self.femur_sdf, np.repeat(self.neck_mid[None], 3, 0), self.neck_mid + 40.0 * neck_dirs)
        for k, name in enumerate(("superior", "side_a", "inferior")):
            pts[f"neck_surface_{name}"] = ns[k]
        gt = sdf.find_surface(self.femur_sdf, self.gt_centre, self.gt_centre + 60.0 * up)[0]
        pts["greater_trochanter_tip"] = gt
        pts["greater_trochanter_lateral"] = sdf.find_surface(
            self.femur_sdf, self.gt_centre, self.gt_centre + 60.0 * self.lat)[0]
        pts["lesser_trochanter"] = sdf.find_surface(
            self.femur_sdf, self.lt_centre, self.lt_centre + 40.0 * self.lt_dir)[0]
        for level in (20.0, 45.0):  # below the neck-shaft junction, inside the MRI field of view
            c = self.J + level * self.distal
            pts[f"shaft_lateral_{int(level)}"] = sdf.find_surface(self.femur_sdf, c, c + 40.0 * self.lat)[0]
        structure = dict.fromkeys(pts, "femur")
        # pelvis: acetabular surface (cavity wall) and bony prominences
        r_cav = self.r_head + self.params["joint_space_mm"]
        cup_dirs = np.array([unit(up - 0.4 * self.lat), unit(up + 0.8 * ant - 0.2 * self.lat),
                             unit(up - 0.8 * ant - 0.2 * self.lat)])
        cs = sdf.find_surface(self.pelvis_sdf, self.H + (r_cav - 1.0) * cup_dirs, self.H + (r_cav + 3.0) * cup_dirs)
        for k, name in enumerate(("roof", "anterior", "posterior")):
            pts[f"acetabulum_{name}"] = cs[k]
        # lateral surface of the iliac wing, and the superior pubic ramus
        ic = self.ilium_centre
        pts["iliac_wing_lateral"] = sdf.find_surface(self.pelvis_sdf, ic, ic + 60.0 * self.lat)[0]
        it = self.ischium[1]
        pts["ischial_tuberosity"] = sdf.find_surface(self.pelvis_sdf, it, it - 40.0 * up)[0]
        pb = 0.7 * self.pubis[0] + 0.3 * self.pubis[1]
        pts["pubic_ramus_anterior"] = sdf.find_surface(self.pelvis_sdf, pb, pb + 30.0 * ant)[0]
        for name in pts:
            structure.setdefault(name, "pelvis")
        return pts, structure


def _box_distance(x: F64, box: tuple[F64, F64]) -> F64:
    """Distance (mm) from points outside an axis-aligned box to it (0 inside)."""
    lo, hi = box
    return sdf.norm(np.maximum(np.maximum(lo - x, x - hi), 0.0))


def _in_box(x: F64, box: tuple[F64, F64]) -> NDArray[np.bool_]:
    lo, hi = box
    return np.all((x >= lo) & (x <= hi), axis=1)
