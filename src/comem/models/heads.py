"""Per-clip classification head: every clip predicts the video label from its own (gated) features."""

from __future__ import annotations

import torch
from torch import nn


class ClipHead(nn.Module):
    """GAP over (T, H, W), dropout, linear: (B, C, T, H, W) -> logits (B, num_classes)."""

    def __init__(self, in_channels: int, num_classes: int, *, dropout: float = 0.5) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(features.mean(dim=(2, 3, 4))))
