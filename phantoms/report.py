"""Figures and the Markdown report of the validation harness (matplotlib, Agg backend)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from navsvc.imaging import index_from_lps


def _pyplot():  # noqa: ANN202
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=80, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def lesion_overlay_figure(case: Any, before: np.ndarray, after: np.ndarray, path: Path, method: str) -> Path:
    """Axial CT slice through the true lesion centroid: true lesion contour (green) and the
    MRI lesion mapped before (identity) and after registration (red)."""
    plt = _pyplot()
    ct = sitk.GetArrayViewFromImage(case.ct)
    true = sitk.GetArrayViewFromImage(case.labels_ct) == 2
    if "lesion_centroid" in case.landmarks_ct:
        k = int(np.clip(round(index_from_lps(case.ct, case.landmarks_ct["lesion_centroid"])[2]), 0, ct.shape[0] - 1))
    else:
        k = ct.shape[0] // 2
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.6))
    for ax, mapped, title in ((axes[0], before, "before (scanner coordinates)"), (axes[1], after, f"after ({method})")):
        ax.imshow(ct[k], cmap="gray", vmin=-200, vmax=1400)
        if true[k].any():
            ax.contour(true[k], levels=[0.5], colors="lime", linewidths=1.2)
        if (mapped[k] == 2).any():
            ax.contour(mapped[k] == 2, levels=[0.5], colors="red", linewidths=1.2)
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    fig.suptitle(f"{case.name}: CT slice {k}, true lesion (green), mapped MRI lesion (red)", fontsize=10)
    out = _save(fig, path)
    plt.close(fig)
    return out


def tre_histogram(report: dict[str, Any], path: Path) -> Path:
    plt = _pyplot()
    tre = [v for r in report["cases"] for v in r.get("tre_mm", {}).values()]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.hist(tre, bins=30, color="steelblue")
    ax.axvline(2.0, color="red", linestyle="--", linewidth=1, label="success limit 2 mm")
    ax.set_xlabel("TRE (mm)")
    ax.set_ylabel("landmarks")
    ax.set_title(f"TRE, method {report['method']}, {report['n_cases']} case(s)", fontsize=10)
    ax.legend(fontsize=8)
    out = _save(fig, path)
    plt.close(fig)
    return out


def _f(v: Any, fmt: str = ".3f") -> str:
    return "-" if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, fmt)


def write_markdown(report: dict[str, Any], out: Path, figures: bool = True) -> Path:
    o, lt = report["tre_overall"], report["lesion_tre"]
    lines = [
        f"# Validation report: method `{report['method']}`",
        "",
        f"{report['n_cases']} case(s); success ({report['success_criterion']}): "
        f"{100 * report['success_rate']:.0f} %.",
        "",
        f"TRE over all target landmarks: mean {_f(o['mean'])} mm, p95 {_f(o['p95'])} mm, max {_f(o['max'])} mm "
        f"(n = {o['n']}). Lesion-centroid TRE: mean {_f(lt['mean'])} mm, max {_f(lt['max'])} mm. "
        f"Mean lesion Dice (CT frame): {_f(report['dice_lesion_mean'])}. "
        f"Mean method time: {_f(report['method_seconds_mean'], '.2f')} s.",
        "",
        "| case | TRE mean | p95 | max | lesion TRE | FRE mean | lesion Dice before | after | femur Dice | s | ok |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["cases"]:
        t = r.get("tre", {})
        lines.append(
            f"| {r['case']} | {_f(t.get('mean'))} | {_f(t.get('p95'))} | {_f(t.get('max'))} | "
            f"{_f(r.get('lesion_tre_mm'))} | {_f(r.get('fre', {}).get('mean'))} | "
            f"{_f(r.get('dice_lesion_before'))} | {_f(r.get('dice_lesion'))} | {_f(r.get('dice_femur'))} | "
            f"{_f(r.get('method_seconds'), '.2f')} | {'yes' if r['success'] else 'NO'} |"
        )
    errors = [r for r in report["cases"] if "error" in r]
    if errors:
        lines += ["", "## Failures", ""] + [f"- {r['case']}: {r['error']}" for r in errors]
    if figures and report["cases"]:
        tre_histogram(report, out / "figures" / "tre_histogram.png")
        lines += ["", "## Figures", "", "![TRE histogram](figures/tre_histogram.png)", ""]
        lines += [f"![{r['case']}]({r['figure']})" for r in report["cases"] if "figure" in r]
    lines += ["", "TRE is measured in the CT frame between T_ct_from_mri(landmark as it appears in the MRI) and "
              "the landmark's true CT position (LPS mm); see docs/phantoms.md.", ""]
    path = out / "report.md"
    tmp = path.with_name(".tmp-report.md")
    tmp.write_text("\n".join(lines))
    os.replace(tmp, path)
    return path


def case_figure(case: Any, path: Path) -> Path:
    """One-page overview of a case: MRI T1 and fluid slices through the lesion with the
    labels, a coronal CT reformat through the lesion with the true lesion contour, and the
    fluoroscopy views (if any) with the projected landmarks."""
    plt = _pyplot()
    n_fl = len(case.fluoro or [])
    cols = 4 if n_fl <= 4 else n_fl
    fig, grid = plt.subplots(2 if n_fl else 1, cols, figsize=(3.8 * cols, 4.2 * (2 if n_fl else 1)), squeeze=False)
    axes = list(grid[0]) + (list(grid[1]) if n_fl else [])
    lab = sitk.GetArrayViewFromImage(case.labels)
    k = int(np.clip(round(index_from_lps(case.mri, case.landmarks_mri["lesion_centroid"])[2]), 0, lab.shape[0] - 1))
    sp = case.mri.GetSpacing()
    t1 = sitk.GetArrayViewFromImage(case.mri)[k]
    axes[0].imshow(t1, cmap="gray", aspect=sp[1] / sp[0], vmax=np.percentile(t1, 99.5))
    axes[0].set_title(f"MRI T1, slice {k} ({case.params['mri']['orientation']})", fontsize=9)
    if case.mri_fluid is not None:
        fl = sitk.GetArrayViewFromImage(case.mri_fluid)[k]
        axes[1].imshow(fl, cmap="gray", aspect=sp[1] / sp[0], vmax=np.percentile(fl, 99.5))
        axes[1].set_title("MRI fluid-sensitive (STIR-like)", fontsize=9)
    axes[2].imshow(t1, cmap="gray", aspect=sp[1] / sp[0], vmax=np.percentile(t1, 99.5))
    masked = np.ma.masked_equal(lab[k], 0)
    axes[2].imshow(masked, cmap="brg", alpha=0.45, aspect=sp[1] / sp[0], vmin=0, vmax=3, interpolation="nearest")
    axes[2].set_title("labels: femur, necrosis, pelvis", fontsize=9)
    ct = sitk.GetArrayViewFromImage(case.ct)
    j = int(np.clip(round(index_from_lps(case.ct, case.landmarks_ct["lesion_centroid"])[1]), 0, ct.shape[1] - 1))
    csp = case.ct.GetSpacing()
    axes[3].imshow(ct[:, j, :], cmap="gray", vmin=-300, vmax=1500, origin="lower", aspect=csp[2] / csp[0])
    axes[3].contour(sitk.GetArrayViewFromImage(case.labels_ct)[:, j, :] == 2, levels=[0.5], colors="lime",
                    linewidths=0.8)
    axes[3].set_title(f"intraop CT ({case.params['ct']['kind']}), coronal reformat", fontsize=9)
    for a, v in enumerate(case.fluoro or []):
        ax = axes[cols + a]
        img = sitk.GetArrayViewFromImage(v.image)
        inside = img[img > 0]
        ax.imshow(img, cmap="gray_r", vmin=np.percentile(inside, 1), vmax=np.percentile(inside, 99.5))
        for name in ("lesion_centroid", "head_centre", "greater_trochanter_tip", "lesser_trochanter"):
            u, w = v.geometry["landmarks_px"][name]
            ax.plot(u, w, "r+", ms=6)
        ax.set_title(f"fluoroscopy {v.geometry['view']}", fontsize=9)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(case.describe(), fontsize=9)
    out = _save(fig, path)
    plt.close(fig)
    return out
