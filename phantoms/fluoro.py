"""Fluoroscopy: X-ray projections of the intraoperative scene, ray-marched through the
continuous model (not through the rendered CT), with detector noise and collimation.

Geometry (written as JSON next to each view, all in the CT frame, LPS mm):

* ``carm`` frame: origin at the isocentre, +z along the central ray (source -> detector),
  +x / +y along the detector's pixel columns (u) / rows (v). The source sits at
  (0, 0, -sad_mm), the detector plane at z = sdd_mm - sad_mm.
* ``T_ct_from_carm``: 4x4 mapping carm points to CT points.
* pixel (u, v) (0-based, pixel centres, u along the image's first axis) is the detector
  point (( u - u0) * pixel_mm, (v - v0) * pixel_mm, sdd_mm - sad_mm) in carm, where
  ``principal_point_px`` = (u0, v0) is where the central ray meets the detector.
* ``projection_matrix``: 3x4 P with (u*w, v*w, w) = P @ (x, y, z, 1) for a CT point.

Pixel values: attenuation line integrals ``-ln(I / I0)`` (dimensionless), measured with
Poisson photon noise (``photons_per_pixel`` unattenuated); 0 outside the circular
collimator (``collimator_radius_px``). Attenuation mu(HU) = 0.0206 / mm * (1 + HU / 1000).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from navsvc.errors import InputError
from navsvc.transforms import RigidTransform, rotation_matrix_from_euler_deg, write_json_atomic
from phantoms.anatomy import HipModel
from phantoms.presets import FLUORO_VIEW_ANGLES_DEG, Preset

MU_WATER_PER_MM = 0.0206


def mu_lut(cortical_hu: float, trabecular_hu: float) -> np.ndarray:
    from phantoms.modalities import ct_lut

    return np.clip(MU_WATER_PER_MM * (1.0 + ct_lut(cortical_hu, trabecular_hu) / 1000.0), 0.0, None)


def carm_pose(view: str, isocentre_ct: np.ndarray) -> np.ndarray:
    """T_ct_from_carm (4x4) of a named view: AP has the beam along +y (anterior -> posterior),
    u along the patient's left and v towards the feet; other views orbit about the CT z
    axis and tilt about its x axis (:data:`FLUORO_VIEW_ANGLES_DEG`)."""
    orbit, tilt = FLUORO_VIEW_ANGLES_DEG[view]
    r0 = np.array([[1.0, 0, 0], [0, 0, -1.0], [0, 1.0, 0]]).T  # columns: u, v, beam
    r = rotation_matrix_from_euler_deg((tilt, 0.0, orbit)) @ r0
    m = np.eye(4)
    m[:3, :3] = r
    m[:3, 3] = isocentre_ct
    return m


def projection_matrix(T_ct_from_carm: np.ndarray, sdd_mm: float, sad_mm: float, pixel_mm: float,
                      principal_px: tuple[float, float]) -> np.ndarray:
    k = np.array([[sdd_mm / pixel_mm, 0, principal_px[0]], [0, sdd_mm / pixel_mm, principal_px[1]], [0, 0, 1]])
    r = T_ct_from_carm[:3, :3]
    ext = np.hstack([r.T, (-r.T @ T_ct_from_carm[:3, 3] + np.array([0, 0, sad_mm]))[:, None]])
    return k @ ext


def project(P: np.ndarray, points_ct: np.ndarray) -> np.ndarray:
    """Pixel coordinates (N, 2) of CT points (N, 3) under the 3x4 projection matrix."""
    h = np.c_[np.atleast_2d(points_ct), np.ones(len(np.atleast_2d(points_ct)))] @ P.T
    return h[:, :2] / h[:, 2:3]


def render_fluoro_views(model: HipModel, view_fn: Any, pre: Preset, T_ct_from_mri_pelvis: RigidTransform,
                        rng: np.random.Generator, ct_hu: tuple[float, float] = (1500.0, 300.0)):  # noqa: ANN201
    """Render ``pre.fluoro_views`` of the posed scene (``view_fn``: CT points -> tissue codes)."""
    from phantoms.case import FluoroView

    lut = mu_lut(*ct_hu)
    nu, nv = pre.fluoro_detector_px
    pix = pre.fluoro_pixel_mm
    u0, v0 = (nu - 1) / 2.0 + rng.uniform(-3, 3), (nv - 1) / 2.0 + rng.uniform(-3, 3)
    iso = T_ct_from_mri_pelvis.apply(model.H + 15.0 * model.lat - 20.0 * np.array([0, 0, 1.0]))
    views = []
    for n, name in enumerate(pre.fluoro_views):
        iso_n = iso + rng.uniform(-8, 8, size=3)
        m = carm_pose(name, iso_n)
        uu, vv = np.meshgrid(np.arange(nu, dtype=np.float64), np.arange(nv, dtype=np.float64), indexing="xy")
        det = np.stack([(uu - u0) * pix, (vv - v0) * pix, np.full_like(uu, pre.fluoro_sdd_mm - pre.fluoro_sad_mm)], -1)
        src = np.array([0.0, 0.0, -pre.fluoro_sad_mm])
        dirs = det.reshape(-1, 3) - src
        length = np.linalg.norm(dirs, axis=1)
        dirs /= length[:, None]
        half = 140.0  # march +-140 mm about the isocentre plane
        n_steps = int(np.ceil(2 * half / pre.fluoro_step_mm))
        integral = np.zeros(dirs.shape[0])
        r = m[:3, :3]
        for a in range(0, dirs.shape[0], 2048):
            d = dirs[a:a + 2048]
            t_c = pre.fluoro_sad_mm / d[:, 2]  # distance from the source to the isocentre plane
            off = rng.uniform(0, 1, size=(d.shape[0], 1))  # stratified: one jitter per ray
            t = t_c[:, None] + (-half + (np.arange(n_steps)[None, :] + off) * pre.fluoro_step_mm)
            pts_carm = src + t[..., None] * d[:, None, :]
            pts_ct = pts_carm.reshape(-1, 3) @ r.T + m[:3, 3]
            mu = lut[view_fn(pts_ct)[0]].reshape(d.shape[0], n_steps)
            integral[a:a + 2048] = mu.sum(axis=1) * pre.fluoro_step_mm
        n0 = pre.fluoro_photons
        counts = rng.poisson(n0 * np.exp(-integral))
        measured = -np.log(np.maximum(counts, 0.5) / n0)
        img = measured.reshape(nv, nu)
        radius = 0.48 * min(nu, nv)
        outside = (uu - (nu - 1) / 2.0) ** 2 + (vv - (nv - 1) / 2.0) ** 2 > radius**2
        img[outside] = 0.0
        P = projection_matrix(m, pre.fluoro_sdd_mm, pre.fluoro_sad_mm, pix, (u0, v0))
        geometry = {
            "view": name, "index": n, "sdd_mm": pre.fluoro_sdd_mm, "sad_mm": pre.fluoro_sad_mm,
            "pixel_spacing_mm": [pix, pix], "size_px": [nu, nv], "principal_point_px": [u0, v0],
            "T_ct_from_carm": m.tolist(), "source_position_ct_mm": (m[:3, :3] @ src + m[:3, 3]).tolist(),
            "projection_matrix": P.tolist(), "collimator_radius_px": radius,
            "photons_per_pixel": n0, "values": "attenuation line integral -ln(I/I0)",
            "mu_water_per_mm": MU_WATER_PER_MM, "conventions": "see phantoms/fluoro.py",
        }
        image = sitk.GetImageFromArray(img.astype(np.float32))
        image.SetSpacing((pix, pix))
        views.append(FluoroView(image, geometry))
    return views


def add_projected_landmarks(views: list, landmarks_ct: dict[str, np.ndarray]) -> None:
    """Store each landmark's true pixel position (u, v) in every view's geometry."""
    names = list(landmarks_ct)
    pts = np.array([landmarks_ct[n] for n in names])
    for v in views:
        uv = project(np.array(v.geometry["projection_matrix"]), pts)
        v.geometry["landmarks_px"] = {n: uv[k].tolist() for k, n in enumerate(names)}


def write_views(views: list, folder: Path) -> None:
    from navsvc.imaging import write_image

    folder.mkdir(parents=True, exist_ok=True)
    for k, v in enumerate(views):
        write_image(folder / f"view_{k}.nii.gz", v.image)
        write_json_atomic(folder / f"view_{k}.json", v.geometry)


def read_views(folder: Path) -> list:
    from phantoms.case import FluoroView

    views = []
    for img_path in sorted(folder.glob("view_*.nii.gz"), key=lambda p: int(p.name.split("_")[1].split(".")[0])):
        js = img_path.with_name(img_path.name.replace(".nii.gz", ".json"))
        try:
            geometry = json.loads(js.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"{js}: cannot read the view geometry: {exc}") from exc
        views.append(FluoroView(sitk.ReadImage(str(img_path)), geometry))
    return views
