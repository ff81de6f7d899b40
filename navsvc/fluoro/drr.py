"""A differentiable digitally reconstructed radiograph (DRR) renderer in torch.

For each detector pixel the line integral of the attenuation volume (mu in 1/mm) along the
ray from the source to the pixel centre is approximated by ``n_samples`` midpoint samples,
trilinearly interpolated (``torch.nn.functional.grid_sample``), between the two points where the
ray enters and leaves the volume's bounding sphere. Everything is differentiable with respect
to the volume pose, so a rigid pose can be optimised by gradient descent. Batched over views;
runs on whatever device the tensors live on (CUDA when present, CPU otherwise).

Units: output is the dimensionless line integral ``∫ mu dl`` (mu in 1/mm, l in mm); an
X-ray intensity is ``I0 * exp(-DRR)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from navsvc.errors import InputError
from navsvc.fluoro.geometry import ViewGeometry
from navsvc.imaging import lps_from_index_matrix


@dataclass
class AttenuationVolume:
    """A volume of linear attenuation coefficients ``mu_per_mm`` (D, H, W) = (k, j, i) with its
    index-to-LPS matrix in its own frame (e.g. ``mri``)."""

    mu_per_mm: torch.Tensor
    lps_from_index: torch.Tensor  # (4, 4) float64

    @classmethod
    def from_image(cls, image: sitk.Image, device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32) -> AttenuationVolume:
        arr = sitk.GetArrayFromImage(image).astype(np.float32)
        if arr.ndim != 3:
            raise InputError(f"expected a 3-D attenuation volume, got {arr.ndim}-D")
        return cls(torch.as_tensor(arr, dtype=dtype, device=device),
                   torch.as_tensor(lps_from_index_matrix(image), dtype=torch.float64, device=device))

    @property
    def device(self) -> torch.device:
        return self.mu_per_mm.device

    def bounding_sphere(self) -> tuple[np.ndarray, float]:
        """Centre (LPS mm, own frame) and radius (mm) of a sphere enclosing the volume's box."""
        d, h, w = self.mu_per_mm.shape
        m = self.lps_from_index.cpu().numpy()
        ijk = np.array([[x, y, z] for x in (-0.5, w - 0.5) for y in (-0.5, h - 0.5) for z in (-0.5, d - 0.5)])
        corners = ijk @ m[:3, :3].T + m[:3, 3]
        centre = corners.mean(axis=0)
        return centre, float(np.linalg.norm(corners - centre, axis=1).max())


def _view_rays(view: ViewGeometry, stride: int, device: torch.device, dtype: torch.dtype
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Source (3,) and unit ray directions (H', W', 3), world frame."""
    det_world = view.T_world_from_carm.apply(view.detector_points_carm(stride).reshape(-1, 3))
    src = view.source_world
    dirs = det_world - src
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    h, w = view.detector_points_carm(stride).shape[:2]
    return (torch.as_tensor(src, dtype=dtype, device=device),
            torch.as_tensor(dirs.reshape(h, w, 3), dtype=dtype, device=device))


def render(
    volume: AttenuationVolume,
    views: Sequence[ViewGeometry],
    T_world_from_volume: torch.Tensor,
    *,
    n_samples: int = 128,
    stride: int = 1,
) -> list[torch.Tensor]:
    """Render one DRR per view, each (H', W') with H' = ceil(rows / stride).

    ``T_world_from_volume``: (4, 4) tensor mapping points of the volume's frame (LPS mm) into
    the world frame; gradients flow through it. ``stride`` renders every ``stride``-th pixel
    (each sample at the centre of a ``stride`` x ``stride`` block) for multi-scale optimisation.
    """
    if n_samples < 2:
        raise InputError(f"expected n_samples >= 2, got {n_samples}")
    if T_world_from_volume.shape != (4, 4):
        raise InputError(f"expected a 4x4 pose, got {tuple(T_world_from_volume.shape)}")
    device = volume.device
    dtype = T_world_from_volume.dtype
    T = T_world_from_volume.to(device)
    centre_vol, radius = volume.bounding_sphere()
    centre_world = T[:3, :3] @ torch.as_tensor(centre_vol, dtype=dtype, device=device) + T[:3, 3]
    rot_t = T[:3, :3].transpose(0, 1)  # rotation part of T_volume_from_world
    index_from_lps = torch.linalg.inv(volume.lps_from_index).to(dtype)
    d, h, w = volume.mu_per_mm.shape
    sizes = torch.tensor([w, h, d], dtype=dtype, device=device)
    mu = volume.mu_per_mm.to(dtype)[None, None]
    out: list[torch.Tensor] = []
    for view in views:
        src, dirs = _view_rays(view, stride, device, dtype)
        hh, ww = dirs.shape[:2]
        # ray parameter of the point closest to the sphere centre, then +- radius
        t_mid = ((centre_world - src)[None, None, :] * dirs).sum(-1)  # (H', W')
        step = 2.0 * radius / n_samples
        offsets = (torch.arange(n_samples, dtype=dtype, device=device) + 0.5) * step - radius  # (S,)
        t = t_mid[..., None] + offsets  # (H', W', S)
        pts_world = src + dirs[..., None, :] * t[..., None]  # (H', W', S, 3)
        pts_vol = (pts_world - T[:3, 3]) @ rot_t.T  # inverse rigid: R^T (p - t)
        idx = pts_vol @ index_from_lps[:3, :3].T + index_from_lps[:3, 3]  # continuous (i, j, k)
        grid = 2.0 * idx / (sizes - 1.0) - 1.0  # align_corners=True normalisation
        samples = F.grid_sample(mu, grid.reshape(1, hh, ww * n_samples, 1, 3).to(mu.dtype),
                                mode="bilinear", padding_mode="zeros", align_corners=True)
        out.append(samples.reshape(hh, ww, n_samples).sum(-1) * step)
    return out


def rodrigues(rotvec: torch.Tensor) -> torch.Tensor:
    """3x3 rotation matrix from a rotation vector (radians), differentiable (also at 0)."""
    theta2 = (rotvec * rotvec).sum()
    theta = torch.sqrt(theta2 + 1e-24)
    k = torch.zeros(3, 3, dtype=rotvec.dtype, device=rotvec.device)
    k[0, 1], k[0, 2], k[1, 0] = -rotvec[2], rotvec[1], rotvec[2]
    k[1, 2], k[2, 0], k[2, 1] = -rotvec[0], -rotvec[1], rotvec[0]
    small = theta2 < 1e-12
    a = torch.where(small, 1.0 - theta2 / 6.0, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24.0, (1.0 - torch.cos(theta)) / theta2.clamp_min(1e-24))
    return torch.eye(3, dtype=rotvec.dtype, device=rotvec.device) + a * k + b * (k @ k)


def pose_from_params(params: torch.Tensor, T_init: torch.Tensor, centre_world: torch.Tensor) -> torch.Tensor:
    """``T_world_from_volume = Delta(params) @ T_init``; ``params`` = (rotation vector rad (3), translation mm (3));
    Delta rotates about ``centre_world`` then translates."""
    r = rodrigues(params[:3])
    delta = torch.eye(4, dtype=params.dtype, device=params.device)
    delta[:3, :3] = r
    delta[:3, 3] = centre_world - r @ centre_world + params[3:]
    return delta @ T_init
