"""Validation harness: run a registration method over phantom cases and report accuracy.

A *method* is a callable ``method(case) -> MethodResult`` returning ``T_ct_from_mri``
(maps MRI points to CT points; any :data:`navsvc.transforms.AnyTransform`). Methods are
registered by name (:func:`register_method`); ``truth`` and ``perturbed`` are built in,
the registration package adds its own.

Figures per case (all LPS mm):

* TRE at every target landmark: ``|T_ct_from_mri(landmarks_mri[n]) - landmarks_ct[n]|``
  (digital phantoms: the femur landmarks; physical phantoms: the ``target`` points, plus
  the fiducial registration error at the ``fiducial`` points);
* lesion Dice in the intraop (CT) frame: the MRI necrosis label resampled onto the CT grid
  with ``T_mri_from_ct = T_ct_from_mri.inverse()`` (nearest neighbour) against the true
  lesion rendered on the CT grid (``case.labels_ct``); "before" uses the identity (the
  two scanners' coordinates taken as one);
* success: maximum TRE < 2 mm; timings: the method's own seconds and the wall time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from navsvc.errors import ConfigError, InputError, NavError, NotFound
from navsvc.frames import CT, MRI
from navsvc.progress import ProgressFn, no_progress
from navsvc.transforms import AnyTransform, RigidTransform, resample, write_json_atomic

log = logging.getLogger(__name__)

SUCCESS_TRE_MM = 2.0


@dataclass
class MethodResult:
    """What a method returns: ``T_ct_from_mri`` maps MRI points (LPS mm) to CT points."""

    T_ct_from_mri: AnyTransform
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


Method = Callable[[Any], MethodResult]
_METHODS: dict[str, Method] = {}


def register_method(name: str, fn: Method, *, replace: bool = False) -> None:
    """Make ``fn`` available as ``navsvc validate --method NAME``."""
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise ConfigError(f"method name must be letters, digits, '-' or '_', got {name!r}")
    if name in _METHODS and not replace and _METHODS[name] is not fn:
        raise ConfigError(f"a validation method named {name!r} is already registered")
    _METHODS[name] = fn


def get_method(name: str) -> Method:
    _load_plugins()
    try:
        return _METHODS[name]
    except KeyError:
        raise NotFound(f"unknown validation method {name!r}; expected one of {sorted(_METHODS)}") from None


def method_names() -> list[str]:
    _load_plugins()
    return sorted(_METHODS)


def _load_plugins() -> None:
    """Import the registration package's method module if it exists (it registers itself)."""
    import importlib

    for mod in ("navsvc.registration.validation_methods",):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name is None or not mod.startswith(exc.name):
                raise


def truth_method(case: Any) -> MethodResult:
    """The true femur motion (exact on undistorted phantoms)."""
    t0 = time.perf_counter()
    return MethodResult(case.T_ct_from_mri_femur, time.perf_counter() - t0, {"note": "ground truth"})


#: The built-in perturbation: rotation (deg, about LPS x/y/z through the true CT head centre)
#: then translation (mm), applied after the true transform.
PERTURBATION = {"rotation_deg": (0.0, 0.0, 1.0), "translation_mm": (0.6, 0.8, 0.0)}


def perturbation_transform(case: Any, rotation_deg: Any = PERTURBATION["rotation_deg"],
                           translation_mm: Any = PERTURBATION["translation_mm"]) -> RigidTransform:
    """``T_ct_from_ct`` of the deliberate error, rotating about the true CT head centre."""
    centre = case.landmarks_ct.get("head_centre", np.zeros(3))
    return RigidTransform.from_euler_deg(rotation_deg, translation_mm, CT, CT, center_mm=centre)


def perturbed_method(case: Any) -> MethodResult:
    """The truth with a known error (:data:`PERTURBATION`): tests that the harness measures it."""
    t0 = time.perf_counter()
    T = perturbation_transform(case) @ case.T_ct_from_mri_femur
    return MethodResult(T, time.perf_counter() - t0, {"perturbation": PERTURBATION})


register_method("truth", truth_method)
register_method("perturbed", perturbed_method)


