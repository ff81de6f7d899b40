"""Named generation presets. Every preset randomises anatomy and pose by seed; they differ
in grids, image quality and which systematic effects are switched on.

Grid sizes are given as fields of view along the patient axes (LR, AP, SI) in mm; the
MRI's image axes follow its acquisition orientation (coronal: i = LR, j = SI, k = AP).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from navsvc.errors import ConfigError


@dataclass(frozen=True)
class Preset:
    name: str
    # MRI
    mri_orientation: str = "coronal"  # coronal | axial | random
    mri_spacing_mm: tuple[float, float, float] = (1.8, 1.8, 3.5)  # in-plane, in-plane, slice
    mri_slice_jitter_mm: float = 0.0  # slice thickness drawn in [s - j, s + j]
    mri_fov_mm: tuple[float, float, float] = (126.0, 70.0, 126.0)  # LR, AP, SI
    mri_oblique_deg: float = 8.0  # random obliquity of the slice stack, up to this angle
    mri_subsample: tuple[int, int, int] = (2, 2, 3)
    mri_noise_fraction: float = 0.02  # Rician sigma relative to the fat signal
    mri_bias_amplitude: float = 0.12  # smooth multiplicative field, ~ +-12 %
    mri_fluid: bool = True
    gradient_nonlinearity_mm_at_150: float = 0.0  # 0 = off
    chemical_shift: bool = False
    field_t: float = 1.5
    bandwidth_hz_per_px: float = 200.0
    # CT
    ct_kind: str = "fan"  # fan | cbct
    ct_spacing_mm: tuple[float, float, float] = (2.0, 2.0, 2.0)
    ct_fov_mm: tuple[float, float, float] = (120.0, 120.0, 126.0)  # LR, AP, SI
    ct_subsample: tuple[int, int, int] = (2, 2, 2)
    ct_noise_hu: float = 12.0
    ct_cupping_hu: float = 0.0  # 0 = off
    ct_fov_radius_mm: float = 0.0  # cone-beam reconstruction cylinder radius; 0 = not truncated
    # pose
    max_rotation_deg: float = 30.0
    max_translation_mm: float = 40.0
    max_femur_deg: float = 20.0
    soft_tissue_deform_mm: float = 5.0
    # fluoroscopy
    fluoro_views: tuple[str, ...] = ("ap", "lateral")
    fluoro_detector_px: tuple[int, int] = (80, 80)
    fluoro_pixel_mm: float = 2.4  # at the detector
    fluoro_sdd_mm: float = 1000.0
    fluoro_sad_mm: float = 600.0
    fluoro_step_mm: float = 2.0
    fluoro_photons: float = 2.0e4
    # lesion variant (None = random by seed)
    lesion_size: str | None = None
    arco_stage: int | None = None
    oedema: bool | None = None

    def with_overrides(self, **overrides: Any) -> Preset:
        names = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ConfigError(f"unknown phantom option(s) {unknown}; expected some of {sorted(names - {'name'})}")
        fixed = {k: _coerce(k, getattr(self, k), v) for k, v in overrides.items()}
        p = replace(self, **fixed)
        p.validate()
        return p

    def validate(self) -> None:
        if self.mri_orientation not in ("coronal", "axial", "random"):
            raise ConfigError(f"mri_orientation: expected coronal|axial|random, got {self.mri_orientation!r}")
        if self.ct_kind not in ("fan", "cbct"):
            raise ConfigError(f"ct_kind: expected fan|cbct, got {self.ct_kind!r}")
        if self.lesion_size not in (None, "small", "medium", "large"):
            raise ConfigError(f"lesion_size: expected small|medium|large, got {self.lesion_size!r}")
        if self.oedema not in (None, True, False):
            raise ConfigError(f"oedema: expected true, false or null, got {self.oedema!r}")
        if self.arco_stage not in (None, 2, 3):
            raise ConfigError(f"arco_stage: expected 2 (no collapse) or 3 (collapse), got {self.arco_stage!r}")
        for name in ("mri_spacing_mm", "mri_fov_mm", "ct_spacing_mm", "ct_fov_mm"):
            v = getattr(self, name)
            if len(v) != 3 or min(v) <= 0:
                raise ConfigError(f"{name}: expected three values > 0, got {v}")
        for v in self.fluoro_views:
            if v not in FLUORO_VIEW_ANGLES_DEG:
                raise ConfigError(f"fluoro view {v!r} unknown; expected some of {sorted(FLUORO_VIEW_ANGLES_DEG)}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _coerce(name: str, default: Any, value: Any) -> Any:
    """Check an override against the type of the preset's default value."""
    try:
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise TypeError
            return value
        if isinstance(default, float):
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if isinstance(default, int):
            if isinstance(value, bool) or float(value) != int(value):
                raise TypeError
            return int(value)
        if isinstance(default, tuple):
            if isinstance(value, str):
                raise TypeError
            value = tuple(value)
            if name == "fluoro_views":
                return value
            if len(value) != len(default):
                raise TypeError
            return tuple(type(d)(v) for d, v in zip(default, value, strict=True))
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: expected a value like {default!r}, got {value!r}") from None
    return value


#: C-arm views: (rotation about the patient's long axis, cranio-caudal tilt), degrees.
FLUORO_VIEW_ANGLES_DEG: dict[str, tuple[float, float]] = {
    "ap": (0.0, 0.0), "lateral": (90.0, 0.0), "oblique": (35.0, 0.0), "oblique_inlet": (20.0, 20.0),
}

PRESETS: dict[str, Preset] = {
    "small": Preset("small"),
    "realistic": Preset(
        "realistic", mri_orientation="random", mri_spacing_mm=(0.7, 0.7, 3.5), mri_slice_jitter_mm=0.5,
        mri_fov_mm=(180.0, 90.0, 180.0), mri_oblique_deg=12.0, mri_subsample=(1, 1, 4),
        ct_spacing_mm=(0.8, 0.8, 1.0), ct_fov_mm=(170.0, 170.0, 150.0), ct_subsample=(2, 2, 1),
        ct_noise_hu=15.0, fluoro_views=("ap", "lateral", "oblique"), fluoro_detector_px=(112, 112),
        fluoro_pixel_mm=2.0, fluoro_step_mm=1.5, fluoro_photons=5.0e4,
    ),
}
PRESETS["realistic-distorted"] = replace(
    PRESETS["realistic"], name="realistic-distorted", gradient_nonlinearity_mm_at_150=1.5,
    chemical_shift=True, ct_cupping_hu=60.0,
)
PRESETS["cbct"] = replace(
    PRESETS["realistic"], name="cbct", ct_kind="cbct", ct_spacing_mm=(0.8, 0.8, 0.8),
    ct_fov_mm=(150.0, 150.0, 120.0), ct_noise_hu=45.0, ct_cupping_hu=80.0, ct_fov_radius_mm=70.0,
)
PRESETS["small-distorted"] = replace(
    PRESETS["small"], name="small-distorted", gradient_nonlinearity_mm_at_150=1.5, chemical_shift=True,
    ct_cupping_hu=60.0,
)


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown phantom preset {name!r}; expected one of {sorted(PRESETS)}") from None
