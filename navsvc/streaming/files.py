"""Files the streaming CLI reads: fixed targets for bring-up (JSON) and device fiducials."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from navsvc import frames
from navsvc.errors import InputError
from navsvc.streaming.targets import Target

TARGETS_EXAMPLE = """{
  "coordinate_system": "LPS",
  "targets": [
    {"name": "Drill1", "entry": [-62.0, 31.5, -802.2], "target": [-84.5, 48.0, -766.0], "diameter_mm": 3.2}
  ]
}"""


def load_targets_json(path: str | os.PathLike[str]) -> tuple[Target, ...]:
    """Read fixed targets: ``{"coordinate_system": "LPS"|"RAS", "targets": [{"name",
    "entry", "target", "diameter_mm"}]}`` (mm, CT frame). Returns targets in LPS."""
    p = Path(path)
    try:
        doc: Any = json.loads(p.read_text())
    except FileNotFoundError as exc:
        raise InputError(f"targets file not found: {p}") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{p}: not readable JSON ({exc}); expected e.g.\n{TARGETS_EXAMPLE}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("targets"), list) or not doc["targets"]:
        raise InputError(f"{p}: expected an object with a non-empty 'targets' list, e.g.\n{TARGETS_EXAMPLE}")
    system = str(doc.get("coordinate_system", "LPS")).upper()
    if system not in ("LPS", "RAS"):
        raise InputError(f"{p}: coordinate_system: expected 'LPS' or 'RAS', got {system!r}")
    out = []
    for i, item in enumerate(doc["targets"]):
        where = f"{p}: targets[{i}]"
        if not isinstance(item, dict):
            raise InputError(f"{where}: expected an object, got {type(item).__name__}")
        missing = [k for k in ("name", "entry", "target", "diameter_mm") if k not in item]
        if missing:
            raise InputError(f"{where}: missing field(s) {missing}")
        try:
            entry = np.asarray(item["entry"], dtype=np.float64)
            target = np.asarray(item["target"], dtype=np.float64)
            if system == "RAS":
                entry, target = frames.lps_from_ras_points(entry), frames.lps_from_ras_points(target)
            out.append(Target(str(item["name"]), entry, target, float(item["diameter_mm"])))
        except (TypeError, ValueError) as exc:
            raise InputError(f"{where}: {exc}") from exc
        except InputError as exc:
            raise InputError(f"{where}: {exc}") from exc
    return tuple(out)
