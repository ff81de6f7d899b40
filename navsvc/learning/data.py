"""Training data for the velocity network, with known truth.

Two sources, both on the network's input grid (the femur region of the CT, 2.5 mm):

* **Rendered pairs** (:func:`prepare_case`): a phantom case from ``phantoms.make_case``
  (rendered MRI and CT; with gradient nonlinearity on, the MRI is distorted). The rigid stage
  is stood in for by the best rigid fit of the true femur mapping (the floor a rigid method
  can reach), and the truth field is what is left: ``u(x) = R^-1(m(x)) - x`` with
  ``m(x) = distort(T_mri_from_ct_femur(x))``, the MRI position showing the anatomy at CT point x.
* **Label-synthesised pairs** (:func:`make_sample` with ``synth=True``): both images are
  rendered from the case's tissue-class map (CT classes by HU + the phantom's bone labels)
  with random intensities per class, so the network cannot learn our renderers' contrasts.

Every sample adds a random smooth polynomial field (orders 0-3, up to ``max_aug_mm`` in the
femur: residual rigid error plus distortion) of known value to the moving image, and
randomises the moving image's contrast (random intensity curve), bias field, noise and
resolution (blur along a random axis). The truth of a sample is ``u_case + u_aug`` (first order
composition; the second-order term is below 0.05 mm for these fields).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F_t

from navsvc.learning.network import (
    basis,
    fit_weights,
    grid_points_lps,
    image_inputs,
    input_grid,
)

log = logging.getLogger(__name__)

DATA_VERSION = 2
N_CLASSES = 7  # air, fat, soft tissue, femur, necrosis, pelvis, other bone


@dataclass
class CasePair:
    """One rendered pair on its input grid. Tensors (1, 1, Z, Y, X) except ``truth_vox``
    (3, Z, Y, X): the residual field in voxels of ``grid``, channels (z, y, x)."""

    name: str
    grid: sitk.Image
    fixed: torch.Tensor
    moving: torch.Tensor
    femur_moving: torch.Tensor
    femur_fixed: torch.Tensor
    classes: torch.Tensor  # (1, 1, Z, Y, X) int64 tissue classes of the CT
    truth_vox: torch.Tensor

    def to_dict(self) -> dict[str, Any]:
        g = self.grid
        return {"version": DATA_VERSION, "name": self.name,
                "grid": {"size": list(g.GetSize()), "spacing": list(g.GetSpacing()), "origin": list(g.GetOrigin()),
                         "direction": list(g.GetDirection())},
                **{k: getattr(self, k) for k in ("fixed", "moving", "femur_moving", "femur_fixed", "classes",
                                                 "truth_vox")}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CasePair:
        g = sitk.Image([int(s) for s in d["grid"]["size"]], sitk.sitkFloat32)
        g.SetSpacing(d["grid"]["spacing"])
        g.SetOrigin(d["grid"]["origin"])
        g.SetDirection(d["grid"]["direction"])
        return cls(d["name"], g, *(d[k] for k in ("fixed", "moving", "femur_moving", "femur_fixed", "classes",
                                                   "truth_vox")))


def parse_cases(spec: str) -> list[tuple[str, int]]:
    """``"small-distorted:1000-1003,small:1010"`` -> [(preset, seed), ...]."""
    from navsvc.errors import ConfigError

    out: list[tuple[str, int]] = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        preset, _, seeds = part.partition(":")
        if not seeds:
            raise ConfigError(f"case spec {part!r}: expected PRESET:SEED or PRESET:FIRST-LAST")
        try:
            lo, _, hi = seeds.partition("-")
            out += [(preset, s) for s in range(int(lo), int(hi or lo) + 1)]
        except ValueError:
            raise ConfigError(f"case spec {part!r}: expected integer seeds, got {seeds!r}") from None
    if not out:
        raise ConfigError(f"case spec {spec!r}: expected at least one PRESET:SEED")
    return out


def true_rigid_and_truth(case: Any, grid: sitk.Image) -> tuple[Any, np.ndarray]:
    """(best rigid ``T_mri_from_ct`` of the femur, the residual field on ``grid`` in LPS mm
    (Z, Y, X, 3)). The fit uses the true CT femur voxels."""
    from navsvc.calibration import rigid_fit
    from navsvc.frames import CT, MRI
    from navsvc.transforms import RigidTransform
    from phantoms import pose as pose_mod

    dist = case.params.get("mri", {}).get("distortion")
    T_mri_from_ct_femur = case.T_ct_from_mri_femur.inverse()

    def m(x: np.ndarray) -> np.ndarray:
        return pose_mod.distort(T_mri_from_ct_femur.apply(x), dist)

    lab = sitk.GetArrayViewFromImage(case.labels_ct)
    kji = np.argwhere(np.isin(lab, (1, 2)))[::7]
    from navsvc.imaging import lps_from_index

    x = lps_from_index(case.labels_ct, kji[:, ::-1].astype(np.float64))
    R = RigidTransform(rigid_fit(x, m(x)), MRI, CT)
    pts = grid_points_lps(grid).reshape(-1, 3)
    u = R.inverse().apply(m(pts)) - pts
    return R, u.reshape(*grid.GetSize()[::-1], 3)


def lps_to_vox(u_lps: np.ndarray, grid: sitk.Image) -> torch.Tensor:
    """(Z, Y, X, 3) LPS mm -> (3, Z, Y, X) voxels of ``grid``, channels (z, y, x)."""
    d = np.array(grid.GetDirection()).reshape(3, 3)
    u_ijk = (u_lps @ d) / np.array(grid.GetSpacing())
    return torch.from_numpy(np.ascontiguousarray(u_ijk[..., ::-1].transpose(3, 0, 1, 2))).float()


def tissue_classes(ct_on_grid: np.ndarray, labels_on_grid: np.ndarray) -> np.ndarray:
    """0 air, 1 fat, 2 soft tissue, 3 femur, 4 necrosis, 5 pelvis, 6 other bone (by HU > 200)."""
    c = np.full(ct_on_grid.shape, 2, dtype=np.int64)
    c[ct_on_grid < -500] = 0
    c[(ct_on_grid >= -500) & (ct_on_grid < -30)] = 1
    c[ct_on_grid > 200] = 6
    c[labels_on_grid == 1] = 3
    c[labels_on_grid == 2] = 4
    c[labels_on_grid == 3] = 5
    return c


def prepare_case(preset: str, seed: int, spacing_mm: float = 2.5, cache_dir: Path | None = None,
                 case: Any = None) -> CasePair:
    """Generate (or load from ``cache_dir``) the rendered pair of phantom ``preset``/``seed``;
    ``case``: that phantom when the caller has it already (not generated again)."""
    name = f"{preset}-{seed}-{spacing_mm:g}mm-v{DATA_VERSION}"
    path = Path(cache_dir) / f"{name}.pt" if cache_dir else None
    if path is not None and path.is_file():
        return CasePair.from_dict(torch.load(path, weights_only=False))
    if case is None:
        from phantoms import make_case

        case = make_case(seed, preset)
    pair = pair_from_case(case, spacing_mm, name)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(pair.to_dict(), tmp)
        tmp.replace(path)
    return pair


def fat_shift_of(case: Any) -> tuple[float, float, float] | None:
    """The case's fat shift vector (LPS mm) from its acquisition parameters, None when off
    (as ``navsvc.registration.validation_methods.run_case`` gives it to the pipeline)."""
    mri = case.params.get("mri", {}) if isinstance(case.params, dict) else {}
    shift = float(mri.get("chemical_shift_mm", 0.0) or 0.0)
    if not shift:
        return None
    return tuple(shift * float(v) for v in mri["readout_direction_lps"])  # type: ignore[return-value]


def pair_from_case(case: Any, spacing_mm: float, name: str = "") -> CasePair:
    """The rendered pair of a phantom case on its input grid (see the module doc)."""
    from navsvc.registration import qa

    femur_mri = sitk.Cast((case.labels == 1) | (case.labels == 2), sitk.sitkUInt8)
    # first the region under the true femur motion, then the best rigid fit of it
    R0, _ = true_rigid_and_truth(case, input_grid(sitk.Cast((case.labels_ct == 1) | (case.labels_ct == 2),
                                                           sitk.sitkUInt8), spacing_mm))
    femur_ct = qa.map_mask(femur_mri, case.ct, R0)
    grid = input_grid(femur_ct, spacing_mm)
    R, u_lps = true_rigid_and_truth(case, grid)
    inputs = image_inputs(case.ct, case.mri, femur_mri, R, grid, fat_shift_mm=fat_shift_of(case))
    lab = sitk.Resample(case.labels_ct, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    ct_g = sitk.Resample(sitk.Cast(case.ct, sitk.sitkFloat32), grid, sitk.Transform(), sitk.sitkLinear, -1000.0)
    lab_np = sitk.GetArrayFromImage(lab)
    classes = tissue_classes(sitk.GetArrayFromImage(ct_g), lab_np)
    femur_fixed = torch.from_numpy(np.isin(lab_np, (1, 2)).astype(np.float32))[None, None]
    return CasePair(name or case.name, grid, inputs["fixed"], inputs["moving"], inputs["femur"], femur_fixed,
                    torch.from_numpy(classes)[None, None], lps_to_vox(u_lps, grid))


# -- augmentation ---------------------------------------------------------------------------
def random_poly_vox(grid: sitk.Image, region: torch.Tensor, rng: np.random.Generator, max_mm: float,
                    order: int = 3, scale_mm: float = 50.0) -> torch.Tensor:
    """A random polynomial field (orders 0..order) on ``grid`` (3, Z, Y, X) voxels, channels
    (z, y, x), whose largest displacement inside ``region`` is uniform in [0, max_mm]."""
    from navsvc.learning.network import exponents

    pts = grid_points_lps(grid)
    centre = pts.reshape(-1, 3).mean(0)
    d = np.array(grid.GetDirection()).reshape(3, 3)
    local = torch.as_tensor((pts - centre) @ d / scale_mm, dtype=torch.float32)
    decay = np.array([0.7 ** sum(e) for e in exponents(order)])
    coeffs = torch.as_tensor(rng.normal(size=(len(decay), 3)) * decay[:, None], dtype=torch.float32)
    u = basis(local, order) @ coeffs  # (Z, Y, X, 3) mm along grid axes
    mask = region[0, 0] > 0.5
    peak = u.norm(dim=-1)[mask].max() if mask.any() else u.norm(dim=-1).max()
    u = u * float(rng.uniform(0.0, max_mm)) / peak.clamp_min(1e-6)
    sp = torch.as_tensor(grid.GetSpacing(), dtype=torch.float32)
    return (u / sp).permute(3, 0, 1, 2).flip(0).contiguous()


def _smooth_bias(shape: tuple[int, ...], rng: np.random.Generator, amplitude: float) -> torch.Tensor:
    coarse = torch.as_tensor(rng.normal(scale=amplitude, size=(1, 1, 3, 3, 3)), dtype=torch.float32)
    return torch.exp(F_t.interpolate(coarse, size=shape, mode="trilinear", align_corners=True))


def _blur(t: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Gaussian blur along one random axis (thick slices), sigma 0-1.2 voxels."""
    sigma = float(rng.uniform(0.0, 1.2))
    if sigma < 0.2:
        return t
    r = 3
    k = torch.exp(-torch.arange(-r, r + 1, dtype=torch.float32) ** 2 / (2 * sigma**2))
    k = k / k.sum()
    axis = int(rng.integers(0, 3))
    shape = [1, 1, 1, 1, 1]
    shape[2 + axis] = 2 * r + 1
    pad = [0] * 6
    pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = r
    return F_t.conv3d(F_t.pad(t, pad, mode="replicate"), k.reshape(shape))


