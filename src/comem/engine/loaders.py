"""Device choice and loaders built the same way for training and evaluation, for every task."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from comem.config import TrainConfig


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but no CUDA device is available")
    return torch.device(name)


def drops_last(dataset_size: int, config: TrainConfig) -> bool:
    """Training drops a last partial batch (a batch of one breaks train-mode BatchNorm on small maps)."""
    return dataset_size > config.batch_size


def make_loader(
    dataset: Dataset,
    collate: Callable[[list[Any]], dict[str, Any]],
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
        collate_fn=collate,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        # Its own generator: iterating a loader otherwise draws a base seed from the global torch RNG,
        # which dropout uses too, so a run resumed mid-epoch would diverge from an uninterrupted one.
        generator=torch.Generator().manual_seed(config.seed),
    )
