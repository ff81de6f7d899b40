"""A phantom case: images, labels, landmarks and exact truth; generation, writing, loading.

Landmark definition (the basis of honest TRE):

* ``landmarks_mri[name]`` is where the anatomical point **appears in the rendered MRI**
  (with gradient-nonlinearity distortion on, the distorted position; bone landmarks use
  the water signal, so the fat chemical shift does not move them);
* ``landmarks_ct[name]`` is its **true** position in the CT frame.

A perfect registration of the image content maps ``landmarks_mri`` onto ``landmarks_ct``;
a rigid registration of a distorted MRI cannot reach 0 mm. Without distortion,
``landmarks_ct == T_ct_from_mri_femur.apply(landmarks_mri)`` for femur landmarks (and
with ``T_ct_from_mri_pelvis`` for pelvis landmarks) to rounding error.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from numpy.typing import ArrayLike, NDArray

from navsvc.errors import ConfigError, InputError
from navsvc.frames import CT, MRI
from navsvc.imaging import contains_points, read_image, write_image
from navsvc.markups import fiducials, write_markups
from navsvc.transforms import (
    RigidTransform,
    rotation_matrix_from_axis_angle,
    write_json_atomic,
    write_transform,
)
from phantoms import pose as pose_mod
from phantoms.anatomy import HipModel, sample_anatomy
from phantoms.modalities import chemical_shift_mm, ct_views, render_ct, render_mri
from phantoms.presets import get_preset
from phantoms.render import reference_image
from phantoms.sdf import unit

log = logging.getLogger(__name__)

MODALITIES = ("mri", "ct", "fluoro")
TRUTH_VERSION = 1
LANDMARK_DEFINITION = (
    "landmarks_mri: where each anatomical point appears in the rendered MRI (distorted position when "
    "gradient-nonlinearity distortion is on; water signal, so chemical shift does not move bone "
    "landmarks). landmarks_ct: its true position in the CT frame. LPS mm. A perfect registration of "
    "the image content maps landmarks_mri onto landmarks_ct; without distortion landmarks_ct = "
    "T_ct_from_mri_<structure>(landmarks_mri)."
)


@dataclass
class FluoroView:
    """One X-ray projection: a 2-D image of attenuation line integrals and its C-arm geometry."""

    image: sitk.Image
    geometry: dict[str, Any]


@dataclass
class Case:
    """One phantom case (see the module doc for the landmark definition).

    Images (SimpleITK, LPS mm; None when not rendered): ``mri`` (T1-like, float32) and
    ``mri_fluid`` (STIR-like) and ``labels`` (UInt8: 0 background, 1 femur, 2 necrosis,
    3 pelvis) share the MRI grid in the ``mri`` frame; ``ct`` (int16 HU) and ``labels_ct``
    (true labels) share the CT grid in the ``ct`` frame. ``landmarks_mri`` /
    ``landmarks_ct``: name -> (3,) LPS mm; ``landmark_structure``: name -> ``femur`` |
    ``pelvis`` (physical phantoms: ``fiducial`` | ``target``). ``T_ct_from_mri_femur`` /
    ``T_ct_from_mri_pelvis`` map MRI-frame points to CT-frame points (true motion of each
    bone). ``params``: every generating parameter (JSON-serialisable).
    """

    seed: int
    preset: str
    side: str
    mri: sitk.Image | None
    mri_fluid: sitk.Image | None
    labels: sitk.Image | None
    ct: sitk.Image | None
    labels_ct: sitk.Image | None
    landmarks_mri: dict[str, NDArray[np.float64]]
    landmarks_ct: dict[str, NDArray[np.float64]]
    landmark_structure: dict[str, str]
    T_ct_from_mri_femur: RigidTransform
    T_ct_from_mri_pelvis: RigidTransform
    params: dict[str, Any]
    fluoro: list[FluoroView] | None = None
    kind: str = "digital"  # digital | physical
    source_dir: Path | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return f"{self.preset}-seed{self.seed}-{self.side}" if self.kind == "digital" else str(self.params.get("name"))

    def landmark_names(self, structure: str | None = None) -> list[str]:
        return [n for n in self.landmarks_mri if structure is None or self.landmark_structure[n] == structure]

    def map_mri_to_ct(self, points_mri: ArrayLike, structure: str = "femur") -> NDArray[np.float64]:
        """Exact truth mapping of points as they appear in the MRI image (N, 3) or (3,), LPS mm,
        to their true CT positions, for points of ``structure`` (``femur`` or ``pelvis``):
        undo the MRI distortion, then apply that structure's true motion."""
        if structure not in ("femur", "pelvis"):
            raise InputError(f"structure: expected 'femur' or 'pelvis', got {structure!r}")
        p = np.asarray(points_mri, dtype=np.float64)
        single = p.shape == (3,)
        x = pose_mod.undistort(np.atleast_2d(p), self.params.get("mri", {}).get("distortion"))
        T = self.T_ct_from_mri_femur if structure == "femur" else self.T_ct_from_mri_pelvis
        q = T.apply(x)
        return q[0] if single else q

    def describe(self) -> str:
        a = self.params.get("anatomy", {})
        les = a.get("lesion", {})
        parts = [f"{self.name}: {self.kind} phantom, {self.side} hip"]
        if les:
            parts.append(f"lesion {les['size']} ARCO {les['arco_stage']}{' + oedema' if les['oedema'] else ''}"
                         f" ({self.params.get('lesion_volume_mm3', 0) / 1000:.1f} cm3)")
        if self.kind == "digital":
            pose = self.params["pose"]
            T_rel = self.T_ct_from_mri_pelvis.inverse() @ self.T_ct_from_mri_femur
            parts.append(f"patient rotated {pose['rotation_deg']:.1f} deg, moved "
                         f"{np.linalg.norm(pose['translation_mm']):.1f} mm; femur rotated "
                         f"{T_rel.rotation_angle_deg:.1f} deg about the head centre")
            m = self.params.get("mri", {})
            if m.get("distortion"):
                parts.append(f"MRI distortion {m['distortion']['magnitude_at_150_mm']:.1f} mm at 150 mm")
            if m.get("chemical_shift_mm"):
                parts.append(f"fat shift {m['chemical_shift_mm']:.2f} mm")
        return "; ".join(parts)

    def write(self, out_dir: str | Path) -> Path:
        """Write the case folder (layout in docs/phantoms.md); returns its path."""
        return _write_case(self, Path(out_dir))


