"""Device-side speed settings shared by training and ``comem bench train``.

On CUDA: cuDNN autotuning, the channels-last-3d layout (cuDNN's fastest 3-D convolutions with
bf16), and the normalised input kept in bf16 when autocast is on (the first convolution casts it
to bf16 anyway; half the bytes of a float32 video of N clips). ``compile`` compiles every
backbone stage in place, so state-dict keys do not change.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

from comem.data.transforms import normalize
from comem.models.build import VideoModel
from comem.models.normalization import Normalization


def tune_model(
    model: torch.nn.Module,
    device: torch.device,
    *,
    channels_last: bool,
    compile: bool,
    compile_backend: str = "inductor",
) -> None:
    """Apply the speed settings to ``model`` (already on ``device``; a ``VideoModel`` or a task model
    holding one) in place.

    ``compile_backend`` is ``torch.compile``'s: ``inductor`` generates kernels; ``aot_eager``
    traces forward and backward the same way but runs them eagerly (``comem doctor`` on a CPU).
    """
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        if channels_last:
            model.to(memory_format=torch.channels_last_3d)
    if compile:
        # Stages share code (nn.Sequential.forward), so every (stage, input shape) pair is one
        # compiled variant of the same function: more than dynamo's default limit of 8, past
        # which it silently falls back to eager.
        name = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
        setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), 64))
        for video_model in (module for module in model.modules() if isinstance(module, VideoModel)):
            for stage in video_model.backbone.stages.values():
                stage.compile(backend=compile_backend)


def autocast_for(device: torch.device, enabled: bool) -> Callable[[], contextlib.AbstractContextManager]:
    """bf16 autocast on CUDA when enabled; a no-op elsewhere (CPU bf16 conv3d is slower than fp32)."""
    if enabled and device.type == "cuda":
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


def prepare_video(
    video: torch.Tensor,
    device: torch.device,
    *,
    amp: bool,
    channels_last: bool,
    normalization: Normalization,
) -> torch.Tensor:
    """uint8 (B, N, C, T, H, W) batch -> model input on ``device`` normalised with ``normalization``
    (the model's: ``VideoModel.normalization``).

    With ``channels_last`` (CUDA only) the result is a (B, N, C, T, H, W) view of a
    (B, N, T, H, W, C) tensor: every clip ``video[:, i]`` and the flattened (B·N, C, T, H, W)
    batch are then channels-last-3d without another copy.
    """
    on_cuda = device.type == "cuda"
    video = video.to(device, non_blocking=True)
    if channels_last and on_cuda:  # re-laid out as uint8 (a quarter of the bytes); the
        # element-wise normalisation below keeps the layout of its input
        video = channels_last_clips(video)
    video = normalize(video, *normalization)
    return video.to(torch.bfloat16) if amp and on_cuda else video


def channels_last_clips(video: torch.Tensor) -> torch.Tensor:
    """(B, N, C, T, H, W) with the same values, stored as (B, N, T, H, W, C)."""
    return video.permute(0, 1, 3, 4, 5, 2).contiguous().permute(0, 1, 5, 2, 3, 4)
