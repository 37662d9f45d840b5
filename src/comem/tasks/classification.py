"""Video classification: one label (or a multi-hot set) per video, N clips per video.

Training steps are the engine's per-clip modes (:mod:`comem.engine.modes`) on the clip logits;
evaluation is multi-view testing: every view of a video goes through the model together (so the
collaborative memory is built from all of them) and clip probabilities are averaged per video.
Single-label data is scored by top-1 (which picks ``best.pt``), top-5 and mean class accuracy,
multi-label data (Charades) by mAP.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from comem.checkpoint_state import trained_from_state
from comem.config import ConfigError, TrainConfig, comem_home
from comem.data.datasets import (
    DatasetFormatError,
    MultiClipVideoDataset,
    VideoRecord,
    VideoSplits,
    collate_clips,
)
from comem.data.decode import check_decoder
from comem.data.formats import load_splits, require_training_labels
from comem.data.mixing import VideoMixer
from comem.data.sampling import memory_groups
from comem.data.synthetic import SyntheticSpec, ensure_synthetic
from comem.data.transforms import mirrored_classes
from comem.files import json_text, write_json
from comem.metrics import classification_metrics
from comem.models.build import VideoModel, build_model
from comem.tasks.base import CheckpointEvaluation, EvalRequest, Predictions, StepContext, StepResult
from comem.tasks.common import evaluation_config, load_pretrained_weights, model_spec, settle_normalization
from comem.tasks.reports import write_eval_report

AGGREGATES: tuple[str, ...] = ("mean", "max")
log = logging.getLogger(__name__)


@dataclass
class VideoScores:
    """Per-video scores (V, K), targets, dataset indices, and the videos that could not be read."""

    scores: torch.Tensor
    targets: torch.Tensor
    video_indices: torch.Tensor
    skipped: list[str] = field(default_factory=list)

    @classmethod
    def from_predictions(cls, predictions: Predictions) -> VideoScores:
        """Stack the ``(scores, target)`` items of :meth:`ClassificationTask.predict`."""
        if not predictions.items:
            empty = torch.empty(0, dtype=torch.long)
            return cls(torch.empty(0, 0), empty, empty, predictions.skipped)
        scores = torch.stack([scores for scores, _ in predictions.items])
        targets = torch.stack([target for _, target in predictions.items])
        return cls(scores, targets, torch.tensor(predictions.indices), predictions.skipped)


def memories_per_video(config: TrainConfig) -> int:
    """How many memories evaluation builds per video: one per view for ``single`` and ``tsn``,
    else one per group of ``memory_groups``."""
    views = config.eval_views * config.crops
    if not config.shares_eval_memory:
        return views
    return len(memory_groups(config.eval_views, config.crops, config.clips_per_eval_memory))


def grouped_view_logits(
    model: nn.Module,
    video: torch.Tensor,
    times: torch.Tensor | None,
    *,
    share_memory: bool,
    groups: list[list[int]],
) -> torch.Tensor:
    """Logits (B, V, K) of the V views of each video (B, V, C, T, H, W) at ``times`` (B, V), the
    views of each group in ``groups`` (``comem.data.sampling.memory_groups``) sharing one memory.
    ``times`` may be None (clips spread evenly) only when all views share one memory: a group's
    times are a subset of the video's, which only the views' own times give."""
    if not share_memory or len(groups) == 1:
        return model(video, share_memory=share_memory, times=times)
    if times is None:
        raise ValueError("views scored in several memory groups need their times")
    parts = [model(video[:, group], share_memory=True, times=times[:, group]) for group in groups]
    order = torch.tensor([view for group in groups for view in group], device=video.device)
    logits = torch.cat(parts, dim=1)
    return logits[:, torch.argsort(order)]


def clip_probabilities(clip_logits: torch.Tensor, *, multi_label: bool) -> torch.Tensor:
    """Per-clip class probabilities (..., K): softmax, or sigmoid for multi-label targets."""
    logits = clip_logits.float()
    return logits.sigmoid() if multi_label else logits.softmax(dim=-1)


def video_scores(clip_logits: torch.Tensor, *, multi_label: bool, aggregate: str = "mean") -> torch.Tensor:
    """Video-level scores (B, K) from clip logits (B, N, K): the mean (or per-class max) over the
    N views of the clip probabilities, as training accuracy and evaluation both report."""
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {', '.join(AGGREGATES)}; got {aggregate!r}")
    probabilities = clip_probabilities(clip_logits, multi_label=multi_label)
    return probabilities.mean(dim=1) if aggregate == "mean" else probabilities.amax(dim=1)


def make_clip_loss(*, multi_label: bool, label_smoothing: float = 0.0) -> Callable[..., torch.Tensor]:
    """The loss of clip logits (M, K) against their video targets: binary cross-entropy for
    multi-hot (or mixed multi-hot) targets; cross-entropy for class indices or mixed one-hot
    probabilities, with ``label_smoothing`` (the target becomes ``(1 - e) * target + e / K``)."""
    if multi_label:
        return lambda logits, targets: F.binary_cross_entropy_with_logits(logits.float(), targets.float())
    return lambda logits, targets: F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing)


def flip_policy(config: TrainConfig, splits: VideoSplits | None) -> tuple[bool, list[int] | None]:
    """Whether training flips, and the mirrored class of each class when a flip swaps labels.

    ``flip auto`` is off for Something-Something (its left/right classes would change meaning)."""
    mode = config.flip
    data_format = splits.data_format if splits is not None else config.data_format
    if mode == "auto":
        mode = "off" if data_format in ("ssv1", "ssv2") else "on"
    if mode == "swap-labels":
        return True, mirrored_classes(splits.class_names if splits is not None else [])
    return mode == "on", None


def make_dataset(
    records: list[VideoRecord],
    config: TrainConfig,
    *,
    train: bool,
    num_classes: int | None = None,
    splits: VideoSplits | None = None,
) -> MultiClipVideoDataset:
    """The training (N clips, jittered crops) or evaluation (views x crops) dataset of ``records``;
    ``num_classes`` sizes the multi-hot targets of multi-label records; ``splits`` (the data's
    format and class names) decides the flips of a training set (``flip_policy``)."""
    check_decoder(config.decoder)
    flip, label_mirror = flip_policy(config, splits)
    scale = config.resized_crop_scale
    return MultiClipVideoDataset(
        records,
        num_clips=config.train_clips if train else config.eval_views,
        clip_len=config.clip_len,
        stride=config.stride,
        crop_size=config.crop_size,
        train=train,
        seed=config.seed,
        min_scale=config.min_scale,
        max_scale=config.max_scale,
        eval_scale=config.eval_scale,
        num_crops=1 if train else config.crops,
        num_classes=num_classes,
        decoder=config.decoder,
        target_fps=config.target_fps,
        span_labels=config.span_labels,
        flip=flip,
        label_mirror=label_mirror,
        resized_crop_scale=None if scale is None else (scale[0], scale[1]),
        randaug_ops=config.randaug_ops,
        randaug_magnitude=config.randaug_magnitude,
    )


def resolve_data(config: TrainConfig) -> Path:
    """The user's data dir, or the built-in synthetic dataset (generated into the cache once)."""
    if config.data is not None:
        return Path(config.data)
    spec = SyntheticSpec(task=config.synthetic_task)
    if spec.task == "order" and (config.clip_len, config.stride) != (spec.clip_len, spec.stride):
        log.warning(
            f"the built-in order videos are laid out for clips of {spec.clip_len} frames at stride "
            f"{spec.stride}; with --clip-len {config.clip_len} --stride {config.stride} a clip may see two "
            f"events or tell which part it is in (comem make-synthetic --task order --clip-len "
            f"{config.clip_len} --stride {config.stride} writes videos for these clips)"
        )
    return ensure_synthetic(comem_home(), spec)


