"""Collaborative memories for stage outputs that are not one (B, C, T, H, W) map.

Both keep ``CollaborativeMemory``'s interface (``summarize``, ``forward``, ``forward_one``,
``forward_bank``, ``attention``), so ``VideoModel`` runs them unchanged:

- ``PathwayMemory``: one memory per pathway of a multi-pathway net (SlowFast), as the paper does
  ("each pathway gets its own module"). Features and banks are lists, one entry per pathway.
- ``TokenMemory``: a memory over transformer tokens (MViT); the summary pools the patch
  tokens, and the gate scales every token (class token included) channel-wise.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn

from comem.memory import CollaborativeMemory, pool


class Tokens(NamedTuple):
    """Transformer tokens between stages: (B, 1 + T·H·W, C) with the class token first."""

    tokens: torch.Tensor
    thw: tuple[int, int, int]


class TokenMemory(CollaborativeMemory):
    def summarize(self, features: Tokens) -> torch.Tensor:  # type: ignore[override]
        """The patch tokens pooled (``pool``, class token left out): (B·N, C)."""
        return pool(features.tokens[:, 1:], (1,), self.summary)

    def fuse(self, features: Tokens, clip_memory: torch.Tensor) -> Tokens:  # type: ignore[override]
        projected = self.project(clip_memory).to(features.tokens.dtype)[:, None, :]
        return Tokens(self.infuse(features.tokens, projected), features.thw)


class PathwayMemory(nn.Module):
    """One ``CollaborativeMemory`` per pathway; features, summaries and banks are per-pathway lists."""

    def __init__(self, channels: tuple[int, ...], **options: Any) -> None:
        super().__init__()
        self.pathways = nn.ModuleList(CollaborativeMemory(width, **options) for width in channels)

    def summarize(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        return [memory.summarize(x) for memory, x in zip(self.pathways, features, strict=True)]

    def forward(self, features: list[torch.Tensor], num_clips: int) -> list[torch.Tensor]:
        return [memory(x, num_clips) for memory, x in zip(self.pathways, features, strict=True)]

    def forward_one(
        self,
        features: list[torch.Tensor],
        bank: list[torch.Tensor],
        clip_index: int,
        cross_grad: list[torch.Tensor] | None = None,
    ) -> list[torch.Tensor]:
        cross = cross_grad or [None] * len(self.pathways)
        return [
            memory.forward_one(x, pathway_bank, clip_index, extra)
            for memory, x, pathway_bank, extra in zip(self.pathways, features, bank, cross, strict=True)
        ]

    def forward_bank(
        self, features: list[torch.Tensor], bank: list[torch.Tensor], clips: slice
    ) -> list[torch.Tensor]:
        return [
            memory.forward_bank(x, pathway_bank, clips)
            for memory, x, pathway_bank in zip(self.pathways, features, bank, strict=True)
        ]

    def attention(self, queries: list[torch.Tensor], bank: list[torch.Tensor]) -> list[torch.Tensor]:
        """Read weights (B, Q, N) of each pathway's memory (see ``CollaborativeMemory.attention``)."""
        return [
            memory.attention(pathway_queries, pathway_bank)
            for memory, pathway_queries, pathway_bank in zip(self.pathways, queries, bank, strict=True)
        ]

    def forward_chunk(
        self,
        features: list[torch.Tensor],
        bank: list[torch.Tensor] | None,
        clips: slice,
        cross_grad: list[torch.Tensor] | None = None,
    ) -> list[torch.Tensor]:
        banks = bank or [None] * len(self.pathways)
        cross = cross_grad or [None] * len(self.pathways)
        return [
            memory.forward_chunk(x, pathway_bank, clips, extra)
            for memory, x, pathway_bank, extra in zip(self.pathways, features, banks, cross, strict=True)
        ]
