"""Backbone + collaborative memory after chosen stages + per-clip head, and the ways to run it.

``VideoModel`` offers three forward paths, one per need:

- ``forward(video)``: all N clips of each video in one graph (joint training, inference).
- ``memory_bank(video)``: the two-pass scheme's first pass; summaries of every clip at every
  memory stage, built clip by clip under ``no_grad`` so peak memory is that of one clip, at the
  cost of one forward pass.
- ``forward_clip(clip, i, banks)``: the second pass for clip i, reading the banks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from comem.errors import UserError
from comem.memory import CollaborativeMemory
from comem.models.backbones import VideoBackbone, build_backbone
from comem.models.heads import ClipHead


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model (stored in checkpoints)."""

    backbone: str = "tiny"
    num_classes: int = 400
    memory_stages: tuple[str, ...] = ("last-2", "last-1", "last")
    memory: str = "attention"
    fusion: str = "gate"
    key_dim: int | None = None
    dropout: float = 0.5


class VideoModel(nn.Module):
    """A video classifier whose clips share a collaborative memory.

    Input videos are (B, N, C, T, H, W); logits are per clip, (B, N, num_classes).
    """

    def __init__(
        self,
        backbone: VideoBackbone,
        num_classes: int,
        *,
        memory_stages: Sequence[str] = ("last-2", "last-1", "last"),
        memory: str = "attention",
        fusion: str = "gate",
        key_dim: int | None = None,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        names = backbone.stage_names
        aliases = {"last": names[-1], **{f"last-{k}": names[-1 - k] for k in range(1, len(names))}}
        resolved = [aliases.get(stage, stage) for stage in memory_stages]
        unknown = [stage for stage in resolved if stage not in names]
        if unknown:
            raise ValueError(f"unknown memory stage(s) {unknown}; the backbone's stages are {names}")
        self.memories = nn.ModuleDict(
            {
                stage: CollaborativeMemory(
                    backbone.channels[stage], key_dim=key_dim, memory=memory, fusion=fusion
                )
                for stage in names
                if stage in resolved
            }
        )
        self.head = ClipHead(backbone.out_channels, num_classes, dropout=dropout)

    @property
    def memory_stage_names(self) -> list[str]:
        return list(self.memories.keys())

    def forward(self, video: torch.Tensor, *, share_memory: bool = True) -> torch.Tensor:
        """Logits (B, N, K) for video (B, N, C, T, H, W).

        ``share_memory=False`` gives every clip a memory of itself alone (the single-clip baseline
        evaluated over several views).
        """
        batch, num_clips = video.shape[:2]
        return self.head(self.features(video, share_memory=share_memory)).view(batch, num_clips, -1)

    def features(self, video: torch.Tensor, *, share_memory: bool = True) -> torch.Tensor:
        """Last-stage feature maps (B·N, C, T, H, W), video-major, of all clips in one graph.

        The input to the head; task heads other than clip classification (e.g. RoI pooling for
        detection) start here.
        """
        num_clips = video.shape[1]
        group = num_clips if share_memory else 1
        features = video.flatten(0, 1)
        for name, stage in self.backbone.stages.items():
            features = stage(features)
            if name in self.memories:
                features = self.memories[name](features, group)
        return features

    @torch.no_grad()
    def memory_bank(self, video: torch.Tensor, *, chunk: int = 1) -> dict[str, torch.Tensor]:
        """Summaries (B, N, C) of every clip at every memory stage, without gradients.

        A later stage's bank needs the earlier stages' gating, which needs the earlier banks of all
        clips, so the banks are built stage by stage. Each clip's raw output at the latest memory
        stage is kept (a few MB per clip, far smaller than the activations of a training pass) and
        the next bank continues from it, so every backbone stage runs once per clip: the whole
        pass costs one forward, whatever the number of memory stages. The kept maps are freed on
        return, before the gradient pass allocates its activations.

        ``chunk`` clips of each video run per forward (all B videos together). ``chunk=1`` gives
        BatchNorm the same batches as the per-clip second pass; larger chunks fill a GPU better
        (in train-mode BatchNorm they normalise over B·chunk clips instead of B).
        """
        batch, num_clips = video.shape[:2]
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        names = self.backbone.stage_names
        spans = [slice(start, min(start + chunk, num_clips)) for start in range(0, num_clips, chunk)]
        carried: list[torch.Tensor | None] = [None] * len(spans)  # raw maps at the last bank's stage
        banks: dict[str, torch.Tensor] = {}
        begin, previous = 0, None
        for target in self.memory_stage_names:
            end = names.index(target) + 1
            summaries = []
            for position, span in enumerate(spans):
                if previous is None:
                    features = video[:, span].flatten(0, 1)
                else:
                    bank = banks[previous]
                    clip_memory = self.memories[previous].read(bank[:, span], bank).flatten(0, 1)
                    features = self.memories[previous].fuse(carried[position], clip_memory)
                for name in names[begin:end]:
                    features = self.backbone.stages[name](features)
                carried[position] = features
                summaries.append(
                    CollaborativeMemory.summarize(features).float().view(batch, -1, features.shape[1])
                )
            banks[target] = torch.cat(summaries, dim=1)
            begin, previous = end, target
        return banks

    def forward_clip(
        self, clip: torch.Tensor, clip_index: int, banks: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """Logits (B, K) of clip ``clip_index`` (B, C, T, H, W) of each video, reading ``banks``."""
        return self.head(self.clip_features(clip, clip_index, banks))

    def clip_features(
        self, clip: torch.Tensor, clip_index: int, banks: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """Last-stage feature map of clip ``clip_index`` gated by its clip-specific memories."""
        features = clip
        for name, stage in self.backbone.stages.items():
            features = stage(features)
            if name in self.memories:
                features = self.memories[name].forward_one(features, banks[name], clip_index)
        return features


def build_model(spec: ModelSpec) -> VideoModel:
    return VideoModel(
        build_backbone(spec.backbone),
        spec.num_classes,
        memory_stages=spec.memory_stages,
        memory=spec.memory,
        fusion=spec.fusion,
        key_dim=spec.key_dim,
        dropout=spec.dropout,
    )


class PretrainedLoadError(UserError, RuntimeError):
    """A pretrained checkpoint that does not fit the backbone (message names the file)."""


def load_pretrained(model: VideoModel, path: str | Path, *, strict: bool = True) -> list[str]:
    """Load backbone weights from a local torchvision-style state dict (or a PySlowFast
    ``{"model_state": …}`` checkpoint whose keys match torchvision's).

    Classifier weights (``fc.*``) are ignored: the head is trained for the new classes. Memory
    modules start at identity, so the loaded model predicts as the plain backbone would.
    Returns the backbone keys that were missing from the file (empty when ``strict``).
    """
    path = Path(path)
    if not path.is_file():
        raise PretrainedLoadError(f"{path}: pretrained weights file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a bad file; report it in one line
        raise PretrainedLoadError(f"{path}: cannot read weights ({type(error).__name__}: {error})") from None
    for wrapper in ("model_state", "state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise PretrainedLoadError(f"{path}: expected a state dict, got {type(state).__name__}")
    stage_names = set(model.backbone.stage_names)
    backbone_state = {
        f"stages.{key}": value for key, value in state.items() if key.split(".", 1)[0] in stage_names
    }
    try:
        result = model.backbone.load_state_dict(backbone_state, strict=False)
    except RuntimeError as error:  # shape mismatches are raised even when strict=False
        detail = " ".join(str(error).split())[:300]
        raise PretrainedLoadError(
            f"{path}: does not fit backbone {type(model.backbone).__name__}: {detail}"
        ) from None
    unexpected = [key for key in state if key.split(".", 1)[0] not in stage_names | {"fc", "avgpool"}]
    if strict and (result.missing_keys or result.unexpected_keys or unexpected):
        missing = ", ".join(result.missing_keys[:5])
        extra = ", ".join((result.unexpected_keys + unexpected)[:5])
        raise PretrainedLoadError(
            f"{path}: does not match the backbone ({len(result.missing_keys)} missing keys [{missing}], "
            f"{len(result.unexpected_keys) + len(unexpected)} unexpected [{extra}])"
        )
    return list(result.missing_keys)
