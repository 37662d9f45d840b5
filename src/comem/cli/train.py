"""``comem train``: every option of :class:`comem.config.TrainConfig` as a flag over an optional YAML file."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from comem.config import config_fields, load_config

NAME = "train"

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
    ("--task", "task", str, "classify (video labels) | ava (person-box action detection, AVA layout)"),
    ("--ava-version", "ava_version", str, "AVA annotation files: 2.1 | 2.2"),
    ("--ava-detection-thresh", "ava_detection_thresh", float, "keep person proposals with score >= this"),
    ("--ava-box-jitter", "ava_box_jitter", float, "training box jitter, fraction of the box size"),
]


def add_parser(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser(NAME, help="train a model (default: the built-in long-range data)")
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


def run(args: argparse.Namespace) -> int:
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
