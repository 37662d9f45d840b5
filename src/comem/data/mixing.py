"""Mixup and CutMix of whole videos, on a collated batch on its device.

A video is mixed as one: every frame of every clip of video ``b`` is mixed with the same partner
video, with the same weight (mixup) or the same box (CutMix), so the collaborative memory built from
its clips sees one consistent video, and the soft target of the video holds for each of its clips.
As in timm's and PySlowFast's batch mode, one weight (and box) is drawn per batch and video ``b``'s
partner is video ``B - 1 - b`` of the batch (an odd batch leaves its middle video as it is); the
CutMix weight is the share of pixels outside the box after clipping the box to the frame.

Draws come from torch's default CPU generator, which the trainer checkpoints, so ``--resume``
replays the same mixes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class VideoMix:
    """One batch's mix: each video keeps ``weight`` of itself (its pixels for mixup, the pixels
    outside ``box`` for CutMix) and takes the rest from video ``partner[b]``.

    ``box`` is ``(top, bottom, left, right)``: rows ``top:bottom`` and columns ``left:right`` of
    every frame come from the partner; ``None`` for mixup.
    """

    partner: torch.Tensor  # (B,) long
    weight: float
    box: tuple[int, int, int, int] | None = None

    def videos(self, video: torch.Tensor) -> torch.Tensor:
        """The mixed batch: ``video`` (B, N, C, T, H, W) or (B, C, T, H, W), uint8 or float.

        Computed one clip at a time, so the float work space is one clip of the batch; uint8 input
        stays uint8 (mixup rounded to the nearest level, as timm's uint8 collate does)."""
        partner = self.partner.to(video.device)
        clips = video.unsqueeze(1) if video.ndim == 5 else video
        mixed = torch.empty_like(clips)
        for index in range(clips.shape[1]):
            own, other = clips[:, index], clips[partner, index]
            if self.box is not None:
                top, bottom, left, right = self.box
                clip = own.clone()
                clip[..., top:bottom, left:right] = other[..., top:bottom, left:right]
            else:
                clip = own.float() * self.weight + other.float() * (1.0 - self.weight)
                if not video.is_floating_point():
                    clip = clip.round_()
            mixed[:, index] = clip
        return mixed.squeeze(1) if video.ndim == 5 else mixed

    def targets(self, targets: torch.Tensor) -> torch.Tensor:
        """Soft targets (B, K), or per clip (B, N, K): ``weight`` of a video's own, the rest its partner's."""
        partner = self.partner.to(targets.device)
        return targets * self.weight + targets[partner] * (1.0 - self.weight)


@dataclass(frozen=True)
class VideoMixer:
    """Draws a :class:`VideoMix` per batch (see the module docstring).

    ``mixup_alpha`` / ``cutmix_alpha``: the Beta(a, a) the weight is drawn from (0: that kind is
    off); ``prob``: the chance a batch is mixed at all; ``switch_prob``: with both kinds on, the
    chance a mixed batch uses CutMix.
    """

    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    prob: float = 1.0
    switch_prob: float = 0.5

    @property
    def enabled(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    def draw(self, batch_size: int, height: int, width: int) -> VideoMix | None:
        """The mix of a batch of ``batch_size`` videos of ``height`` x ``width`` frames, or ``None``
        when this batch is not mixed (mixing off, or not drawn with ``prob``)."""
        if not self.enabled or float(torch.rand(())) >= self.prob:
            return None
        cutmix = self.cutmix_alpha > 0
        if cutmix and self.mixup_alpha > 0:
            cutmix = float(torch.rand(())) < self.switch_prob
        alpha = self.cutmix_alpha if cutmix else self.mixup_alpha
        concentration = torch.tensor(alpha, dtype=torch.float64)
        weight = float(torch.distributions.Beta(concentration, concentration).sample())
        partner = torch.arange(batch_size - 1, -1, -1)
        if not cutmix:
            return VideoMix(partner, weight)
        box = cutmix_box(height, width, weight)
        top, bottom, left, right = box
        return VideoMix(partner, 1.0 - (bottom - top) * (right - left) / (height * width), box)


def cutmix_box(height: int, width: int, weight: float) -> tuple[int, int, int, int]:
    """A box of about ``1 - weight`` of the frame's area (sides ``sqrt(1 - weight)`` of the frame's)
    centred at a uniformly drawn pixel and clipped to the frame: ``(top, bottom, left, right)``."""
    ratio = (1.0 - weight) ** 0.5
    half_h, half_w = int(height * ratio) // 2, int(width * ratio) // 2
    centre_y = int(torch.randint(height, ()))
    centre_x = int(torch.randint(width, ()))
    top, bottom = max(centre_y - half_h, 0), min(centre_y + half_h, height)
    left, right = max(centre_x - half_w, 0), min(centre_x + half_w, width)
    return top, bottom, left, right
