"""The ``comem`` command: parse, build, call. Errors in user input end as one line, never a traceback."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

from comem.config import ConfigError, config_fields, load_config

# Flags of ``comem train``: (flag, config field, type, help). Every one overrides the YAML config.
TRAIN_FLAGS: list[tuple[str, str, Any, str]] = [
    (
        "--data",
        "data",
        str,
        "PySlowFast-format data dir (train.csv, val.csv, classes.txt); default: built-in data",
    ),
    ("--out", "out", str, "output dir for checkpoints, metrics.json and TensorBoard logs"),
    ("--mode", "mode", str, "single | joint | comem"),
    ("--clips", "clips", int, "clips per video per step (N); also the eval views unless --views"),
    ("--clip-len", "clip_len", int, "frames per clip"),
    ("--stride", "stride", int, "frame sampling stride within a clip"),
    ("--crop-size", "crop_size", int, "square crop side in pixels"),
    ("--min-scale", "min_scale", int, "train short-side jitter minimum (default: crop size)"),
    ("--max-scale", "max_scale", int, "train short-side jitter maximum (default: 8/7 crop size)"),
    ("--eval-scale", "eval_scale", int, "eval short side (default: crop size)"),
    ("--views", "views", int, "eval clips per video (default: --clips)"),
    ("--crops", "crops", int, "eval spatial crops per clip: 1 or 3"),
    ("--epochs", "epochs", int, "training epochs"),
    ("--batch-size", "batch_size", int, "videos per step"),
    ("--lr", "lr", float, "peak learning rate"),
    ("--optimizer", "optimizer", str, "adamw | sgd"),
    ("--weight-decay", "weight_decay", float, "weight decay (not applied to norms and biases)"),
    ("--warmup-epochs", "warmup_epochs", float, "linear warm-up length before cosine decay"),
    ("--clip-grad", "clip_grad", float, "clip the gradient norm to this value"),
    ("--backbone", "backbone", str, "tiny | r3d_18 | mc3_18 | r2plus1d_18"),
    ("--pretrained", "pretrained", str, "local torchvision/PySlowFast state dict for the backbone"),
    (
        "--memory-stages",
        "memory_stages",
        lambda s: s.split(","),
        "comma-separated stages to add memory after",
    ),
    ("--memory", "memory", str, "attention | average"),
    ("--fusion", "fusion", str, "gate | add"),
    ("--dropout", "dropout", float, "dropout before the classifier"),
    ("--memory-pass-bn", "memory_pass_bn", str, "BatchNorm in the no-grad memory pass: batch | eval"),
    ("--device", "device", str, "auto | cpu | cuda"),
    ("--workers", "workers", int, "data loading processes"),
    ("--seed", "seed", int, "random seed"),
    ("--eval-every", "eval_every", int, "evaluate every this many epochs"),
    ("--save-every", "save_every", int, "also checkpoint every this many steps (0: epoch ends only)"),
    (
        "--synthetic-task",
        "synthetic_task",
        str,
        "built-in data task when --data is not given: distinct | parity",
    ),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="comem", description="Video-level training with collaborative memory."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a model (default: the built-in long-range data)")
    train.add_argument("--config", help="YAML file of options (flags override it)")
    fields = config_fields()
    for flag, name, kind, text in TRAIN_FLAGS:
        default = fields[name].default
        shown = "" if default is None or default is dataclasses.MISSING else f" [{default}]"
        train.add_argument(flag, dest=name, type=kind, default=argparse.SUPPRESS, help=text + shown)
    train.add_argument(
        "--resume",
        dest="resume",
        action="store_true",
        default=argparse.SUPPRESS,
        help="continue from OUT/last.pt (same epoch, step, optimizer, schedule, RNG)",
    )
    train.add_argument(
        "--no-amp",
        dest="amp",
        action="store_false",
        default=argparse.SUPPRESS,
        help="disable bf16 autocast on CUDA",
    )

    evaluate = commands.add_parser("eval", help="evaluate a checkpoint with multi-view testing")
    evaluate.add_argument("--checkpoint", required=True, help="a last.pt/best.pt written by comem train")
    evaluate.add_argument("--data", help="data dir (default: the one the checkpoint was trained on)")
    evaluate.add_argument("--split", default="val", choices=["val", "test"])
    evaluate.add_argument("--views", type=int, help="clips per video (default: the training setting)")
    evaluate.add_argument("--crops", type=int, choices=[1, 3], help="spatial crops per clip")
    evaluate.add_argument("--batch-size", type=int, help="videos per batch")
    evaluate.add_argument("--workers", type=int, help="data loading processes")
    evaluate.add_argument("--device", default="auto", help="auto | cpu | cuda")

    synthetic = commands.add_parser(
        "make-synthetic", help="write the built-in long-range dataset as mp4 + CSV"
    )
    synthetic.add_argument("out", help="output directory")
    synthetic.add_argument("--task", default="distinct", choices=["distinct", "parity"])
    synthetic.add_argument("--num-train", type=int, default=480)
    synthetic.add_argument("--num-val", type=int, default=120)
    synthetic.add_argument("--size", type=int, default=64, help="frame side in pixels")
    synthetic.add_argument("--frames", type=int, default=72, help="frames per video")
    synthetic.add_argument("--parts", type=int, default=3, help="parts (events) per video")
    synthetic.add_argument("--seed", type=int, default=0)
    return parser


def run_train(args: argparse.Namespace) -> int:
    from comem.engine.train import train

    overrides = {key: value for key, value in vars(args).items() if key not in ("command", "config")}
    config = load_config(args.config, overrides)
    metrics = train(config)
    summary = {
        k: v
        for k, v in metrics.items()
        if k.startswith("val_") or k in ("mode", "clips", "epochs", "skipped_videos")
    }
    print(json.dumps(summary))
    print(f"wrote {Path(config.out) / 'metrics.json'}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from comem.engine.evaluate import evaluate_checkpoint

    metrics, path = evaluate_checkpoint(
        args.checkpoint,
        data=args.data,
        split=args.split,
        views=args.views,
        crops=args.crops,
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
    )
    print(json.dumps(metrics))
    print(f"wrote {path}")
    return 0


def run_make_synthetic(args: argparse.Namespace) -> int:
    from comem.data.synthetic import SyntheticSpec, make_synthetic

    spec = SyntheticSpec(
        num_train=args.num_train,
        num_val=args.num_val,
        size=args.size,
        num_frames=args.frames,
        num_parts=args.parts,
        task=args.task,
        seed=args.seed,
    )
    out = make_synthetic(args.out, spec)
    print(f"wrote {spec.num_train} train and {spec.num_val} val videos to {out}")
    return 0


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types whose message is already a complete one-line explanation for the user."""
    from comem.data.datasets import DatasetFormatError
    from comem.data.decode import VideoDecodeError
    from comem.engine.checkpoint import CheckpointError
    from comem.models.build import PretrainedLoadError

    return (ConfigError, DatasetFormatError, VideoDecodeError, CheckpointError, PretrainedLoadError)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"train": run_train, "eval": run_eval, "make-synthetic": run_make_synthetic}
    try:
        return handlers[args.command](args)
    except user_errors() as error:
        print(f"comem {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except (RuntimeError, ValueError) as error:
        if os.environ.get("COMEM_DEBUG"):
            raise
        print(
            f"comem {args.command}: error: {' '.join(str(error).split())} (COMEM_DEBUG=1 for a traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