class ClassificationTask:
    """Video classification on a dataset in any supported format (see ``comem.data.formats``).

    ``splits`` and ``data_dir`` given: evaluate those (``comem eval`` of a checkpoint) instead of
    reading ``config.data``; ``eval_split`` picks the records evaluated (``val`` or ``test``).
    """

    collate = staticmethod(collate_clips)

    def __init__(
        self,
        config: TrainConfig,
        *,
        splits: VideoSplits | None = None,
        data_dir: Path | None = None,
        eval_split: str = "val",
        aggregate: str = "mean",
    ) -> None:
        self.config = config
        self.data_dir = data_dir if data_dir is not None else resolve_data(config)
        if splits is None:
            splits = load_splits(self.data_dir, config.data_format, outside=config.allow_outside_data)
            require_training_labels(splits, self.data_dir)
            if splits.missing:
                log.warning(
                    f"{len(splits.missing)} listed videos not found, left out "
                    f"(first: {splits.missing[0]}); `comem check-data` lists them all"
                )
        self.splits = splits
        self.aggregate = aggregate
        self.multi_label = splits.multi_label
        classes = splits.num_classes
        self.model_spec = model_spec(config, classes)
        # Multi-label data (Charades) is scored and checkpointed by mAP, single-label by top-1.
        self.selection_metric = "mAP" if self.multi_label else "top1"
        self.headline_metrics = ("mAP",) if self.multi_label else ("top1", "top5", "mean_class_acc")
        self.train_accuracy = not self.multi_label
        self.eval_records = splits.val if eval_split == "val" else splits.test
        if self.eval_records is None:
            raise DatasetFormatError(f"{self.data_dir}: no labelled test split")
        if config.label_smoothing and self.multi_label:
            raise ConfigError(
                f"{self.data_dir}: --label-smoothing applies to single-label cross-entropy; "
                "this data is multi-label (binary cross-entropy)"
            )
        self.loss = make_clip_loss(multi_label=self.multi_label, label_smoothing=config.label_smoothing)
        self.mixer = VideoMixer(
            config.mixup_alpha, config.cutmix_alpha, config.mix_prob, config.mix_switch_prob
        )
        self.train_set = make_dataset(splits.train, config, train=True, num_classes=classes, splits=splits)
        self.val_set = make_dataset(self.eval_records, config, train=False, num_classes=classes)

    def build_model(self) -> VideoModel:
        model = build_model(self.model_spec)
        if self.config.pretrained:
            load_pretrained_weights(model, self.config)
        self.model_spec = settle_normalization(model, self.model_spec, self.config)
        return model

    def usable(self, batch: dict[str, Any]) -> bool:
        # A batch left with one video by unreadable ones would break train-mode BatchNorm.
        return batch["label"].shape[0] >= min(2, self.config.batch_size)

    def train_step(self, batch: dict[str, Any], step: StepContext) -> StepResult:
        """One step in the run's mode; with mixup/CutMix on, the batch's videos and targets are
        mixed first (``train_top1`` still counts each video's own label)."""
        video, targets = batch["video"], batch["label"]
        mixed, train_targets = self.mix(video, targets)
        output = step.run_mode(
            step.to_input(mixed), train_targets, loss_fn=self.loss, times=batch.get("times")
        )
        correct = 0
        if not self.multi_label:
            correct = int((video_scores(output.logits, multi_label=False).argmax(-1) == targets).sum())
        return StepResult(float(output.loss), int(targets.shape[0]), correct)

    def mix(self, video: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's videos (B, N, C, T, H, W) and targets mixed as ``self.mixer`` draws (one-hot
        class indices first), or as they are when this batch is not mixed."""
        mix = self.mixer.draw(video.shape[0], video.shape[-2], video.shape[-1])
        if mix is None:
            return video, targets
        if not targets.is_floating_point():
            targets = F.one_hot(targets, self.splits.num_classes).float()
        return mix.videos(video), mix.targets(targets)

    @torch.no_grad()
    def predict(self, model: nn.Module, batch: dict[str, Any], step: StepContext) -> list[tuple[int, Any]]:
        """Each video's scores (K,) over its views and its target. A ``single``-mode model scores
        each view alone (its memory saw one clip in training); the views of the other modes share
        memories as ``config.eval_memory`` says (``memory_groups``)."""
        if batch["label"].numel() == 0:
            return []
        crops = self.config.crops
        groups = memory_groups(batch["video"].shape[1] // crops, crops, self.config.clips_per_eval_memory)
        with step.autocast():
            logits = grouped_view_logits(
                model,
                step.to_input(batch["video"]),
                batch.get("times"),
                share_memory=self.config.shares_eval_memory,
                groups=groups,
            )
        multi_label = batch["label"].is_floating_point()
        scores = video_scores(logits, multi_label=multi_label, aggregate=self.aggregate).cpu()
        targets = batch["label"].cpu()
        indices = batch["video_index"].tolist()
        return [(index, (scores[row], targets[row])) for row, index in enumerate(indices)]

    def val_metrics(self, predictions: Predictions, out: Path) -> dict[str, float]:
        result = VideoScores.from_predictions(predictions)
        # videos: those scored (a val video that could not be read is skipped and not counted)
        return {**classification_metrics(result.scores, result.targets), "videos": len(result.targets)}

    def report(self, predictions: Predictions, out_dir: Path, extra: dict[str, Any]) -> dict[str, Any]:
        """``comem eval``'s report directory: metrics.json, predictions.csv, per-class table and
        chart (see :func:`comem.tasks.reports.write_eval_report`); returns the metrics."""
        result = VideoScores.from_predictions(predictions)
        split = extra["split"]
        metrics: dict[str, Any] = {
            f"{split}_{key}": value
            for key, value in classification_metrics(result.scores, result.targets).items()
        }
        config = self.config
        metrics.update(
            {
                "split": split,
                "mode": config.mode,
                "views": config.eval_views * config.crops,
                "clips": config.eval_views,
                "crops": config.crops,
                "aggregate": self.aggregate,
                "eval_memory": config.eval_memory if config.shares_eval_memory else "per-view",
                "memories_per_video": memories_per_video(config),
                "weights": extra.get("weights", "raw"),
                "videos": int(result.scores.shape[0]),
                "skipped_videos": len(result.skipped),
                "skipped": result.skipped,
                "checkpoint": extra["checkpoint"],
                "data": str(self.data_dir),
            }
        )
        videos = [str(self.eval_records[index].path) for index in result.video_indices.tolist()]
        metrics.update(write_eval_report(out_dir, result.scores, result.targets, videos, self.class_names))
        write_json(out_dir / "metrics.json", metrics)
        return metrics

    @property
    def class_names(self) -> list[str]:
        return self.splits.class_names

    def checkpoint_fields(self) -> dict[str, Any]:
        return {
            "class_names": self.splits.class_names,
            "multi_label": self.multi_label,
            "data_dir": str(self.data_dir.resolve()),
        }

    def summary(self) -> dict[str, Any]:
        config = self.config
        return {
            "data_format": self.splits.data_format,
            "multi_label": self.multi_label,
            "clips": config.clips,
            "train_clips_per_video": config.train_clips,
            "eval_views": config.eval_views * config.crops,
            "data": str(self.data_dir),
            "num_classes": self.splits.num_classes,
            "train_videos": len(self.splits.train),
        }

    def prepare_output(self, out: Path) -> None:
        (out / "classes.txt").write_text("\n".join(self.splits.class_names) + "\n")

    @classmethod
    def for_checkpoint(cls, path: Path, state: dict[str, Any], request: EvalRequest) -> CheckpointEvaluation:
        """Multi-view testing of the checkpoint on ``request.data`` (default: the data it was trained
        on); the report goes to ``eval_<split>_<checkpoint name>[_<settings>]/`` beside it unless
        ``request.out`` (``EvalRequest.settings_suffix``)."""
        trained = trained_from_state(state, path, request.weights)
        if request.data is None and trained.data_dir is None:
            raise DatasetFormatError(f"{path}: records no data dir; pass --data")
        task = evaluation_task(
            evaluation_config(trained.config, request),
            checkpoint=path,
            data_dir=request.data or trained.data_dir,
            split=request.split,
            multi_label=trained.multi_label,
            class_names=trained.class_names,
            aggregate=request.aggregate,
            allow_other_classes=request.allow_other_classes,
        )
        name = f"eval_{request.split}_{path.stem}{request.settings_suffix()}"
        out_dir = request.out or path.with_name(name)
        return CheckpointEvaluation(task, trained.model, out_dir, trained.weights)

    @classmethod
    def report_lines(cls, metrics: dict[str, Any], out_dir: Path) -> list[str]:
        """The scalar metrics as JSON, the most confused class pairs, the files written."""
        scalars = {key: value for key, value in metrics.items() if not isinstance(value, list | dict)}
        lines = [json_text(scalars)]
        for pair in metrics.get("top_confused", [])[:5]:
            lines.append(f"confused: {pair['videos']} x {pair['true']} -> {pair['predicted']}")
        lines.append(f"wrote {', '.join(sorted(path.name for path in out_dir.iterdir()))} to {out_dir}")
        return lines


def evaluation_task(
    config: TrainConfig,
    *,
    checkpoint: Path,
    data_dir: Path,
    split: str,
    multi_label: bool,
    class_names: Sequence[str],
    aggregate: str = "mean",
    allow_other_classes: bool = False,
) -> ClassificationTask:
    """The task ``comem eval`` runs on a checkpoint trained on ``multi_label`` data with one output
    per class of ``class_names``, after checking that ``data_dir`` can be scored by it: its class
    names must be the checkpoint's (else label ``i`` would be scored as the checkpoint's class ``i``,
    whatever it names), unless ``allow_other_classes``."""
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {', '.join(AGGREGATES)}; got {aggregate!r}")
    splits = load_splits(data_dir, config.data_format, outside=config.allow_outside_data)
    if (splits.val if split == "val" else splits.test) is None:
        raise DatasetFormatError(f"{data_dir}: no labelled test split")
    if splits.multi_label != multi_label:  # sigmoid/mAP vs softmax/top-1: no common metric
        kinds = {True: "multi-label", False: "single-label"}
        raise DatasetFormatError(
            f"{data_dir}: {kinds[splits.multi_label]} data but {checkpoint} was trained on "
            f"{kinds[multi_label]} data"
        )
    num_classes = len(class_names)
    if list(splits.class_names) != list(class_names) and not allow_other_classes:
        differ = next(
            (i for i, (a, b) in enumerate(zip(splits.class_names, class_names, strict=False)) if a != b),
            min(splits.num_classes, num_classes),
        )
        theirs = splits.class_names[differ] if differ < splits.num_classes else "(none)"
        ours = class_names[differ] if differ < num_classes else "(none)"
        raise DatasetFormatError(
            f"{data_dir}: its classes differ from those {checkpoint} was trained on "
            f"({splits.num_classes} vs {num_classes}; class {differ}: '{theirs}' vs '{ours}'); "
            "--allow-other-classes maps labels by index"
        )
    if splits.num_classes > num_classes:
        raise DatasetFormatError(
            f"{data_dir}: has {splits.num_classes} classes but the checkpoint predicts {num_classes}"
        )
    splits = dataclasses.replace(splits, class_names=list(class_names))  # the model's classes
    return ClassificationTask(
        config,
        splits=splits,
        data_dir=data_dir,
        eval_split=split,
        aggregate=aggregate,
    )
