"""The backbones comem builds by name, each with the clip size it is usually run at.

Every builder is keyword-only and returns a ``VideoBackbone`` (``stages.py``): ``stages`` (an
ordered ``nn.ModuleDict`` from stem to last stage) and ``channels`` (output channels of each
stage). The classification head is not part of the backbone (see ``heads.py``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torchvision.models import video as tv_video

from comem.errors import UserError
from comem.models import resnets, slowfast, torchvision_nets, x3d
from comem.models.normalization import PYSLOWFAST, Normalization
from comem.models.normalization import VMZ as VMZ_NORMALIZATION
from comem.models.stages import VideoBackbone


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


@dataclass(frozen=True)
class Published:
    """A published compute figure: GFLOPs (multiply-accumulates) of one clip of ``frames`` x
    ``size`` x ``size`` through the whole model with a 400-class head.

    ``norm_flops``: FLOPs the source charged per normalised element (5 where it ran fvcore on a
    train-mode model; 0 in torchvision's convention, ours), see ``flops.py``.
    """

    gflops: float
    params_m: float
    frames: int
    size: int
    source: str
    norm_flops: int = 0


@dataclass(frozen=True)
class BackboneEntry:
    """``normalization``: the input normalisation of the weights the network is usually loaded with
    (a model trained from scratch uses it too); ``torchvision_weights``: torchvision's weights enum
    for the networks it publishes (``--pretrained torchvision``)."""

    build: Callable[..., VideoBackbone]
    frames: int  # the clip the network is usually run at (train recipe), for FLOPs
    size: int
    summary: str
    published: Published | None = None
    normalization: Normalization = PYSLOWFAST
    torchvision_weights: Any = None


def torchvision_normalization(weights: Any) -> Normalization:
    """The mean/std of torchvision's own transforms for ``weights`` (a weights enum class)."""
    transforms = weights.DEFAULT.transforms()
    return Normalization(tuple(transforms.mean), tuple(transforms.std))


def _torchvision(weights: type, frames: int, size: int) -> Published:
    """torchvision's own figures, read from its weights enum (importing it downloads nothing).
    They are for 16-frame clips at the crop size of the weights' transforms."""
    meta = weights.DEFAULT.meta
    return Published(meta["_ops"], meta["num_params"] / 1e6, frames, size, "torchvision weights meta")


# PyTorchVideo's model zoo table; its figures are for the 256² test crop.
PTV = "PyTorchVideo model zoo"
# VMZ's README lists 32x224x224 for these figures, but they are exactly our count at 32x256².
VMZ = "VMZ README"
X3D = "X3D paper / PySlowFast model zoo"
BACKBONES: dict[str, BackboneEntry] = {
    "tiny": BackboneEntry(tiny_resnet3d, 8, 64, "1-block-per-stage 3D ResNet for CPU experiments"),
    "r3d_18": BackboneEntry(
        torchvision_nets.r3d_18,
        16,
        112,
        "torchvision R3D-18",
        _torchvision(tv_video.R3D_18_Weights, 16, 112),
        torchvision_normalization(tv_video.R3D_18_Weights),
        tv_video.R3D_18_Weights,
    ),
    "mc3_18": BackboneEntry(
        torchvision_nets.mc3_18,
        16,
        112,
        "torchvision MC3-18",
        _torchvision(tv_video.MC3_18_Weights, 16, 112),
        torchvision_normalization(tv_video.MC3_18_Weights),
        tv_video.MC3_18_Weights,
    ),
    "r2plus1d_18": BackboneEntry(
        torchvision_nets.r2plus1d_18,
        16,
        112,
        "torchvision R(2+1)D-18",
        _torchvision(tv_video.R2Plus1D_18_Weights, 16, 112),
        torchvision_normalization(tv_video.R2Plus1D_18_Weights),
        tv_video.R2Plus1D_18_Weights,
    ),
    "s3d": BackboneEntry(
        torchvision_nets.s3d,
        16,
        224,
        "torchvision S3D",
        _torchvision(tv_video.S3D_Weights, 16, 224),
        torchvision_normalization(tv_video.S3D_Weights),
        tv_video.S3D_Weights,
    ),
    "mvit_v2_s": BackboneEntry(
        torchvision_nets.mvit_v2_s,
        16,
        224,
        "torchvision MViTv2-S (head pools patch tokens)",
        _torchvision(tv_video.MViT_V2_S_Weights, 16, 224),
        torchvision_normalization(tv_video.MViT_V2_S_Weights),
        tv_video.MViT_V2_S_Weights,
    ),
    "swin3d_t": BackboneEntry(
        torchvision_nets.swin3d_t,
        16,
        224,
        "torchvision Video Swin-T",
        _torchvision(tv_video.Swin3D_T_Weights, 16, 224),
        torchvision_normalization(tv_video.Swin3D_T_Weights),
        tv_video.Swin3D_T_Weights,
    ),
    "r2plus1d_50": BackboneEntry(
        resnets.r2plus1d_50,
        16,
        224,
        "R(2+1)D-50 bottleneck (PyTorchVideo r2plus1d_r50)",
        Published(76.45, 28.11, 16, 256, PTV, norm_flops=5),
    ),
    "ir_csn_101": BackboneEntry(
        resnets.ir_csn_101,
        32,
        224,
        "ir-CSN-101 (PyTorchVideo csn_r101)",
        Published(75.62, 22.21, 32, 256, PTV, norm_flops=5),
    ),
    "ir_csn_152": BackboneEntry(
        resnets.ir_csn_152,
        32,
        224,
        "ir-CSN-152 (Tran et al. 2019)",
        Published(96.7, 29.6, 32, 256, VMZ),
        normalization=VMZ_NORMALIZATION,
    ),
    "ip_csn_152": BackboneEntry(
        resnets.ip_csn_152,
        32,
        224,
        "ip-CSN-152 (Tran et al. 2019)",
        Published(108.8, 32.8, 32, 256, VMZ),
        normalization=VMZ_NORMALIZATION,
    ),
    "slowfast_r50": BackboneEntry(
        slowfast.slowfast_r50,
        32,
        224,
        "SlowFast-R50 8x8 (fast-rate input, alpha 4)",
        Published(65.71, 34.57, 32, 256, PTV),
    ),
    "x3d_s": BackboneEntry(
        x3d.x3d,
        13,
        160,
        "X3D-S (same net as X3D-M; smaller input)",
        Published(1.96, 3.8, 13, 160, X3D),
    ),
    "x3d_m": BackboneEntry(x3d.x3d, 16, 224, "X3D-M", Published(4.73, 3.8, 16, 224, X3D)),
}


class UnknownBackboneError(UserError, ValueError):
    """A backbone name comem does not know."""


def build_backbone(name: str) -> VideoBackbone:
    if name not in BACKBONES:
        raise UnknownBackboneError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    entry = BACKBONES[name]
    backbone = entry.build()
    backbone.name = name
    backbone.normalization = entry.normalization
    return backbone
