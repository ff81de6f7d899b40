"""Writing a fluoroscopy registration result to a folder (the same form as the CT path).

Files: ``T_world_from_mri.h5`` and ``T_mri_from_world.h5`` (ITK, + JSON sidecars with frames),
``qa.json`` (verdict, reasons, figures, timings, views), ``overlay_<view>.png`` per view (the
femur outline and the targets reprojected at the result pose) and, with points,
``points_world.mrk.json`` (the points mapped into the world frame, LPS).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from navsvc.fluoro.figures import write_overlay
from navsvc.fluoro.register import FluoroResult, lesion_centre_mri
from navsvc.fluoro.views import FluoroView
from navsvc.frames import WORLD
from navsvc.imaging import LabelSpec
from navsvc.markups import fiducials, write_markups
from navsvc.transforms import write_json_atomic, write_transform


def result_dict(result: FluoroResult, views: list[FluoroView]) -> dict[str, Any]:
    """The JSON form of a result (qa.json): transform matrix, QA, timings and the views used."""
    return {
        "method": "fluoro-2d3d",
        "T_world_from_mri": result.T_world_from_mri.matrix.tolist(),
        "qa": result.qa.to_dict(),
        "similarity_per_view": dict(result.similarity_per_view),
        "timings_s": dict(result.timings_s),
        "views": [{"name": v.geometry.name, "source": v.source, "geometry": v.geometry.to_dict()} for v in views],
    }


def write_fluoro_result(result: FluoroResult, out_dir: str | os.PathLike[str], views: list[FluoroView],
                        labels: sitk.Image, *, points_mri: dict[str, np.ndarray] | None = None,
                        spec: LabelSpec = LabelSpec()) -> dict[str, Path]:
    """Write the result files (module docstring) into ``out_dir``; returns ``{kind: path}``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"method": "fluoro-2d3d", "verdict": result.qa.verdict, "views": [v.geometry.name for v in views]}
    files: dict[str, Path] = {
        "T_world_from_mri": write_transform(out / "T_world_from_mri.h5", result.T_world_from_mri, meta),
        "T_mri_from_world": write_transform(out / "T_mri_from_world.h5", result.T_world_from_mri.inverse(), meta),
        "qa": write_json_atomic(out / "qa.json", result_dict(result, views)),
    }
    targets = {"lesion": lesion_centre_mri(labels, spec), **(points_mri or {})}
    for view in views:
        name = "".join(c if c.isalnum() or c in "-_" else "_" for c in view.geometry.name)
        files[f"overlay_{name}"] = write_overlay(out / f"overlay_{name}.png", [view], labels,
                                                 result.T_world_from_mri, targets, spec,
                                                 title=f"{view.geometry.name}: {result.qa.verdict}")
    if points_mri:
        mapped = {k: result.T_world_from_mri.apply(np.asarray(p, dtype=np.float64)).tolist()
                  for k, p in points_mri.items()}
        files["points"] = write_markups(out / "points_world.mrk.json", [fiducials(f"points_{WORLD}", mapped)])
    return files
