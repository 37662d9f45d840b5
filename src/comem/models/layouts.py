"""Where a stage's output keeps its channels, and the collaborative memory that fits each layout.

A memory summarises a clip's stage output to one vector (B·N, C) and gates that output channel-wise;
only where the channels sit differs between networks. One memory class per layout, each keeping
``CollaborativeMemory``'s interface (``summarize``, ``forward``, ``forward_one``, ``forward_bank``,
``attention``; every one takes the clips' ``times`` (B, N)), so ``VideoModel`` and ``WrappedModel``
run them alike:

- ``channels_first``: a map (B, C, T, H, W) (3D CNNs): ``CollaborativeMemory`` itself.
- ``channels_last``: a map (B, T, H, W, C) (torchvision's Video Swin): ``ChannelLastMemory``.
- ``tokens`` / ``tokens_cls``: a token sequence (B, L, C), without or with a class token first
  (ViT-style transformers, MViT): ``TokenMemory``. The tokens may come as the first element of a
  tuple (MViT's blocks return ``(tokens, thw)``): the memory gates the tokens and the rest of the
  tuple passes through.
- ``pathways``: a list of channels-first maps, one per pathway (SlowFast): ``PathwayMemory``, one
  memory per pathway as the paper does ("each pathway gets its own module").

``MemoryOptions`` (``comem/memory_options.py``) is the one record of the memory's options, carried
from the config (or ``comem.wrap``'s keyword arguments) to every memory.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple, get_args

import torch
from torch import nn

from comem.memory import CollaborativeMemory, pool
from comem.memory_options import MemoryOptions

Layout = Literal["channels_first", "channels_last", "tokens", "tokens_cls", "pathways"]
LAYOUTS: tuple[str, ...] = get_args(Layout)
Width = int | tuple[int, ...]  # channels of a stage's output, or of each pathway's map


class Tokens(NamedTuple):
    """Transformer tokens between stages: (B, 1 + T·H·W, C) with the class token first."""

    tokens: torch.Tensor
    thw: tuple[int, int, int]


class ChannelLastMemory(CollaborativeMemory):
    """A memory over channels-last maps (B·N, T, H, W, C)."""

    def summarize(self, features: torch.Tensor) -> torch.Tensor:
        """Pool over (T, H, W): (B·N, T, H, W, C) -> (B·N, C)."""
        return pool(features, (1, 2, 3), self.summary)

    def fuse(self, features: torch.Tensor, clip_memory: torch.Tensor) -> torch.Tensor:
        return self.infuse(features, self.project(clip_memory).to(features.dtype)[:, None, None, None, :])


def _token_tensor(features: torch.Tensor | tuple) -> torch.Tensor:
    return features[0] if isinstance(features, tuple) else features


def _with_tokens(features: torch.Tensor | tuple, tokens: torch.Tensor) -> torch.Tensor | tuple:
    """``features`` with its tokens replaced: a tensor, or the same kind of tuple with the rest kept."""
    if not isinstance(features, tuple):
        return tokens
    if hasattr(features, "_replace"):  # a NamedTuple (``Tokens``)
        return type(features)(tokens, *features[1:])
    return (tokens, *features[1:])


class TokenMemory(CollaborativeMemory):
    """A memory over tokens (B·N, L, C), or a tuple whose first element they are.

    The summary pools the tokens (the patch tokens only when ``class_token``: the first token is
    then left out); the gate scales every token, the class token included, channel-wise.
    """

    def __init__(self, channels: int, *, class_token: bool = True, **options: Any) -> None:
        super().__init__(channels, **options)
        self.class_token = class_token

    def summarize(self, features: torch.Tensor | tuple) -> torch.Tensor:  # type: ignore[override]
        """The tokens pooled (``pool``; class token left out): (B·N, C)."""
        tokens = _token_tensor(features)
        return pool(tokens[:, 1:] if self.class_token else tokens, (1,), self.summary)

    def fuse(self, features: torch.Tensor | tuple, clip_memory: torch.Tensor) -> torch.Tensor | tuple:  # type: ignore[override]
        tokens = _token_tensor(features)
        projected = self.project(clip_memory).to(tokens.dtype)[:, None, :]
        return _with_tokens(features, self.infuse(tokens, projected))


class PathwayMemory(nn.Module):
    """One ``CollaborativeMemory`` per pathway; features (a list or tuple of (B·N, C_p, T, H, W)
    maps), summaries and banks are per-pathway lists, and the output has the input's type."""

    def __init__(self, channels: tuple[int, ...], **options: Any) -> None:
        super().__init__()
        self.pathways = nn.ModuleList(CollaborativeMemory(width, **options) for width in channels)

    @property
    def channels(self) -> tuple[int, ...]:
        return tuple(memory.channels for memory in self.pathways)

    @staticmethod
    def _like(features: list | tuple, parts: list[torch.Tensor]) -> list | tuple:
        return tuple(parts) if isinstance(features, tuple) else parts

    def summarize(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        return [memory.summarize(x) for memory, x in zip(self.pathways, features, strict=True)]

    def forward(
        self, features: list[torch.Tensor], num_clips: int, times: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        parts = [memory(x, num_clips, times) for memory, x in zip(self.pathways, features, strict=True)]
        return self._like(features, parts)

    def forward_one(
        self,
        features: list[torch.Tensor],
        bank: list[torch.Tensor],
        clip_index: int,
        cross_grad: list[torch.Tensor] | None = None,
        times: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        cross = cross_grad or [None] * len(self.pathways)
        parts = [
            memory.forward_one(x, pathway_bank, clip_index, extra, times)
            for memory, x, pathway_bank, extra in zip(self.pathways, features, bank, cross, strict=True)
        ]
        return self._like(features, parts)

    def forward_bank(
        self,
        features: list[torch.Tensor],
        bank: list[torch.Tensor],
        clips: slice,
        times: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        parts = [
            memory.forward_bank(x, pathway_bank, clips, times)
            for memory, x, pathway_bank in zip(self.pathways, features, bank, strict=True)
        ]
        return self._like(features, parts)

    def attention(
        self,
        queries: list[torch.Tensor],
        bank: list[torch.Tensor],
        query_times: torch.Tensor | None = None,
        bank_times: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """Read weights (B, Q, N) of each pathway's memory (see ``CollaborativeMemory.attention``)."""
        return [
            memory.attention(pathway_queries, pathway_bank, query_times, bank_times)
            for memory, pathway_queries, pathway_bank in zip(self.pathways, queries, bank, strict=True)
        ]


DEFAULT_OPTIONS = MemoryOptions()


def memory_for(layout: Layout, width: Width, options: MemoryOptions) -> nn.Module:
    """The memory for a stage whose output has ``layout`` and ``width`` channels."""
    kwargs = options.as_kwargs()
    if layout == "pathways":
        return PathwayMemory(width if isinstance(width, tuple) else (width,), **kwargs)
    if isinstance(width, tuple):
        raise ValueError(f"a {layout} stage has one width, got {width}")
    if layout == "channels_last":
        return ChannelLastMemory(width, **kwargs)
    if layout in ("tokens", "tokens_cls"):
        return TokenMemory(width, class_token=layout == "tokens_cls", **kwargs)
    return CollaborativeMemory(width, **kwargs)


def width_of(layout: Layout, output: Any) -> Width:
    """The channels of a stage ``output`` in ``layout``."""
    if layout == "pathways":
        return tuple(int(part.shape[1]) for part in output)
    if layout in ("tokens", "tokens_cls"):
        return int(_token_tensor(output).shape[-1])
    if layout == "channels_last":
        return int(output.shape[-1])
    return int(output.shape[1])


def memory_width(memory: nn.Module) -> Width:
    """The width a memory was built for (a tuple for a ``PathwayMemory``)."""
    return memory.channels
