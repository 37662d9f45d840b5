"""Video backbones as an ordered list of named stages, so memory modules can be hooked after any.

Every builder is keyword-only and returns a ``VideoBackbone``: ``stages`` (an ordered
``nn.ModuleDict`` from stem to last stage) and ``channels`` (output channels of each stage).
The classification head is not part of the backbone (see ``heads.py``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn
from torchvision.models import video as tv_video


class VideoBackbone(nn.Module):
    """A 3D CNN split into named stages; input (B, 3, T, H, W), output (B, C, T', H', W')."""

    def __init__(self, stages: OrderedDict[str, nn.Module], channels: dict[str, int]) -> None:
        super().__init__()
        self.stages = nn.ModuleDict(stages)
        self.channels = dict(channels)

    @property
    def stage_names(self) -> list[str]:
        return list(self.stages.keys())

    @property
    def out_channels(self) -> int:
        return self.channels[self.stage_names[-1]]

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        for stage in self.stages.values():
            clips = stage(clips)
        return clips


class BasicBlock3d(nn.Module):
    """The 3x3x3 residual block of a 3D ResNet (Hara et al.), with an optional strided shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: tuple[int, int, int]) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm3d(out_channels)
        self.conv2 = nn.Conv3d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != (1, 1, 1) or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv3d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm3d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


def tiny_resnet3d(*, width: int = 16) -> VideoBackbone:
    """A small 3D ResNet (one basic block per stage, ~1 M parameters) that trains on a CPU in minutes.

    Spatial stride 32, temporal stride 4: a 8x64x64 clip ends as a 2x2x2 map of ``8 * width`` channels.
    """
    widths = [width, width, 2 * width, 4 * width, 8 * width]
    stem = nn.Sequential(
        nn.Conv3d(3, widths[0], (3, 5, 5), stride=(1, 2, 2), padding=(1, 2, 2), bias=False),
        nn.BatchNorm3d(widths[0]),
        nn.ReLU(inplace=True),
        nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
    )
    strides = [(1, 1, 1), (2, 2, 2), (2, 2, 2), (1, 2, 2)]
    stages: OrderedDict[str, nn.Module] = OrderedDict(stem=stem)
    for index, stride in enumerate(strides, start=1):
        stages[f"layer{index}"] = BasicBlock3d(widths[index - 1], widths[index], stride)
    backbone = VideoBackbone(stages, dict(zip(stages, widths, strict=True)))
    for module in backbone.modules():
        if isinstance(module, nn.Conv3d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    for block in backbone.modules():
        if isinstance(block, BasicBlock3d):
            nn.init.zeros_(block.bn2.weight)
    return backbone


def _from_torchvision(model: nn.Module) -> VideoBackbone:
    """Wrap a torchvision ``VideoResNet`` (stem, layer1..4) as stages; its avgpool/fc are dropped.

    Parameter names become ``stages.<name>.…``, so a torchvision state dict loads after prefixing
    its keys (see ``build.load_pretrained``).
    """
    names = ["stem", "layer1", "layer2", "layer3", "layer4"]
    stages = OrderedDict((name, getattr(model, name)) for name in names)
    channels = {"stem": 64, "layer1": 64, "layer2": 128, "layer3": 256, "layer4": 512}
    return VideoBackbone(stages, channels)


def r3d_18() -> VideoBackbone:
    """torchvision R3D-18 (Tran et al., 2018), 3x3x3 convolutions throughout."""
    return _from_torchvision(tv_video.r3d_18(weights=None))


def mc3_18() -> VideoBackbone:
    """torchvision MC3-18: 3D convolutions in the early layers, 2D in the late ones."""
    return _from_torchvision(tv_video.mc3_18(weights=None))


def r2plus1d_18() -> VideoBackbone:
    """torchvision R(2+1)D-18: every 3D convolution factorised into spatial + temporal."""
    return _from_torchvision(tv_video.r2plus1d_18(weights=None))


BACKBONES: dict[str, Callable[[], VideoBackbone]] = {
    "tiny": tiny_resnet3d,
    "r3d_18": r3d_18,
    "mc3_18": mc3_18,
    "r2plus1d_18": r2plus1d_18,
}


def build_backbone(name: str) -> VideoBackbone:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    return BACKBONES[name]()
