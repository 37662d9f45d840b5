"""``comem.load``: a trained model ready to predict from a file, decoded frames or clips.

A ``comem train`` checkpoint carries everything (model, class names, clip sampling, crops); a
network of one's own (a :func:`comem.wrap`-ped one or a ``VideoModel``) comes with its weights
file or as the module itself, plus the clip settings it was trained with.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from comem.checkpoint_state import CheckpointError, checkpoint_weights, config_from_state, is_multi_label
from comem.config import ConfigError, TrainConfig, config_fields
from comem.inference.predict import VideoPrediction, predict_clips, predict_frames, predict_video
from comem.inference.trained import load_trained
from comem.models.normalization import PYSLOWFAST, Normalization, normalization


@dataclass
class Predictor:
    """A model in eval mode on its device with the settings that say how to feed it.

    ``config`` supplies the clip sampling and test crops (``clip_len``, ``stride``,
    ``crop_size``, ``eval_scale``, ``views``, ``crops``, ``target_fps``) and whether views share
    a memory (``mode``); ``class_names[k]`` names score column k; ``normalization`` is the input
    mean and std of the model's weights, applied to frames and files (clip tensors come normalised).
    """

    model: nn.Module
    config: TrainConfig
    class_names: list[str]
    multi_label: bool = False
    normalization: Normalization = PYSLOWFAST  # of frames and files: (x / 255 - mean) / std

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def predict(
        self,
        video: str | Path | torch.Tensor | np.ndarray,
        *,
        fps: float | None = None,
        clips: int | None = None,
        clips_per_second: float | None = None,
        max_clips: int = 64,
        crops: int | None = None,
        aggregate: str = "mean",
        times: torch.Tensor | np.ndarray | None = None,
    ) -> VideoPrediction:
        """Class scores of one video, per clip and for the whole video, with the memory's read weights.

        Args:
            video: a file path; decoded frames (T, H, W, 3) uint8 (sampled and cropped exactly as
                the file would be); or clips (N, C, T, H, W) float, cut and normalised as in
                training, scored as they are. The clips share memories as ``config.eval_memory``
                says (default: groups of at most the training clip count, spread over the video).
            fps: the frames' rate (frames input; needed by a model trained with ``target_fps``).
            clips, clips_per_second, max_clips, crops: how many clips and spatial crops to cut from
                a file or frames (default: the model's eval setting).
            aggregate: ``mean`` or ``max`` of the clip probabilities.
            times: clips input only: each clip's time (N,) in the video, its centre as a fraction
                of the duration (default: in order, evenly); files and frames know their own.

        Returns a :class:`~comem.inference.predict.VideoPrediction`: ``scores`` (K,),
        ``clip_scores`` (N, K), ``attention`` {memory stage: (N, N)}, ``top(k)``.
        """
        options = {"clips": clips, "clips_per_second": clips_per_second, "max_clips": max_clips}
        if isinstance(video, (str, Path)):
            return predict_video(self, video, crops=crops, aggregate=aggregate, **options)
        if isinstance(video, torch.Tensor) and video.is_floating_point():
            return predict_clips(self, video, aggregate=aggregate, times=times)
        return predict_frames(self, video, fps=fps, crops=crops, aggregate=aggregate, **options)


def _device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _read_weights(path: Path) -> dict[str, Any]:
    """A state dict file, or a dict holding one under ``model`` (a comem checkpoint), read safely."""
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a damaged or non-tensor file
        raise CheckpointError(f"{path}: cannot read weights ({type(error).__name__}: {error})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a state dict (a {type(state).__name__})")
    return state


def load(
    checkpoint: str | Path | nn.Module,
    *,
    model: nn.Module | None = None,
    device: str | torch.device | None = None,
    class_names: list[str] | None = None,
    multi_label: bool | None = None,
    mean: tuple[float, float, float] | None = None,
    std: tuple[float, float, float] | None = None,
    weights: str | None = None,
    **settings: Any,
) -> Predictor:
    """A :class:`Predictor` from a checkpoint path, or around a model.

    Args:
        checkpoint: a ``comem train`` checkpoint (``last.pt`` / ``best.pt``: everything is
            restored from it); a weights file for ``model`` (its ``state_dict``, or a comem
            checkpoint whose ``model`` entry fits it); or the model itself.
        model: the network the weights file is for (e.g. ``comem.wrap(r3d_18(), ["layer4"])``).
        device: default CUDA when available, else CPU.
        class_names: names of the score columns (default: the checkpoint's, else ``"0"``, ``"1"``, …).
        multi_label: sigmoid scores instead of softmax (default: the checkpoint's, else False).
        mean, std: the per-channel (RGB) input normalisation of the model's weights, pixels in
            [0, 1], applied to frames and files (default: the checkpoint's or the model's
            ``normalization``, else PySlowFast's 0.45 / 0.225).
        weights: of a comem checkpoint, ``ema`` (the weight average of a run with ``--ema-decay``)
            or ``raw`` (its weights); default the average when the run kept one.
        settings: clip settings of :class:`~comem.config.TrainConfig` (``clip_len``, ``stride``,
            ``crop_size``, ``views``, ``crops``, ``target_fps``, ``mode``, …) for frames and files;
            a comem checkpoint's own settings are the default.
    """
    torch_device = _device(device)
    if model is None and isinstance(checkpoint, (str, Path)):
        trained = load_trained(checkpoint, torch_device, weights=weights)
        config = _with(trained.config, settings)
        names = class_names or trained.class_names
        multi = trained.multi_label if multi_label is None else multi_label
        norm = normalization(mean, std) if mean and std else trained.model.normalization
        return Predictor(trained.model, config, names, multi, norm)
    state: dict[str, Any] = {}
    if isinstance(checkpoint, nn.Module):
        model = checkpoint
    else:
        path = Path(checkpoint)
        state = _read_weights(path)
        weight_dict = (
            checkpoint_weights(state, path, weights)[0] if isinstance(state.get("model"), dict) else state
        )
        try:
            model.load_state_dict(weight_dict)
        except RuntimeError as error:
            raise CheckpointError(
                f"{path}: does not fit the model ({' '.join(str(error).split())[:300]})"
            ) from None
    config = _with(config_from_state(state) if "config" in state else TrainConfig(), settings)
    model = model.to(torch_device).eval()
    names = class_names or [str(name) for name in state.get("class_names", [])]
    multi = bool(multi_label) if multi_label is not None else ("config" in state and is_multi_label(state))
    if not names:
        with torch.no_grad():  # the head's width, from one tiny clip
            names = [str(k) for k in range(_num_classes(model, config, torch_device))]
    norm = normalization(mean, std) if mean and std else getattr(model, "normalization", PYSLOWFAST)
    return Predictor(model, config, names, multi, norm)


def _with(config: TrainConfig, settings: dict[str, Any]) -> TrainConfig:
    unknown = sorted(set(settings) - set(config_fields()))
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(unknown)}; see comem.TrainConfig")
    values = {**config.__dict__, **settings}
    return TrainConfig(**values).validate()


def _num_classes(model: nn.Module, config: TrainConfig, device: torch.device) -> int:
    """The output width, from one clip of the size the model was wrapped on (else the config's)."""
    shape = getattr(model, "clip_shape", None) or (3, config.clip_len, config.crop_size, config.crop_size)
    clip = torch.zeros(1, 1, *shape, device=device)
    return int(model(clip).shape[-1])
