"""The velocity network: a MONAI UNet whose dense output is fitted by a low-order polynomial.

Contract. Input: a rigidly aligned MRI / CT pair on a CT-aligned region grid around the
femur (spacing ``NetConfig.input_spacing_mm``, margin ``REGION_MARGIN_MM``, the same region as
the deformable stage's :func:`~navsvc.registration.deformable.region_grid`). Features
(:func:`features`, 13 channels): the two images, the MRI femur mask resampled with the rigid
transform, and Gauss-Newton terms of the MIND-SSC distance (modality independent).

Output: the UNet gives, per voxel, a displacement estimate (3 channels, mm along the grid
axes i, j, k) and a confidence logit; :func:`fit_polynomial` fits one polynomial of total
degree <= ``order`` (default 3: 20 terms per component) to them by confidence-weighted least
squares inside the femur (+5 mm). The result is a :class:`PolyField`: a smooth, low-order
field that cannot warp bone locally. The shipped network uses degree 2 (10 terms per
component): over the ~10 cm of the femur, off the scanner's isocentre, the third-order
gradient nonlinearity is mostly its local quadratic part, and residual rigid errors are
orders 0 and 1; fewer terms also average the per-voxel estimates more. It is used as a stationary velocity
(the deformable stage integrates it by scaling and squaring).

Meaning of the field: with ``T_mri_from_ct_rigid`` the rigid result, the warp
``D(x) = x + u(x)`` (CT -> CT) makes ``T_mri_from_ct = T_mri_from_ct_rigid o D``, i.e. the
moving (MRI) image resampled on the grid is sampled at ``x + u(x)``.

Files: safetensors with a JSON header (``__metadata__``): architecture, format version,
network config, input spec, training summary. :func:`load_model` checks all of it and raises
:class:`~navsvc.errors.ConfigError` naming the file and the mismatch.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F_t
from torch import nn

from navsvc.errors import ConfigError

log = logging.getLogger(__name__)

ARCHITECTURE = "navsvc-velocity-unet-poly"
FORMAT_VERSION = 1
#: margin around the femur of the deformable stage's region (deformable._deformable_stage)
REGION_MARGIN_MM = 15.0  # = navsvc.registration.deformable.GRID_MARGIN_MM (the weights header records it)
INPUT_SPEC = "v2: ct01, mri01, femur_mri_rigid, MIND-SSC Gauss-Newton terms g (3), h (3), step (3), " \
             "MIND distance (1); ct01 = CT on the region grid (linear, -1000 outside), mri01 = MRI (fat shift " \
             "undone in the femur when known) resampled with T_mri_from_ct_rigid; both scaled to [0, 1] " \
             "between their 1st and 99th percentiles"
SHIPPED_PATH = Path(__file__).resolve().parent / "weights" / "velocity_net.safetensors"
SHIPPED = "shipped"


@dataclass(frozen=True)
class NetConfig:
    """Architecture settings, stored in the weights header."""

    channels: tuple[int, ...] = (16, 32, 32, 32)
    input_spacing_mm: float = 2.5
    order: int = 2
    poly_scale_mm: float = 50.0
    in_channels: int = 13

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NetConfig:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"network config: unknown key(s) {unknown}; expected some of {sorted(known)}")
        d = dict(d)
        if "channels" in d:
            d["channels"] = tuple(int(c) for c in d["channels"])
        return cls(**d)


def exponents(order: int) -> list[tuple[int, int, int]]:
    """Monomial exponents (a, b, c) with a + b + c <= order, ordered by degree."""
    out = [e for e in product(range(order + 1), repeat=3) if sum(e) <= order]
    return sorted(out, key=lambda e: (sum(e), e[::-1]))


def basis(points: torch.Tensor, order: int) -> torch.Tensor:
    """Monomials of ``points`` (..., 3) -> (..., P)."""
    cols = [points[..., 0] ** a * points[..., 1] ** b * points[..., 2] ** c for a, b, c in exponents(order)]
    return torch.stack(cols, dim=-1)


def grid_points_lps(grid: sitk.Image) -> np.ndarray:
    """LPS mm of the voxel centres of ``grid``, shape (Z, Y, X, 3)."""
    size = grid.GetSize()
    k, j, i = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in size[::-1]), indexing="ij")
    idx = np.stack([i, j, k], axis=-1) * np.array(grid.GetSpacing())
    d = np.array(grid.GetDirection()).reshape(3, 3)
    return idx @ d.T + np.array(grid.GetOrigin())


@dataclass
class PolyField:
    """A displacement/velocity field ``u(x) = D sum_p C[p] m_p(D^T (x - c) / s)`` (LPS mm).

    ``coeffs`` (P, 3): mm along the axes of ``direction`` (3x3, columns = axes);
    ``centre_lps`` (3,); ``scale_mm``; ``order``. Evaluate on any grid with
    :meth:`velocity_vox`.
    """

    coeffs: torch.Tensor
    centre_lps: np.ndarray
    direction: np.ndarray
    scale_mm: float
    order: int

    def displacement_lps_mm(self, points_lps: np.ndarray) -> np.ndarray:
        """u at points (N, 3) LPS mm -> (N, 3) LPS mm."""
        local = (np.asarray(points_lps, dtype=np.float64) - self.centre_lps) @ self.direction / self.scale_mm
        b = basis(torch.as_tensor(local, dtype=self.coeffs.dtype, device=self.coeffs.device), self.order)
        u_local = (b @ self.coeffs).detach().cpu().double().numpy()
        return u_local @ self.direction.T

    def velocity_vox(self, grid: sitk.Image, device: str | torch.device = "cpu") -> torch.Tensor:
        """The field on ``grid`` in voxel units of that grid, channels (z, y, x): (3, Z, Y, X),
        the layout of ``RegistrationOptions.initial_velocity``. Differentiable in ``coeffs``."""
        pts = grid_points_lps(grid)
        d_grid = np.array(grid.GetDirection()).reshape(3, 3)
        local = (pts - self.centre_lps) @ self.direction / self.scale_mm
        b = basis(torch.as_tensor(local, dtype=torch.float32, device=self.coeffs.device), self.order)
        u_local = b @ self.coeffs  # (Z, Y, X, 3) along self.direction's axes
        to_grid = torch.as_tensor(d_grid.T @ self.direction / np.array(grid.GetSpacing())[:, None],
                                  dtype=torch.float32, device=self.coeffs.device)
        u_ijk = u_local @ to_grid.T  # voxels along grid i, j, k
        return u_ijk.permute(3, 0, 1, 2).flip(0).to(device)  # channels (k, j, i) = (z, y, x)


class VelocityNet(nn.Module):
    """MONAI UNet (4 output channels: displacement mm along i, j, k + confidence logit)."""

    def __init__(self, config: NetConfig = NetConfig()) -> None:
        super().__init__()
        from monai.networks.nets import UNet

        self.config = config
        n = len(config.channels)
        self.unet = UNet(spatial_dims=3, in_channels=config.in_channels, out_channels=4,
                         channels=config.channels, strides=(2,) * (n - 1), num_res_units=1)
        self.multiple = 2 ** (n - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(1, C, Z, Y, X) -> (1, 4, Z, Y, X): channels 0-2 displacement (mm, grid axes i, j, k),
        channel 3 the confidence logit. Pads to a multiple of the UNet's stride internally."""
        shape = x.shape[2:]
        pad = []
        for s in reversed(shape):
            pad += [0, (-s) % self.multiple]
        y = self.unet(F_t.pad(x, pad, mode="replicate"))
        return y[:, :, : shape[0], : shape[1], : shape[2]]


