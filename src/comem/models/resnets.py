"""Bottleneck video ResNets: R(2+1)D-50 and channel-separated networks (ir-/ip-CSN).

Written from the papers and PyTorchVideo's documented architectures (Tran et al. 2018, "A Closer
Look at Spatiotemporal Convolutions"; Tran et al. 2019, "Video Classification with
Channel-Separated Convolutional Networks"). Module names follow PyTorchVideo's (``conv_a``,
``norm_a``, ``branch1_conv``, ``res_blocks``) so that its checkpoints and PySlowFast's map onto
ours with a short table of renames (``pretrained.py``).

A bottleneck is 1x1x1 (reduce) -> ``conv_b`` (the spatiotemporal part, which is what the
architectures differ in) -> 1x1x1 (expand), with a projected shortcut where shape changes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn

from comem.models.stages import VideoBackbone

Triple = tuple[int, int, int]
ConvB = Callable[[int, Triple], nn.Module]  # (dim_inner, stride) -> the block's spatiotemporal conv


class ResNetStem(nn.Module):
    """conv -> BN -> ReLU -> optional max-pool."""

    def __init__(self, dim_out: int, kernel: Triple, stride: Triple, *, pool: bool, dim_in: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv3d(
            dim_in, dim_out, kernel, stride=stride, padding=tuple(k // 2 for k in kernel), bias=False
        )
        self.norm = nn.BatchNorm3d(dim_out)
        self.activation = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)) if pool else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.activation(self.norm(self.conv(x)))
        return self.pool(x) if self.pool is not None else x


class SqueezeExcite(nn.Module):
    """Channel attention from the globally pooled map (X3D's SE)."""

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv3d(channels, reduced, 1)
        self.fc2 = nn.Conv3d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.mean(dim=(2, 3, 4), keepdim=True)
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(scale))))


