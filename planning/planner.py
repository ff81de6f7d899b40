"""Automatic core-decompression planner.

From the MRI's segmentation (femur, necrosis) the planner

1. picks a target in the lesion whose drill tip stays ``articular_margin_mm`` inside the
   articular surface: the allowed point nearest the lesion centroid (``target_mode="centroid"``)
   or the one with the most lesion within ``lesion_reach_mm`` (``"coverage"``);
2. searches straight paths from the target outwards (directions on a sphere, then a finer
   cone around the best) until each leaves the femur: that exit is the entry. A path is
   feasible when the drill's edge keeps ``cortical_clearance_mm`` from the cortex beyond the
   entry zone, the entry faces laterally and lies at or below the greater trochanter's tip --
   i.e. the path runs from the lateral cortex up the femoral neck. Among feasible paths it
   takes the one with the largest clearance along its neck part (the path beyond 30 % of
   its length from the entry; the shortest within 0.3 mm bands), falling back to the next
   ranked paths if the final rule check (finer sampling) refuses it;
3. for ``n_drills > 1`` spreads the targets over the lesion (k-means of the allowed points)
   and fans the tracts from the first tract's entry where the rules allow it;
4. re-checks the result with :func:`planning.checks.check_plan` (the same rules as for a
   hand-drawn plan).

Every point is in the MRI frame, LPS mm.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray
from scipy.cluster.vq import kmeans2
from scipy.spatial import cKDTree

from navsvc import __version__
from navsvc.errors import ConfigError, PlanError
from navsvc.imaging import (
    LabelSpec,
    check_geometry,
    check_label_map,
    check_same_grid,
    contains_points,
)
from navsvc.progress import CancelToken, ProgressFn, no_progress
from planning.checks import check_plan, trajectory_violations
from planning.geometry import (
    DEFAULT_SPEC,
    BoneFields,
    FemurAnatomy,
    bone_fields,
    femur_anatomy,
    measure_path,
)
from planning.lesion import lesion_summary
from planning.model import Margins, Plan, Trajectory, image_ref, make_plan, sha256_file

log = logging.getLogger(__name__)

#: Extra margin (mm) the search keeps over each limit, so that the final check (finer sampling) passes.
_SEARCH_SLACK_MM = 0.15


@dataclass(frozen=True)
class PlannerOptions:
    """Options of :func:`plan_automatic` (mm, degrees).

    ``n_drills`` tracts of ``diameter_mm`` (one 8 mm core by default; ``PlannerOptions.fan()``
    gives three 3.2 mm drillings). Margins: see :class:`planning.model.Margins`.
    """

    n_drills: int = 1
    diameter_mm: float = 8.0
    target_mode: str = "centroid"
    cortical_clearance_mm: float = 3.0
    articular_margin_mm: float = 5.0
    entry_zone_mm: float = 10.0
    entry_tolerance_mm: float = 5.0
    max_entry_angle_deg: float = 60.0
    lesion_reach_mm: float = 10.0
    fov_margin_mm: float = 5.0
    max_path_length_mm: float = 160.0
    min_target_spacing_mm: float = 4.0
    direction_samples: int = 2000
    step_mm: float = 0.5
    author: str = "navsvc auto-planner"

    def __post_init__(self) -> None:
        if self.target_mode not in ("centroid", "coverage"):
            raise ConfigError(f"target_mode: expected 'centroid' or 'coverage', got {self.target_mode!r}")
        if not 1 <= self.n_drills <= 9:
            raise ConfigError(f"n_drills: expected 1 to 9, got {self.n_drills}")
        if not 0.5 < self.diameter_mm <= 15.0:
            raise ConfigError(f"diameter_mm: expected 0.5 < d <= 15 mm, got {self.diameter_mm}")
        if not 20.0 <= self.max_path_length_mm <= 400.0:
            raise ConfigError(f"max_path_length_mm: expected 20 to 400 mm, got {self.max_path_length_mm}")
        if not 0.05 <= self.step_mm <= 2.0:
            raise ConfigError(f"step_mm: expected 0.05 to 2 mm, got {self.step_mm}")
        if self.direction_samples < 100:
            raise ConfigError(f"direction_samples: expected at least 100, got {self.direction_samples}")
        self.margins()  # validates the margins

    @classmethod
    def fan(cls, n_drills: int = 3, diameter_mm: float = 3.2, **kwargs: object) -> PlannerOptions:
        """Several small-diameter drillings fanning into the lesion."""
        return cls(n_drills=n_drills, diameter_mm=diameter_mm, **kwargs)  # type: ignore[arg-type]

    def margins(self) -> Margins:
        try:
            return Margins(
                cortical_clearance_mm=self.cortical_clearance_mm,
                articular_margin_mm=self.articular_margin_mm,
                entry_zone_mm=self.entry_zone_mm,
                entry_tolerance_mm=self.entry_tolerance_mm,
                max_entry_angle_deg=self.max_entry_angle_deg,
                lesion_reach_mm=self.lesion_reach_mm,
                fov_margin_mm=self.fov_margin_mm,
            )
        except ValueError as exc:  # pydantic.ValidationError is a ValueError
            raise ConfigError(f"planner margins: {exc}") from exc


def fibonacci_directions(n: int) -> NDArray[np.float64]:
    """``n`` unit vectors (n, 3) spread evenly over the sphere."""
    i = np.arange(n) + 0.5
    z = 1.0 - 2.0 * i / n
    r = np.sqrt(1.0 - z * z)
    theta = np.pi * (1.0 + 5**0.5) * i
    return np.stack([r * np.cos(theta), r * np.sin(theta), z], axis=1)


def cone_directions(axis: NDArray[np.float64], half_angle_deg: float, n: int, seed: int = 0) -> NDArray[np.float64]:
    """``n`` unit vectors within ``half_angle_deg`` of ``axis`` (deterministic for a seed), axis first."""
    rng = np.random.default_rng(seed)
    cos_max = np.cos(np.deg2rad(half_angle_deg))
    z = rng.uniform(cos_max, 1.0, n)
    phi = rng.uniform(0.0, 2 * np.pi, n)
    r = np.sqrt(1.0 - z * z)
    local = np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)
    e1 = np.cross(axis, [1.0, 0.0, 0.0] if abs(axis[0]) < 0.9 else [0.0, 1.0, 0.0])
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(axis, e1)
    out = local[:, :1] * e1 + local[:, 1:2] * e2 + local[:, 2:] * axis
    return np.concatenate([axis[None, :], out])


@dataclass(frozen=True)
class _Ray:
    direction: NDArray[np.float64]   # unit, target -> entry
    entry_lps: NDArray[np.float64]
    length_mm: float
    clearance_mm: float
    score_mm: float      # clearance over the neck part of the path (beyond 30 % of its length)


def _rays(fields: BoneFields, anatomy: FemurAnatomy, target: NDArray[np.float64],
          directions: NDArray[np.float64], opts: PlannerOptions) -> list[_Ray]:
    """Feasible rays from ``target`` along ``directions`` (target -> entry), unsorted."""
    radius = opts.diameter_mm / 2.0
    s = np.arange(0.0, opts.max_path_length_mm + opts.step_mm, opts.step_mm)
    pts = target[None, None, :] + s[None, :, None] * directions[:, None, :]
    sdf = fields.femur_sdf(pts)
    outside = sdf > 0.0
    has_exit = outside.any(axis=1)
    k = np.argmax(outside, axis=1)
    k = np.maximum(k, 1)
    rows = np.arange(len(directions))
    a, b = sdf[rows, k - 1], sdf[rows, k]
    length = s[k - 1] + opts.step_mm * a / np.where(b - a > 1e-9, b - a, 1e-9)
    in_zone = s[None, :] <= (length - opts.entry_zone_mm)[:, None]
    clearance = np.where(in_zone, -sdf - radius, np.inf).min(axis=1)
    in_neck = s[None, :] <= (np.minimum(length - opts.entry_zone_mm, 0.7 * length))[:, None]
    score = np.where(in_neck, -sdf - radius, np.inf).min(axis=1)
    ok = has_exit & (clearance >= opts.cortical_clearance_mm + _SEARCH_SLACK_MM) & (length > opts.entry_zone_mm)
    idx = np.flatnonzero(ok)
    if idx.size == 0:
        return []
    entries = target + length[idx, None] * directions[idx]
    normals = fields.femur_normal(entries)
    cos_lat = normals @ anatomy.lateral
    good = (cos_lat >= np.cos(np.deg2rad(opts.max_entry_angle_deg)) + 0.02)
    good &= anatomy.level_mm(entries) <= anatomy.trochanter_level_mm - _SEARCH_SLACK_MM
    good &= anatomy.lateral_offset_mm(entries) > _SEARCH_SLACK_MM
    good &= contains_points(fields.labels, entries, margin_mm=opts.fov_margin_mm + _SEARCH_SLACK_MM)
    return [_Ray(directions[i], entries[j], float(length[i]), float(clearance[i]), float(score[i]))
            for j, i in enumerate(idx) if good[j]]


def _ranked(rays: list[_Ray]) -> list[_Ray]:
    """Best first: the largest neck clearance, in 0.3 mm bands, then the shortest path."""
    if not rays:
        return []
    best = max(r.score_mm for r in rays)
    return sorted(rays, key=lambda r: (int((best - r.score_mm) / 0.3), r.length_mm))


def _search_path(fields: BoneFields, anatomy: FemurAnatomy, target: NDArray[np.float64],
                 opts: PlannerOptions, margins: Margins, name: str) -> Trajectory | None:
    """The best straight path to ``target`` that meets every rule, or None."""
    dirs = fibonacci_directions(opts.direction_samples)
    outward = (dirs @ anatomy.lateral > 0.2) & (dirs @ anatomy.shaft_axis < 0.3)
    coarse = _ranked(_rays(fields, anatomy, target, dirs[outward], opts))
    if not coarse:
        return None
    spacing_deg = math.degrees(math.sqrt(4 * math.pi / opts.direction_samples))
    fine = _rays(fields, anatomy, target, cone_directions(coarse[0].direction, 1.5 * spacing_deg, 300), opts)
    for ray in _ranked(fine + coarse[:1])[:5] + coarse[1:6]:  # the final check samples finer
        traj = Trajectory(name=name, entry_lps=tuple(ray.entry_lps), target_lps=tuple(target),  # type: ignore[arg-type]
                          diameter_mm=opts.diameter_mm)
        if _meets_rules(fields, anatomy, traj, margins):
            return traj
    return None


def _meets_rules(fields: BoneFields, anatomy: FemurAnatomy, traj: Trajectory, margins: Margins) -> bool:
    fig = measure_path(fields, anatomy, traj.entry_lps, traj.target_lps, traj.diameter_mm, margins.entry_zone_mm)
    return not trajectory_violations(traj, fig, anatomy, margins, fields.labels)


def _candidate_targets(fields: BoneFields, opts: PlannerOptions) -> NDArray[np.float64]:
    """Lesion voxel centres where the drill tip keeps the articular margin (N, 3)."""
    pts = fields.lesion_points_lps()
    depth = -fields.femur_sdf_zyx[fields.lesion_zyx].astype(np.float64)
    need = opts.articular_margin_mm + opts.diameter_mm / 2.0 + _SEARCH_SLACK_MM
    ok = depth >= need
    if not ok.any():
        raise PlanError(
            f"no point of the lesion lies {need:.1f} mm inside the articular surface (the deepest is "
            f"{depth.max():.1f} mm): a {opts.diameter_mm:g} mm drill cannot keep the "
            f"{opts.articular_margin_mm:g} mm articular margin; use a smaller drill or margin"
        )
    return pts[ok]


def _ordered_targets(fields: BoneFields, candidates: NDArray[np.float64], opts: PlannerOptions) -> NDArray[np.float64]:
    """Candidates best first: nearest the lesion centroid, or most lesion within reach."""
    lesion = fields.lesion_points_lps()
    if opts.target_mode == "centroid":
        score = -np.linalg.norm(candidates - lesion.mean(axis=0), axis=1)
    else:
        tree = cKDTree(lesion)
        score = np.asarray(tree.query_ball_point(candidates, opts.lesion_reach_mm, return_length=True), float)
        score -= 1e-6 * np.linalg.norm(candidates - lesion.mean(axis=0), axis=1)  # deterministic ties
    return candidates[np.argsort(-score, kind="stable")]


def _spread(ordered: NDArray[np.float64], min_spacing_mm: float, limit: int) -> list[NDArray[np.float64]]:
    """Up to ``limit`` points from ``ordered`` (best first), each ``min_spacing_mm`` from those taken."""
    out: list[NDArray[np.float64]] = []
    for p in ordered:
        if all(np.linalg.norm(p - q) >= min_spacing_mm for q in out):
            out.append(p)
            if len(out) >= limit:
                break
    return out


def _plan_one(fields: BoneFields, anatomy: FemurAnatomy, targets: list[NDArray[np.float64]],
              opts: PlannerOptions, margins: Margins, name: str,
              fan_entry: NDArray[np.float64] | None = None,
              check: Callable[[], None] = lambda: None) -> Trajectory | None:
    for target in targets:
        check()
        if fan_entry is not None:
            fanned = Trajectory(name=name, entry_lps=tuple(fan_entry), target_lps=tuple(target),  # type: ignore[arg-type]
                                diameter_mm=opts.diameter_mm)
            if _meets_rules(fields, anatomy, fanned, margins):
                return fanned
        searched = _search_path(fields, anatomy, target, opts, margins, name)
        if searched is not None:
            return searched
    return None


def _case_id(mri: sitk.Image, mri_path: object) -> str:
    if mri_path is not None:
        return "case-" + sha256_file(str(mri_path))[:10]
    arr = sitk.GetArrayViewFromImage(mri)
    return "case-" + hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()[:10]


def plan_automatic(
    mri: sitk.Image,
    labels: sitk.Image,
    spec: LabelSpec = DEFAULT_SPEC,
    options: PlannerOptions = PlannerOptions(),
    *,
    mri_path: str | None = None,
    seg_path: str | None = None,
    case_id: str | None = None,
    progress: ProgressFn = no_progress,
    cancel: CancelToken | None = None,
) -> Plan:
    """Plan core decompression on an MRI and its segmentation (same grid); see the module doc.

    Returns a :class:`Plan` (``source="auto"``) whose trajectories pass every rule of
    :func:`planning.checks.check_plan`; ``plan.planner["figures"]`` holds the path lengths,
    minimum cortical clearances and the fraction of the lesion within reach of the tracts.
    Raises :class:`PlanError` when no path meets the rules, input errors for bad images,
    :class:`~navsvc.errors.Cancelled` when ``cancel`` is set (checked between targets).
    """
    check = cancel.check if cancel is not None else (lambda: None)
    check_geometry(mri, "MRI")
    check_label_map(labels, spec, ("femur", "necrosis"), "segmentation")
    check_same_grid(mri, labels, "MRI", "segmentation")
    margins = options.margins()
    progress("plan", 0.05, "distance fields")
    fields = bone_fields(labels, spec)
    anatomy = femur_anatomy(fields)
    lesion = lesion_summary(fields, anatomy)
    progress("plan", 0.2, f"{anatomy.side} femur, lesion {lesion.volume_ml:.2f} mL")
    candidates = _candidate_targets(fields, options)
    ordered = _ordered_targets(fields, candidates, options)
    trajectories: list[Trajectory] = []
    if options.n_drills == 1:
        targets = _spread(ordered, 2.0, 12)
        traj = _plan_one(fields, anatomy, targets, options, margins, "Drill1", check=check)
        if traj is not None:
            trajectories.append(traj)
    else:
        k = min(options.n_drills, len(candidates))
        _, assign = kmeans2(candidates, k, seed=0, minit="++")
        centroid = fields.lesion_points_lps().mean(axis=0)
        clusters = []
        for c in range(k):
            members = candidates[assign == c]
            if len(members):
                centre = members.mean(axis=0)
                order = np.argsort(np.linalg.norm(members - centre, axis=1), kind="stable")
                clusters.append((float(np.linalg.norm(centre - centroid)), members[order]))
        clusters.sort(key=lambda t: t[0])
        fan_entry: NDArray[np.float64] | None = None
        for i, (_, members) in enumerate(clusters):
            taken = [np.asarray(t.target_lps) for t in trajectories]
            pool = [p for p in _spread(members, 2.0, 8)
                    if all(np.linalg.norm(p - q) >= options.min_target_spacing_mm for q in taken)]
            traj = _plan_one(fields, anatomy, pool, options, margins, f"Drill{i + 1}", fan_entry, check)
            if traj is not None:
                trajectories.append(traj)
                fan_entry = np.asarray(trajectories[0].entry_lps) if fan_entry is None else fan_entry
            progress("plan", 0.2 + 0.7 * (i + 1) / len(clusters), f"tract {i + 1} of {len(clusters)}")
    if len(trajectories) < options.n_drills:
        raise PlanError(
            f"found {len(trajectories)} of {options.n_drills} drill path(s) from the lateral cortex up the "
            f"femoral neck to the lesion keeping {options.cortical_clearance_mm:g} mm cortical clearance and "
            f"a {options.articular_margin_mm:g} mm articular margin with a {options.diameter_mm:g} mm drill; "
            "plan by hand, or use a smaller drill or fewer drillings"
        )
    images = []
    if mri_path is not None:
        images.append(image_ref("mri", mri_path))
    if seg_path is not None:
        images.append(image_ref("segmentation", seg_path))
    draft = make_plan(
        case_id=case_id or _case_id(mri, mri_path), side=anatomy.side, images=tuple(images),
        labels=spec.as_dict(), lesion=lesion, trajectories=tuple(trajectories), margins=margins,
        author=options.author, source="auto",
    )
    report = check_plan(draft, mri, labels, spec, fields=fields, anatomy=anatomy)
    figures = {
        "lesion_reach_fraction": round(report.lesion_reach_fraction, 4),
        "lesion_reach_mm": options.lesion_reach_mm,
        "trajectories": {t.name: {"length_mm": round(t.length_mm, 2),
                                  "min_clearance_mm": round(t.min_clearance_mm, 2),
                                  "tip_clearance_mm": round(t.tip_clearance_mm, 2)}
                         for t in report.trajectories},
    }
    progress("plan", 1.0, "done")
    log.info("plan %s: %d tract(s), %.0f %% of the lesion within reach", draft.case_id,
             len(trajectories), 100 * report.lesion_reach_fraction)
    return draft.model_copy(update={"planner": {"name": "navsvc.planning", "version": __version__,
                                                "options": asdict(options), "figures": figures}})
