"""Training configuration: one plain dataclass, loadable from YAML, overridable from the command line.

Precedence: dataclass defaults < ``--config FILE.yaml`` < command-line flags. This module imports no
torch (its choices come from :mod:`comem.choices`), so the command's parser is built from it quickly.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from comem.choices import (
    CLIP_TIME_KINDS,
    DATA_FORMATS,
    DECODERS,
    DEFAULT_MEMORY_STAGES,
    EVAL_MEMORY_KINDS,
    FUSION_KINDS,
    MEMORY_KINDS,
    SUMMARY_KINDS,
    SYNTHETIC_TASKS,
)
from comem.errors import UserError
from comem.memory_options import MemoryOptions
from comem.option_ranges import range_problem
from comem.textfile import read_text


class ConfigError(UserError, ValueError):
    """A bad configuration value or file (one-line message)."""


# The training modes (docs/method.md, "Training modes"); ``engine.modes.MODE_STEPS`` has one step per name.
MODES: tuple[str, ...] = ("single", "tsn", "joint", "comem")

# The values a string option takes (``comem train -h`` shows them; ``validate`` checks them).
CHOICES: dict[str, tuple[str, ...]] = {
    "mode": MODES,
    "memory": MEMORY_KINDS,
    "fusion": FUSION_KINDS,
    "memory_summary": SUMMARY_KINDS,
    "clip_time": CLIP_TIME_KINDS,
    "optimizer": ("sgd", "adamw"),
    "memory_pass_bn": ("batch", "eval"),
    "precision": ("auto", "bf16", "fp16", "fp32"),
    "device": ("auto", "cpu", "cuda"),
    "synthetic_task": SYNTHETIC_TASKS,
    "data_format": DATA_FORMATS,
    "decoder": DECODERS,
    "task": ("classify", "ava"),
    "ava_version": ("2.1", "2.2"),
    "flip": ("auto", "on", "off", "swap-labels"),
    "wandb_mode": ("online", "offline"),
    "eval_memory": EVAL_MEMORY_KINDS,
}


@dataclass
class TrainConfig:
    # data
    data: str | None = None  # PySlowFast-format dir; None = the built-in synthetic dataset
    synthetic_task: str = "distinct"
    clips: int = 3  # N clips per video per step (and eval views unless ``views`` is set)
    clip_len: int = 8  # frames per clip
    stride: int = 2  # frame sampling stride
    crop_size: int = 64
    min_scale: int | None = None  # train short-side jitter range; default [crop, 8/7 crop]
    max_scale: int | None = None
    eval_scale: int | None = None  # eval short side; default crop_size
    views: int | None = None  # eval clips per video; default ``clips``
    crops: int = 1  # eval spatial crops (1 or 3)
    # which eval views share a memory: "groups" of at most ``clips`` views spread over the video, one
    # crop each, as training built its memories (``comem.data.sampling.memory_groups``); "all": one
    # memory of every view (the paper's test)
    eval_memory: str = "groups"
    workers: int = 2
    # model
    backbone: str = "tiny"
    pretrained: str | None = None
    pretrained_strict: bool = True
    # stages followed by a memory: names, "last", "last-1", …, or "all" (the default: after every stage,
    # so the memory also compares what the stem sees; docs/learning.md)
    memory_stages: list[str] = field(default_factory=lambda: list(DEFAULT_MEMORY_STAGES))
    memory: str = "attention"  # the read (docs/learning.md: sigmoid keeps how many clips match)
    fusion: str = "gate"
    key_dim: int | None = None
    memory_summary: str = "meanmax"  # a clip's memory entry: mean | max | meanmax (docs/learning.md)
    gate_hidden: int | None = 64  # hidden ReLU layer between the memory read and the gate (None: linear)
    entry_hidden: int | None = None  # hidden ReLU layer on each memory entry before q/k/v (None: linear)
    clip_time: str = "relative"  # how the memory reads the clips' times: none (order-blind) | relative
    dropout: float = 0.0  # before the classifier; 0.2 held back the built-in tasks (docs/learning.md)
    # optimisation
    mode: str = "comem"
    epochs: int = 12
    batch_size: int = 8
    optimizer: str = "adamw"
    lr: float = 2e-3
    weight_decay: float = 0.05
    momentum: float = 0.9
    memory_lr_scale: float = 1.0  # the memories' learning rate, relative to lr
    warmup_epochs: float = 1.0
    clip_grad: float | None = None
    memory_pass_bn: str = "batch"
    cross_clip: bool = False  # comem: other clips' losses also train each clip's summaries (joint's gradient)
    video_loss: bool = False  # joint/comem: the loss of the clips' mean scores, not the mean clip loss
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on a CPU) | bf16 | fp16 (with a loss scaler) | fp32
    accum_steps: int = 1  # batches per optimizer step (gradients accumulated: K x batch_size videos)
    # run
    out: str = "runs/comem"
    device: str = "auto"
    seed: int = 0
    eval_every: int = 1
    save_every: int = 200  # also checkpoint every this many steps inside an epoch (0 = epoch ends only)
    resume: bool = False
    overwrite: bool = False  # a fresh run may replace the run already in ``out``
    nonfinite_steps: int = 10  # stop after this many steps in a row with a non-finite loss
    dist_timeout: float = 10.0  # minutes a rank waits for the others in a collective before failing
    # dataset formats and decoding (docs/datasets.md)
    data_format: str = "auto"  # auto | slowfast | kinetics | charades | charades-frames | ssv1 | ssv2
    decoder: str = "pyav"  # pyav | torchcodec | frames (folders of frames are always read as frames)
    target_fps: float | None = None  # sample clips on this frame-rate grid (default: the file's frames)
    span_labels: bool = False  # multi-label: train on the actions whose time span overlaps the clips
    allow_outside_data: bool = False  # PySlowFast CSVs may name videos outside ``data`` (absolute, ../)
    # speed and multi-GPU (docs/training.md "Multi-GPU and multi-node", benchmarks/RESULTS.md)
    # comem: clips of each video per no-grad memory-pass forward, and per gradient-pass forward/backward
    # (N: no memory pass); "auto": the largest that fit memory_budget (engine/planner.py)
    memory_chunk: int | str = 1
    grad_chunk: int | str = 1
    memory_budget: float | None = None  # GiB the planner may fill; None: the device's, less a margin
    channels_last: bool = True  # channels-last-3d layout on CUDA (faster cuDNN 3-D convolutions)
    compile: bool = False  # torch.compile every backbone stage
    sync_bn: bool = False  # under torchrun: BatchNorm statistics over all processes (GPUs only)
    # AVA spatio-temporal action detection (task "ava", see comem.tasks.ava; ``clips`` = keyframe clip +
    # memory clips of its movie)
    task: str = "classify"  # classify | ava
    ava_version: str = "2.2"  # AVA annotation files: 2.1 | 2.2
    ava_detection_thresh: float = 0.9  # evaluate person proposals with score >= this (PySlowFast's default)
    ava_box_jitter: float = 0.05  # training boxes' sides move by up to this fraction of the box size
    # input normalisation (RGB mean/std of pixels in [0, 1]); None: that of the pretrained weights'
    # source, else the backbone's. Stored in checkpoints; eval and predict use it.
    mean: list[float] | None = None
    std: list[float] | None = None
    # augmentation (docs/training.md "Recipes"); each is off unless a recipe turns it on
    flip: str = "auto"  # auto (off for Something-Something) | on | off | swap-labels (left/right classes)
    resized_crop_scale: list[float] | None = None  # Inception-style crop of this area range; None: jitter
    randaug_ops: int = 0  # RandAugment operations per clip (same for every frame); 0: off
    randaug_magnitude: int = 9
    # regularisation (docs/training.md "Regularisation"); each is off by default
    mixup_alpha: float = 0.0  # mixup of whole videos, weight ~ Beta(a, a) per batch; 0: off
    cutmix_alpha: float = 0.0  # CutMix of whole videos (one box for every frame), Beta(a, a); 0: off
    mix_prob: float = 1.0  # chance a batch is mixed, when mixup or CutMix is on
    mix_switch_prob: float = 0.5  # with both on: chance a mixed batch uses CutMix
    label_smoothing: float = 0.0  # single-label cross-entropy target (1 - e) * one-hot + e / K
    ema_decay: float | None = None  # exponential moving average of the weights, e.g. 0.9998; None: off
    # logging (docs/training.md "Logs"): TensorBoard and CSV files always, Weights & Biases on request
    wandb: bool = False
    wandb_project: str = "comem"
    wandb_name: str | None = None  # None: the name of ``out``
    wandb_mode: str = "online"  # online | offline (kept under OUT/wandb for `wandb sync`)

    def validate(self) -> TrainConfig:
        for name, allowed in CHOICES.items():
            value = getattr(self, name)
            if value not in allowed and not (name == "device" and str(value).startswith("cuda:")):
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
        problem = range_problem(self)  # every number: finite and in its range
        if problem is not None:
            raise ConfigError(problem)
        for name in ("memory_chunk", "grad_chunk"):
            value = getattr(self, name)
            if isinstance(value, str) and value != "auto":
                raise ConfigError(f"{name} must be a positive integer or auto; got {value!r}")
        if self.crops not in (1, 3):
            raise ConfigError(f"crops must be 1 or 3; got {self.crops}")
        if self.task == "ava" and self.video_loss:
            raise ConfigError("video_loss averages clip scores of a video label; AVA detection scores boxes")
        if self.task == "ava" and self.grad_chunk != 1:
            raise ConfigError(
                f"grad_chunk must be 1 for AVA detection (its pass runs one clip); got {self.grad_chunk!r}"
            )
        if self.task == "ava" and self.mode == "tsn":
            raise ConfigError(
                "mode tsn averages clip scores of a video label; AVA detection trains single, joint or comem"
            )
        self._validate_inputs()
        self._validate_regularisation()
        return self

    def _validate_inputs(self) -> None:
        """Normalisation and augmentation options."""
        if (self.mean is None) != (self.std is None):
            raise ConfigError("mean and std are given together (or neither, to follow the weights)")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None and (len(value) != 3 or (name == "std" and min(value) <= 0)):
                raise ConfigError(f"{name} needs 3 values (R, G, B), std > 0; got {value}")
        scale = self.resized_crop_scale
        if scale is not None and not (len(scale) == 2 and 0 < scale[0] <= scale[1] <= 1):
            raise ConfigError(f"resized_crop_scale must be two area fractions 0 < a <= b <= 1; got {scale}")

    def _validate_regularisation(self) -> None:
        """Mixing, label smoothing and the weight average."""
        if self.task == "ava" and (self.mixup_alpha or self.cutmix_alpha or self.label_smoothing):
            raise ConfigError(
                "mixup_alpha, cutmix_alpha and label_smoothing are for video classification; "
                "AVA detection trains on person boxes, which do not mix"
            )

    @property
    def memory_options(self) -> MemoryOptions:
        """The memory fields as the one record every memory is built from."""
        return MemoryOptions(
            memory=self.memory,
            fusion=self.fusion,
            key_dim=self.key_dim,
            gate_hidden=self.gate_hidden,
            summary=self.memory_summary,
            entry_hidden=self.entry_hidden,
            clip_time=self.clip_time,
        )

    @property
    def train_clips(self) -> int:
        """Clips per video in a training step: one in ``single`` mode, N otherwise."""
        return 1 if self.mode == "single" else self.clips

    @property
    def eval_views(self) -> int:
        return self.views or self.clips

    @property
    def clips_per_eval_memory(self) -> int | None:
        """Views per evaluation memory (``memory_groups``): training's clip count with
        ``eval_memory="groups"``, None (all views) with ``"all"``."""
        return self.clips if self.eval_memory == "groups" else None

    @property
    def shares_eval_memory(self) -> bool:
        """Whether a video's evaluation views share memories (``eval_memory`` says which views share
        one; ``comem.data.sampling.memory_groups``). A ``single`` model was
        trained with a memory of its own clip only, so each of its views is scored on its own; so
        was a ``tsn`` model (its clips meet only in the averaged scores)."""
        return self.mode not in ("single", "tsn")


def upgrade_config(values: dict[str, Any]) -> dict[str, Any]:
    """Config values written by an earlier comem (a checkpoint's or a run's ``config.yaml``) in
    today's fields: ``amp`` (bf16 autocast on CUDA, ignored on a CPU) is ``precision`` ``auto`` when
    true and ``fp32`` when false."""
    if "amp" not in values:
        return values
    values = dict(values)
    amp = values.pop("amp")
    values.setdefault("precision", "auto" if amp else "fp32")
    return values


def config_fields() -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(TrainConfig)}


_YAML_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (int, float),
    "str": (str,),
    "bool": (bool,),
    "None": (type(None),),
    "list[str]": (list,),
    "list[float]": (list,),
}


def _check_yaml_type(path: Path, name: str, value: Any) -> None:
    """YAML gives any type; a wrong one would otherwise surface as a TypeError deep in validation."""
    annotation = str(config_fields()[name].type)
    allowed = tuple(t for part in annotation.split(" | ") for t in _YAML_TYPES[part])
    if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
        raise ConfigError(f"{path}: {name} must be {annotation.replace(' | None', '')}; got {value!r}")


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults, then the YAML file (keys as field names, '-' or '_'), then ``overrides``."""
    import yaml

    values: dict[str, Any] = {}
    loaded_keys: dict[str, str] = {}  # field name -> the key as the file spells it
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            loaded = yaml.safe_load(read_text(path, ConfigError)) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML ({' '.join(str(error).split())})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of option: value at the top level")
        loaded_keys = {str(key).replace("-", "_"): str(key) for key in loaded}
        values.update(upgrade_config({str(key).replace("-", "_"): value for key, value in loaded.items()}))
        unknown = sorted(set(values) - set(config_fields()))
        if unknown:
            raise ConfigError(f"{path}: unknown option(s) {', '.join(unknown)}")
        for name, value in values.items():
            _check_yaml_type(path, name, value)
    values.update(overrides or {})
    try:
        return TrainConfig(**values).validate()
    except ConfigError as error:
        raise ConfigError(_as_typed(str(error), path, loaded_keys, overrides or {})) from None


