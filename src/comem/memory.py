"""The collaborative memory module (docs/method.md, "The module").

For one video with N clips, clip i has a feature map X_i (C, T, H, W) at some backbone stage.
Each clip is summarised by global average pooling, x_i = GAP(X_i); the N summaries form the
video's memory M (N, C). Clip i reads M associatively (its query against all keys) and gets its
own clip-specific memory m_i, which gates X_i channel-wise.

The module is split into ``summarize`` / ``read`` / ``fuse`` so the two-pass ``comem`` training
scheme can build M without gradients and later read it for one clip at a time, while ``forward``
does the whole thing at once for joint training and inference.

Every entry point takes the clips' times, ``times`` (B, N): where each clip sits in its video, as
its centre's fraction of the video's duration in [0, 1] (None: the clips in order, spread evenly,
``even_times``). The order-blind memory of the paper (``clip_time='none'``) reads the same whatever
the times; ``clip_time='relative'`` adds a learned function of each pair's time difference to the
read's scores (``relative_time_features``), so a clip can draw on what came after it rather than
before, and the read, shuffled with its times, is still the same.
"""

from __future__ import annotations

import contextlib
import math
from typing import Literal

import torch
from torch import nn

from comem.choices import CLIP_TIME_KINDS, FUSION_KINDS, MEMORY_KINDS, SUMMARY_KINDS

MemoryKind = Literal["attention", "sigmoid", "sink", "average"]
FusionKind = Literal["gate", "add"]
SummaryKind = Literal["mean", "max", "meanmax"]
ClipTimeKind = Literal["none", "relative"]
RELATIVE_FREQUENCIES: tuple[float, ...] = (1.0, 2.0, 4.0)
# W_q starts at this fraction of PyTorch's default initialisation: every score starts near 0, so a
# clip's first read is nearly the plain mean of the values (see ``CollaborativeMemory``).
QUERY_INIT_SCALE = 0.1


def relative_time_features(query_times: torch.Tensor, bank_times: torch.Tensor) -> torch.Tensor:
    """Features (B, Q, N, F) of the time from each query clip to each bank clip, d = t_j - t_i.

    ``d`` and ``|d|`` (later or earlier, near or far: a linear bias on them makes a clip read
    forward or backward in time), and ``sin``/``cos`` of ``pi * f * d`` for ``RELATIVE_FREQUENCIES``
    (finer shapes). Functions of the difference only: the read does not depend on where in the
    video a clip is, so it carries over to other clip counts and lengths.
    """
    delta = bank_times[:, None, :] - query_times[:, :, None]
    angles = math.pi * delta[..., None] * delta.new_tensor(RELATIVE_FREQUENCIES)
    return torch.cat([delta[..., None], delta.abs()[..., None], angles.sin(), angles.cos() - 1.0], dim=-1)


RELATIVE_FEATURES = 2 + 2 * len(RELATIVE_FREQUENCIES)


def pool(features: torch.Tensor, dims: tuple[int, ...], summary: SummaryKind) -> torch.Tensor:
    """A clip's summary: ``features`` pooled over ``dims`` by ``summary``.

    ``mean`` is global average pooling (the paper). An event that fills a small part of the frame
    moves the mean only a little, while the background, the same in every clip of a video, fills
    the rest; ``max`` keeps the strongest response of each channel wherever it is, so what happens
    in a clip shows in its summary however small it is. ``meanmax`` is their sum.
    """
    if summary == "mean":
        return features.mean(dim=dims)
    if summary == "max":
        return features.amax(dim=dims)
    return features.mean(dim=dims) + features.amax(dim=dims)


def even_times(batch: int, num_clips: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Clip times (B, N) when none are given: N clips in order, spread evenly, ``(i + 0.5) / N``."""
    times = (torch.arange(num_clips, device=device, dtype=torch.float32) + 0.5) / num_clips
    return times.expand(batch, num_clips)


class _AddGradient(torch.autograd.Function):
    """Identity in the forward pass; the backward pass adds a fixed tensor to the incoming gradient."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, extra: torch.Tensor
    ) -> torch.Tensor:
        ctx.extra = extra  # type: ignore[attr-defined]
        return x.view_as(x)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad + ctx.extra.to(grad.dtype), None  # type: ignore[attr-defined]


