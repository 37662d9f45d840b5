"""Pieces every task uses: pretrained weights, input normalisation, and a model spec and config
rebuilt from a checkpoint."""

from __future__ import annotations

import logging

from comem.config import TrainConfig, config_fields, upgrade_config
from comem.models.build import ModelSpec, VideoModel, load_pretrained
from comem.models.normalization import PYSLOWFAST, normalization

log = logging.getLogger(__name__)


def load_pretrained_weights(model: VideoModel, config: TrainConfig) -> None:
    """``--pretrained``, warning in one line about tensors a non-strict load left at their init."""
    missing = load_pretrained(model, config.pretrained, strict=config.pretrained_strict)
    if missing:
        log.warning(
            f"{config.pretrained}: {len(missing)} tensors of the model are not in the file "
            f"and keep their initialisation (first: {missing[0]})"
        )


def settle_normalization(model: VideoModel, spec: ModelSpec, config: TrainConfig) -> ModelSpec:
    """``spec`` recording the model's input normalisation: ``config.mean/std`` when given, else that
    of the loaded weights' source (or the backbone's), so checkpoints, eval and predict use it."""
    if config.mean is not None and config.std is not None:
        model.normalization = normalization(config.mean, config.std)
    return spec.with_normalization(model.normalization)


def spec_from_state(state: dict) -> ModelSpec:
    """The model spec a checkpoint was trained with (YAML/pickle turned its tuple into a list).

    Checkpoints that predate the stored input normalisation were all trained with PySlowFast's."""
    # Checkpoints from before ``summary`` pooled by the mean; from before ``entry_hidden``, linear q/k/v;
    # from before ``clip_time``, the order-blind read.
    stored = {"summary": "mean", "entry_hidden": None, "clip_time": "none", **state["model_spec"]}
    spec = ModelSpec(**{**stored, "memory_stages": tuple(stored["memory_stages"])})
    if stored.get("mean") is None:
        return spec.with_normalization(PYSLOWFAST)
    return spec.with_normalization(normalization(stored["mean"], stored["std"]))


def checkpoint_config(values: dict) -> dict:
    """A checkpoint's stored config in today's fields (``upgrade_config``). Settings whose default
    changed keep the value the run was trained with: a checkpoint from before ``memory_summary``
    summarised clips by their mean, one from before ``entry_hidden`` projected the summaries linearly,
    one from before ``clip_time`` read the clips as an unordered set."""
    return {"memory_summary": "mean", "entry_hidden": None, "clip_time": "none", **upgrade_config(values)}


def config_from_state(state: dict) -> TrainConfig:
    """The training config of a checkpoint in today's fields (``upgrade_config``); fields another
    comem version added are left out."""
    known = config_fields()
    return TrainConfig(**{k: v for k, v in checkpoint_config(state["config"]).items() if k in known})