def _as_typed(message: str, path: Path | None, keys: dict[str, str], flags: dict[str, Any]) -> str:
    """A validation message names the option as the user gave it: ``--clip-len`` on the command
    line, the key as spelled in the YAML file (with the file's name)."""
    name, _, rest = message.partition(" ")
    if name in flags:
        return f"--{name.replace('_', '-')} {rest}"
    if name in keys:
        return f"{path}: {keys[name]} {rest}"
    return message


def config_yaml(config: TrainConfig) -> str:
    """``config`` as a YAML ``--config`` file: every field, in the dataclass's order."""
    import yaml

    header = "# comem train configuration (resolved); repeat the run with: comem train --config THIS_FILE\n"
    return header + yaml.safe_dump(dataclasses.asdict(config), sort_keys=False)


def comem_home() -> Path:
    """Where the built-in dataset is cached: ``$COMEM_HOME`` or ``~/.cache/comem``."""
    return Path(os.environ.get("COMEM_HOME", Path.home() / ".cache" / "comem"))


def stage_list(text: str) -> list[str]:
    """``--memory-stages`` value: comma-separated stage names or aliases, at least one."""
    stages = [part.strip() for part in text.split(",") if part.strip()]
    if not stages:
        raise argparse.ArgumentTypeError("name at least one stage (e.g. last or layer3,layer4)")
    return stages
