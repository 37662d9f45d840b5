"""A trained model restored from a ``comem train`` checkpoint with everything inference needs.

A checkpoint carries the model spec, the training config (clip length, stride, crop size, eval
scale, views, crops, mode), the class names and whether the labels were multi-hot, so
``comem eval`` and ``comem predict`` need nothing but its path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from comem.checkpoint_state import (
    CheckpointError,
    checkpoint_weights,
    config_from_state,
    is_multi_label,
    spec_from_state,
    stored_task,
)
from comem.config import TrainConfig
from comem.engine.checkpoint import load_checkpoint
from comem.models.build import ModelSpec, VideoModel, build_model


@dataclass
class TrainedModel:
    """The model in eval mode on its device, and the settings it was trained with."""

    model: VideoModel
    spec: ModelSpec
    config: TrainConfig
    class_names: list[str]
    multi_label: bool
    data_dir: Path | None
    path: Path
    weights: str = "raw"  # "ema": the weight average of a run with --ema-decay


def load_trained(
    checkpoint: str | Path, device: torch.device, *, state: dict | None = None, weights: str | None = None
) -> TrainedModel:
    """Rebuild the model of a training checkpoint and load its weights onto ``device``.

    ``state``: the checkpoint already read by the caller, so it is not read twice. ``weights``:
    ``ema`` or ``raw``; default the weight average when the run kept one (``--ema-decay``), else
    the model's (see :func:`comem.checkpoint_state.checkpoint_weights`).
    """
    path = Path(checkpoint)
    state = load_checkpoint(path) if state is None else state
    if stored_task(state) == "ava":
        raise CheckpointError(
            f"{path}: an AVA detection checkpoint (comem train --task ava): score it with comem eval; "
            "this command needs a video classification one"
        )
    missing = [key for key in ("model_spec", "config", "class_names") if key not in state]
    if missing:
        raise CheckpointError(f"{path}: not a comem training checkpoint (no {', '.join(missing)})")
    config = config_from_state(state)
    spec = spec_from_state(state)
    model = build_model(spec)
    weight_dict, kind = checkpoint_weights(state, path, weights)
    model.load_state_dict(weight_dict)
    model.to(device).eval()
    class_names = list(state["class_names"])
    if len(class_names) != spec.num_classes:
        raise CheckpointError(
            f"{path}: has {len(class_names)} class names for a model of {spec.num_classes} classes"
        )
    data_dir = Path(state["data_dir"]) if state.get("data_dir") else None
    return TrainedModel(model, spec, config, class_names, is_multi_label(state), data_dir, path, kind)