def random_contrast(t01: torch.Tensor, rng: np.random.Generator, strength: float = 1.0) -> torch.Tensor:
    """A random intensity curve (piecewise linear through 6 random knots, not monotone), gamma,
    bias field, blur and noise; returns [0, 1]."""
    from navsvc.learning.network import normalise01

    knots_y = torch.as_tensor(rng.uniform(0, 1, size=6), dtype=torch.float32)
    ident = torch.linspace(0, 1, 6)
    knots_y = (1 - strength) * ident + strength * knots_y
    x = t01.clamp(0, 1) * 5
    i = x.floor().clamp(max=4).long()
    f = x - i
    y = knots_y[i] * (1 - f) + knots_y[i + 1] * f
    y = y.clamp_min(0) ** float(np.exp(rng.normal(scale=0.3 * strength)))
    y = y * _smooth_bias(tuple(t01.shape[2:]), rng, 0.15 * strength)
    y = _blur(y, rng)
    y = y + torch.as_tensor(rng.normal(scale=rng.uniform(0.0, 0.05), size=tuple(y.shape)), dtype=torch.float32)
    return normalise01(y)


def _render_classes(prob: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Random intensity per tissue class: prob (1, K, Z, Y, X) -> (1, 1, Z, Y, X)."""
    mu = torch.as_tensor(rng.uniform(0, 1, size=prob.shape[1]), dtype=torch.float32)
    img = (prob * mu[None, :, None, None, None]).sum(1, keepdim=True)
    return img


def make_sample(pair: CasePair, rng: np.random.Generator, synth: bool, max_aug_mm: float = 2.5) -> dict[str, Any]:
    """One training sample from ``pair`` (see the module doc): fixed, moving, femur_moving,
    femur_fixed (1, 1, Z, Y, X), truth_vox (3, Z, Y, X), grid."""
    from monai.networks.blocks import DVF2DDF, Warp

    region = fit_weights(pair.femur_fixed)
    v_aug = random_poly_vox(pair.grid, region, rng, max_aug_mm)
    integrate = DVF2DDF(num_steps=7, mode="bilinear", padding_mode="zeros")
    warp = Warp(mode="bilinear", padding_mode="border")
    with torch.no_grad():
        ddf_back = integrate(-v_aug[None])
        if synth:
            onehot = F_t.one_hot(pair.classes[0, 0], N_CLASSES).permute(3, 0, 1, 2)[None].float()
            fixed = random_contrast(_render_classes(onehot, rng), rng, 0.3)
            moving = random_contrast(_render_classes(warp(onehot, ddf_back), rng), rng, 1.0)
            femur_moving = (warp(pair.femur_fixed, ddf_back) > 0.5).float()
            truth = v_aug
        else:
            fixed = random_contrast(pair.fixed, rng, 0.15)
            moving = random_contrast(warp(pair.moving, ddf_back), rng, float(rng.uniform(0.0, 1.0)))
            femur_moving = (warp(pair.femur_moving, ddf_back) > 0.5).float()
            truth = pair.truth_vox + v_aug
    return {"fixed": fixed, "moving": moving, "femur_moving": femur_moving, "femur_fixed": pair.femur_fixed,
            "truth_vox": truth, "grid": pair.grid, "region": region}