# -- generation --------------------------------------------------------------------------
def make_case(seed: int, preset: str = "small", modalities: tuple[str, ...] | list[str] = ("mri", "ct"),
              side: str | None = None, **overrides: Any) -> Case:
    """Generate a phantom case from ``seed``: the same seed, preset and options give the same case.

    ``modalities``: any of ``mri``, ``ct``, ``fluoro`` (landmarks and truth are always made).
    ``side``: ``left``/``right`` or None (drawn by seed). ``overrides``: fields of
    :class:`phantoms.presets.Preset` (e.g. ``max_rotation_deg=0``, ``lesion_size="large"``).
    """
    t0 = time.perf_counter()
    mods = tuple(modalities)
    bad = [m for m in mods if m not in MODALITIES]
    if bad:
        raise ConfigError(f"unknown modality {bad}; expected some of {list(MODALITIES)}")
    if side not in (None, "left", "right"):
        raise ConfigError(f"side: expected 'left', 'right' or None, got {side!r}")
    pre = get_preset(preset).with_overrides(**overrides) if overrides else get_preset(preset)
    pre.validate()
    ss = np.random.SeedSequence(int(seed))
    r_anat, r_pose, r_mri, r_ct, r_noise, r_fluoro = (np.random.default_rng(s) for s in ss.spawn(6))
    side = side or ("left" if r_anat.uniform() < 0.5 else "right")
    anatomy = sample_anatomy(r_anat, side, pre.lesion_size, pre.arco_stage, pre.oedema)
    model = HipModel(anatomy)
    pose = pose_mod.sample_pose(r_pose, model.H, pre.max_rotation_deg, pre.max_translation_mm,
                                pre.max_femur_deg, pre.soft_tissue_deform_mm)
    T_pelvis, T_femur = pose_mod.pose_transforms(pose, model.H)
    mri_p = _mri_params(pre, model, r_mri)
    ct_p = _ct_params(pre, model, T_pelvis, r_ct)
    true_pts, structure = model.landmarks()
    _, lesion_volume = model.lesion_centroid_and_volume()
    names = list(true_pts)
    x = np.array([true_pts[n] for n in names])
    lm_mri = pose_mod.distort(x, mri_p.get("distortion"))
    lm_ct = np.array([(T_femur if structure[n] == "femur" else T_pelvis).apply(true_pts[n]) for n in names])
    params: dict[str, Any] = {
        "seed": int(seed), "preset": preset, "preset_values": pre.as_dict(), "modalities": list(mods),
        "anatomy": anatomy, "pose": pose, "mri": mri_p, "ct": ct_p,
        "lesion_volume_mm3": lesion_volume,
        "lesion_head_fraction": lesion_volume / (4.0 / 3.0 * np.pi * model.r_head**3),
    }
    frac = params["lesion_head_fraction"]
    params["lesion_extent_class"] = "small (<15 %)" if frac < 0.15 else "medium (15-30 %)" if frac < 0.30 else "large (>30 %)"
    mri_grid = reference_image(mri_p["size"], mri_p["spacing_mm"], mri_p["centre_mm"], np.array(mri_p["direction"]))
    ct_grid = reference_image(ct_p["size"], ct_p["spacing_mm"], ct_p["centre_mm"], np.eye(3))
    params["landmarks_outside_fov"] = {
        "mri": [n for n, inside in zip(names, contains_points(mri_grid, lm_mri), strict=True) if not inside],
        "ct": [n for n, inside in zip(names, contains_points(ct_grid, lm_ct), strict=True) if not inside],
    }
    mri = fluid = labels = ct = labels_ct = None
    if "mri" in mods:
        mri, fluid, labels = render_mri(model, mri_grid, mri_p, r_noise, with_fluid=pre.mri_fluid)
    view = ct_views(model, T_pelvis, T_femur, pose)
    if "ct" in mods:
        ct, labels_ct = render_ct(model, ct_grid, view, ct_p, r_noise)
    fluoro = None
    if "fluoro" in mods:
        from phantoms.fluoro import add_projected_landmarks, render_fluoro_views

        fluoro = render_fluoro_views(model, view, pre, T_pelvis, r_fluoro, (ct_p["cortical_hu"], ct_p["trabecular_hu"]))
        add_projected_landmarks(fluoro, {n: lm_ct[k] for k, n in enumerate(names)})
        params["fluoro"] = [v.geometry for v in fluoro]
    params["generation_seconds"] = time.perf_counter() - t0
    log.info("phantom seed %d (%s) generated in %.2f s", seed, preset, params["generation_seconds"])
    return Case(
        seed=int(seed), preset=preset, side=side, mri=mri, mri_fluid=fluid, labels=labels, ct=ct,
        labels_ct=labels_ct,
        landmarks_mri={n: lm_mri[k] for k, n in enumerate(names)},
        landmarks_ct={n: lm_ct[k] for k, n in enumerate(names)},
        landmark_structure=structure, T_ct_from_mri_femur=T_femur, T_ct_from_mri_pelvis=T_pelvis,
        params=_jsonable(params), fluoro=fluoro,
    )


