"""Options, QA report and result types of the MRI -> CT registration."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from navsvc.errors import ConfigError
from navsvc.imaging import LabelSpec
from navsvc.transforms import AnyTransform, RigidTransform

Verdict = Literal["PASS", "WARN", "FAIL"]
METHODS = ("navsvc", "rigid", "elastix", "elastix-rigid")
ELASTIX_CONFIGS = ("careful", "default")


@dataclass(frozen=True)
class QAThresholds:
    """Gate limits. ``*_warn`` gives WARN above it, ``*_fail`` gives FAIL above it (mm unless named)."""

    surface_mean_warn_mm: float = 1.5
    surface_mean_fail_mm: float = 2.5
    surface_p95_fail_mm: float = 3.5
    dice_warn: float = 0.75  # below: WARN
    dice_fail: float = 0.6  # below: FAIL
    inverse_warn_mm: float = 0.1
    inverse_fail_mm: float = 0.5
    tre_warn_mm: float = 1.0
    tre_fail_mm: float = 2.0
    femur_in_fov_fail: float = 0.5  # fraction of the femur surface inside the CT; below: FAIL
    max_rotation_deg: float = 75.0  # both images are in patient coordinates
    #: CT voxels coarser than this (largest spacing, mm) cannot verify sub-millimetre accuracy with the
    #: surface and Dice figures: on the real 3 mm CT the true pose scores 2.69 mm / Dice 0.556 and poses
    #: 3-8 mm off score within 0.6 mm of it (``realct.gate_near_truth``); such a CT never PASSes
    coarse_ct_mm: float = 2.0


@dataclass(frozen=True)
class RegistrationOptions:
    """Options of :func:`navsvc.registration.register_mri_to_ct`.

    method: ``navsvc`` (surface + intensity rigid, then the constrained deformable stage),
    ``rigid`` (the rigid stages only), ``elastix`` (elastix rigid MI + B-spline) or
    ``elastix-rigid`` (elastix rigid MI only). device: torch device for the deformable
    stage, ``auto`` = CUDA when available. ``initial_velocity``: a (3, Z, Y, X) torch tensor
    on the deformable grid (voxel units of that grid, channels z, y, x), e.g. from a learned
    network: the velocity ``v`` of ``T_mri_from_ct = T_rigid^-1 o exp(v)``.
    ``network_weights``: the learned network that proposes ``initial_velocity`` after the rigid
    stage (method ``navsvc`` only): None = no network, ``"shipped"`` = the committed weights
    (navsvc/learning/weights), or a path to weights from ``navsvc train``; ignored when
    ``initial_velocity`` is given.
    """

    method: str = "navsvc"
    device: str = "auto"
    labels: LabelSpec = field(default_factory=LabelSpec)
    seed: int = 0
    bone_threshold_hu: float | None = None  # None: auto from the CT spacing (see bone_threshold_for)
    surface_voxel_mm: float = 3.0
    joint_exclusion_mm: float = 5.0
    ransac_starts: int = 2
    mi_iterations: int = 200
    mi_spacing_mm: float = 1.5  # rigid.intensity_refine's grid on finer CTs (was 1.2: twice the voxels)
    #: fat chemical shift of the MRI, LPS mm vector (readout direction * 3.5 ppm * Larmor /
    #: pixel bandwidth * readout spacing); None = not corrected. See fat_shift_vector_mm.
    fat_shift_mm: tuple[float, float, float] | None = None
    roi_margin_mm: float = 6.0
    #: deformable stage (see navsvc.registration.deformable): ICP iterations of the surface
    #: fit (0 = apply ``initial_velocity`` as is), polynomial degree of the field (1 = affine,
    #: up to 3), weight of the penalty on its non-rigid part, grid spacing of the velocity field
    deformable_iterations: int = 30
    deformable_degree: int = 1
    deformable_smooth_weight: float = 3e-3
    deformable_spacing_mm: float = 5.0
    deformable_max_femur_mm: float = 2.5
    #: keep the field only when it predicts held-out surface patches better than the rigid
    #: result: cross-validated gain (1 - rms field / rms rigid) > this; patches (folds) by k-means.
    #: 0.5 %: spurious fields on undistorted phantoms reached up to +0.05 % (seeds 100-117 and the
    #: ablation's), real distortion fields +0.65 % and more
    deformable_min_cv_gain: float = 0.005
    #: ... or, the other route, when the femur's mutual information rises with the field (the rigid
    #: pose is MI's optimum over rigid poses: fitted noise lowers MI, a real distortion can raise it)
    #: and the held-out surface loss is at most this (a field the surface contradicts is not kept)
    deformable_mi_route_max_cv_loss: float = 0.05
    #: ... and never when the femur MI falls by more than this (a veto, not evidence: real fields
    #: lowered it by up to 5 % on phantoms -- MI's optimum on a distorted MRI is a compromise)
    deformable_max_mi_loss: float = 0.10
    #: ... and only when it is larger than its uncertainty: rms field / rms jackknife standard
    #: error of the fold fits >= this
    deformable_min_significance: float = 1.0
    deformable_cv_folds: int = 20
    #: ICP iterations of each fold's refit, warm-started from the whole-surface fit (the fit is linear
    #: once paired, so a few re-pairings converge): 8 gave the same keep/reject decision as 20 cold
    #: iterations on all 16 benchmark and unseen seeds (100-117) at half the time
    deformable_cv_iterations: int = 8
    initial_velocity: Any = None
    network_weights: str | None = None
    elastix_config: str = "careful"
    elastix_bspline: bool = True
    threads: int | None = None
    qa: QAThresholds = field(default_factory=QAThresholds)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"expected method one of {METHODS}, got {self.method!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"expected device auto|cpu|cuda, got {self.device!r}")
        if self.network_weights is not None and (not isinstance(self.network_weights, str) or not self.network_weights):
            raise ConfigError(f"network_weights: expected None, 'shipped' or a path, got {self.network_weights!r}")
        if not 0 <= self.deformable_degree <= 3:
            raise ConfigError(f"expected deformable_degree 0..3, got {self.deformable_degree}")
        if self.deformable_cv_iterations < 1:
            raise ConfigError(f"expected deformable_cv_iterations >= 1, got {self.deformable_cv_iterations}")
        if self.deformable_cv_folds < 3:
            raise ConfigError(f"expected deformable_cv_folds >= 3, got {self.deformable_cv_folds}")
        if self.deformable_iterations < 0:
            raise ConfigError(f"expected deformable_iterations >= 0, got {self.deformable_iterations}")
        for name in ("deformable_mi_route_max_cv_loss", "deformable_max_mi_loss"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"expected {name} in 0..1 (a fraction: 0.05 = 5 %), got {getattr(self, name)}")
        if self.elastix_config not in ELASTIX_CONFIGS:
            raise ConfigError(f"expected elastix_config one of {ELASTIX_CONFIGS}, got {self.elastix_config!r}")

    def threshold_for(self, ct_spacing_mm: tuple[float, ...]) -> float:
        """CT bone threshold (HU): the given one, or ``max(100, 300 - 65 * largest spacing)``.

        The periosteal cortex is partial-volumed on coarse grids (median shell HU ~ 210-260 on
        a real 3 mm CT), so the threshold drops with voxel size: 250 HU at 0.8 mm, 170 at 2 mm,
        105 at 3 mm -- always well above muscle (40-60 HU).
        """
        if self.bone_threshold_hu is not None:
            return float(self.bone_threshold_hu)
        return max(100.0, 300.0 - 65.0 * float(max(ct_spacing_mm)))

    def resolved_device(self) -> str:
        import torch

        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device 'cuda' requested but torch sees no CUDA device; use --device cpu")
        return self.device


def fat_shift_vector_mm(field_t: float, bandwidth_hz_per_px: float, readout_direction_lps: tuple[float, ...],
                        readout_spacing_mm: float) -> tuple[float, float, float]:
    """Fat displacement in the MRI image (LPS mm): 3.5 ppm of the Larmor frequency over the pixel
    bandwidth, in pixels, along the readout direction (sign: fat appears towards +direction)."""
    import numpy as np

    shift_px = 3.5e-6 * 42.577e6 * field_t / bandwidth_hz_per_px
    d = np.asarray(readout_direction_lps, dtype=float)
    d = d / np.linalg.norm(d)
    v = d * shift_px * readout_spacing_mm
    return (float(v[0]), float(v[1]), float(v[2]))


@dataclass
class QAReport:
    """Gate verdict with its reasons and the figures it was decided on (units in the keys)."""

    verdict: Verdict
    reasons: list[str]
    figures: dict[str, float]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RegistrationResult:
    """``T_ct_from_mri`` maps MRI points into the CT; ``T_mri_from_ct`` resamples the MRI onto the CT."""

    T_ct_from_mri: AnyTransform
    T_mri_from_ct: AnyTransform
    qa: QAReport
    timings_s: dict[str, float]
    method: str
    versions: dict[str, str]
    T_ct_from_mri_rigid: RigidTransform | None = None
    stages: dict[str, Any] = field(default_factory=dict)

    @property
    def is_rigid(self) -> bool:
        return isinstance(self.T_ct_from_mri, RigidTransform)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "method": self.method,
            "verdict": self.qa.verdict,
            "qa": self.qa.to_dict(),
            "timings_s": dict(self.timings_s),
            "versions": dict(self.versions),
            "stages": self.stages,
            "kind": "rigid" if self.is_rigid else "rigid+deformable",
        }
        if self.T_ct_from_mri_rigid is not None:
            out["T_ct_from_mri_rigid"] = self.T_ct_from_mri_rigid.matrix.tolist()
        return out
