"""SlowFast-R50 (Feichtenhofer et al., ICCV 2019, "SlowFast Networks for Video Recognition").

Two pathways as one backbone whose stages take and return ``[slow, fast]``. The input is one clip
(B, 3, T, H, W) sampled at the fast rate; the stem builds the slow pathway by keeping every
``alpha``-th frame, so the data pipeline is that of any other backbone. After the stem and
res2..res4 a time-strided conv fuses the fast pathway into the slow one (lateral connection).
Each stage reports its channels per pathway, so ``VideoBackbone.memory_for`` gives it one memory
per pathway (``PathwayMemory``). The head pools both pathways and concatenates them.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from comem.models.resnets import STAGE_DEPTHS, ResNetStem, bottleneck_stage, init_resnet_weights
from comem.models.stages import VideoBackbone


class FuseFastToSlow(nn.Module):
    """Lateral connection: fast (C_f, T) -> conv 7x1x1, stride alpha -> (2·C_f, T / alpha), BN,
    ReLU, concatenated to the slow pathway's channels."""

    def __init__(self, fast_channels: int, alpha: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(
            fast_channels, 2 * fast_channels, (7, 1, 1), stride=(alpha, 1, 1), padding=(3, 0, 0), bias=False
        )
        self.norm = nn.BatchNorm3d(2 * fast_channels)
        self.activation = nn.ReLU(inplace=True)

    def forward(self, slow: torch.Tensor, fast: torch.Tensor) -> torch.Tensor:
        return torch.cat([slow, self.activation(self.norm(self.conv(fast)))], dim=1)


class TwoPathwayStage(nn.Module):
    """Run each pathway's stage, then the optional fast-to-slow fusion."""

    def __init__(self, slow: nn.Module, fast: nn.Module, fusion: FuseFastToSlow | None) -> None:
        super().__init__()
        self.pathways = nn.ModuleList([slow, fast])
        self.fusion = fusion

    def run(self, slow: torch.Tensor, fast: torch.Tensor) -> list[torch.Tensor]:
        slow, fast = self.pathways[0](slow), self.pathways[1](fast)
        if self.fusion is not None:
            slow = self.fusion(slow, fast)
        return [slow, fast]

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        return self.run(*features)


class SlowFastStem(TwoPathwayStage):
    """Takes the fast-rate clip (B, 3, T, H, W); the slow pathway sees frames 0, alpha, 2·alpha, …"""

    def __init__(self, slow: nn.Module, fast: nn.Module, fusion: FuseFastToSlow, alpha: int) -> None:
        super().__init__(slow, fast, fusion)
        self.alpha = alpha

    def forward(self, clip: torch.Tensor) -> list[torch.Tensor]:  # type: ignore[override]
        return self.run(clip[:, :, :: self.alpha], clip)


def _spatial_conv(channels: int, stride: tuple[int, int, int]) -> nn.Conv3d:
    return nn.Conv3d(channels, channels, (1, 3, 3), stride=stride, padding=(0, 1, 1), bias=False)


def slowfast_r50(*, alpha: int = 4, beta_inv: int = 8) -> VideoBackbone:
    """SlowFast-R50 8x8 (alpha = 4 frames of fast per slow frame, fast width = slow width / 8).

    Temporal kernels: slow 1x1x1 in res2-res3 and 3x1x1 in res4-res5 (no temporal convs early,
    as in the paper), fast 3x1x1 everywhere; no temporal striding after the input.
    """
    slow_stem = ResNetStem(64, (1, 7, 7), (1, 2, 2), pool=True)
    fast_stem = ResNetStem(64 // beta_inv, (5, 7, 7), (1, 2, 2), pool=True)
    stages: OrderedDict[str, nn.Module] = OrderedDict(
        stem=SlowFastStem(slow_stem, fast_stem, FuseFastToSlow(64 // beta_inv, alpha), alpha)
    )
    lateral = 2  # each fusion adds twice the fast width to the slow pathway
    channels: dict[str, tuple[int, int]] = {"stem": (64 + lateral * 64 // beta_inv, 64 // beta_inv)}
    slow_kernels = [(1, 1, 1), (1, 1, 1), (3, 1, 1), (3, 1, 1)]
    for index, name in enumerate(("res2", "res3", "res4", "res5")):
        dim_out = 256 * 2**index
        slow_in, fast_in = channels[list(channels)[-1]]
        stride = (1, 1, 1) if index == 0 else (1, 2, 2)
        depth = STAGE_DEPTHS[50][index]
        slow = bottleneck_stage(
            depth, slow_in, dim_out // 4, dim_out, stride, _spatial_conv, a_kernel=slow_kernels[index]
        )
        fast_out = dim_out // beta_inv
        fast = bottleneck_stage(
            depth, fast_in, fast_out // 4, fast_out, stride, _spatial_conv, a_kernel=(3, 1, 1)
        )
        last = name == "res5"
        stages[name] = TwoPathwayStage(slow, fast, None if last else FuseFastToSlow(fast_out, alpha))
        channels[name] = (dim_out + (0 if last else lateral * fast_out), fast_out)
    backbone = VideoBackbone(stages, channels, family="slowfast")
    init_resnet_weights(backbone)
    return backbone