_ORIENT_AXES = {  # image axes (i, j, k) as LPS unit vectors, and which FOV entry (LR, AP, SI) each covers
    "coronal": (np.array([[1.0, 0, 0], [0, 0, -1.0], [0, 1.0, 0]]).T, (0, 2, 1)),
    "axial": (np.eye(3), (0, 1, 2)),
}


def _mri_params(pre: Any, model: HipModel, rng: np.random.Generator) -> dict[str, Any]:
    orient = pre.mri_orientation if pre.mri_orientation != "random" else ("coronal", "axial")[int(rng.integers(0, 2))]
    d0, fov_index = _ORIENT_AXES[orient]
    oblique = rotation_matrix_from_axis_angle(unit(rng.normal(size=3)), float(rng.uniform(0.3, 1.0) * pre.mri_oblique_deg))
    direction = oblique @ d0
    sp = list(pre.mri_spacing_mm)
    sp[2] = float(sp[2] + rng.uniform(-1, 1) * pre.mri_slice_jitter_mm)
    size = [max(4, int(round(pre.mri_fov_mm[fov_index[a]] / sp[a]))) for a in range(3)]
    up = np.array([0.0, 0.0, 1.0])
    centre = model.H + 18.0 * model.lat - 25.0 * up + rng.uniform(-5, 5, size=3)
    readout = int(rng.integers(0, 2))
    out: dict[str, Any] = {
        "orientation": orient, "direction": direction.tolist(), "spacing_mm": sp, "size": size,
        "centre_mm": centre.tolist(), "subsample": list(pre.mri_subsample),
        "readout_axis": readout, "readout_direction_lps": direction[:, readout].tolist(),
        "noise_sigma": pre.mri_noise_fraction * 950.0,
        "bias_coefficients": np.concatenate([[0.0], rng.normal(scale=pre.mri_bias_amplitude / 2, size=9)]).tolist(),
        "field_t": pre.field_t, "bandwidth_hz_per_px": pre.bandwidth_hz_per_px,
        "distortion": None, "chemical_shift_mm": 0.0,
    }
    if pre.gradient_nonlinearity_mm_at_150 > 0:
        out["distortion"] = pose_mod.sample_distortion(rng, pre.gradient_nonlinearity_mm_at_150)
    if pre.chemical_shift:
        out["chemical_shift_mm"] = chemical_shift_mm(pre.field_t, pre.bandwidth_hz_per_px, sp[readout])
    return out


