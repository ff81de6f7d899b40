"""Rigid 2D/3D pose optimisation of the femur over several fluoroscopy views.

Contract: ``register_views(mu, views, images, T_world_from_mri_init)`` returns
``T_world_from_mri`` such that DRRs of ``mu`` (an attenuation volume in the MRI frame) placed
by it match every view's image. Images are line-integral images (``-log(I / I0)``), rows x
columns as in each view's geometry.

Similarity: gradient correlation (normalised cross-correlation of the image gradients, averaged
over both axes and all views; 1 is perfect). It ignores the absolute contrast, which differs
between a bone-only DRR and a real radiograph with soft tissue. Optimisation: Adam on a
rotation vector about the volume centre and a translation, multi-scale over detector strides,
with several starts at the coarsest scale, keeping the best.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
import torch

from navsvc.errors import InputError
from navsvc.fluoro.drr import AttenuationVolume, pose_from_params, render
from navsvc.fluoro.geometry import ViewGeometry
from navsvc.frames import MRI, WORLD
from navsvc.progress import CancelToken, ProgressFn, no_progress
from navsvc.transforms import RigidTransform, rotation_matrix_from_axis_angle


@dataclass(frozen=True)
class PoseOptions:
    #: detector strides of the levels (stride 4, 20 x 20 px on the phantoms, was dropped: its similarity
    #: scored wrong poses above the truth and pulled a right translation 9 mm away)
    strides: tuple[int, ...] = (2, 1)
    iterations: tuple[int, ...] = (60, 30)
    start_iterations: int = 30
    n_samples: int = 96
    n_starts: int = 7
    #: candidates (best of the search, or of the starts) refined through every level; the most similar wins
    n_refine: int = 3
    start_spread_deg: float = 8.0
    lr_rotation_rad: float = 0.01
    lr_translation_mm: float = 1.0
    seed: int = 0
    device: str = "auto"
    #: per level: Gaussian blur (sigma, full-resolution detector pixels) of DRR and image before the
    #: gradients; wide at the coarse level for capture range, narrow at the end for precision
    smooth_px: tuple[float, ...] = (1.0, 1.0)
    #: per level: compare only a band of this half-width (full-resolution pixels) about the femur's
    #: projected outline, where the label model is right; 0 = the whole dilated footprint, which
    #: also holds the marrow, lesion and overlapping pelvis the label model does not render
    outline_band_px: tuple[float, ...] = (3.0, 3.0)
    #: pose search before the local optimisation (0 = off: local refinements, the old multi-start): for
    #: each rotation of a grid (0, +-search_rotation_deg about each axis: 27 rotations) one DRR per view at
    #: the first level; the view's gradient correlation for every 2-D shift of that DRR within the
    #: detector distance of +-search_translation_mm; every 3-D translation of a grid (step
    #: search_step_mm) scored by the views' maps at the shifts it projects to (the rotation centre's
    #: shift); the best (rotation, translation) pairs are refined. Gives the capture range that the
    #: narrow basins of the band similarity lack (a 15 mm / 15 degree start)
    search_translation_mm: float = 18.0
    search_rotation_deg: float = 10.0
    search_step_mm: float = 1.5
    #: False: rotations about the rotation centre only, the translation kept (the femur about its head once
    #: the pelvis has placed the hip: a ball joint)
    optimise_translation: bool = True


@dataclass
class PoseResult:
    T_world_from_mri: RigidTransform
    similarity_per_view: list[float]
    similarity_initial_per_view: list[float]
    starts_tried: int
    seconds: float
    history: list[float] = field(default_factory=list)


def choose_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise InputError(f"expected device cpu, cuda or auto, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("device cuda requested but no CUDA GPU is available; use --device cpu or auto")
    return torch.device(name)


def _block_mean(image: torch.Tensor, stride: int, shape: tuple[int, int]) -> torch.Tensor:
    """Downsample an image (rows, cols) by averaging ``stride`` x ``stride`` blocks, cropped to ``shape``."""
    if stride == 1:
        return image[: shape[0], : shape[1]]
    h, w = image.shape
    hp, wp = -(-h // stride) * stride, -(-w // stride) * stride
    padded = torch.nn.functional.pad(image[None, None], (0, wp - w, 0, hp - h), mode="replicate")[0, 0]
    pooled = padded.reshape(hp // stride, stride, wp // stride, stride).mean(dim=(1, 3))
    return pooled[: shape[0], : shape[1]]


def gaussian_blur(image: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """Separable Gaussian blur of an image (rows, cols), replicate padding; identity for ``sigma_px <= 0``."""
    if sigma_px <= 0:
        return image
    r = max(1, int(np.ceil(3.0 * sigma_px)))
    x = torch.arange(-r, r + 1, dtype=image.dtype, device=image.device)
    k = torch.exp(-0.5 * (x / sigma_px) ** 2)
    k = k / k.sum()
    im = torch.nn.functional.pad(image[None, None], (r, r, r, r), mode="replicate")
    im = torch.nn.functional.conv2d(im, k.view(1, 1, 1, -1))
    im = torch.nn.functional.conv2d(im, k.view(1, 1, -1, 1))
    return im[0, 0]


def _ncc(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    wsum = w.sum().clamp_min(1e-9)
    ma, mb = (a * w).sum() / wsum, (b * w).sum() / wsum
    da, db = a - ma, b - mb
    cov = (w * da * db).sum()
    return cov / torch.sqrt((w * da * da).sum() * (w * db * db).sum() + 1e-12)


def gradient_correlation(drr: torch.Tensor, image: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean NCC of the row and column gradients of two images, weighted (1 = identical structure)."""
    gx_d, gx_i = drr[:, 1:] - drr[:, :-1], image[:, 1:] - image[:, :-1]
    gy_d, gy_i = drr[1:, :] - drr[:-1, :], image[1:, :] - image[:-1, :]
    wx = torch.minimum(weight[:, 1:], weight[:, :-1])
    wy = torch.minimum(weight[1:, :], weight[:-1, :])
    return 0.5 * (_ncc(gx_d, gx_i, wx) + _ncc(gy_d, gy_i, wy))


