"""Registration methods for the phantom validation harness (``navsvc validate --method NAME``).

Imported by :mod:`phantoms.validate` as a plugin; registers ``navsvc`` (full pipeline),
``rigid`` (rigid stages only), ``elastix`` (careful rigid + B-spline), ``elastix-rigid``
(careful rigid), ``elastix-rigid-masks`` (careful rigid with the CT femur mask as fixed mask
as well, from the case's CT labels: a user who segmented the CT) and ``elastix-default``
(elastix's default rigid map).
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from navsvc.registration.pipeline import register_mri_to_ct
from navsvc.registration.result import RegistrationOptions

#: harness name -> options
METHOD_OPTIONS: dict[str, RegistrationOptions] = {
    "navsvc": RegistrationOptions(method="navsvc"),
    "rigid": RegistrationOptions(method="rigid"),
    "elastix": RegistrationOptions(method="elastix", elastix_config="careful"),
    "elastix-rigid": RegistrationOptions(method="elastix-rigid", elastix_config="careful"),
    "elastix-rigid-masks": RegistrationOptions(method="elastix-rigid", elastix_config="careful"),
    "elastix-default": RegistrationOptions(method="elastix-rigid", elastix_config="default"),
}


#: methods that get the CT femur mask (elastix's fixed mask); navsvc never does
FIXED_MASK_METHODS = frozenset({"elastix-rigid-masks"})


def run_case(case: Any, options: RegistrationOptions, *, fixed_mask: bool | None = None) -> Any:
    """Register one phantom case; returns the harness's MethodResult with QA in ``extra``.

    ``fixed_mask``: give elastix the case's CT femur mask; None = when ``options`` is the very
    object of a method in :data:`FIXED_MASK_METHODS` (the benchmark passes METHOD_OPTIONS[name]).
    """
    if fixed_mask is None:
        fixed_mask = any(options is METHOD_OPTIONS[n] for n in FIXED_MASK_METHODS)
    from phantoms.validate import MethodResult

    targets = [case.landmarks_mri[n] for n in case.landmark_names("femur")]
    params = getattr(case, "params", None)
    mri_params = params.get("mri", {}) if isinstance(params, dict) else {}
    shift_mm = float(mri_params.get("chemical_shift_mm", 0.0) or 0.0)
    if shift_mm and options.method != "elastix" and not options.method.startswith("elastix"):
        # the readout direction and the shift come from the acquisition (DICOM) metadata
        d = mri_params["readout_direction_lps"]
        options = replace(options, fat_shift_mm=tuple(shift_mm * float(v) for v in d))
    ct_femur = None
    if fixed_mask and options.method.startswith("elastix") and options.elastix_config == "careful":
        ct_femur = ct_femur_mask(case)
    t0 = time.perf_counter()
    result = register_mri_to_ct(case.mri, case.labels, case.ct, options, ct_femur_mask=ct_femur)
    seconds = time.perf_counter() - t0
    extra = {"verdict": result.qa.verdict, "reasons": result.qa.reasons, "notes": result.qa.notes,
             "figures": result.qa.figures, "timings_s": result.timings_s, "n_targets": len(targets),
             "T_ct_from_mri_rigid": result.T_ct_from_mri_rigid, "stages": result.stages}
    return MethodResult(result.T_ct_from_mri, seconds, extra)


def ct_femur_mask(case: Any) -> Any:
    """The femur (and lesion) of the case's CT labels, or its ``extra["femur_ct"]``, or None.

    Only the careful elastix configuration gets it (a user who segmented the CT); navsvc
    registers without any CT segmentation.
    """
    import SimpleITK as sitk

    labels_ct = getattr(case, "labels_ct", None)
    if labels_ct is not None:
        return sitk.Cast((labels_ct == 1) | (labels_ct == 2), sitk.sitkUInt8)
    extra = getattr(case, "extra", None)
    return extra.get("femur_ct") if isinstance(extra, dict) else None


def _register_all() -> None:
    from phantoms.validate import register_method

    for name, opts in METHOD_OPTIONS.items():
        register_method(name, lambda case, o=opts, f=name in FIXED_MASK_METHODS: run_case(case, o, fixed_mask=f),
                        replace=True)


def options_for(name: str, **overrides: Any) -> RegistrationOptions:
    return replace(METHOD_OPTIONS[name], **overrides)


_register_all()