def _ct_params(pre: Any, model: HipModel, T_pelvis: RigidTransform, rng: np.random.Generator) -> dict[str, Any]:
    up = np.array([0.0, 0.0, 1.0])
    centre = T_pelvis.apply(model.H + 15.0 * model.lat - 25.0 * up) + rng.uniform(-5, 5, size=3)
    size = [max(4, int(round(f / s))) for f, s in zip(pre.ct_fov_mm, pre.ct_spacing_mm, strict=True)]
    body_c = np.array([*model.params["body_centre_xy_mm"], model.H[2]])
    return {
        "kind": pre.ct_kind, "spacing_mm": list(pre.ct_spacing_mm), "size": size, "centre_mm": centre.tolist(),
        "direction": np.eye(3).tolist(), "subsample": list(pre.ct_subsample),
        "cortical_hu": float(rng.uniform(1250, 1750)), "trabecular_hu": float(rng.uniform(200, 380)),
        "noise_hu": pre.ct_noise_hu, "cupping_hu": pre.ct_cupping_hu,
        "cupping_radius_mm": float(min(model.params["body_semi_axes_mm"])) * 1.2,
        "axial_centre_mm": T_pelvis.apply(body_c).tolist(),
        "fov_radius_mm": pre.ct_fov_radius_mm, "fov_centre_mm": centre.tolist(),
    }


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


# -- files ----------------------------------------------------------------------------------
IMAGE_FILES = {"mri": "mri_t1.nii.gz", "mri_fluid": "mri_fluid.nii.gz", "labels": "labels.nii.gz",
               "ct": "ct.nii.gz", "labels_ct": "labels_ct.nii.gz"}