# -- per-case evaluation --------------------------------------------------------------
def _stats(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {"mean": float("nan"), "p95": float("nan"), "max": float("nan"), "n": 0}
    return {"mean": float(values.mean()), "p95": float(np.percentile(values, 95)),
            "max": float(values.max()), "n": int(values.size)}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean arrays (1.0 when both are empty)."""
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int(np.logical_and(a, b).sum()) / s


def map_labels_to_ct(case: Any, T_ct_from_mri: AnyTransform) -> np.ndarray:
    """The MRI label map on the CT grid, warped with ``T_mri_from_ct = T_ct_from_mri.inverse()``."""
    T_mri_from_ct = T_ct_from_mri.inverse()
    warped = resample(case.labels, case.labels_ct, T_mri_from_ct, interpolator="nearest")
    return sitk.GetArrayFromImage(warped)


def target_names(case: Any) -> tuple[list[str], list[str]]:
    """(targets, fiducials) of a case: femur landmarks for digital phantoms."""
    if case.kind == "physical":
        return case.landmark_names("target"), case.landmark_names("fiducial")
    return case.landmark_names("femur"), []


def evaluate_case(case: Any, method: Method) -> dict[str, Any]:
    """Run ``method`` on one case and measure it (see the module doc). Never raises for a
    method failure: the result records it (``error``) and counts as unsuccessful."""
    out: dict[str, Any] = {"case": case.name, "kind": case.kind, "success": False}
    t0 = time.perf_counter()
    try:
        result = method(case)
    except NavError as exc:
        out.update(error=f"{type(exc).__name__}: {exc}", wall_seconds=time.perf_counter() - t0)
        return out
    out["wall_seconds"] = time.perf_counter() - t0
    out["method_seconds"] = float(result.seconds)
    out["extra"] = result.extra
    T = result.T_ct_from_mri
    if (T.to_frame, T.from_frame) != (CT, MRI):
        out["error"] = f"method returned {T.name}; expected T_ct_from_mri"
        return out
    targets, fids = target_names(case)

    def errors(names: list[str]) -> np.ndarray:
        if not names:
            return np.zeros(0)
        p = np.array([case.landmarks_mri[n] for n in names])
        q = np.array([case.landmarks_ct[n] for n in names])
        return np.linalg.norm(T.apply(p) - q, axis=1)
    tre = errors(targets)
    out["tre_mm"] = dict(zip(targets, tre.tolist(), strict=True))
    out["tre"] = _stats(tre)
    fre = errors(fids)
    if fids:
        out["fre"] = _stats(fre)
    if "lesion_centroid" in case.landmarks_mri:
        out["lesion_tre_mm"] = float(errors(["lesion_centroid"])[0])
    if case.labels is not None and case.labels_ct is not None:
        true_ct = sitk.GetArrayViewFromImage(case.labels_ct)
        after = map_labels_to_ct(case, T)
        before = map_labels_to_ct(case, RigidTransform.identity(CT, MRI))
        out["dice_lesion"] = dice(after == 2, true_ct == 2)
        out["dice_lesion_before"] = dice(before == 2, true_ct == 2)
        out["dice_femur"] = dice(np.isin(after, (1, 2)), np.isin(true_ct, (1, 2)))
        out["_label_maps"] = (before, after)  # for figures; dropped from JSON
    judged = tre if tre.size else fre  # a physical phantom without targets is judged on its fiducials
    out["success"] = bool(judged.size and judged.max() < SUCCESS_TRE_MM)
    return out


# -- cases -------------------------------------------------------------------------------
def iter_cases(spec: str | int, preset: str = "small", first_seed: int = 0) -> tuple[int, Iterator[Any]]:
    """(count, iterator of cases) for ``spec``: a number N (generate seeds first_seed..+N-1 with
    ``preset``), a case folder, or a folder of case folders."""
    from phantoms.case import load_case, make_case

    text = str(spec)
    if text.isdigit():
        n = int(text)
        if n <= 0:
            raise InputError(f"--cases: expected a positive number of cases, got {n}")
        return n, (make_case(first_seed + k, preset) for k in range(n))
    d = Path(text)
    if not d.is_dir():
        raise InputError(f"--cases: expected a number or a folder of phantom cases, got {text!r} (not found)")
    if _is_case_dir(d):
        return 1, iter([load_case(d)])
    subs = sorted(p for p in d.iterdir() if p.is_dir() and _is_case_dir(p))
    if not subs:
        raise InputError(f"--cases: {d} holds no case folders (expected truth.json or fiducials_*.mrk.json)")
    return len(subs), (load_case(p) for p in subs)


def _is_case_dir(d: Path) -> bool:
    return (d / "truth.json").is_file() or (d / "fiducials_mri.mrk.json").is_file()


def run_validation(cases: str | int, method_name: str, out_dir: str | Path, *, preset: str = "small",
                   first_seed: int = 0, progress: ProgressFn = no_progress, figures: bool = True) -> dict[str, Any]:
    """Evaluate ``method_name`` on ``cases`` (see :func:`iter_cases`); write ``report.json``,
    ``report.md`` and figures under ``out_dir``; return the report."""
    method = get_method(method_name)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n, it = iter_cases(cases, preset, first_seed)
    results: list[dict[str, Any]] = []
    for k, case in enumerate(it):
        progress("validate", k / n, f"case {k + 1}/{n}: {case.name}")
        r = evaluate_case(case, method)
        maps = r.pop("_label_maps", None)
        if figures and maps is not None:
            from phantoms.report import lesion_overlay_figure

            before, after = maps
            fig_path = out / "figures" / f"{k:03d}_{case.name}.png"
            r["figure"] = str(lesion_overlay_figure(case, before, after, fig_path, method_name).relative_to(out))
        results.append(r)
        log.info("%s: TRE mean %.3f mm", case.name, r.get("tre", {}).get("mean", float("nan")))
    progress("validate", 1.0, "writing the report")
    report = summarise(results, method_name)
    write_json_atomic(out / "report.json", report)
    from phantoms.report import write_markdown

    write_markdown(report, out, figures=figures)
    return report


def summarise(results: list[dict[str, Any]], method_name: str) -> dict[str, Any]:
    all_tre = np.array([v for r in results for v in r.get("tre_mm", {}).values()])
    lesion = np.array([r["lesion_tre_mm"] for r in results if "lesion_tre_mm" in r])
    dl = [r["dice_lesion"] for r in results if "dice_lesion" in r]
    secs = [r["method_seconds"] for r in results if "method_seconds" in r]
    return {
        "method": method_name,
        "n_cases": len(results),
        "success_rate": float(np.mean([r["success"] for r in results])) if results else 0.0,
        "success_criterion": f"max TRE < {SUCCESS_TRE_MM} mm",
        "tre_overall": _stats(all_tre),
        "lesion_tre": _stats(lesion),
        "dice_lesion_mean": float(np.mean(dl)) if dl else None,
        "method_seconds_mean": float(np.mean(secs)) if secs else None,
        "cases": results,
    }
