"""Training of the velocity network: deterministic for a seed, resumable, with a loss log.

Step ``s`` draws its sample from ``numpy.random.default_rng([seed, s])`` (which case, rendered
or label-synthesised, the random field and contrasts), so a run resumed from a checkpoint takes
exactly the samples an uninterrupted run would; the network starts from ``torch.manual_seed(seed)``.

Loss (per sample): ``w_field * field + w_mind * mind + w_dice * dice + w_smooth * bending`` with
``field`` the mean squared error (mm^2) of the predicted field against the known one inside the
femur (+5 mm), ``mind`` the MIND-SSC L1 distance of the warped MRI to the CT there, ``dice`` one
minus the soft Dice of the warped MRI femur mask with the CT femur, ``bending`` MONAI's bending
energy of the displacement.

Files in the output folder: ``checkpoint.pt`` (network, optimiser, step, config, loss log),
``loss_log.csv`` (one row per step), ``model.safetensors`` (the weights with their header,
written at the end) and ``summary.json`` (config, held-out figures).
"""

from __future__ import annotations

import csv
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from navsvc.errors import ConfigError
from navsvc.learning.data import CasePair, make_sample, parse_cases, prepare_case
from navsvc.learning.network import (
    NetConfig,
    VelocityNet,
    features,
    fit_polynomial,
    fit_weights,
    save_model,
)

log = logging.getLogger(__name__)

LOG_FIELDS = ("step", "loss", "field_mm2", "mind", "dice", "bending", "synth", "case", "seconds")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (stored in the checkpoint and the weights header)."""

    seed: int = 0
    steps: int = 900
    lr: float = 2e-3
    cases: str = "small-distorted:1000-1011,small:1020-1025"
    eval_cases: str = "small-distorted:2000-2002"
    synth_fraction: float = 0.4
    max_aug_mm: float = 1.5
    w_field: float = 1.0
    w_mind: float = 0.2
    w_dice: float = 0.2
    w_smooth: float = 0.1
    checkpoint_every: int = 25
    net: NetConfig = field(default_factory=NetConfig)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["net"] = asdict(self.net)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        d = dict(d)
        net = NetConfig.from_dict(d.pop("net", {}))
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"training config: unknown key(s) {unknown}")
        return cls(net=net, **d)


def loss_terms(net: VelocityNet, sample: dict[str, Any], cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """The loss and its terms for one sample (differentiable in the network's weights)."""
    from monai.losses import BendingEnergyLoss
    from monai.networks.blocks import DVF2DDF, Warp

    from navsvc.registration.deformable import mind_ssc

    feats = features(sample["fixed"], sample["moving"], sample["femur_moving"])
    out = net(feats)
    poly = fit_polynomial(out, fit_weights(sample["femur_moving"]), sample["grid"], net.config.order,
                          net.config.poly_scale_mm)
    v = poly.velocity_vox(sample["grid"])[None]
    region = sample["region"]
    sp = float(sample["grid"].GetSpacing()[0])
    err = ((v[0] - sample["truth_vox"]) * sp) ** 2
    field_mm2 = (err.sum(0) * region[0, 0]).sum() / region.sum().clamp_min(1.0)
    ddf = DVF2DDF(num_steps=7, mode="bilinear", padding_mode="zeros")(v)
    warp = Warp(mode="bilinear", padding_mode="border")
    warped = warp(sample["moving"], ddf)
    mind = ((mind_ssc(warped) - mind_ssc(sample["fixed"])).abs().mean(1, keepdim=True) * region).sum() / region.sum().clamp_min(1.0)
    wf = warp(sample["femur_moving"], ddf)
    ff = sample["femur_fixed"]
    dice = 1.0 - 2.0 * (wf * ff).sum() / (wf.sum() + ff.sum()).clamp_min(1e-6)
    bending = BendingEnergyLoss(normalize=True)(ddf)
    loss = cfg.w_field * field_mm2 + cfg.w_mind * mind + cfg.w_dice * dice + cfg.w_smooth * bending
    return {"loss": loss, "field_mm2": field_mm2, "mind": mind, "dice": dice, "bending": bending}


def step_sample(pairs: list[CasePair], cfg: TrainConfig, step: int) -> tuple[dict[str, Any], bool, str]:
    """The sample of training step ``step`` (a pure function of the seed and the step)."""
    rng = np.random.default_rng([cfg.seed, step])
    pair = pairs[int(rng.integers(0, len(pairs)))]
    synth = bool(rng.uniform() < cfg.synth_fraction)
    return make_sample(pair, rng, synth, cfg.max_aug_mm), synth, pair.name


def evaluate(net: VelocityNet, pairs: list[CasePair]) -> dict[str, Any]:
    """Held-out figures on rendered pairs as they are (no augmentation): the residual field's
    RMS / max error inside the femur without a field and with the predicted one (mm), and the
    MIND / Dice terms before and after."""
    from navsvc.learning.network import predict_field

    rows = []
    was = net.training
    net.eval()
    for pair in pairs:
        femur = pair.femur_fixed[0, 0] > 0.5
        sp = float(pair.grid.GetSpacing()[0])
        with torch.no_grad():
            v = predict_field(net, {"fixed": pair.fixed, "moving": pair.moving, "femur": pair.femur_moving},
                              pair.grid).velocity_vox(pair.grid)
            before = (pair.truth_vox * sp).norm(dim=0)[femur]
            after = ((v - pair.truth_vox) * sp).norm(dim=0)[femur]
            sample = {"fixed": pair.fixed, "moving": pair.moving, "femur_moving": pair.femur_moving,
                      "femur_fixed": pair.femur_fixed, "truth_vox": pair.truth_vox, "grid": pair.grid,
                      "region": fit_weights(pair.femur_fixed)}
            cfg0 = TrainConfig()
            t_net = loss_terms(net, sample, cfg0)
        rows.append({"case": pair.name,
                     "field_error_no_field_rms_mm": float(before.pow(2).mean().sqrt()),
                     "field_error_no_field_max_mm": float(before.max()),
                     "field_error_network_rms_mm": float(after.pow(2).mean().sqrt()),
                     "field_error_network_max_mm": float(after.max()),
                     "mind_network": float(t_net["mind"]), "dice_loss_network": float(t_net["dice"])})
    net.train(was)
    return {"cases": rows}


def _write_log(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=LOG_FIELDS)
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)


