"""Pieces every task uses: the model spec of a config, pretrained weights and input normalisation
(a checkpoint's spec and config are read back by :mod:`comem.checkpoint_state`)."""

from __future__ import annotations

import dataclasses
import logging

from comem.config import TrainConfig
from comem.models.build import ModelSpec, VideoModel, load_pretrained
from comem.models.normalization import normalization
from comem.tasks.base import EvalRequest

log = logging.getLogger(__name__)


def load_pretrained_weights(model: VideoModel, config: TrainConfig) -> None:
    """``--pretrained``, warning in one line about tensors a non-strict load left at their init."""
    missing = load_pretrained(model, config.pretrained, strict=config.pretrained_strict)
    if missing:
        log.warning(
            f"{config.pretrained}: {len(missing)} tensors of the model are not in the file "
            f"and keep their initialisation (first: {missing[0]})"
        )


def model_spec(config: TrainConfig, num_classes: int, *, dropout: float | None = None) -> ModelSpec:
    """The spec of the video model ``config`` trains (backbone and memories), with ``num_classes``
    outputs; ``dropout`` before its classifier (default ``config.dropout``)."""
    return ModelSpec(
        backbone=config.backbone,
        num_classes=num_classes,
        memory_stages=tuple(config.memory_stages),
        **config.memory_options.as_kwargs(),
        dropout=config.dropout if dropout is None else dropout,
    )


def settle_normalization(model: VideoModel, spec: ModelSpec, config: TrainConfig) -> ModelSpec:
    """``spec`` recording the model's input normalisation: ``config.mean/std`` when given, else that
    of the loaded weights' source (or the backbone's), so checkpoints, eval and predict use it."""
    if config.mean is not None and config.std is not None:
        model.normalization = normalization(config.mean, config.std)
    return spec.with_normalization(model.normalization)


def evaluation_config(config: TrainConfig, request: EvalRequest, *, crops: bool = True) -> TrainConfig:
    """The checkpoint's ``config`` with what ``comem eval`` asked instead (views, crops when the
    task crops, which views share a memory, batch size, workers), validated."""
    asked = {
        "views": request.views,
        "eval_memory": request.eval_memory,
        "batch_size": request.batch_size,
        "workers": request.workers,
    }
    if crops:
        asked["crops"] = request.crops
    return dataclasses.replace(config, **{k: v for k, v in asked.items() if v is not None}).validate()
