"""Digital phantoms of the hip with exact ground truth, and the validation harness.

    from phantoms import make_case, load_case, Case, PRESETS
    case = make_case(seed=0, preset="small")

See docs/phantoms.md for the model, the presets, the case-folder layout and the
landmark definition.
"""

from phantoms.case import Case, FluoroView, load_case, make_case
from phantoms.presets import PRESETS, Preset

__all__ = ["Case", "FluoroView", "PRESETS", "Preset", "load_case", "make_case"]
