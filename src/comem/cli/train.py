"""``comem train``: every option of :class:`comem.config.TrainConfig` as a flag over an optional YAML file."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from comem.config import config_fields, load_config, stage_list

NAME = "train"


def parse_bool(flag: str, text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"{flag} takes true or false, not {text!r}")


# Flags of ``comem train``: (flag, config field, type, help). Every one overrides the YAML config.
TRAIN_FLAGS: list[tuple[str, str, Any, str]] = [
    (
        "--data",
        "data",
        str,
        "data dir in any format of --data-format (README: Datasets); default: built-in data",
    ),
    ("--out", "out", str, "output dir for checkpoints, metrics.json and TensorBoard logs"),
    ("--mode", "mode", str, "single | tsn | joint | comem"),
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
    (
        "--backbone",
        "backbone",
        str,
        "tiny | r3d_18 | mc3_18 | r2plus1d_18 | s3d | mvit_v2_s | swin3d_t | r2plus1d_50 | ir_csn_101 "
        "| ir_csn_152 | ip_csn_152 | slowfast_r50 | x3d_s | x3d_m (see comem models)",
    ),
    (
        "--pretrained",
        "pretrained",
        str,
        "local torchvision / PySlowFast / PyTorchVideo / VMZ / comem checkpoint (keys renamed)",
    ),
    (
        "--pretrained-strict",
        "pretrained_strict",
        lambda text: parse_bool("--pretrained-strict", text),
        "true: fail on missing or unexpected checkpoint keys; false: load the keys that match",
    ),
    (
        "--memory-stages",
        "memory_stages",
        stage_list,
        "comma-separated stages to add memory after",
    ),
    ("--memory", "memory", str, "memory read: attention | sigmoid | sink | average"),
    ("--fusion", "fusion", str, "gate | add"),
    ("--dropout", "dropout", float, "dropout before the classifier"),
    ("--memory-pass-bn", "memory_pass_bn", str, "BatchNorm in the no-grad memory pass: batch | eval"),
    (
        "--cross-clip",
        "cross_clip",
        lambda text: parse_bool("--cross-clip", text),
        "comem: true: the other clips' losses also train each clip's summaries (joint's gradient, "
        "flat memory, +1 pass of the stages from the first memory on); false: the plain two-pass gradient",
    ),
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
    (
        "--data-format",
        "data_format",
        str,
        "auto | slowfast | kinetics | charades | charades-frames | ssv1 | ssv2 (auto: from the files)",
    ),
    ("--decoder", "decoder", str, "pyav | torchcodec | frames"),
    ("--target-fps", "target_fps", float, "sample clips on this frame-rate grid (default: every frame)"),
    (
        "--span-labels",
        "span_labels",
        lambda text: parse_bool("--span-labels", text),
        "true: multi-label train targets only the actions overlapping the sampled clips",
    ),
    ("--memory-chunk", "memory_chunk", int, "comem: clips of each video per no-grad memory-pass forward"),
    ("--task", "task", str, "classify (video labels) | ava (person-box action detection, AVA layout)"),
    ("--ava-version", "ava_version", str, "AVA annotation files: 2.1 | 2.2"),
    ("--ava-detection-thresh", "ava_detection_thresh", float, "keep person proposals with score >= this"),
    ("--ava-box-jitter", "ava_box_jitter", float, "training box jitter, fraction of the box size"),
]

# On/off flags: (flag, config field, value the flag sets, help).
TRAIN_SWITCHES: list[tuple[str, str, bool, str]] = [
    ("--compile", "compile", True, "torch.compile every backbone stage"),
    ("--no-channels-last", "channels_last", False, "keep the default memory layout on CUDA"),
    ("--sync-bn", "sync_bn", True, "under torchrun: BatchNorm statistics over all processes (GPUs only)"),
]


def add_parser(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser(NAME, help="train a model (default: the built-in long-range data)")
    train.add_argument("--config", help="YAML file of options (flags override it)")
    fields = config_fields()
    for flag, name, kind, text in TRAIN_FLAGS:
        default = fields[name].default
        shown = "" if default is None or default is dataclasses.MISSING else f" [{default}]"
        train.add_argument(flag, dest=name, type=kind, default=argparse.SUPPRESS, help=text + shown)
    for flag, name, value, text in TRAIN_SWITCHES:
        action = "store_true" if value else "store_false"
        train.add_argument(flag, dest=name, action=action, default=argparse.SUPPRESS, help=text)
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
    from comem.engine.distributed import is_main_process
    from comem.engine.train import train

    overrides = {key: value for key, value in vars(args).items() if key not in ("command", "config")}
    config = load_config(args.config, overrides)
    metrics = train(config)
    if not is_main_process():  # under torchrun, rank 0 reports
        return 0
    summary = {
        k: v
        for k, v in metrics.items()
        if k.startswith("val_") or k in ("mode", "clips", "epochs", "skipped_videos")
    }
    print(json.dumps(summary))
    print(f"wrote {Path(config.out) / 'metrics.json'}")
    return 0