def normalise01(t: torch.Tensor) -> torch.Tensor:
    """Scale to [0, 1] between the 1st and 99th percentiles (clamped)."""
    flat = t.flatten()[:: max(1, t.numel() // 200000)]
    lo, hi = torch.quantile(flat, torch.tensor([0.01, 0.99], device=t.device, dtype=t.dtype))
    return ((t - lo) / (hi - lo).clamp_min(1e-6)).clamp(0.0, 1.0)


def features(fixed01: torch.Tensor, moving01: torch.Tensor, femur: torch.Tensor) -> torch.Tensor:
    """Network input (1, 13, Z, Y, X) from the [0, 1] CT, the [0, 1] MRI and the MRI femur mask,
    each (1, 1, Z, Y, X) on the region grid.

    Channels: the CT, the MRI, the femur mask; from the MIND-SSC descriptors (12 channels each,
    modality independent) of both images, with ``r = mind(mri) - mind(ct)`` and ``G_a`` the
    gradient of mind(mri) along grid axis a (i, j, k): the Gauss-Newton terms ``g_a = sum r G_a``
    (3) and ``h_a = sum G_a^2`` (3), both divided by the mean of ``h``, the per-voxel step
    ``-g_a / (h_a + 0.1)`` clamped to +-2 voxels (3), and the MIND distance ``mean |r|`` (1).
    """
    from navsvc.registration.deformable import mind_ssc

    mf, mm = mind_ssc(fixed01), mind_ssc(moving01)
    r = mm - mf
    grads = [torch.gradient(mm, dim=d)[0] for d in (4, 3, 2)]  # along i (x), j (y), k (z)
    g = torch.cat([(r * ga).sum(1, keepdim=True) for ga in grads], dim=1)
    h = torch.cat([(ga * ga).sum(1, keepdim=True) for ga in grads], dim=1)
    scale = h.mean().clamp_min(1e-12)
    g, h = g / scale, h / scale
    step = (-g / (h + 0.1)).clamp(-2.0, 2.0)
    return torch.cat([fixed01, moving01, femur, g, h, step, r.abs().mean(1, keepdim=True)], dim=1)


def fit_weights(femur: torch.Tensor) -> torch.Tensor:
    """Where the polynomial is fitted: the femur + ~5 mm at 2.5 mm spacing (1, 1, Z, Y, X)."""
    return F_t.max_pool3d((femur > 0.5).float(), 5, stride=1, padding=2)


def fit_polynomial(out: torch.Tensor, region: torch.Tensor, grid: sitk.Image, order: int,
                   scale_mm: float, ridge: float = 1e-3) -> PolyField:
    """Confidence-weighted least-squares polynomial fit of the network output.

    ``out`` (1, 4, Z, Y, X) from :class:`VelocityNet` on ``grid``; ``region`` (1, 1, Z, Y, X)
    0/1 mask of where to fit. Differentiable in ``out``.
    """
    pts = grid_points_lps(grid)
    centre = pts.reshape(-1, 3).mean(0)
    direction = np.array(grid.GetDirection()).reshape(3, 3)
    local = torch.as_tensor(((pts - centre) @ direction / scale_mm).reshape(-1, 3), dtype=out.dtype,
                            device=out.device)
    a = basis(local, order)  # (N, P)
    w = (F_t.softplus(out[0, 3]) * region[0, 0]).reshape(-1, 1) + 1e-8
    u = out[0, :3].reshape(3, -1).T  # (N, 3)
    ata = a.T @ (a * w)
    atu = a.T @ (u * w)
    lam = ridge * torch.diagonal(ata).mean().detach()
    coeffs = torch.linalg.solve(ata + lam * torch.eye(a.shape[1], dtype=out.dtype, device=out.device), atu)
    return PolyField(coeffs, centre, direction, scale_mm, order)


@dataclass
class LoadedModel:
    """A network with its header (architecture, version, config, training summary)."""

    net: VelocityNet
    header: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    @property
    def config(self) -> NetConfig:
        return self.net.config


def save_model(path: str | Path, net: VelocityNet, training: dict[str, Any] | None = None) -> Path:
    """Write ``net`` as safetensors with the header :func:`load_model` checks (atomic)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"architecture": ARCHITECTURE, "format_version": str(FORMAT_VERSION),
            "config": json.dumps(asdict(net.config)), "input_spec": INPUT_SPEC,
            "region_margin_mm": str(REGION_MARGIN_MM), "training": json.dumps(training or {})}
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, str(tmp), metadata=meta)
    tmp.replace(path)
    return path


def load_model(source: str | Path = SHIPPED, device: str = "cpu") -> LoadedModel:
    """Load weights: ``"shipped"`` (the committed file) or a path to a ``.safetensors`` file
    written by :func:`save_model` / ``navsvc train``. Raises :class:`ConfigError` when the file
    is missing, not safetensors, or was made for another architecture, format version, input
    spec or network shape."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = SHIPPED_PATH if str(source) == SHIPPED else Path(source)
    what = f"network weights {path}"
    if not path.is_file():
        raise ConfigError(f"{what}: file not found; expected 'shipped' or a .safetensors file from `navsvc train`")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ConfigError(f"{what}: not a readable safetensors file ({exc}); expected the output of "
                          "`navsvc train`") from exc
    if meta.get("architecture") != ARCHITECTURE:
        raise ConfigError(f"{what}: expected architecture {ARCHITECTURE!r}, got {meta.get('architecture')!r}")
    if meta.get("format_version") != str(FORMAT_VERSION):
        raise ConfigError(f"{what}: expected format version {FORMAT_VERSION}, got {meta.get('format_version')!r}; "
                          "retrain with this navsvc version (`navsvc train`)")
    if meta.get("input_spec") != INPUT_SPEC:
        raise ConfigError(f"{what}: the network was trained on other inputs ({meta.get('input_spec')!r}); "
                          f"expected {INPUT_SPEC!r}")
    try:
        config = NetConfig.from_dict(json.loads(meta.get("config", "{}")))
    except (json.JSONDecodeError, TypeError) as exc:
        raise ConfigError(f"{what}: header 'config' unreadable ({exc})") from exc
    net = VelocityNet(config)
    try:
        net.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ConfigError(f"{what}: weights do not fit the network its header describes ({first})") from exc
    net.eval().to(device)
    header = dict(meta)
    header["config"] = asdict(config)
    header["training"] = json.loads(meta.get("training", "{}") or "{}")
    return LoadedModel(net, header, str(path))


# -- inference on images -------------------------------------------------------------------
def input_grid(femur_ct: sitk.Image, spacing_mm: float) -> sitk.Image:
    """The network's input grid: the deformable stage's region at ``spacing_mm``."""
    from navsvc.registration.deformable import region_grid

    return region_grid(femur_ct, spacing_mm, REGION_MARGIN_MM)


def image_inputs(ct: sitk.Image, mri: sitk.Image, femur_mri: sitk.Image, T_mri_from_ct_rigid: Any,
                 grid: sitk.Image, device: str = "cpu", fat_shift_mm: Any = None) -> dict[str, torch.Tensor]:
    """The [0, 1] CT, the [0, 1] MRI and the MRI femur mask on ``grid`` (each (1, 1, Z, Y, X)).

    ``T_mri_from_ct_rigid`` maps CT points to MRI points (a RigidTransform or Transform).
    ``fat_shift_mm``: the MRI's fat chemical shift (LPS mm vector, as
    ``RegistrationOptions.fat_shift_mm``); when given it is undone inside the femur first
    (:func:`navsvc.registration.rigid.fat_shift_corrected`): otherwise the marrow's shifted
    fat signal biases any image similarity by up to the shift (2 mm on our phantoms)."""
    from navsvc.transforms import resample

    if fat_shift_mm is not None:
        from navsvc.registration.rigid import fat_shift_corrected

        mri = fat_shift_corrected(sitk.Cast(mri, sitk.sitkFloat32), femur_mri, np.asarray(fat_shift_mm, dtype=float))

    def tens(img: sitk.Image) -> torch.Tensor:
        return torch.from_numpy(sitk.GetArrayFromImage(img).astype(np.float32))[None, None].to(device)

    fixed = tens(sitk.Resample(sitk.Cast(ct, sitk.sitkFloat32), grid, sitk.Transform(), sitk.sitkLinear, -1000.0))
    moving = tens(resample(sitk.Cast(mri, sitk.sitkFloat32), grid, T_mri_from_ct_rigid))
    femur = tens(resample(sitk.Cast(femur_mri, sitk.sitkFloat32), grid, T_mri_from_ct_rigid))
    return {"fixed": normalise01(fixed), "moving": normalise01(moving), "femur": femur}


def predict_field(model: LoadedModel | VelocityNet, inputs: dict[str, torch.Tensor], grid: sitk.Image) -> PolyField:
    """The polynomial field for the ``inputs`` of :func:`image_inputs` on ``grid``."""
    net = model.net if isinstance(model, LoadedModel) else model
    out = net(features(inputs["fixed"], inputs["moving"], inputs["femur"]))
    return fit_polynomial(out, fit_weights(inputs["femur"]), grid, net.config.order, net.config.poly_scale_mm)


def predict_velocity(model: LoadedModel, ct: sitk.Image, mri: sitk.Image, femur_mri: sitk.Image,
                     T_ct_from_mri_rigid: Any, spacing_mm: float = 5.0, device: str = "cpu",
                     fat_shift_mm: Any = None) -> torch.Tensor:
    """The starting velocity for the deformable stage (``RegistrationOptions.initial_velocity``).

    ``T_ct_from_mri_rigid``: the rigid stage's result (RigidTransform, MRI -> CT);
    ``spacing_mm``: ``RegistrationOptions.deformable_spacing_mm``; ``fat_shift_mm``:
    ``RegistrationOptions.fat_shift_mm`` (see :func:`image_inputs`). Returns (3, Z, Y, X) float32
    on ``device`` in voxel units of the deformable region grid
    (``region_grid(femur_ct, spacing_mm, 15 mm)``), channels (z, y, x). Raises
    :class:`ConfigError` if the femur maps outside the CT.
    """
    from navsvc.registration import qa

    T_mri_from_ct = T_ct_from_mri_rigid.inverse()
    femur_ct = qa.map_mask(femur_mri, ct, T_mri_from_ct)
    if not sitk.GetArrayViewFromImage(femur_ct).any():
        raise ConfigError("network: the femur maps outside the CT under the rigid result; no field to predict")
    fine = input_grid(femur_ct, model.config.input_spacing_mm)
    coarse = input_grid(femur_ct, spacing_mm)
    was_training = model.net.training
    model.net.eval()
    with torch.no_grad():
        inputs = image_inputs(ct, mri, femur_mri, T_mri_from_ct, fine, device, fat_shift_mm)
        poly = predict_field(model, inputs, fine)
        v = poly.velocity_vox(coarse, device)
    model.net.train(was_training)
    return v.float().contiguous()


_CACHE: dict[tuple[str, float, str], LoadedModel] = {}


def load_model_cached(source: str | Path, device: str = "cpu") -> LoadedModel:
    """:func:`load_model`, kept per (resolved path, modification time, device) for repeated registrations."""
    path = SHIPPED_PATH if str(source) == SHIPPED else Path(source)
    key = (str(path.resolve()), path.stat().st_mtime if path.is_file() else -1.0, device)
    if key not in _CACHE:
        _CACHE[key] = load_model(source, device)
    return _CACHE[key]


def network_velocity(ct: sitk.Image, mri: sitk.Image, femur_mri: sitk.Image, T_ct_from_mri_rigid: Any,
                     options: Any) -> tuple[torch.Tensor, dict[str, Any]]:
    """(initial velocity for the deformable stage, info for the result's ``stages``) with the
    network named by ``options.network_weights`` on ``options.resolved_device()``."""
    import time

    t0 = time.perf_counter()
    device = options.resolved_device()
    model = load_model_cached(options.network_weights, device)
    t_load = time.perf_counter() - t0
    before = torch.get_num_threads()
    if device == "cpu":  # as the deformable stage: OpenMP spinning on shared cores costs more than it gives
        torch.set_num_threads(int(options.threads or 1))
    try:
        v = predict_velocity(model, ct, mri, femur_mri, T_ct_from_mri_rigid, options.deformable_spacing_mm, device,
                             options.fat_shift_mm)
    finally:
        torch.set_num_threads(before)
    sp = float(options.deformable_spacing_mm)
    info = {"weights": model.source, "architecture": model.header.get("architecture"),
            "format_version": model.header.get("format_version"), "device": device,
            "max_velocity_mm": float(v.norm(dim=0).amax() * sp), "load_s": t_load,
            "predict_s": time.perf_counter() - t0 - t_load}
    return v, info
