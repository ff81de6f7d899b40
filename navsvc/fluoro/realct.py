"""Fluoroscopy on real anatomy: the real pelvic CT (``shared/data/real-ct-pelvis``) projected at
known C-arm poses, and the femur pose recovered from those views.

The views are DRRs of the whole real CT (HU -> attenuation, water 0.02/mm, air 0; metal screws,
pelvis, the other femur and the table all in the beam), AP and lateral (90 degrees apart,
isocentric, isocentre at the chosen femoral head), with Poisson detector noise from a fixed seed
and a circular collimator, detector like the phantom views (80 x 80 px at 2.4 mm, SDD 1000 mm,
SAD 600 mm). The C-arm world frame is the CT frame, so the truth is ``T_world_from_mri =
T_ct_from_mri`` of :func:`navsvc.registration.realct.make_real_ct_case` (an MRI-like image and
labels synthesised from the CT's femur and hip masks under a known rigid transform).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from numpy.typing import NDArray

from navsvc.errors import InputError
from navsvc.fluoro.attenuation import MU_WATER_PER_MM
from navsvc.fluoro.drr import AttenuationVolume, render
from navsvc.fluoro.geometry import ViewGeometry, carm_pose
from navsvc.fluoro.pose import perturb
from navsvc.fluoro.register import FluoroOptions, register_mri_to_fluoro
from navsvc.fluoro.views import FluoroView
from navsvc.frames import MRI, WORLD
from navsvc.registration.realct import make_real_ct_case
from navsvc.registration.synthetic import SyntheticCase
from navsvc.transforms import RigidTransform


@dataclass(frozen=True)
class RealCtViewOptions:
    """C-arm of the simulated views (like the phantoms' ``small`` preset)."""

    detector_px: tuple[int, int] = (80, 80)
    pixel_spacing_mm: float = 2.4
    sdd_mm: float = 1000.0
    sad_mm: float = 600.0
    #: primary angles (LAO +), degrees: AP and lateral
    primary_angles_deg: tuple[float, ...] = (0.0, 90.0)
    view_names: tuple[str, ...] = ("ap", "lateral")
    #: automatic exposure control (as a C-arm's): the unattenuated photons per pixel of each view are set so
    #: that the median pixel of its field receives ``detector_counts``; 0 = a fixed ``photons_per_pixel``.
    #: Without it the lateral view through both hips (line integral ~7) received ~15 photons per pixel:
    #: noise with no bone in it, which no C-arm would show.
    detector_counts: float = 1.0e4
    photons_per_pixel: float = 2.0e4
    #: shutter the detector to the rays that stay within the CT's scanned range (``scan_margin_mm`` inside
    #: its first and last slice) where they cross the CT's transverse extent: beyond it the CT holds air
    #: where the patient has tissue (the thighs below this CT), an edge no radiograph shows
    shutter_to_scan: bool = True
    scan_margin_mm: float = 3.0
    n_samples: int = 512
    seed: int = 0
    #: what the views show (diagnosis): ``full`` = the whole CT as scanned; ``no-metal`` = HU capped at
    #: ``metal_cap_hu`` (the screws become dense bone); ``femur-only`` = the bone excess over water inside
    #: the case's femur mask alone (no pelvis, soft tissue, table, other femur)
    content: str = "full"
    metal_cap_hu: float = 1500.0


@dataclass
class RealCtFluoroCase:
    """Views of the real CT and the synthetic MRI case with its truth (world = CT frame)."""

    case: SyntheticCase
    views: list[FluoroView]
    T_world_from_mri_true: RigidTransform
    side: str
    isocentre_world: NDArray[np.float64]


def attenuation_from_hu(ct_hu: sitk.Image) -> sitk.Image:
    """Linear attenuation (1/mm) ``mu_water * (1 + HU / 1000)``, air (and below) 0; same grid."""
    hu = sitk.GetArrayFromImage(ct_hu).astype(np.float32)
    mu = sitk.GetImageFromArray(np.clip(MU_WATER_PER_MM * (1.0 + hu / 1000.0), 0.0, None).astype(np.float32))
    mu.CopyInformation(ct_hu)
    return mu


def content_attenuation(ct_hu: sitk.Image, femur_mask: sitk.Image | None, options: RealCtViewOptions) -> sitk.Image:
    """The attenuation the views are rendered from (see ``RealCtViewOptions.content``)."""
    if options.content == "full":
        return attenuation_from_hu(ct_hu)
    if options.content == "no-metal":
        return attenuation_from_hu(sitk.Clamp(sitk.Cast(ct_hu, sitk.sitkFloat32), sitk.sitkFloat32, -1024.0,
                                              options.metal_cap_hu))
    if options.content == "femur-only":
        if femur_mask is None:
            raise InputError("content 'femur-only' needs the femur mask")
        mu = attenuation_from_hu(ct_hu)
        arr = np.clip(sitk.GetArrayFromImage(mu) - MU_WATER_PER_MM, 0.0, None)
        arr[sitk.GetArrayViewFromImage(femur_mask) == 0] = 0.0
        out = sitk.GetImageFromArray(arr.astype(np.float32))
        out.CopyInformation(ct_hu)
        return out
    raise InputError(f"view content: expected 'full', 'no-metal' or 'femur-only', got {options.content!r}")


def scanned_range_mask(ct: sitk.Image, geom: ViewGeometry, margin_mm: float, n_samples: int = 256
                       ) -> NDArray[np.bool_]:
    """Pixels (rows, columns) whose ray, where it crosses the CT's transverse (x, y) extent, stays within
    the CT's scanned z range less ``margin_mm``; rays that miss that extent are kept. Assumes an axial CT
    (slices along world z, as :func:`make_real_ct_case` requires)."""
    size = np.array(ct.GetSize())
    corners = np.array([ct.TransformContinuousIndexToPhysicalPoint((float(i), float(j), float(k)))
                        for i in (-0.5, size[0] - 0.5) for j in (-0.5, size[1] - 0.5) for k in (-0.5, size[2] - 0.5)])
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    src = geom.source_world
    det = geom.T_world_from_carm.apply(geom.detector_points_carm().reshape(-1, 3))
    t = np.linspace(0.0, 1.0, n_samples)
    pts = src + t[None, :, None] * (det - src)[:, None, :]                   # (pixels, samples, 3)
    in_xy = np.all((pts[..., :2] >= lo[:2]) & (pts[..., :2] <= hi[:2]), axis=-1)
    z_ok = (pts[..., 2] >= lo[2] + margin_mm) & (pts[..., 2] <= hi[2] - margin_mm)
    ok = np.all(z_ok | ~in_xy, axis=1)
    w, h = geom.size_px
    return ok.reshape(h, w)


def project_ct(ct_hu: sitk.Image, isocentre_world: NDArray[np.float64],
               options: RealCtViewOptions = RealCtViewOptions(), femur_mask: sitk.Image | None = None
               ) -> list[FluoroView]:
    """Noisy collimated line-integral views ``-ln(I / I0)`` of the CT (its frame = the world frame), the
    exposure set per view by ``options.detector_counts`` (AEC), shuttered to the CT's scanned range."""
    mu = AttenuationVolume.from_image(content_attenuation(ct_hu, femur_mask, options))
    w, h = options.detector_px
    geoms = [ViewGeometry(options.sdd_mm, (options.pixel_spacing_mm, options.pixel_spacing_mm), (w, h),
                          ((w - 1) / 2.0, (h - 1) / 2.0),
                          carm_pose(isocentre_world, options.sad_mm, primary_angle_deg=a), name)
             for a, name in zip(options.primary_angles_deg, options.view_names, strict=True)]
    with torch.no_grad():
        drrs = [d.numpy().astype(np.float64) for d in render(mu, geoms, torch.eye(4, dtype=torch.float32),
                                                              n_samples=options.n_samples)]
    rng = np.random.default_rng(options.seed)
    uu, vv = np.meshgrid(np.arange(w), np.arange(h))
    outside = (uu - (w - 1) / 2.0) ** 2 + (vv - (h - 1) / 2.0) ** 2 > (0.48 * min(w, h)) ** 2
    views = []
    for geom, drr in zip(geoms, drrs, strict=True):
        field = ~outside
        if options.shutter_to_scan:
            field &= scanned_range_mask(ct_hu, geom, options.scan_margin_mm)
        if not field.any():
            raise InputError(f"view {geom.name}: the collimator and the scan-range shutter leave no pixel open; put "
                             "the isocentre inside the CT's scanned range or turn shutter_to_scan off")
        n0 = options.photons_per_pixel
        if options.detector_counts > 0:
            n0 = options.detector_counts * float(np.exp(np.median(drr[field])))
        counts = rng.poisson(n0 * np.exp(-drr))
        img = -np.log(np.maximum(counts, 0.5) / n0)
        img[~field] = 0.0
        views.append(FluoroView(geom, img.astype(np.float32), source=f"real CT DRR {geom.name}"))
    return views


def make_real_ct_fluoro_case(data_dir: Path, *, side: str | None = None,
                             options: RealCtViewOptions = RealCtViewOptions()) -> RealCtFluoroCase:
    """The synthetic-MRI case of the real CT (``side``: femur; default the one with screws) and the
    CT's views with the isocentre at that femoral head (the case's ``lesion_center``)."""
    case = make_real_ct_case(data_dir, side=side)
    iso = np.asarray(case.landmarks_ct["lesion_center"], dtype=np.float64)
    views = project_ct(case.ct, iso, options, femur_mask=case.extra["femur_ct"])  # type: ignore[arg-type]
    truth = RigidTransform(case.T_ct_from_mri_femur.matrix, WORLD, MRI)
    return RealCtFluoroCase(case, views, truth, str(case.extra["side"]), iso)


def recover(fc: RealCtFluoroCase, options: FluoroOptions | None = None, *, start_deg: float = 10.0,
            start_mm: float = 10.0, seed: int = 0) -> dict[str, Any]:
    """Register the case's labels to its views from the truth perturbed by ``start_deg`` / ``start_mm``
    (about the femoral head); TRE (mm) at the case's landmarks (femur points and the head centre)."""
    head_world = np.asarray(fc.case.landmarks_ct["lesion_center"], dtype=np.float64)
    T_start = perturb(fc.T_world_from_mri_true, start_deg, start_mm, head_world, seed=seed)
    names = sorted(fc.case.landmarks_mri)
    lm_mri = np.array([fc.case.landmarks_mri[n] for n in names])
    lm_world = np.array([fc.case.landmarks_ct[n] for n in names])
    t0 = time.perf_counter()
    result = register_mri_to_fluoro(fc.case.labels, fc.views, options or FluoroOptions(),
                                    T_world_from_mri_init=T_start)
    seconds = time.perf_counter() - t0
    tre = np.linalg.norm(result.T_world_from_mri.apply(lm_mri) - lm_world, axis=1)
    start_tre = np.linalg.norm(T_start.apply(lm_mri) - lm_world, axis=1)
    head = names.index("lesion_center")
    return {"case": f"real-ct-{fc.side}", "side": fc.side, "views": len(fc.views),
            "start_tre_mm": float(start_tre[head]), "head_tre_mm": float(tre[head]),
            "landmark_tre_mean_mm": float(tre.mean()), "landmark_tre_max_mm": float(tre.max()),
            "verdict": result.qa.verdict, "reasons": list(result.qa.reasons),
            "similarity": result.similarity_per_view, "qa_figures": dict(result.qa.figures), "seconds": seconds,
            "T_world_from_mri": result.T_world_from_mri.matrix.tolist()}
