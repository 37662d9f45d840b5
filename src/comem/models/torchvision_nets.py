"""torchvision's video networks (built with ``weights=None``) re-cut into named stages.

The wrapped modules are torchvision's own, so a torchvision state dict loads into them:
``torchvision_keys`` records, for every parameter and buffer, its name in the torchvision model
(found by identity, not by a hand-kept table), and ``pretrained.py`` renames with it.

- R3D-18, MC3-18, R(2+1)D-18 and S3D: convolutional; stages output (B, C, T, H, W).
- Video Swin-T: torchvision runs it channels-last (B, T, H, W, C); each stage here takes and
  returns channels-first maps, so memories and heads see the same layout as for a CNN.
- MViTv2-S: tokens with a class token; stem..stage3 pass ``Tokens`` (memories after them are
  ``TokenMemory``), stage4 applies the final norm and returns the patch tokens as a map. The
  head therefore pools patch tokens instead of reading the class token (torchvision's head).
  The stem reads the token grid off the patchified clip (torchvision's forward assumes 16x224²),
  and torchvision interpolates the relative position tables, so any clip size runs.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torchvision.models import video as tv_video

from comem.models.layouts import Tokens
from comem.models.stages import VideoBackbone

HEAD_KEYS = {  # our head's key -> torchvision's key of the same classifier
    "resnet": {"head.fc.weight": "fc.weight", "head.fc.bias": "fc.bias"},
    "s3d": {"head.fc.weight": "classifier.1.weight", "head.fc.bias": "classifier.1.bias"},
    "swin": {"head.fc.weight": "head.weight", "head.fc.bias": "head.bias"},
    "mvit": {"head.fc.weight": "head.1.weight", "head.fc.bias": "head.1.bias"},
}


def _with_torchvision_keys(backbone: VideoBackbone, source: nn.Module, family: str) -> VideoBackbone:
    """Attach ``torchvision_keys``: torchvision key -> our model key (``backbone.…`` or ``head.…``)."""
    ours = {id(t): name for name, t in [*backbone.named_parameters(), *backbone.named_buffers()]}
    keys = {}
    for name, tensor in [*source.named_parameters(), *source.named_buffers()]:
        if id(tensor) in ours:
            keys[name] = f"backbone.{ours[id(tensor)]}"
    keys.update({theirs: mine for mine, theirs in HEAD_KEYS[family].items()})
    backbone.torchvision_keys.update(keys)
    return backbone


def _video_resnet(model: nn.Module) -> VideoBackbone:
    """stem, layer1..4 of a torchvision ``VideoResNet``; its avgpool/fc are dropped."""
    names = ["stem", "layer1", "layer2", "layer3", "layer4"]
    stages = OrderedDict((name, getattr(model, name)) for name in names)
    channels = {"stem": 64, "layer1": 64, "layer2": 128, "layer3": 256, "layer4": 512}
    return _with_torchvision_keys(VideoBackbone(stages, channels), model, "resnet")


def r3d_18() -> VideoBackbone:
    """torchvision R3D-18 (Tran et al., 2018), 3x3x3 convolutions throughout."""
    return _video_resnet(tv_video.r3d_18(weights=None))


def mc3_18() -> VideoBackbone:
    """torchvision MC3-18: 3D convolutions in the early layers, 2D in the late ones."""
    return _video_resnet(tv_video.mc3_18(weights=None))


def r2plus1d_18() -> VideoBackbone:
    """torchvision R(2+1)D-18: every 3D convolution factorised into spatial + temporal."""
    return _video_resnet(tv_video.r2plus1d_18(weights=None))


def s3d() -> VideoBackbone:
    """torchvision S3D (Xie et al., 2018): stem (to 192 ch), Mixed_3 (480), Mixed_4 (832), Mixed_5 (1024).

    Each Mixed stage starts with the max-pool that precedes it in torchvision.
    """
    model = tv_video.s3d(weights=None)
    cuts = {"stem": (0, 5), "mixed3": (5, 7), "mixed4": (7, 13), "mixed5": (13, 16)}
    stages = OrderedDict((name, nn.Sequential(*model.features[a:b])) for name, (a, b) in cuts.items())
    channels = {"stem": 192, "mixed3": 480, "mixed4": 832, "mixed5": 1024}
    return _with_torchvision_keys(VideoBackbone(stages, channels), model, "s3d")


class ChannelsFirst(nn.Module):
    """Run channels-last torchvision modules on a (B, C, T, H, W) map."""

    def __init__(self, *modules: nn.Module) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)


class SwinStem(nn.Module):
    """Patch embedding (2x4x4 patches) to a channels-first map."""

    def __init__(self, patch_embed: nn.Module, pos_drop: nn.Module) -> None:
        super().__init__()
        self.patch_embed = patch_embed
        self.pos_drop = pos_drop

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        return self.pos_drop(self.patch_embed(clip)).permute(0, 4, 1, 2, 3)


def swin3d_t() -> VideoBackbone:
    """torchvision Video Swin-T (Liu et al., 2022): stages of 2, 2, 6, 2 blocks at 96..768 channels;
    stage k>1 starts with torchvision's patch merging, stage4 ends with the final LayerNorm."""
    model = tv_video.swin3d_t(weights=None)
    f = model.features
    stages: OrderedDict[str, nn.Module] = OrderedDict(
        stem=SwinStem(model.patch_embed, model.pos_drop),
        stage1=ChannelsFirst(f[0]),
        stage2=ChannelsFirst(f[1], f[2]),
        stage3=ChannelsFirst(f[3], f[4]),
        stage4=ChannelsFirst(f[5], f[6], model.norm),
    )
    channels = {"stem": 96, "stage1": 96, "stage2": 192, "stage3": 384, "stage4": 768}
    return _with_torchvision_keys(VideoBackbone(stages, channels), model, "swin")