def _save_checkpoint(path: Path, net: VelocityNet, opt: torch.optim.Optimizer, step: int, cfg: TrainConfig,
                     rows: list[dict[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"step": step, "config": cfg.to_dict(), "model": net.state_dict(), "optimizer": opt.state_dict(),
                "log": rows}, tmp)
    tmp.replace(path)


def train(cfg: TrainConfig, out_dir: Path, *, cache_dir: Path | None = None, resume: bool = False,
          device: str = "cpu", on_step: Callable[[int, int, dict[str, float]], None] | None = None,
          evaluate_held_out: bool = True) -> dict[str, Any]:
    """Train; returns the summary (also written to ``out_dir/summary.json``).

    ``resume``: continue from ``out_dir/checkpoint.pt`` (its config must equal ``cfg`` except
    ``steps``). ``on_step(step, steps, terms)`` is called after every step (progress display).
    """
    from navsvc.transforms import write_json_atomic

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = out_dir / "checkpoint.pt"
    torch.manual_seed(cfg.seed)
    net = VelocityNet(cfg.net).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    rows: list[dict[str, Any]] = []
    start = 0
    if resume:
        if not ckpt_path.is_file():
            raise ConfigError(f"--resume: no checkpoint at {ckpt_path}; run without --resume to start")
        ckpt = torch.load(ckpt_path, weights_only=False, map_location=device)
        saved = TrainConfig.from_dict(ckpt["config"])
        if replace(saved, steps=cfg.steps) != cfg:
            diff = {k: (v, cfg.to_dict()[k]) for k, v in saved.to_dict().items() if k != "steps" and cfg.to_dict()[k] != v}
            raise ConfigError(f"--resume: the checkpoint {ckpt_path} was made with other settings "
                              f"(checkpoint, now): {diff}; use the same settings or a new --out")
        net.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        start = int(ckpt["step"])
        rows = list(ckpt["log"])[:start]
        log.info("resumed from %s at step %d", ckpt_path, start)
    specs = parse_cases(cfg.cases)
    pairs = [prepare_case(p, s, cfg.net.input_spacing_mm, cache_dir) for p, s in specs]
    net.train()
    t0 = time.perf_counter()
    for step in range(start, cfg.steps):
        ts = time.perf_counter()
        sample, synth, name = step_sample(pairs, cfg, step)
        sample = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in sample.items()}
        opt.zero_grad()
        terms = loss_terms(net, sample, cfg)
        terms["loss"].backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 10.0)
        opt.step()
        row = {"step": step + 1, **{k: round(float(v.detach()), 6) for k, v in terms.items()},
               "synth": int(synth), "case": name, "seconds": round(time.perf_counter() - ts, 3)}
        rows.append(row)
        if on_step:
            on_step(step + 1, cfg.steps, {k: float(v.detach()) for k, v in terms.items()})
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            _save_checkpoint(ckpt_path, net, opt, step + 1, cfg, rows)
            _write_log(out_dir / "loss_log.csv", rows)
    _write_log(out_dir / "loss_log.csv", rows)
    summary: dict[str, Any] = {"config": cfg.to_dict(), "steps_done": cfg.steps, "device": device,
                               "train_seconds_this_run": time.perf_counter() - t0,
                               "loss_first_25": float(np.mean([r["loss"] for r in rows[:25]])) if rows else None,
                               "loss_last_25": float(np.mean([r["loss"] for r in rows[-25:]])) if rows else None}
    if evaluate_held_out and cfg.eval_cases:
        eval_pairs = [prepare_case(p, s, cfg.net.input_spacing_mm, cache_dir) for p, s in parse_cases(cfg.eval_cases)]
        summary["held_out"] = evaluate(net.cpu(), eval_pairs)
        net.to(device)
    save_model(out_dir / "model.safetensors", net.cpu(),
               {k: summary[k] for k in ("config", "steps_done", "loss_first_25", "loss_last_25", "held_out")
                if k in summary})
    write_json_atomic(out_dir / "summary.json", summary)
    return summary