def _support_weight(drr: torch.Tensor, dilate_px: int) -> torch.Tensor:
    """1 where the DRR shows the bone (dilated by ``dilate_px``), else 0."""
    mask = (drr > 0.02 * drr.max()).to(drr.dtype)[None, None]
    k = 2 * dilate_px + 1
    return (torch.nn.functional.max_pool2d(mask, k, stride=1, padding=dilate_px)[0, 0] > 0).to(drr.dtype)


def _outline_weight(drr: torch.Tensor, band_px: int) -> torch.Tensor:
    """1 within ``band_px`` pixels of the outline of the DRR's footprint, else 0."""
    mask = (drr > 0.02 * drr.max()).to(drr.dtype)[None, None]
    k = 2 * band_px + 1
    grown = torch.nn.functional.max_pool2d(mask, k, stride=1, padding=band_px)
    shrunk = -torch.nn.functional.max_pool2d(-mask, k, stride=1, padding=band_px)
    return (grown - shrunk)[0, 0].clamp(0, 1)


def _translation_grid(half_width_mm: float, step_mm: float) -> np.ndarray:
    """(n, 3) translations (mm) on a cubic grid of ``step_mm`` within +-``half_width_mm``, 0 included."""
    k = int(np.floor(half_width_mm / step_mm + 1e-9))
    axis = np.arange(-k, k + 1) * step_mm
    return np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 3)


def _rotation_grid(angle_deg: float) -> list[np.ndarray]:
    """Rotation vectors (rad): every combination of (-angle, 0, +angle) about the three axes (27)."""
    a = np.deg2rad(angle_deg)
    return [np.array(v, dtype=np.float64) for v in np.array(np.meshgrid(*[[0.0, -a, a]] * 3, indexing="ij")
                                                             ).reshape(3, -1).T]