class Bottleneck(nn.Module):
    """conv_a (Tx1x1 or 1x1x1) -> conv_b (given) -> [SE] -> conv_c 1x1x1; BN after each."""

    def __init__(
        self,
        dim_in: int,
        dim_inner: int,
        dim_out: int,
        conv_b: nn.Module,
        *,
        a_kernel: Triple = (1, 1, 1),
        se_channels: int = 0,
        swish: bool = False,
    ) -> None:
        super().__init__()
        self.conv_a = nn.Conv3d(
            dim_in, dim_inner, a_kernel, padding=tuple(k // 2 for k in a_kernel), bias=False
        )
        self.norm_a = nn.BatchNorm3d(dim_inner)
        self.act_a = nn.ReLU(inplace=True)
        self.conv_b = conv_b
        self.norm_b = nn.BatchNorm3d(dim_inner)
        self.se = SqueezeExcite(dim_inner, se_channels) if se_channels else None
        self.act_b: nn.Module = nn.SiLU() if swish else nn.ReLU(inplace=True)
        self.conv_c = nn.Conv3d(dim_inner, dim_out, 1, bias=False)
        self.norm_c = nn.BatchNorm3d(dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act_a(self.norm_a(self.conv_a(x)))
        x = self.norm_b(self.conv_b(x))
        if self.se is not None:
            x = self.se(x)
        return self.norm_c(self.conv_c(self.act_b(x)))


class ResBlock(nn.Module):
    """relu(branch2(x) + shortcut(x)); the shortcut is a strided 1x1x1 conv + BN where shapes change."""

    def __init__(self, dim_in: int, dim_out: int, stride: Triple, branch2: nn.Module) -> None:
        super().__init__()
        project = dim_in != dim_out or stride != (1, 1, 1)
        self.branch1_conv = nn.Conv3d(dim_in, dim_out, 1, stride=stride, bias=False) if project else None
        self.branch1_norm = nn.BatchNorm3d(dim_out) if project else None
        self.branch2 = branch2
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        if self.branch1_conv is not None:
            shortcut = self.branch1_conv(x)
            if self.branch1_norm is not None:
                shortcut = self.branch1_norm(shortcut)
        return self.activation(self.branch2(x) + shortcut)


class ResStage(nn.Module):
    def __init__(self, blocks: list[nn.Module]) -> None:
        super().__init__()
        self.res_blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.res_blocks:
            x = block(x)
        return x


def bottleneck_stage(
    depth: int,
    dim_in: int,
    dim_inner: int,
    dim_out: int,
    stride: Triple,
    conv_b: ConvB,
    *,
    a_kernel: Triple = (1, 1, 1),
) -> ResStage:
    """``depth`` bottleneck blocks; the first one strides (in ``conv_b``) and changes width."""
    blocks = []
    for index in range(depth):
        block_stride = stride if index == 0 else (1, 1, 1)
        block_in = dim_in if index == 0 else dim_out
        branch2 = Bottleneck(block_in, dim_inner, dim_out, conv_b(dim_inner, block_stride), a_kernel=a_kernel)
        blocks.append(ResBlock(block_in, dim_out, block_stride, branch2))
    return ResStage(blocks)


def init_resnet_weights(backbone: nn.Module) -> None:
    """He init for convs; the last BN of every residual branch at zero, so each block starts as
    its shortcut (PySlowFast's ``ZERO_INIT_FINAL_BN``), which keeps deep nets trainable."""
    for module in backbone.modules():
        if isinstance(module, nn.Conv3d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    for module in backbone.modules():
        if isinstance(module, Bottleneck):
            nn.init.zeros_(module.norm_c.weight)


STAGE_DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
STAGE_NAMES = ("res2", "res3", "res4", "res5")


def _bottleneck_resnet(depth: int, stem: ResNetStem, strides: list[Triple], conv_b: ConvB) -> VideoBackbone:
    """Stem, then res2..res5 at widths 256, 512, 1024, 2048 (inner width a quarter of that)."""
    stages: OrderedDict[str, nn.Module] = OrderedDict(stem=stem)
    channels = {"stem": 64}
    dim_in = 64
    for name, blocks, stride, dim_out in zip(
        STAGE_NAMES, STAGE_DEPTHS[depth], strides, (256, 512, 1024, 2048), strict=True
    ):
        stages[name] = bottleneck_stage(blocks, dim_in, dim_out // 4, dim_out, stride, conv_b)
        channels[name] = dim_out
        dim_in = dim_out
    backbone = VideoBackbone(stages, channels, family="resnet")
    init_resnet_weights(backbone)
    return backbone


class Conv2Plus1d(nn.Module):
    """A 3x3x3 convolution factorised as temporal 3x1x1 -> BN -> ReLU -> spatial 1x3x3.

    PyTorchVideo's R(2+1)D-50 order and width (the intermediate width equals the output width,
    not the parameter-matching width of the R(2+1)D-18 paper's basic blocks).
    """

    def __init__(self, channels: int, stride: Triple) -> None:
        super().__init__()
        self.conv_t = nn.Conv3d(
            channels, channels, (3, 1, 1), stride=(stride[0], 1, 1), padding=(1, 0, 0), bias=False
        )
        self.norm = nn.BatchNorm3d(channels)
        self.activation = nn.ReLU(inplace=True)
        self.conv_xy = nn.Conv3d(
            channels, channels, (1, 3, 3), stride=(1, stride[1], stride[2]), padding=(0, 1, 1), bias=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_xy(self.activation(self.norm(self.conv_t(x))))


def r2plus1d_50() -> VideoBackbone:
    """R(2+1)D-50 (PyTorchVideo ``r2plus1d_r50``, 16x4 Kinetics recipe): 1x7x7 stem without pool,
    spatial stride 2 in every stage and temporal stride 2 in res4 and res5."""
    stem = ResNetStem(64, (1, 7, 7), (1, 2, 2), pool=False)
    strides = [(1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2)]
    return _bottleneck_resnet(50, stem, strides, Conv2Plus1d)


def _depthwise(channels: int, stride: Triple) -> nn.Conv3d:
    return nn.Conv3d(channels, channels, 3, stride=stride, padding=1, groups=channels, bias=False)


class InteractionPreserved(nn.Module):
    """ip-CSN's conv_b: a 1x1x1 channel-interaction conv and BN before the 3x3x3 depthwise conv."""

    def __init__(self, channels: int, stride: Triple) -> None:
        super().__init__()
        self.pointwise = nn.Conv3d(channels, channels, 1, bias=False)
        self.norm = nn.BatchNorm3d(channels)
        self.depthwise = _depthwise(channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.depthwise(self.norm(self.pointwise(x)))


_CSN_STRIDES: list[Triple] = [(1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2)]


def _csn_stem() -> ResNetStem:
    return ResNetStem(64, (3, 7, 7), (1, 2, 2), pool=True)


def ir_csn_152() -> VideoBackbone:
    """Interaction-reduced CSN-152: every 3x3x3 conv of ResNet-152 depthwise (32x2 recipe)."""
    return _bottleneck_resnet(152, _csn_stem(), _CSN_STRIDES, _depthwise)


def ip_csn_152() -> VideoBackbone:
    """Interaction-preserved CSN-152: every 3x3x3 conv replaced by 1x1x1 + 3x3x3 depthwise."""
    return _bottleneck_resnet(152, _csn_stem(), _CSN_STRIDES, InteractionPreserved)


def ir_csn_101() -> VideoBackbone:
    """ir-CSN-101, PyTorchVideo's ``csn_r101`` (the CSN with a published PyTorch checkpoint)."""
    return _bottleneck_resnet(101, _csn_stem(), _CSN_STRIDES, _depthwise)
