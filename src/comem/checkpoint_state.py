"""What a ``comem train`` checkpoint holds, and how its entries are read back.

:mod:`comem.engine.checkpoint` reads and writes the file; this module interprets what is in it, for
every reader alike (the trainer's resume, ``comem eval``, ``comem predict``, ``comem.load`` and the
tasks), at the config layer so tasks use it without importing the engine. Entries:

- ``model``: the state dict; ``ema`` / ``ema_updates``: the weight average (``--ema-decay``);
- ``model_spec``: the :class:`~comem.models.build.ModelSpec` as a dict (:func:`spec_from_state`);
- ``config``: the :class:`~comem.config.TrainConfig` as a dict (:func:`config_from_state`);
- what the task adds (``Task.checkpoint_fields``): ``class_names``, ``multi_label``, ``data_dir``,
  ``num_classes``;
- the loop's own: ``optimizer``, ``scheduler``, ``scaler``, ``epoch``, ``step_in_epoch``,
  ``global_step``, ``history``, ``skipped``, ``epoch_running``, ``rng``, ``rank_states``, ``loggers``.

Checkpoints of earlier comem versions are read in today's terms here, once (docs/architecture.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from comem.config import TrainConfig, config_fields, upgrade_config
from comem.errors import UserError
from comem.models.build import ModelSpec
from comem.models.normalization import PYSLOWFAST, normalization

WEIGHTS: tuple[str, ...] = ("ema", "raw")


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that is missing, unreadable or unwritable (message names the file)."""


def checkpoint_config(values: dict) -> dict:
    """A checkpoint's stored config in today's fields (``upgrade_config``). Settings whose default
    changed keep the value the run was trained with: a checkpoint from before ``memory_summary``
    summarised clips by their mean, one from before ``entry_hidden`` projected the summaries linearly."""
    return {"memory_summary": "mean", "entry_hidden": None, **upgrade_config(values)}


def config_from_state(state: dict) -> TrainConfig:
    """The training config of a checkpoint in today's fields (``upgrade_config``); fields another
    comem version added are left out."""
    known = config_fields()
    return TrainConfig(**{k: v for k, v in checkpoint_config(state["config"]).items() if k in known})


def spec_from_state(state: dict) -> ModelSpec:
    """The model spec a checkpoint was trained with (YAML/pickle turned its tuple into a list).

    Checkpoints that predate the stored input normalisation were all trained with PySlowFast's."""
    # Checkpoints from before ``summary`` pooled by the mean; from before ``entry_hidden``, linear q/k/v.
    stored = {"summary": "mean", "entry_hidden": None, **state["model_spec"]}
    spec = ModelSpec(**{**stored, "memory_stages": tuple(stored["memory_stages"])})
    if stored.get("mean") is None:
        return spec.with_normalization(PYSLOWFAST)
    return spec.with_normalization(normalization(stored["mean"], stored["std"]))


def stored_task(state: dict) -> str:
    """The task a checkpoint was trained on (``TrainConfig.task``: ``classify`` or ``ava``)."""
    return str(state.get("config", {}).get("task", "classify"))


def is_multi_label(state: dict) -> bool:
    """Whether the run had multi-hot labels: recorded by the trainer, or (older checkpoints) seen
    from its validation history, which reports mAP only for multi-label data."""
    if "multi_label" in state:
        return bool(state["multi_label"])
    return any("val_mAP" in record for record in state.get("history", []))


def checkpoint_weights(state: dict[str, Any], path: Path, weights: str | None = None) -> tuple[dict, str]:
    """The weights of a training checkpoint to evaluate and their kind: the EMA when the run kept
    one (``--ema-decay``; it also picked ``best.pt``), else the model's; ``weights`` (``ema`` or
    ``raw``) chooses explicitly."""
    if weights is not None and weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {', '.join(WEIGHTS)}; got {weights!r}")
    has_ema = isinstance(state.get("ema"), dict)
    if weights == "ema" and not has_ema:
        raise CheckpointError(f"{path}: has no EMA weights (trained without --ema-decay)")
    if has_ema and weights != "raw":
        return state["ema"], "ema"
    return state["model"], "raw"