def _gradients(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return image[:, 1:] - image[:, :-1], image[1:, :] - image[:-1, :]


def shift_score_map(drr: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, valid: torch.Tensor,
                    max_shift_px: int) -> torch.Tensor:
    """Gradient correlation (as :func:`gradient_correlation`) of ``drr`` moved by every integer shift
    (du, dv) within +-``max_shift_px`` against ``target``: (2S+1, 2S+1) indexed [dv + S, du + S].
    ``weight`` goes with the DRR (its outline band), ``valid`` (1 where the target may be compared)
    with the target; pixels shifted off the target count as invalid."""
    s = max_shift_px
    scores = []
    for gd, gi, w, v in zip(_gradients(drr), _gradients(target), _pair_min(weight), _pair_min(valid), strict=True):
        h, w_ = gd.shape
        gi_win = torch.nn.functional.unfold(torch.nn.functional.pad(gi, (s, s, s, s))[None, None], (h, w_))[0]
        v_win = torch.nn.functional.unfold(torch.nn.functional.pad(v, (s, s, s, s))[None, None], (h, w_))[0]
        ww = w.reshape(-1, 1) * v_win  # (N, L)
        a = gd.reshape(-1, 1)
        wsum = ww.sum(0).clamp_min(1e-9)
        da = a - (ww * a).sum(0) / wsum
        db = gi_win - (ww * gi_win).sum(0) / wsum
        scores.append((ww * da * db).sum(0) / torch.sqrt((ww * da * da).sum(0) * (ww * db * db).sum(0) + 1e-12))
    return (0.5 * (scores[0] + scores[1])).reshape(2 * s + 1, 2 * s + 1)


def _pair_min(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.minimum(weight[:, 1:], weight[:, :-1]), torch.minimum(weight[1:, :], weight[:-1, :])


def _bilinear(grid: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Bilinear interpolation of a 2-D array at fractional (row, col); -1 outside."""
    h, w = grid.shape
    inside = (rows >= 0) & (rows <= h - 1) & (cols >= 0) & (cols <= w - 1)
    r, c = np.clip(rows, 0, h - 1), np.clip(cols, 0, w - 1)
    r0, c0 = np.minimum(np.floor(r).astype(int), h - 2), np.minimum(np.floor(c).astype(int), w - 2)
    fr, fc = r - r0, c - c0
    val = (grid[r0, c0] * (1 - fr) * (1 - fc) + grid[r0 + 1, c0] * fr * (1 - fc)
           + grid[r0, c0 + 1] * (1 - fr) * fc + grid[r0 + 1, c0 + 1] * fr * fc)
    return np.where(inside, val, -1.0)


def _start_offsets(n: int, spread_deg: float, seed: int) -> list[np.ndarray]:
    """Rotation-vector offsets (rad) for multi-start: the initial pose, then +-spread about each axis,
    then random ones."""
    spread = np.deg2rad(spread_deg)
    offsets = [np.zeros(3)]
    for axis in range(3):
        for sign in (1.0, -1.0):
            v = np.zeros(3)
            v[axis] = sign * spread
            offsets.append(v)
    rng = np.random.default_rng(seed)
    while len(offsets) < n:
        offsets.append(rng.normal(size=3) * spread / np.sqrt(3))
    return offsets[:n]


class ViewObjective:
    """The optimiser's similarity of the views with the DRRs of ``mu`` at a pose given by 6 parameters
    (rotation vector, rad, about ``centre_world`` = ``rotation_centre_mri`` (default: the volume's centre)
    placed by the initial pose; translation, mm) applied on top of ``T_world_from_mri_init``."""

    def __init__(self, mu: sitk.Image, views: Sequence[ViewGeometry], images: Sequence[np.ndarray],
                 T_world_from_mri_init: RigidTransform, options: PoseOptions,
                 rotation_centre_mri: np.ndarray | None = None,
                 background: Sequence[np.ndarray] | None = None) -> None:
        self.options = options
        self.views = list(views)
        self.device = choose_device(options.device)
        self.dtype = dtype = torch.float32
        self.volume = AttenuationVolume.from_image(mu, device=self.device, dtype=dtype)
        centre_mri = self.volume.bounding_sphere()[0] if rotation_centre_mri is None else \
            np.asarray(rotation_centre_mri, dtype=np.float64)
        self.T_init = torch.as_tensor(np.array(T_world_from_mri_init.matrix), dtype=dtype, device=self.device)
        self.centre_world = T_world_from_mri_init.apply(centre_mri)
        self.centre_world_t = torch.as_tensor(self.centre_world, dtype=dtype, device=self.device)
        self.image_t = [torch.as_tensor(np.asarray(img, dtype=np.float32), device=self.device) for img in images]
        # collimated-out pixels are exactly 0 in a line-integral image; keep 2 px away from that edge
        self.valid_t = [-torch.nn.functional.max_pool2d(-(im != 0).to(dtype)[None, None], 5, stride=1,
                                                         padding=2)[0, 0] for im in self.image_t]
        if background is not None and len(background) != len(self.views):
            raise InputError(f"expected one background image per view, got {len(background)} for {len(self.views)} views")
        self.background_t = None if background is None else \
            [torch.as_tensor(np.asarray(b, dtype=np.float32), device=self.device) for b in background]

    def _total(self, drr: torch.Tensor, i: int, stride: int) -> torch.Tensor:
        """The moving structure's DRR plus view ``i``'s fixed background (block mean at ``stride``)."""
        if self.background_t is None:
            return drr
        return drr + _block_mean(self.background_t[i], stride, tuple(drr.shape))

    def search(self, level: int, rotations: Sequence[np.ndarray], translation_mm: float, step_mm: float,
               cancel: CancelToken | None = None) -> list[tuple[float, np.ndarray]]:
        """Score (rotation, translation) poses without rendering each: per rotation one DRR per view at
        ``level`` (its blur, its outline band), the views' gradient correlation for every 2-D shift
        (:func:`shift_score_map`), and every translation of a cubic grid (+-``translation_mm``, step
        ``step_mm``) scored by the mean over views of the maps at the shift the rotation centre
        projects to. Returns (score, params) of the best translation per rotation, best first. Not with a
        fixed background (a shifted DRR would shift it too): see :meth:`score_rotations`."""
        if self.background_t is not None:
            raise InputError("the pose search's shift maps need a DRR without a fixed background")
        options, dtype = self.options, self.dtype
        stride = options.strides[level]
        sigma = options.smooth_px[level] / stride
        band = options.outline_band_px[level]
        grid_t = _translation_grid(translation_mm, step_mm)
        centre_px = []
        max_shift = 1
        for view in self.views:
            uv0 = view.project(self.centre_world[None])[0]
            uv = view.project(self.centre_world + grid_t)
            centre_px.append((uv - uv0) / stride)
            max_shift = max(max_shift, int(np.ceil(np.abs(centre_px[-1]).max())) + 1)
        targets, valids = [], []
        for i, img in enumerate(self.image_t):
            shape = (-(-img.shape[0] // stride), -(-img.shape[1] // stride))
            targets.append(gaussian_blur(_block_mean(img, stride, shape), sigma))
            valids.append((_block_mean(self.valid_t[i], stride, shape) > 0.999).to(dtype))
        results = []
        for rot in rotations:
            if cancel is not None:
                cancel.check()
            params = torch.as_tensor(np.concatenate([rot, np.zeros(3)]), dtype=dtype, device=self.device)
            with torch.no_grad():
                drrs = render(self.volume, self.views, pose_from_params(params, self.T_init, self.centre_world_t),
                              n_samples=options.n_samples, stride=stride)
                total = np.zeros(len(grid_t))
                for i, drr in enumerate(drrs):
                    w = _outline_weight(drr, max(1, round(band / stride))) if band > 0 else \
                        _support_weight(drr, max(2, 8 // stride))
                    smap = shift_score_map(gaussian_blur(drr, sigma), targets[i], w, valids[i], max_shift)
                    d = centre_px[i]
                    total += _bilinear(smap.cpu().double().numpy(), d[:, 1] + max_shift, d[:, 0] + max_shift)
            total /= len(drrs)
            k = int(np.argmax(total))
            results.append((float(total[k]), np.concatenate([rot, grid_t[k]])))
        results.sort(key=lambda r: -r[0])
        return results

    def score_rotations(self, level: int, rotations: Sequence[np.ndarray], cancel: CancelToken | None = None
                        ) -> list[tuple[float, np.ndarray]]:
        """(similarity at ``level``, params) of each rotation about the centre at the initial translation,
        best first: the search when the translation is known (a fixed background, e.g. the pelvis)."""
        out = []
        for rot in rotations:
            if cancel is not None:
                cancel.check()
            params = np.concatenate([rot, np.zeros(3)])
            with torch.no_grad():
                sim, _, _ = self.similarity(torch.as_tensor(params, dtype=self.dtype, device=self.device), level, None)
            out.append((float(sim), params))
        out.sort(key=lambda r: -r[0])
        return out

    def similarity(self, params: torch.Tensor, level: int, weights: list[torch.Tensor] | None
                   ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """(mean over views, per view, the weights used); ``weights`` None = the outline band of this pose."""
        options, dtype = self.options, self.dtype
        stride = options.strides[level]
        drrs = render(self.volume, self.views, pose_from_params(params, self.T_init, self.centre_world_t),
                      n_samples=options.n_samples, stride=stride)
        sims = []
        used = []
        for i, drr in enumerate(drrs):
            target = _block_mean(self.image_t[i], stride, tuple(drr.shape))
            if weights is not None:
                w = weights[i]
            else:
                valid = (_block_mean(self.valid_t[i], stride, tuple(drr.shape)) > 0.999).to(dtype)
                band = options.outline_band_px[level]
                if band > 0:
                    w = _outline_weight(drr.detach(), max(1, round(band / stride))) * valid
                else:
                    w = _support_weight(drr.detach(), max(2, 8 // stride)) * valid
            used.append(w)
            sigma = options.smooth_px[level] / stride
            sims.append(gradient_correlation(gaussian_blur(self._total(drr, i, stride), sigma),
                                             gaussian_blur(target, sigma), w))
        return torch.stack(sims).mean(), [s.detach() for s in sims], used


def register_views(
    mu: sitk.Image,
    views: Sequence[ViewGeometry],
    images: Sequence[np.ndarray],
    T_world_from_mri_init: RigidTransform,
    options: PoseOptions = PoseOptions(),
    *,
    progress: ProgressFn = no_progress,
    cancel: CancelToken | None = None,
    rotation_centre_mri: np.ndarray | None = None,
    background: Sequence[np.ndarray] | None = None,
) -> PoseResult:
    """Optimise ``T_world_from_mri`` so that DRRs of ``mu`` match ``images`` in every view. Rotations
    are about ``rotation_centre_mri`` (MRI LPS mm, placed by the initial pose; default the volume's
    centre): the femoral head / lesion decouples rotation from translation. ``background``: per view, a
    full-resolution line-integral image of structures that do not move with ``mu`` (the pelvis placed by
    an earlier stage), added to its DRR; the search then scores rotations alone (the initial
    translation is taken as known)."""
    if len(views) != len(images) or not views:
        raise InputError(f"expected one image per view and at least one view, got {len(views)} views and "
                         f"{len(images)} images")
    n_levels = len(options.strides)
    if not n_levels or {len(options.iterations), len(options.smooth_px), len(options.outline_band_px)} != {n_levels}:
        raise InputError(f"expected one iteration count, blur and band per level ({n_levels} strides), got "
                         f"{len(options.iterations)}, {len(options.smooth_px)} and {len(options.outline_band_px)}")
    if options.search_translation_mm < 0 or (options.search_translation_mm > 0 and (
            options.search_step_mm <= 0 or options.search_rotation_deg < 0)):
        raise InputError(f"pose search: expected search_translation_mm >= 0 (0 = off) and, with the search on, "
                         f"search_step_mm > 0 and search_rotation_deg >= 0; got {options.search_translation_mm}, "
                         f"{options.search_step_mm} and {options.search_rotation_deg}")
    for view, img in zip(views, images, strict=True):
        if img.shape != (view.size_px[1], view.size_px[0]):
            raise InputError(f"view {view.name!r}: image is {img.shape[1]}x{img.shape[0]} px, geometry says "
                             f"{view.size_px[0]}x{view.size_px[1]}")
    if (T_world_from_mri_init.to_frame, T_world_from_mri_init.from_frame) != (WORLD, MRI):
        raise InputError(f"expected an initial T_world_from_mri, got {T_world_from_mri_init.name}")
    started = time.perf_counter()
    objective = ViewObjective(mu, views, images, T_world_from_mri_init, options, rotation_centre_mri, background)
    device, dtype = objective.device, objective.dtype
    similarity = objective.similarity

    # Adam moves each parameter by about its learning rate per step whatever the gradient's scale,
    # so optimise in units of (lr_rotation_rad, lr_translation_mm) with a unit learning rate.
    unit = torch.tensor([options.lr_rotation_rad] * 3
                        + [options.lr_translation_mm if options.optimise_translation else 0.0] * 3, dtype=dtype,
                        device=device)

    def optimise(params0: np.ndarray, level: int, iters: int, report: tuple[float, float] | None
                 ) -> tuple[np.ndarray, float, list[float]]:
        p0 = torch.as_tensor(params0, dtype=dtype, device=device)
        free = unit > 0  # parameters not optimised (unit 0) keep their starting value
        scaled = (p0 / torch.where(free, unit, 1.0)).requires_grad_(True)

        def params() -> torch.Tensor:
            return torch.where(free, scaled * unit, p0)

        # the mask is fixed per level (from the level's starting pose) so the objective is smooth
        with torch.no_grad():
            _, _, weights = similarity(params(), level, None)
        opt = torch.optim.Adam([scaled], lr=1.0)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, iters), eta_min=0.05)
        hist: list[float] = []
        best = (float("-inf"), np.asarray(params0, dtype=np.float64))
        for it in range(iters):
            if cancel is not None:
                cancel.check()
            opt.zero_grad()
            sim, _, _ = similarity(params(), level, weights)
            (-sim).backward()
            value = float(sim.detach())
            hist.append(value)
            if value > best[0]:
                best = (value, params().detach().cpu().double().numpy())
            opt.step()
            sched.step()
            if report is not None:
                a, b = report
                progress("fluoro", a + (b - a) * (it + 1) / iters, f"level {level + 1}/{n_levels}: similarity {value:.4f}")
        return best[1], best[0], hist

    with torch.no_grad():
        _, sims0, _ = similarity(torch.zeros(6, dtype=dtype, device=device), n_levels - 1, None)
    candidates: list[tuple[float, np.ndarray]] = []
    if options.search_translation_mm > 0:
        # global search at the first level: rotation grid x (2-D shift maps -> 3-D translation grid)
        progress("fluoro", 0.0, "pose search")
        rotations = _rotation_grid(options.search_rotation_deg) if options.search_rotation_deg > 0 else [np.zeros(3)]
        if background is None:
            candidates = objective.search(0, rotations, options.search_translation_mm, options.search_step_mm, cancel)
        else:
            candidates = objective.score_rotations(0, rotations, cancel)
        starts: list[np.ndarray] = rotations
        start_share = 0.1
    else:
        # multi-start at the coarsest scale
        starts = _start_offsets(max(1, options.n_starts), options.start_spread_deg, options.seed)
        start_share = 0.4 if len(starts) > 1 else 0.0
        for k, rot in enumerate(starts):
            p0 = np.concatenate([rot, np.zeros(3)])
            span = (start_share * k / len(starts), start_share * (k + 1) / len(starts))
            params, value, _ = optimise(p0, 0, options.start_iterations, span if len(starts) > 1 else None)
            candidates.append((value, params))
        candidates.sort(key=lambda c: -c[0])
    # refine the best few starts through every scale; keep the one that ends most similar
    finals = []
    n_refine = min(options.n_refine, len(candidates))
    for r, (_, start_params) in enumerate(candidates[:n_refine]):
        params = start_params
        history: list[float] = []
        for level, (_stride, iters) in enumerate(zip(options.strides, options.iterations, strict=True)):
            step = (r * n_levels + level) / (n_refine * n_levels)
            nxt = (r * n_levels + level + 1) / (n_refine * n_levels)
            params, value, hist = optimise(params, level, iters,
                                           (start_share + (1 - start_share) * step,
                                            start_share + (1 - start_share) * nxt))
            history.extend(hist)
        finals.append((value, params, history))
    finals.sort(key=lambda f: -f[0])
    _, params, history = finals[0]
    with torch.no_grad():
        final_t = pose_from_params(torch.as_tensor(params, dtype=dtype, device=device), objective.T_init, objective.centre_world_t)
        _, sims, _ = similarity(torch.as_tensor(params, dtype=dtype, device=device), n_levels - 1, None)
    m = final_t.detach().cpu().double().numpy()
    # re-orthonormalise the float32 rotation
    u, _, vt = np.linalg.svd(m[:3, :3])
    m[:3, :3] = u @ vt
    m[3] = [0, 0, 0, 1]
    return PoseResult(
        T_world_from_mri=RigidTransform(m, WORLD, MRI),
        similarity_per_view=[float(s) for s in sims],
        similarity_initial_per_view=[float(s) for s in sims0],
        starts_tried=len(starts),
        seconds=time.perf_counter() - started,
        history=history,
    )


def perturb(T: RigidTransform, angle_deg: float, translation_mm: float, centre_mm: np.ndarray,
            seed: int) -> RigidTransform:
    """``T`` composed with a random rotation of ``angle_deg`` about ``centre_mm`` (in T's target frame)
    and a random translation of length ``translation_mm`` (for tests and benchmarks)."""
    rng = np.random.default_rng(seed)
    axis = rng.normal(size=3)
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    delta = RigidTransform.from_rotation_translation(
        rotation_matrix_from_axis_angle(axis, angle_deg), direction * translation_mm, T.to_frame, T.to_frame,
        center_mm=centre_mm)
    return delta @ T
