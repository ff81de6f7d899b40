"""`navsvc train`: train the learned registration network (the deformable stage's starting field)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "train", help="train the learned registration network on synthetic phantom pairs",
        description="Train the velocity network (navsvc.learning) on phantom pairs with known distortion. "
        "Deterministic for --seed; --resume continues from OUT/checkpoint.pt. Writes OUT/model.safetensors "
        "(use with `navsvc register --network PATH`), OUT/loss_log.csv, OUT/summary.json. Defaults are "
        "those of navsvc.learning.train.TrainConfig; see docs/model-card.md.")
    p.add_argument("--out", required=True, type=Path, help="output folder (checkpoint, loss log, weights)")
    p.add_argument("--steps", type=int, help="training steps (default 900)")
    p.add_argument("--seed", type=int, help="seed (default 0)")
    p.add_argument("--lr", type=float, help="Adam learning rate (default 2e-3)")
    p.add_argument("--cases", help="training phantoms, PRESET:FIRST-LAST,... "
                   "(default small-distorted:1000-1011,small:1020-1025)")
    p.add_argument("--eval-cases", help="held-out phantoms for the summary ('' = none; default small-distorted:2000-2002)")
    p.add_argument("--synth-fraction", type=float, help="share of label-synthesised samples (default 0.4)")
    p.add_argument("--max-aug-mm", type=float, help="largest random field in the femur, mm (default 1.5)")
    p.add_argument("--channels", help="UNet channels per level (default 16,32,32,32)")
    p.add_argument("--order", type=int, help="polynomial degree of the field (default 2)")
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (default 25)")
    p.add_argument("--cache", type=Path, help="folder to cache the rendered training pairs (default OUT/cache)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    import torch
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from navsvc.errors import ConfigError
    from navsvc.learning.network import NetConfig
    from navsvc.learning.train import TrainConfig, train

    if args.steps is not None and args.steps < 1:
        raise ConfigError(f"--steps: expected >= 1, got {args.steps}")
    net = NetConfig()
    if args.channels:
        try:
            channels = tuple(int(c) for c in args.channels.split(","))
        except ValueError:
            raise ConfigError(f"--channels: expected integers like 16,32,32,32, got {args.channels!r}") from None
        if len(channels) < 2 or min(channels) < 1:
            raise ConfigError(f"--channels: expected at least two levels > 0, got {args.channels!r}")
        net = replace(net, channels=channels)
    if args.order is not None:
        if not 1 <= args.order <= 4:
            raise ConfigError(f"--order: expected 1..4, got {args.order}")
        net = replace(net, order=args.order)
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else ("cpu" if args.device == "auto" else args.device)
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: torch sees no CUDA device; use --device cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    given = {k: getattr(args, k) for k in ("seed", "steps", "lr", "cases", "eval_cases", "synth_fraction",
                                           "max_aug_mm", "checkpoint_every")}
    cfg = TrainConfig(net=net, **{k: v for k, v in given.items() if v is not None})
    console = Console(stderr=True)
    cache = args.cache or args.out / "cache"
    if args.no_progress:
        summary = train(cfg, args.out, cache_dir=cache, resume=args.resume, device=device)
    else:
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, transient=True) as bar:
            task = bar.add_task("training (preparing data)", total=cfg.steps)

            def on_step(step: int, steps: int, terms: dict[str, float]) -> None:
                bar.update(task, completed=step, description=f"loss {terms['loss']:.3f} field {terms['field_mm2']:.3f} mm2")

            summary = train(cfg, args.out, cache_dir=cache, resume=args.resume, device=device, on_step=on_step)
    out = sys.stdout
    print(f"trained {summary['steps_done']} steps on {device}; loss {summary['loss_first_25']:.4f} (first 25) -> "
          f"{summary['loss_last_25']:.4f} (last 25)", file=out)
    for row in summary.get("held_out", {}).get("cases", []):
        print(f"  held-out {row['case']}: field error RMS {row['field_error_no_field_rms_mm']:.3f} -> "
              f"{row['field_error_network_rms_mm']:.3f} mm, max {row['field_error_no_field_max_mm']:.3f} -> "
              f"{row['field_error_network_max_mm']:.3f} mm", file=out)
    print(f"weights: {args.out / 'model.safetensors'}; loss log: {args.out / 'loss_log.csv'}", file=out)
    return 0