def float32(tensor: torch.Tensor) -> contextlib.AbstractContextManager:
    """A region where autocast is off on ``tensor``'s device: the memory's arithmetic (N summaries,
    C-vectors, negligible next to the backbone) runs in float32 under bf16/fp16 training, where a
    16-bit gate would add the rounding of every projection to every feature it scales. Devices
    without autocast (``meta``, for counting FLOPs) need no region."""
    if not torch.amp.is_autocast_available(tensor.device.type):
        return contextlib.nullcontext()
    return torch.autocast(tensor.device.type, enabled=False)


def add_gradient(x: torch.Tensor, extra: torch.Tensor | None) -> torch.Tensor:
    """``x`` unchanged, but whatever gradient reaches it during backward gets ``extra`` added.

    The two-pass scheme uses it to hand a clip's summary the gradient that the OTHER clips' losses
    send to it through their memory reads (computed beforehand, see ``engine/modes.py``).
    """
    return x if extra is None else _AddGradient.apply(x, extra)


class CollaborativeMemory(nn.Module):
    """Associative memory over the clips of a video plus channel-wise feature gating.

    Args:
        channels: feature channels C at the insertion stage.
        key_dim: d' of the keys/queries (default C // 4, at least 8).
        memory: ``attention`` (softmax read, the method) or ``average`` (mean of the memory,
            the ablation baseline: every clip gets the same memory).
        fusion: ``gate`` (X * 2·sigmoid(W_g m + b), the method) or ``add`` (X + W m, the ablation).
        gate_hidden: width of a hidden ReLU layer between the read and the gate (None: the paper's
            linear gate). The hidden layer lets the gate be a non-monotone function of the read,
            which labels such as "an odd number of clips show X" need.
        summary: how a clip's feature map becomes its memory entry (``pool``): ``mean`` (GAP, the
            paper), ``max`` or ``meanmax`` (the default: small events show in the summary).
        entry_hidden: width of a hidden ReLU layer that every memory entry (a clip's summary)
            passes through before the query, key and value projections (None: the paper's linear
            projections of the summary itself). Linear projections compare clips and sum them as
            superpositions: where one event's features are near the sum of two others' (yellow
            against red plus green), a bilinear match or a sum of values cannot tell the set of
            clips {red, green, yellow} from {red, green, green}. A non-linear map of each entry
            before the read, and the gate's hidden layer after it, is the sum-decomposition that
            represents any function of the set of clips (Deep Sets, Zaheer et al., NeurIPS 2017).
        clip_time: ``none`` (the paper's order-blind read: a set of clips) or ``relative`` (the
            default): the read's score of bank clip j for query clip i gains a bias
            ``(w + U q_i) . phi(t_j - t_i)`` (``relative_time_features``), so each query chooses
            how to weigh clips by when they happened relative to it. ``w`` and ``U`` start at 0:
            the read starts order-blind and learns to use time. With ``memory='average'`` the
            weights are ``softmax(w . phi)`` (uniform at initialisation).

    At initialisation the module is the identity (W_g = 0, b = 0 gives a gate of exactly 1; the
    additive projection starts at 0), so inserting it into a pretrained backbone does not change
    its outputs at step 0. The query projection starts small (``QUERY_INIT_SCALE`` of PyTorch's
    default), so every score starts near 0 and a clip's first read is nearly the plain mean of the
    values, the read that counts how many clips show a thing, while still depending a little on
    the clip, so the keys learn from the first step (docs/learning.md, section 15). With the
    default scale, the first read was a random weighting of the clips, on which training could
    settle into telling "all clips alike" from the rest instead of counting; with a zero query,
    the read learned to compare clips later and some seeds stalled on ``distinct``.
    """

    def __init__(
        self,
        channels: int,
        *,
        key_dim: int | None = None,
        memory: MemoryKind = "attention",
        fusion: FusionKind = "gate",
        gate_hidden: int | None = 64,
        summary: SummaryKind = "meanmax",
        entry_hidden: int | None = None,
        clip_time: ClipTimeKind = "relative",
    ) -> None:
        super().__init__()
        if clip_time not in CLIP_TIME_KINDS:
            raise ValueError(f"clip_time must be one of {CLIP_TIME_KINDS}, got {clip_time!r}")
        if summary not in SUMMARY_KINDS:
            raise ValueError(f"summary must be one of {SUMMARY_KINDS}, got {summary!r}")
        if memory not in MEMORY_KINDS:
            raise ValueError(f"memory must be one of {MEMORY_KINDS}, got {memory!r}")
        if fusion not in FUSION_KINDS:
            raise ValueError(f"fusion must be one of {FUSION_KINDS}, got {fusion!r}")
        self.channels = channels
        self.key_dim = key_dim or max(channels // 4, 8)
        self.memory = memory
        self.fusion = fusion
        self.summary = summary
        self.clip_time = clip_time
        self.entry: nn.Module = nn.Identity()
        if entry_hidden:
            self.entry = nn.Sequential(nn.Linear(channels, entry_hidden), nn.ReLU())
        width = entry_hidden or channels
        self.query = nn.Linear(width, self.key_dim, bias=False)
        self.key = nn.Linear(width, self.key_dim, bias=False)
        self.value = nn.Linear(width, channels, bias=False)
        # The clip memory reaches the gate through a hidden ReLU layer when ``gate_hidden`` is set,
        # so the gate can be any (also non-monotone) function of what the memory read returns.
        self.hidden: nn.Module = nn.Identity()
        if gate_hidden:
            self.hidden = nn.Sequential(nn.Linear(channels, gate_hidden), nn.ReLU())
        self.out = nn.Linear(gate_hidden or channels, channels)
        self.sink = nn.Parameter(torch.zeros(())) if memory == "sink" else None
        # The relative-time bias (w + U q_i) . phi(t_j - t_i); zero at initialisation.
        # Plain zero tensors (no random init drawn): the other weights get the same initialisation
        # whatever ``clip_time`` is, so a seed starts the same network with and without time.
        self.time_bias: nn.Parameter | None = None
        self.time_query: nn.Parameter | None = None  # U: (F, d')
        if clip_time == "relative":
            self.time_bias = nn.Parameter(torch.zeros(RELATIVE_FEATURES))
            if memory != "average":
                self.time_query = nn.Parameter(torch.zeros(RELATIVE_FEATURES, self.key_dim))
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        with torch.no_grad():
            self.query.weight.mul_(QUERY_INIT_SCALE)

    def summarize(self, features: torch.Tensor) -> torch.Tensor:
        """Pool over (T, H, W) (see ``pool``): (B·N, C, T, H, W) -> (B·N, C)."""
        return pool(features, (2, 3, 4), self.summary)

    def read(
        self,
        queries: torch.Tensor,
        bank: torch.Tensor,
        query_times: torch.Tensor | None = None,
        bank_times: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Clip-specific memories for ``queries`` (B, Q, C) from the video memory ``bank`` (B, N, C).

        ``query_times`` (B, Q) and ``bank_times`` (B, N) say when the clips happened (module
        docstring). Returns (B, Q, C). With ``memory='average'`` the queries only set the output shape.
        """
        with float32(bank):
            queries, bank = self.entry(queries.float()), self.entry(bank.float())
            values = self.value(bank)
            if self.memory == "average" and self.clip_time == "none":
                return values.mean(dim=1, keepdim=True).expand(-1, queries.shape[1], -1)
            return self._weights(queries, bank, query_times, bank_times) @ values

    def attention(
        self,
        queries: torch.Tensor,
        bank: torch.Tensor,
        query_times: torch.Tensor | None = None,
        bank_times: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Read weights (B, Q, N) of ``queries`` (B, Q, C) over the N clips of ``bank`` (B, N, C):
        how much each query draws on each clip. Rows sum to 1 (``attention``; uniform with
        ``average``), to at most 1 (``sink``), or are sigmoids / N (``sigmoid``)."""
        with float32(bank):
            entries = self.entry(queries.float()), self.entry(bank.float())
            return self._weights(*entries, query_times, bank_times)

    def _weights(
        self,
        queries: torch.Tensor,
        bank: torch.Tensor,
        query_times: torch.Tensor | None,
        bank_times: torch.Tensor | None,
    ) -> torch.Tensor:
        """``attention`` of entries already through ``self.entry``."""
        if self.time_bias is not None:
            query_times = self._times(query_times, queries)
            bank_times = self._times(bank_times, bank)
        if self.memory == "average":
            if self.time_bias is None:
                return bank.new_full((bank.shape[0], queries.shape[1], bank.shape[1]), 1.0 / bank.shape[1])
            return (relative_time_features(query_times, bank_times) @ self.time_bias).softmax(dim=-1)
        projected = self.query(queries)
        scores = projected @ self.key(bank).transpose(1, 2) / math.sqrt(self.key_dim)
        if self.time_bias is not None:
            weights = self.time_bias + projected @ self.time_query.T  # (B, Q, F)
            features = relative_time_features(query_times, bank_times)  # (B, Q, N, F)
            scores = scores + (features @ weights[..., None])[..., 0]
        if self.memory == "sigmoid":
            return scores.sigmoid() / bank.shape[1]
        if self.memory == "sink":
            sink = self.sink.expand(*scores.shape[:-1], 1)
            return torch.cat([scores, sink], dim=-1).softmax(dim=-1)[..., :-1]
        return scores.softmax(dim=-1)

    def fuse(self, features: torch.Tensor, clip_memory: torch.Tensor) -> torch.Tensor:
        """Infuse the clip memory (B·Q, C) into the features (B·Q, C, T, H, W)."""
        return self.infuse(features, self.project(clip_memory).to(features.dtype)[:, :, None, None, None])

    def project(self, clip_memory: torch.Tensor) -> torch.Tensor:
        """The clip memory (B·Q, C) through the (hidden and) output layer, in float32: (B·Q, C)."""
        with float32(clip_memory):
            return self.out(self.hidden(clip_memory.float()))

    def infuse(self, features: torch.Tensor, projected: torch.Tensor) -> torch.Tensor:
        """``features`` gated by ``2·sigmoid(projected)`` or shifted by it (``fusion``); ``projected``
        broadcasts over the features' positions."""
        if self.fusion == "gate":
            return features * (2.0 * torch.sigmoid(projected))
        return features + projected

    def forward(
        self, features: torch.Tensor, num_clips: int, times: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Apply the memory to all clips at once.

        Args:
            features: (B·N, C, T, H, W), clips grouped by video (video-major: the N clips of
                video b are rows b·N .. b·N + N - 1).
            num_clips: N.
            times: (B, N) clip times (module docstring); None: ``even_times``.
        """
        summaries = self.summarize(features).float()
        bank = summaries.view(-1, num_clips, self.channels)
        times = self._times(times, bank)
        clip_memory = self.read(bank, bank, times, times).reshape(-1, self.channels)
        return self.fuse(features, clip_memory)

    def forward_one(
        self,
        features: torch.Tensor,
        bank: torch.Tensor,
        clip_index: int,
        cross_grad: torch.Tensor | None = None,
        times: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Apply the memory to clip ``clip_index`` of each video, given the other clips' summaries.

        The two-pass scheme's second pass: ``bank`` (B, N, C) was built without gradients; the
        entry of this clip is replaced by its live, gradient-carrying summary, so the gradient
        flows through this clip's own query, key and value (the other entries are constants).

        Args:
            features: (B, C, T, H, W), clip ``clip_index`` of each of the B videos.
            bank: (B, N, C) summaries of all N clips of each video.
            cross_grad: (B, C) gradient of the other clips' losses with respect to this clip's
                summary, added to the summary's gradient in backward (None: the other clips'
                losses do not train this clip's path, the plain two-pass scheme).
            times: (B, N) times of the bank's clips (module docstring); None: ``even_times``.
        """
        live = add_gradient(self.summarize(features).float(), cross_grad)
        bank = bank.to(live.dtype)
        mixed = torch.cat([bank[:, :clip_index], live[:, None, :], bank[:, clip_index + 1 :]], dim=1)
        times = self._times(times, bank)
        clip_memory = self.read(live[:, None, :], mixed, times[:, clip_index : clip_index + 1], times)[:, 0]
        return self.fuse(features, clip_memory)

    def forward_bank(
        self, features: torch.Tensor, bank: torch.Tensor, clips: slice, times: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Apply the memory to the clips ``clips`` of each video, whose summaries are in ``bank``.

        The no-grad memory pass: ``features`` (B·k, C, T, H, W) are clips ``clips`` of each video,
        video-major, and ``bank`` (B, N, C) already holds their summaries, so they serve as queries.
        ``times`` (B, N): the bank's clip times (module docstring); None: ``even_times``.
        """
        times = self._times(times, bank)
        clip_memory = self.read(bank[:, clips], bank, times[:, clips], times).flatten(0, 1)
        return self.fuse(features, clip_memory)

    def forward_chunk(
        self,
        features: torch.Tensor,
        bank: torch.Tensor | None,
        clips: slice,
        cross_grad: torch.Tensor | None = None,
        times: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``forward_one`` for the k clips ``clips`` of each video in one call (``--grad-chunk``).

        Each clip reads its own copy of the bank in which only ITS entry is live (its summary from
        ``features``, gradient-carrying) and every other entry is a constant, so a clip's output and
        gradients are those ``forward_one`` gives it alone.

        Args:
            features: (B·k, C, T, H, W), clips ``clips`` of each video, video-major.
            bank: (B, N, C) summaries of all N clips from the no-grad memory pass; None when
                ``clips`` spans all N clips: the bank is then this forward's own summaries, detached
                (the memory pass is not needed).
            cross_grad: (B·k, C) gradient of the other clips' losses with respect to each clip's
                summary (as ``forward_one``), or None.
            times: (B, N) times of the bank's clips; None: ``even_times``.
        """
        live = add_gradient(self.summarize(features).float(), cross_grad)
        count = clips.stop - clips.start
        live = live.view(-1, count, live.shape[-1])  # (B, k, C)
        if bank is None:
            bank = live.detach()
        bank = bank.to(live.dtype)
        num_clips = bank.shape[1]
        positions = torch.arange(num_clips, device=bank.device)
        own = positions[None, :] == positions[clips.start : clips.stop, None]  # (k, N): clip q's own entry
        entries = live[:, :, None, :].expand(-1, -1, num_clips, -1)
        mixed = torch.where(own[None, :, :, None], entries, bank[:, None])  # (B, k, N, C)
        times = self._times(times, bank)
        bank_times = times[:, None].expand(-1, count, -1).flatten(0, 1)
        query_times = times[:, clips].flatten(0, 1)[:, None]  # (B·k, 1)
        clip_memory = self.read(live.flatten(0, 1)[:, None], mixed.flatten(0, 1), query_times, bank_times)[
            :, 0
        ]
        return self.fuse(features, clip_memory)

    @staticmethod
    def _times(times: torch.Tensor | None, bank: torch.Tensor) -> torch.Tensor:
        """``times`` (B, N) as float32 on the bank's device, or ``even_times`` for the bank (B, N, C)
        (also for queries (B, Q, C) and their times (B, Q))."""
        if times is None:
            return even_times(bank.shape[0], bank.shape[1], bank.device)
        if times.shape != bank.shape[:2]:
            raise ValueError(f"times must be (B, N) = {tuple(bank.shape[:2])}; got {tuple(times.shape)}")
        return times.to(device=bank.device, dtype=torch.float32)

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, key_dim={self.key_dim}, memory={self.memory}, fusion={self.fusion}, "
            f"summary={self.summary}, clip_time={self.clip_time}, "
            f"gate_hidden={self.out.in_features if isinstance(self.hidden, nn.Sequential) else None}, "
            f"entry_hidden={self.entry[0].out_features if isinstance(self.entry, nn.Sequential) else None}"
        )
