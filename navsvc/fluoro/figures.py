"""QA picture for fluoroscopy: each view with the femur outline and targets reprojected at the result pose."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from navsvc.fluoro.views import FluoroView
from navsvc.imaging import LabelSpec, voxel_centers_lps
from navsvc.transforms import RigidTransform


def femur_surface_points_mri(labels: sitk.Image, spec: LabelSpec = LabelSpec(), max_points: int = 20000,
                             seed: int = 0) -> np.ndarray:
    """LPS mm centres of femur voxels on the label's boundary (subsampled to ``max_points``)."""
    arr = sitk.GetArrayFromImage(labels)
    femur = ((arr == spec.femur) | (arr == spec.necrosis)).astype(np.uint8)
    img = sitk.GetImageFromArray(femur)
    img.CopyInformation(labels)
    edge = sitk.GetArrayFromImage(sitk.BinaryContour(img, fullyConnected=False)) > 0
    pts = voxel_centers_lps(labels, edge)
    if len(pts) > max_points:
        pts = pts[np.random.default_rng(seed).choice(len(pts), max_points, replace=False)]
    return pts


def write_overlay(path: str | os.PathLike[str], views: list[FluoroView], labels: sitk.Image,
                  T_world_from_mri: RigidTransform, targets_mri: dict[str, np.ndarray] | None = None,
                  spec: LabelSpec = LabelSpec(), title: str = "") -> Path:
    """A PNG with one panel per view: the image, the femur surface reprojected (cyan) and the targets (red)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    surface_world = T_world_from_mri.apply(femur_surface_points_mri(labels, spec))
    fig, axes = plt.subplots(1, len(views), figsize=(4.2 * len(views), 4.6), squeeze=False)
    for ax, view in zip(axes[0], views, strict=True):
        ax.imshow(view.line_integral, cmap="gray")
        uv = view.geometry.project(surface_world)
        ax.scatter(uv[:, 0], uv[:, 1], s=0.3, c="cyan", alpha=0.35, linewidths=0)
        for name, p in (targets_mri or {}).items():
            t = view.geometry.project(T_world_from_mri.apply(np.asarray(p)))[0]
            ax.plot(t[0], t[1], "r+", ms=10, mew=1.5)
            ax.annotate(name, (t[0], t[1]), color="red", fontsize=7, xytext=(4, 4), textcoords="offset points")
        w, h = view.geometry.size_px
        ax.set_xlim(-0.5, w - 0.5)
        ax.set_ylim(h - 0.5, -0.5)
        ax.set_title(view.geometry.name, fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
