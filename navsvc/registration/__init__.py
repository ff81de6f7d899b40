"""MRI -> intraoperative CT registration: femur-focused rigid, constrained deformable, elastix, QA gate.

Public API::

    from navsvc.registration import (RegistrationOptions, RegistrationResult, QAReport,
                                     register_mri_to_ct, write_result)

``register_mri_to_ct`` returns ``T_ct_from_mri`` (moves MRI points into the CT) and
``T_mri_from_ct`` (resamples the MRI onto the CT). See docs/registration.md.
"""

from navsvc.registration.output import write_result
from navsvc.registration.pipeline import register_mri_to_ct
from navsvc.registration.result import (
    QAReport,
    QAThresholds,
    RegistrationOptions,
    RegistrationResult,
)

__all__ = [
    "QAReport",
    "QAThresholds",
    "RegistrationOptions",
    "RegistrationResult",
    "register_mri_to_ct",
    "write_result",
]
