"""Person-box action detection on the keyframe clip's memory-gated features.

The keyframe clip (clip 0 of each item) runs through the backbone with its collaborative memory
built from all N clips of the item (the keyframe clip and the memory clips of its movie); its
last-stage map is averaged over time, each person box is pooled with RoIAlign, max-pooled over
the RoI, and classified per class with a sigmoid (multi-label, BCE), as PySlowFast's AVA head.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import roi_align

from comem.models.build import VideoModel
from comem.models.normalization import Normalization

Features = torch.Tensor | list[torch.Tensor]  # a map, or one per pathway (SlowFast: [slow, fast])


def temporal_pool(features: Features) -> torch.Tensor:
    """(B, C, T, H, W) -> (B, C, H, W) by the mean over T; pathways of a two-pathway net are pooled
    each and concatenated along channels (they share H, W)."""
    if isinstance(features, (list, tuple)):
        return torch.cat([pathway.mean(dim=2) for pathway in features], dim=1)
    return features.mean(dim=2)


def keyframe_clip(features: Features, batch: int, num_clips: int) -> Features:
    """Clip 0 of each item from video-major (B·N, …) features (each pathway's, for a list)."""
    if isinstance(features, (list, tuple)):
        return [keyframe_clip(pathway, batch, num_clips) for pathway in features]
    return features.view(batch, num_clips, *features.shape[1:])[:, 0]


class RoIActionHead(nn.Module):
    """RoIAlign of each box on a (B, C, H, W) map, max over the RoI, dropout, linear: (M, K) logits."""

    def __init__(self, channels: int, num_classes: int, *, resolution: int = 7, dropout: float = 0.5) -> None:
        super().__init__()
        self.resolution = resolution
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(
        self, feature_map: torch.Tensor, boxes: torch.Tensor, box_index: torch.Tensor
    ) -> torch.Tensor:
        """``boxes`` (M, 4) normalised x1,y1,x2,y2; ``box_index`` (M,) the item of each box."""
        height, width = feature_map.shape[-2:]
        scale = boxes.new_tensor([width, height, width, height])
        rois = torch.cat([box_index[:, None].to(boxes.dtype), boxes * scale], dim=1)
        pooled = roi_align(
            feature_map.float(),
            rois.float(),
            self.resolution,
            spatial_scale=1.0,
            sampling_ratio=0,
            aligned=True,
        )
        return self.classifier(self.dropout(pooled.amax(dim=(2, 3))))


class AvaDetector(nn.Module):
    """A :class:`VideoModel` (backbone + collaborative memories) with an RoI action head.

    Its ``head`` (clip classification) is unused and frozen; the RoI head reads the keyframe clip's
    features.
    """

    def __init__(self, video_model: VideoModel, num_classes: int, *, dropout: float = 0.5) -> None:
        super().__init__()
        self.video_model = video_model
        video_model.head.requires_grad_(False)  # never used: no optimizer state, nothing for DDP to reduce
        self.roi_head = RoIActionHead(video_model.backbone.out_channels, num_classes, dropout=dropout)

    @property
    def normalization(self) -> Normalization:
        """The input normalisation of its video model (``VideoModel.normalization``)."""
        return self.video_model.normalization

    def forward(
        self,
        video: torch.Tensor,
        boxes: torch.Tensor,
        box_index: torch.Tensor,
        times: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """All N clips in one graph (joint training; ``single`` with N = 1). ``video`` (B, N, C, T, H, W),
        ``times`` (B, N) the clips' times in the movie (``comem.memory``; None: even)."""
        batch, num_clips = video.shape[:2]
        keyframe = keyframe_clip(self.video_model.features(video, times=times), batch, num_clips)
        return self.roi_head(temporal_pool(keyframe), boxes, box_index)

    def forward_keyframe(
        self,
        video: torch.Tensor,
        boxes: torch.Tensor,
        box_index: torch.Tensor,
        banks: dict[str, torch.Tensor],
        times: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The two-pass scheme's second pass: the keyframe clip alone, reading the memory ``banks``
        (from ``video_model.memory_bank(video, times=times)``). Peak memory is that of one clip for
        any N. ``times`` (B, N): the clips' times in the movie (None: even)."""
        features = self.video_model.clip_features(video[:, 0], 0, banks, times=times)
        return self.roi_head(temporal_pool(features), boxes, box_index)
