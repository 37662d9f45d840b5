"""X3D (Feichtenhofer, CVPR 2020, "X3D: Expanding Architectures for Efficient Video Recognition").

X3D-XS, -S and -M share one network (width factor 2, depth factor 2.2, bottleneck factor 2.25,
SE in every other block, swish inside the blocks); they differ only in the input they are trained
and tested on (4x160², 13x160², 16x224²). The network is fully convolutional, so one builder
serves all three; ``comem models`` shows each at its own input.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import nn

from comem.models.resnets import Bottleneck, ResBlock, ResStage, init_resnet_weights
from comem.models.stages import VideoBackbone


def round_width(width: float, multiplier: float, *, min_width: int = 8, divisor: int = 8) -> int:
    """X3D's channel rounding: scale, round to a multiple of ``divisor``, never lose over 10%."""
    width *= multiplier
    rounded = max(min_width, int(width + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * width:
        rounded += divisor
    return int(rounded)


class X3DStem(nn.Module):
    """Spatial 1x3x3 conv (stride 2) then depthwise temporal 5x1x1 conv, BN, ReLU."""

    def __init__(self, dim_out: int) -> None:
        super().__init__()
        self.conv_xy = nn.Conv3d(3, dim_out, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1), bias=False)
        self.conv_t = nn.Conv3d(dim_out, dim_out, (5, 1, 1), padding=(2, 0, 0), groups=dim_out, bias=False)
        self.norm = nn.BatchNorm3d(dim_out)
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.norm(self.conv_t(self.conv_xy(x))))


class X3DConv5(nn.Module):
    """The 1x1x1 expansion before pooling (X3D's conv5), kept in the backbone so memories and
    detection heads see its wide map."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(dim_in, dim_out, 1, bias=False)
        self.norm = nn.BatchNorm3d(dim_out)
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.norm(self.conv(x)))


def _x3d_stage(depth: int, dim_in: int, dim_inner: int, dim_out: int) -> ResStage:
    blocks = []
    for index in range(depth):
        stride = (1, 2, 2) if index == 0 else (1, 1, 1)
        block_in = dim_in if index == 0 else dim_out
        depthwise = nn.Conv3d(dim_inner, dim_inner, 3, stride=stride, padding=1, groups=dim_inner, bias=False)
        se_channels = round_width(dim_inner, 1 / 16) if index % 2 == 0 else 0
        branch2 = Bottleneck(block_in, dim_inner, dim_out, depthwise, se_channels=se_channels, swish=True)
        blocks.append(ResBlock(block_in, dim_out, stride, branch2))
    return ResStage(blocks)


def x3d(
    *, width_factor: float = 2.0, depth_factor: float = 2.2, bottleneck_factor: float = 2.25
) -> VideoBackbone:
    """X3D-XS/S/M (defaults); stages stem, res2..res5 (spatial stride 2 each), conv5."""
    stem_width = round_width(12, width_factor)
    stages: OrderedDict[str, nn.Module] = OrderedDict(stem=X3DStem(stem_width))
    channels: dict[str, int] = {"stem": stem_width}
    base, dim_in, dim_inner = 12, stem_width, 0
    for name, depth in zip(("res2", "res3", "res4", "res5"), (1, 2, 5, 3), strict=True):
        dim_out = round_width(base, width_factor)
        dim_inner = int(bottleneck_factor * dim_out)
        stages[name] = _x3d_stage(math.ceil(depth_factor * depth), dim_in, dim_inner, dim_out)
        channels[name] = dim_out
        base, dim_in = round_width(base, 2.0), dim_out
    stages["conv5"] = X3DConv5(dim_in, dim_inner)
    channels["conv5"] = dim_inner
    backbone = VideoBackbone(stages, channels, head_hidden=2048, family="x3d")
    init_resnet_weights(backbone)
    return backbone