def _write_case(case: Case, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    for attr, fname in IMAGE_FILES.items():
        img = getattr(case, attr)
        if img is not None:
            write_image(out / fname, img)
    names = list(case.landmarks_mri)
    write_markups(out / "landmarks_mri.mrk.json", [fiducials("landmarks_mri", {n: p.tolist() for n, p in case.landmarks_mri.items()})])
    write_markups(out / "landmarks_ct.mrk.json", [fiducials("landmarks_ct", {n: p.tolist() for n, p in case.landmarks_ct.items()})])
    outside = case.params.get("landmarks_outside_fov", {})
    write_json_atomic(out / "landmarks.json", {
        "coordinate_system": "LPS", "units": "mm", "definition": LANDMARK_DEFINITION,
        "landmarks": {n: {"mri": case.landmarks_mri[n], "ct": case.landmarks_ct[n],
                          "structure": case.landmark_structure[n],
                          "in_mri_fov": n not in outside.get("mri", []),
                          "in_ct_fov": n not in outside.get("ct", [])} for n in names},
    })
    write_transform(out / "T_ct_from_mri_femur.h5", case.T_ct_from_mri_femur, {"truth": True})
    write_transform(out / "T_ct_from_mri_pelvis.h5", case.T_ct_from_mri_pelvis, {"truth": True})
    write_json_atomic(out / "truth.json", {
        "version": TRUTH_VERSION, "kind": case.kind, "seed": case.seed, "preset": case.preset, "side": case.side,
        "landmark_definition": LANDMARK_DEFINITION,
        "T_ct_from_mri_femur": case.T_ct_from_mri_femur.matrix, "T_ct_from_mri_pelvis": case.T_ct_from_mri_pelvis.matrix,
        "transform_convention": "4x4 LPS mm, maps points from the MRI frame to the CT frame (q = M p)",
        "params": case.params,
    })
    if case.fluoro:
        from phantoms.fluoro import write_views

        write_views(case.fluoro, out / "fluoro")
    (out / "README.txt").write_text(case.describe() + "\n")
    return out


def load_case(path: str | Path) -> Case:
    """Load a case folder written by :meth:`Case.write`, or a physical-phantom folder
    (``fiducials_mri.mrk.json`` + ``fiducials_ct.mrk.json``; see :mod:`phantoms.physical`)."""
    d = Path(path)
    if not d.is_dir():
        raise InputError(f"case folder not found: {d}")
    truth_path = d / "truth.json"
    if not truth_path.is_file():
        from phantoms.physical import load_physical_case

        return load_physical_case(d)
    try:
        truth = json.loads(truth_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{truth_path}: cannot read truth JSON: {exc}") from exc
    for key in ("T_ct_from_mri_femur", "T_ct_from_mri_pelvis", "params"):
        if key not in truth:
            raise InputError(f"{truth_path}: expected key {key!r}; the file is not a phantom truth file")
    imgs: dict[str, sitk.Image | None] = {}
    for attr, fname in IMAGE_FILES.items():
        f = d / fname
        imgs[attr] = read_image(f) if f.is_file() else None
    lm_path = d / "landmarks.json"
    try:
        lm = json.loads(lm_path.read_text())["landmarks"]
    except (OSError, json.JSONDecodeError, KeyError) as exc:
        raise InputError(f"{lm_path}: cannot read landmarks: {exc}") from exc
    fluoro = None
    if (d / "fluoro").is_dir():
        from phantoms.fluoro import read_views

        fluoro = read_views(d / "fluoro")
    return Case(
        seed=int(truth["seed"]), preset=str(truth["preset"]), side=str(truth["side"]),
        mri=imgs["mri"], mri_fluid=imgs["mri_fluid"], labels=imgs["labels"], ct=imgs["ct"],
        labels_ct=imgs["labels_ct"],
        landmarks_mri={n: np.array(v["mri"], dtype=np.float64) for n, v in lm.items()},
        landmarks_ct={n: np.array(v["ct"], dtype=np.float64) for n, v in lm.items()},
        landmark_structure={n: v["structure"] for n, v in lm.items()},
        T_ct_from_mri_femur=RigidTransform(np.array(truth["T_ct_from_mri_femur"]), CT, MRI),
        T_ct_from_mri_pelvis=RigidTransform(np.array(truth["T_ct_from_mri_pelvis"]), CT, MRI),
        params=truth["params"], fluoro=fluoro, kind=truth.get("kind", "digital"), source_dir=d,
    )

