"""``VideoBackbone``: a video network as an ordered list of named stages, so that memory modules
can be hooked after any of them.

A stage maps the previous stage's output to its own. For most networks that is a
(B, C, T, H, W) map. Two-pathway networks (SlowFast) pass a list ``[slow, fast]`` of such maps
and declare a channel count per pathway; token networks (MViT) pass ``Tokens`` between blocks.
``memory_for`` builds the memory module that fits a stage's output.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from comem.models.layouts import Layout, MemoryOptions, memory_for
from comem.models.normalization import PYSLOWFAST, Normalization

Channels = int | tuple[int, ...]


class VideoBackbone(nn.Module):
    """A video network split into named stages; input (B, 3, T, H, W).

    Args:
        stages: stem to last stage, in order.
        channels: output channels of each stage; a tuple (one per pathway) for multi-pathway nets.
        head_hidden: width of a hidden layer the classification head puts between pooling and
            the classifier (X3D's 2048-d projection), or None for a linear head.
        token_stages: stages whose output is ``Tokens`` rather than a map.
        family: the module-naming family (``resnet``, ``x3d``, ``slowfast``), which tells
            ``pretrained.py`` how PySlowFast's and PyTorchVideo's checkpoints name its tensors.
    """

    def __init__(
        self,
        stages: OrderedDict[str, nn.Module],
        channels: dict[str, Channels],
        *,
        head_hidden: int | None = None,
        token_stages: tuple[str, ...] = (),
        family: str = "",
    ) -> None:
        super().__init__()
        self.stages = nn.ModuleDict(stages)
        self.channels = dict(channels)
        self.head_hidden = head_hidden
        self.token_stages = tuple(token_stages)
        self.family = family
        self.name = type(self).__name__  # build_backbone sets the registered name
        # the input normalisation of the weights it is usually loaded with (build_backbone sets it)
        self.normalization: Normalization = PYSLOWFAST
        # torchvision state-dict key -> our model key, for backbones built from torchvision models
        self.torchvision_keys: dict[str, str] = {}

    @property
    def stage_names(self) -> list[str]:
        return list(self.stages.keys())

    @property
    def out_channels(self) -> int:
        """Channels of the head's input: the last stage's, summed over pathways (SlowFast's
        head concatenates the pooled pathways)."""
        last = self.channels[self.stage_names[-1]]
        return sum(last) if isinstance(last, tuple) else last

    def layout(self, stage: str) -> Layout:
        """How ``stage``'s output holds its channels (``comem.models.layouts``)."""
        if isinstance(self.channels[stage], tuple):
            return "pathways"
        return "tokens_cls" if stage in self.token_stages else "channels_first"

    def memory_for(self, stage: str, options: MemoryOptions) -> nn.Module:
        """A collaborative memory shaped for ``stage``'s output."""
        return memory_for(self.layout(stage), self.channels[stage], options)

    def forward(self, clips: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        features: Any = clips
        for stage in self.stages.values():
            features = stage(features)
        return features
