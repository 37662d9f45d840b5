"""Device choice, datasets and loaders built the same way for training and evaluation."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Sampler

from comem.config import TrainConfig
from comem.data.datasets import MultiClipVideoDataset, VideoSplits, collate_clips
from comem.data.decode import check_decoder
from comem.data.transforms import mirrored_classes


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but no CUDA device is available")
    return torch.device(name)


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
    records: list,
    config: TrainConfig,
    *,
    train: bool,
    num_classes: int | None = None,
    splits: VideoSplits | None = None,
) -> MultiClipVideoDataset:
    """``num_classes`` sizes the multi-hot targets of multi-label records; ``splits`` (the data's
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


def drops_last(dataset_size: int, config: TrainConfig) -> bool:
    """Training drops a last partial batch (a batch of one breaks train-mode BatchNorm on small maps)."""
    return dataset_size > config.batch_size


def make_loader(
    dataset: MultiClipVideoDataset,
    config: TrainConfig,
    sampler: Sampler | None,
    device: torch.device,
    *,
    drop_last: bool | None = None,
) -> DataLoader:
    """A loader over ``dataset``; by default a loader with a sampler is a training loader and drops
    a last partial batch (``drops_last``), one without keeps every video."""
    if drop_last is None:
        drop_last = sampler is not None and drops_last(len(dataset), config)
    return DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=sampler,
        drop_last=drop_last,
        shuffle=False,
        num_workers=config.workers,
        collate_fn=collate_clips,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        # Its own generator: iterating a loader otherwise draws a base seed from the global torch RNG,
        # which dropout uses too, so a run resumed mid-epoch would diverge from an uninterrupted one.
        generator=torch.Generator().manual_seed(config.seed),
    )
