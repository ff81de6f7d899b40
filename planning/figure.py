"""Review picture of a plan: MRI slices along each trajectory with the lesion contour,
the drill path and its margins (PNG, matplotlib without a display)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray
from scipy import ndimage

from navsvc.imaging import LabelSpec, index_from_lps
from planning.checks import CheckReport
from planning.geometry import DEFAULT_SPEC, FemurAnatomy
from planning.model import Plan, Trajectory

_PIXEL_MM = 0.5


def _sample(image: sitk.Image, points_lps: NDArray[np.float64], order: int) -> NDArray[np.float64]:
    arr = sitk.GetArrayViewFromImage(image)
    ijk = index_from_lps(image, points_lps.reshape(-1, 3))
    vals = ndimage.map_coordinates(np.asarray(arr, dtype=np.float32), ijk[:, ::-1].T, order=order,
                                   mode="constant", cval=0.0)
    return vals.reshape(points_lps.shape[:-1])


def slice_planes(traj: Trajectory, anatomy: FemurAnatomy) -> list[tuple[str, NDArray[np.float64]]]:
    """Two in-plane unit vectors perpendicular to the drill axis: (label, w) for the
    coronal-oblique plane (w towards proximal) and the axial-oblique plane (w towards
    anterior) that contain the axis."""
    u = traj.direction_lps
    w_cor = np.cross(anatomy.anterior, u)
    w_cor /= np.linalg.norm(w_cor)
    if w_cor @ anatomy.shaft_axis < 0:
        w_cor = -w_cor
    w_ax = np.cross(u, w_cor)
    w_ax /= np.linalg.norm(w_ax)
    if w_ax @ anatomy.anterior < 0:
        w_ax = -w_ax
    return [("coronal-oblique", w_cor), ("axial-oblique", w_ax)]


def render_plan_png(
    plan: Plan,
    mri: sitk.Image,
    labels: sitk.Image,
    anatomy: FemurAnatomy,
    path: str | os.PathLike[str],
    spec: LabelSpec = DEFAULT_SPEC,
    report: CheckReport | None = None,
) -> Path:
    """Write a PNG: per trajectory (rows) two MRI planes containing the drill axis (columns)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    n = len(plan.trajectories)
    fig, axes = plt.subplots(n, 2, figsize=(11, 4.6 * n), squeeze=False)
    clearance = plan.margins.cortical_clearance_mm
    for row, traj in enumerate(plan.trajectories):
        u = traj.direction_lps
        entry = np.asarray(traj.entry_lps)
        length = traj.length_mm
        along = np.arange(-15.0, length + 25.0, _PIXEL_MM)
        across = np.arange(-35.0, 35.0 + _PIXEL_MM, _PIXEL_MM)
        r = traj.diameter_mm / 2.0
        for col, (label, w) in enumerate(slice_planes(traj, anatomy)):
            ax = axes[row][col]
            pts = entry + along[None, :, None] * u + across[:, None, None] * w
            img = _sample(mri, pts, 1)
            lab = np.rint(_sample(labels, pts, 0)).astype(int)
            extent = (along[0], along[-1], across[0], across[-1])
            lo, hi = np.percentile(img, [1, 99])
            ax.imshow(img, cmap="gray", origin="lower", extent=extent, vmin=lo, vmax=hi, aspect="equal")
            femur = (lab == spec.femur) | (lab == spec.necrosis)
            for mask, color in ((femur, "gold"), (lab == spec.necrosis, "red")):
                if mask.any() and not mask.all():
                    ax.contour(along, across, mask.astype(float), levels=[0.5], colors=color, linewidths=1.2)
            ax.add_patch(Rectangle((0.0, -r), length, 2 * r, facecolor="cyan", alpha=0.35, edgecolor="cyan"))
            for sign in (-1, 1):
                ax.plot([0, length], [sign * (r + clearance)] * 2, "c--", linewidth=0.9)
            ax.plot([0], [0], "o", color="lime", markersize=5)
            ax.plot([length], [0], "x", color="magenta", markersize=8, mew=2)
            ax.set_xlabel("mm along the drill path from the entry")
            ax.set_ylabel(f"mm across ({label})")
            title = f"{traj.name}: {traj.diameter_mm:g} mm, depth {traj.depth_mm:.1f} mm - {label}"
            if report is not None:
                t = next((t for t in report.trajectories if t.name == traj.name), None)
                if t is not None:
                    title += f"\nclearance {t.min_clearance_mm:.1f} mm, tip {t.tip_clearance_mm:.1f} mm from the surface"
            ax.set_title(title, fontsize=9)
    verdict = "" if report is None else (" - all rules met" if report.ok else f" - {len(report.violations)} VIOLATION(S)")
    fig.suptitle(f"plan {plan.case_id} ({plan.side} hip){verdict}\nyellow femur, red lesion, cyan drill, "
                 f"dashed {clearance:g} mm clearance, green entry, magenta target", fontsize=10)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
