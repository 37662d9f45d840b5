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

Checkpoints of earlier comem versions are read in today's terms here, once (docs/architecture.md);
:func:`check_resume` says whether ``--resume`` may continue the run a checkpoint holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from comem.config import TrainConfig, config_fields, upgrade_config
from comem.errors import UserError
from comem.models.build import ModelSpec, VideoModel, build_model
from comem.models.normalization import PYSLOWFAST, normalization

WEIGHTS: tuple[str, ...] = ("ema", "raw")


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that is missing, unreadable or unwritable (message names the file)."""


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


@dataclass
class TrainedModel:
    """A classification checkpoint's model (eval mode, on the CPU) and the settings it was trained with."""

    model: VideoModel
    spec: ModelSpec
    config: TrainConfig
    class_names: list[str]
    multi_label: bool
    data_dir: Path | None
    path: Path
    weights: str = "raw"  # "ema": the weight average of a run with --ema-decay


def trained_from_state(state: dict, path: Path, weights: str | None = None) -> TrainedModel:
    """The model of a video classification checkpoint ``state`` (read from ``path``) with its
    weights (``weights``: see :func:`checkpoint_weights`) and what it was trained with."""
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
    model.eval()
    class_names = list(state["class_names"])
    if len(class_names) != spec.num_classes:
        raise CheckpointError(
            f"{path}: has {len(class_names)} class names for a model of {spec.num_classes} classes"
        )
    data_dir = Path(state["data_dir"]) if state.get("data_dir") else None
    return TrainedModel(model, spec, config, class_names, is_multi_label(state), data_dir, path, kind)


# --- ``--resume`` continues the run ``last.pt`` holds, not another one ---------------------------
# Every training setting of the command is compared with the checkpoint's. A setting that changes what
# the remaining steps compute (batch size, clips, clip length, stride, crop, mode, backbone, data, seed,
# optimizer, ... : every field not listed in MAY_CHANGE) is an error listing each difference; the
# settings in MAY_CHANGE are accepted and said in one line.

# Settings a resumed run may change: where and how fast it runs, how it is evaluated and saved, and
# ``epochs`` (to extend a run; the learning-rate schedule then follows the new length).
MAY_CHANGE = frozenset(
    {
        "workers",
        "device",
        "views",
        "crops",
        "eval_memory",
        "eval_scale",
        "epochs",
        "eval_every",
        "save_every",
        "out",
        "resume",
        "overwrite",
        "nonfinite_steps",  # when a diverged run stops, and how long a stalled rank is waited for
        "dist_timeout",
        "memory_budget",  # what the planner may fill on the device the run resumes on
        "pretrained",  # the checkpoint's weights replace the pretrained ones
        "pretrained_strict",
        "compile",
        "channels_last",
        "wandb",  # where the same numbers are also logged
        "wandb_project",
        "wandb_name",
        "wandb_mode",
    }
)


class ResumeMismatchError(UserError, ValueError):
    """The command's settings differ from the checkpoint's in a way that breaks exact resume."""


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _same(name: str, saved: Any, current: Any) -> bool:
    if name == "data" and saved is not None and current is not None:
        return Path(saved).resolve() == Path(current).resolve()
    if isinstance(saved, list | tuple) and isinstance(current, list | tuple):
        return list(saved) == list(current)
    return saved == current


def check_resume(saved: dict[str, Any], current: dict[str, Any], path: Path) -> list[str]:
    """Compare the checkpoint's config ``saved`` with the command's ``current`` (both as dicts).

    Raises :class:`ResumeMismatchError` naming every setting that breaks exactness; returns the
    accepted changes as ``--flag old -> new`` (fields one of the two versions lacks are skipped).
    """
    changed = [
        (name, saved[name], value)
        for name, value in current.items()
        if name in saved and not _same(name, saved[name], value)
    ]
    breaking = [f"{_flag(name)} {old} -> {new}" for name, old, new in changed if name not in MAY_CHANGE]
    if breaking:
        raise ResumeMismatchError(
            f"{path}: --resume with other settings than the run's ({'; '.join(breaking)}); "
            "use the run's settings, or a new --out for a new run"
        )
    return [
        f"{_flag(name)} {old} -> {new}"
        for name, old, new in changed
        if name not in ("resume", "overwrite", "out")
    ]
