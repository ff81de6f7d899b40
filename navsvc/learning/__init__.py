"""The learned registration model (issue #9): a MONAI network that proposes the deformable
stage's starting velocity field from a rigidly aligned MRI / CT pair.

Public API::

    from navsvc.learning import load_model, predict_velocity, SHIPPED
    model = load_model("shipped")                    # or a path to user weights
    v = predict_velocity(model, ct, mri, femur_mri, T_ct_from_mri_rigid, spacing_mm=5.0)
    options = RegistrationOptions(initial_velocity=v)

See docs/model-card.md for the training data, settings and limits.
"""

from navsvc.learning.network import (
    ARCHITECTURE,
    FORMAT_VERSION,
    SHIPPED,
    LoadedModel,
    NetConfig,
    PolyField,
    VelocityNet,
    load_model,
    predict_field,
    predict_velocity,
    save_model,
)

__all__ = [
    "ARCHITECTURE",
    "FORMAT_VERSION",
    "SHIPPED",
    "LoadedModel",
    "NetConfig",
    "PolyField",
    "VelocityNet",
    "load_model",
    "predict_field",
    "predict_velocity",
    "save_model",
]
