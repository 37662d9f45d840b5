"""``comem train``: one flag per field of :class:`comem.config.TrainConfig`, over an optional YAML file.

The flags are generated from the dataclass, so a new field is a new flag with its default in ``-h``;
``HELP`` only adds a sentence to it. Spellings: ``--clip-len`` for ``clip_len``; a boolean field
``x`` takes ``--x`` (true), ``--x false`` or ``--no-x``; lists are comma-separated (``--mean
0.45,0.45,0.45``); an optional value takes ``none``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from comem.cli.logs import log_file
from comem.config import CHOICES, TrainConfig, config_fields, config_yaml, load_config, stage_list
from comem.files import json_text

if TYPE_CHECKING:
    from comem.tasks.base import Task

NAME = "train"
log = logging.getLogger(__name__)

# A sentence per field for ``-h`` (the flag, its type and default come from the dataclass).
HELP: dict[str, str] = {
    "data": "data dir in any format of --data-format (docs/datasets.md); none: the built-in data",
    "synthetic_task": "built-in data task when --data is not given",
    "clips": "clips per video per step (N); also the eval views unless --views",
    "clip_len": "frames per clip",
    "stride": "frame sampling stride within a clip",
    "crop_size": "square crop side in pixels",
    "min_scale": "train short-side jitter minimum (none: crop size)",
    "max_scale": "train short-side jitter maximum (none: 8/7 crop size)",
    "eval_scale": "eval short side (none: crop size)",
    "views": "eval clips per video (none: --clips)",
    "eval_memory": "which eval views share a memory: groups (at most --clips views spread over the video, "
    "one crop each, as in training) or all (one memory of every view)",
    "crops": "eval spatial crops per clip: 1 or 3",
    "workers": "data loading processes",
    "backbone": "network (comem models lists them)",
    "pretrained": "weights file: torchvision / PySlowFast / PyTorchVideo / VMZ / comem checkpoint "
    "(keys renamed); 'torchvision': the backbone's file in $TORCH_HOME/hub/checkpoints",
    "pretrained_strict": "fail on missing or unexpected checkpoint keys (false: load the keys that match)",
    "memory_stages": "comma-separated stages followed by a memory (names, last, last-1, ..., or all)",
    "memory": "memory read: attention (softmax), sigmoid (keeps how many clips match), sink, average",
    "fusion": "how the memory enters the features: gate or add",
    "memory_summary": "how a clip's features become its memory entry: mean (average pooling), max (keeps "
    "small events), meanmax (their sum)",
    "key_dim": "memory key width (none: channels / 4)",
    "gate_hidden": "width of a hidden ReLU layer from the memory read to the gate (none: a linear gate)",
    "entry_hidden": "width of a hidden ReLU layer that each clip's summary passes through before the "
    "memory's query, key and value projections (none: linear projections of the summary)",
    "clip_time": "how the memory reads when each clip happened: none (the order-blind read of a set of "
    "clips) or relative (a learned bias on each pair's time difference; docs/method.md)",
    "dropout": "dropout before the classifier",
    "mode": "training mode (docs/training.md, Modes)",
    "epochs": "training epochs",
    "batch_size": "videos per step (per process under torchrun)",
    "optimizer": "optimizer (no weight decay on norms and biases)",
    "lr": "peak learning rate",
    "weight_decay": "weight decay",
    "memory_lr_scale": "learning rate of the collaborative memories, as a multiple of --lr",
    "momentum": "SGD momentum (Nesterov)",
    "warmup_epochs": "linear warm-up length before cosine decay",
    "clip_grad": "clip the gradient norm to this value (none: no clipping)",
    "memory_pass_bn": "BatchNorm in comem's no-grad memory pass",
    "cross_clip": "comem: the other clips' losses also train each clip's summaries (joint's gradient at flat "
    "memory, one more pass of the stages from the first memory on); false: the plain two-pass gradient",
    "video_loss": "joint and comem train on the loss of each video's score, the mean of its clips' logits, "
    "instead of the mean of the clip losses (each clip still predicts from its own memory; tsn always does)",
    "precision": "autocast precision: auto is bf16 on CUDA and fp32 on a CPU (where bf16 3-D convolutions "
    "are slower); bf16 and fp16 run as asked on any device; fp16 scales the loss (GradScaler)",
    "accum_steps": "batches per optimizer step: gradients of N batches accumulate, a step sees N x "
    "--batch-size videos and an epoch has 1/N as many steps (the schedule, --save-every and logs "
    "count optimizer steps)",
    "out": "output dir: checkpoints, metrics.json, config.yaml, train.log, env.json, TensorBoard",
    "device": "auto, cpu, cuda or cuda:i",
    "seed": "random seed (video order, clips, augmentation, initialisation)",
    "eval_every": "evaluate every this many epochs",
    "save_every": "also checkpoint every this many steps (0: epoch ends only)",
    "resume": "continue from OUT/last.pt (same epoch, step, optimizer, schedule, RNG); fresh if none",
    "overwrite": "replace the run already in --out (its checkpoints, metrics, logs) or use an --out that "
    "holds other files",
    "nonfinite_steps": "stop the run after this many steps in a row whose loss is not finite (weights or "
    "BatchNorm statistics that turn non-finite stop it at once); the last finite checkpoint is kept",
    "dist_timeout": "under torchrun: minutes a process waits for the others in a collective (a stalled "
    "or dead rank) before the run fails on every rank",
    "data_format": "annotation format (auto: from the files)",
    "decoder": "video decoding backend",
    "target_fps": "sample clips on this frame-rate grid (none: every frame)",
    "span_labels": "multi-label: train targets only the actions overlapping the sampled clips",
    "allow_outside_data": "let a PySlowFast CSV name videos outside --data (absolute paths, ../); "
    "refused otherwise",
    "memory_chunk": "comem: clips of each video per no-grad memory-pass forward; auto: the most that fit "
    "--memory-budget",
    "grad_chunk": "comem: clips of each video per gradient-pass forward and backward, each reading the "
    "memory with only its own entry live (the gradients of 1, at K clips' activation memory); >= --clips "
    "skips the memory pass (the bank comes from the same forward); auto: the most that fit --memory-budget",
    "memory_budget": "GiB the chunks given as auto may fill, by a meta-device estimate printed as the plan "
    "line at start (none: the device's memory less 10%%, at least 1 GiB; on a CPU the machine's RAM)",
    "channels_last": "channels-last-3d layout on CUDA",
    "compile": "torch.compile every backbone stage",
    "sync_bn": "under torchrun: BatchNorm statistics over all processes (GPUs only)",
    "task": "classify (video labels) or ava (person-box action detection, AVA layout)",
    "ava_version": "AVA annotation files",
    "ava_detection_thresh": "keep person proposals with score >= this",
    "ava_box_jitter": "training box jitter, fraction of the box size",
    "mean": "input RGB mean (none: that of the pretrained weights' source, else the backbone's)",
    "std": "input RGB std (given with --mean)",
    "flip": "horizontal flips: auto is off for Something-Something (left/right labels) and on otherwise; "
    "swap-labels flips a video and swaps its class with the mirrored one",
    "resized_crop_scale": "Inception-style random-resized crop over this area fraction range, e.g. "
    "0.08,1 (none: short-side jitter crop)",
    "randaug_ops": "RandAugment operations per clip, the same for all its frames (0: off)",
    "randaug_magnitude": "RandAugment magnitude (0..30)",
    "mixup_alpha": "mixup of whole videos: every clip of a video blends with the same partner video by a "
    "weight ~ Beta(a, a) drawn per batch, targets likewise (0: off; PySlowFast's MViT recipes: 0.8)",
    "cutmix_alpha": "CutMix of whole videos: one box, the same in every frame of every clip, pasted from the "
    "partner video; the weight ~ Beta(a, a) sets its area (0: off; MViT recipes: 1.0)",
    "mix_prob": "chance a batch is mixed when mixup or CutMix is on",
    "mix_switch_prob": "with both mixup and CutMix on: chance a mixed batch uses CutMix",
    "label_smoothing": "single-label cross-entropy against (1 - e) one-hot + e / K (multi-label data: "
    "refused)",
    "ema_decay": "keep an exponential moving average of the weights, updated after every optimizer step "
    "(e.g. 0.9998); it is validated beside the weights, picks best.pt and is what eval and predict use "
    "(none: off)",
    "wandb": "also log to Weights & Biases (pip install 'comem[wandb]')",
    "wandb_project": "W&B project",
    "wandb_name": "W&B run name (none: the name of --out)",
    "wandb_mode": "W&B online, or offline (kept under OUT/wandb; upload later with `wandb sync`)",
}


METAVARS = {
    "int": "N",
    "float": "X",
    "str": "TEXT",
    "list[str]": "A,B",
    "list[float]": "X,Y",
    "int | str": "N|auto",
}
METAVARS.update({f"{kind} | None": metavar for kind, metavar in METAVARS.items()})


def parse_bool(flag: str, text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"{flag} takes true or false, not {text!r}")


def _parser_of(annotation: str, flag: str) -> Callable[[str], Any]:
    """Text -> value for a field typed ``annotation`` (``"int | None"``, ``"list[float]"``, ...)."""
    parts = annotation.split(" | ")
    optional = "None" in parts
    base = next(part for part in parts if part != "None")
    if base == "list[str]":
        item: Callable[[str], Any] = stage_list if flag == "--memory-stages" else _str_list
    elif base == "list[float]":
        item = _float_list
    elif parts == ["int", "str"]:  # a count or a word (``--memory-chunk auto``)
        item = _int_or_word
    else:
        item = {"int": int, "float": float, "str": str}[base]

    def parse(text: str) -> Any:
        if optional and text.lower() in ("none", "null"):
            return None
        return item(text)

    parse.__name__ = base  # argparse names the type in "invalid int value" messages
    return parse


def _int_or_word(text: str) -> int | str:
    return int(text) if text.lstrip("-").isdigit() else text


def _str_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _float_list(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _shown(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def add_parser(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser(
        NAME,
        help="train a model (default: the built-in long-range data)",
        description="Every option can also come from --config FILE.yaml (keys are the option names); "
        "flags override the file. Defaults in brackets.",
    )
    train.add_argument("--config", help="YAML file of options (flags override it; configs/ has recipes)")
    train.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved configuration as YAML (a valid --config file) and exit",
    )
    defaults = dataclasses.asdict(TrainConfig())
    for name, field in config_fields().items():
        flag = "--" + name.replace("_", "-")
        annotation = str(field.type)
        text = HELP.get(name, name.replace("_", " ")) + f" [{_shown(defaults[name])}]"
        if annotation == "bool":
            text += f" (--no-{flag[2:]}: false)"
            train.add_argument(
                flag,
                dest=name,
                nargs="?",
                const=True,
                type=lambda value, flag=flag: parse_bool(flag, value),
                default=argparse.SUPPRESS,
                metavar="true|false",
                help=text,
            )
            train.add_argument(
                "--no-" + flag[2:],
                dest=name,
                action="store_false",
                default=argparse.SUPPRESS,
                help=argparse.SUPPRESS,
            )
        else:
            metavar = "{" + ",".join(CHOICES[name]) + "}" if name in CHOICES else METAVARS[annotation]
            train.add_argument(
                flag,
                dest=name,
                type=_parser_of(annotation, flag),
                default=argparse.SUPPRESS,
                metavar=metavar,
                help=text,
            )


def build_task(config: TrainConfig) -> Task:
    """The task ``config.task`` names, reading its data."""
    from comem.tasks import task_class

    return task_class(config.task)(config)


def run(args: argparse.Namespace) -> int:
    from comem.engine.distributed import is_main_process
    from comem.engine.run_dir import claim_run_dir
    from comem.engine.stopping import TrainingStopped
    from comem.engine.trainer import train

    skip = ("command", "config", "print_config")
    overrides = {key: value for key, value in vars(args).items() if key not in skip}
    config = load_config(args.config, overrides)
    if args.print_config:
        sys.stdout.write(config_yaml(config))
        return 0
    if not is_main_process():  # under torchrun, rank 0 reports and keeps the log
        train(config, build_task(config))
        return 0
    claim = claim_run_dir(config.out, resume=config.resume, overwrite=config.overwrite, data=config.data)
    with claim, log_file(Path(config.out) / "train.log") as log_error:  # refused runs write nothing
        log.info("comem train: %s", " ".join(sys.argv[1:]))
        try:
            metrics = train(config, build_task(config))
        except TrainingStopped:  # said in the log already
            raise
        except Exception as error:  # the fatal error is in train.log too, not only on stderr
            log_error(error)
            raise
        summary = {
            k: v
            for k, v in metrics.items()
            if k.startswith("val_") or k in ("mode", "clips", "epochs", "skipped_videos")
        }
        log.info(json_text(summary))
        log.info(f"wrote {Path(config.out) / 'metrics.json'}")
    return 0
