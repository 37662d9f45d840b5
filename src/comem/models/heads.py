"""Per-clip classification head: every clip predicts the video label from its own (gated) features."""

from __future__ import annotations

import torch
from torch import nn


class ClipHead(nn.Module):
    """GAP over (T, H, W), [hidden linear + ReLU], dropout, linear: (B, C, T, H, W) -> (B, num_classes).

    A list of maps (one per pathway, SlowFast) is pooled map by map and concatenated, so
    ``in_channels`` is the sum of the pathways' widths. ``hidden`` is X3D's 2048-d projection
    after pooling (its ``lin_5``).
    """

    def __init__(
        self, in_channels: int, num_classes: int, *, dropout: float = 0.5, hidden: int | None = None
    ) -> None:
        super().__init__()
        self.hidden = nn.Linear(in_channels, hidden, bias=False) if hidden else None
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(hidden or in_channels, num_classes)

    def forward(self, features: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        maps = features if isinstance(features, list) else [features]
        pooled = torch.cat([x.mean(dim=(2, 3, 4)) for x in maps], dim=1)
        if self.hidden is not None:
            pooled = torch.relu(self.hidden(pooled))
        return self.fc(self.dropout(pooled))