class MViTStem(nn.Module):
    """Patchify (3x7x7 conv, stride 2x4x4) and prepend the class token."""

    def __init__(self, conv_proj: nn.Module, pos_encoding: nn.Module) -> None:
        super().__init__()
        self.conv_proj = conv_proj
        self.pos_encoding = pos_encoding

    def forward(self, clip: torch.Tensor) -> Tokens:
        x = self.conv_proj(clip)
        thw = (x.shape[2], x.shape[3], x.shape[4])
        return Tokens(self.pos_encoding(x.flatten(2).transpose(1, 2)), thw)


class MViTStage(nn.Module):
    """A run of MViT blocks; with ``norm`` (the last stage) it returns the patch-token map."""

    def __init__(self, blocks: list[nn.Module], norm: nn.Module | None = None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.norm = norm

    def forward(self, features: Tokens) -> Tokens | torch.Tensor:
        x, thw = features
        for block in self.blocks:
            x, thw = block(x, thw)
        thw = (thw[0], thw[1], thw[2])
        if self.norm is None:
            return Tokens(x, thw)
        patches = self.norm(x)[:, 1:]
        return patches.transpose(1, 2).reshape(x.shape[0], x.shape[2], *thw)


def mvit_v2_s() -> VideoBackbone:
    """torchvision MViTv2-S (Li et al., 2022): 1, 2, 11, 2 blocks at 96, 192, 384, 768 channels."""
    model = tv_video.mvit_v2_s(weights=None)
    blocks = list(model.blocks)
    stages: OrderedDict[str, nn.Module] = OrderedDict(
        stem=MViTStem(model.conv_proj, model.pos_encoding),
        stage1=MViTStage(blocks[0:1]),
        stage2=MViTStage(blocks[1:3]),
        stage3=MViTStage(blocks[3:14]),
        stage4=MViTStage(blocks[14:16], model.norm),
    )
    channels = {"stem": 96, "stage1": 96, "stage2": 192, "stage3": 384, "stage4": 768}
    backbone = VideoBackbone(stages, channels, token_stages=("stem", "stage1", "stage2", "stage3"))
    return _with_torchvision_keys(backbone, model, "mvit")
