"""Device-side speed settings shared by training and ``comem bench train``.

On CUDA: cuDNN autotuning and the channels-last-3d layout (cuDNN's fastest 3-D convolutions with
bf16). The batch goes to the device as uint8 and stays so: each forward converts its own clips
(``VideoModel.prepare``), so comem's per-clip passes never hold a float copy of all N clips.
``compile`` compiles every backbone stage in place, so state-dict keys do not change.

The two do not combine: under ``torch.compile`` the model and its input keep the default layout
(``uses_channels_last``). Inductor chooses convolution layouts itself, and its fake kernel for
``aten.convolution_backward`` predicts contiguous gradients where cuDNN returns channels-last
ones, so a compiled backward of a channels-last model fails a stride assertion on CUDA (seen on
an H200 with torch 2.11; https://github.com/pytorch/pytorch/issues/171622).
"""

from __future__ import annotations

import torch

from comem.models.build import VideoModel


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
        if uses_channels_last(channels_last=channels_last, compile=compile):
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


def uses_channels_last(*, channels_last: bool, compile: bool) -> bool:
    """Whether the model and its input take the channels-last-3d layout (on CUDA): asked for, and
    the stages are not compiled (see the module docstring)."""
    return channels_last and not compile


def prepare_video(video: torch.Tensor, device: torch.device, *, channels_last: bool) -> torch.Tensor:
    """uint8 (B, N, C, T, H, W) batch -> the same uint8 batch on ``device``; the model normalises
    each clip when it runs it (``VideoModel.prepare``).

    With ``channels_last`` (CUDA only) the result is a (B, N, C, T, H, W) view of a
    (B, N, T, H, W, C) tensor: every clip ``video[:, i]`` and the flattened (B·N, C, T, H, W)
    batch are then channels-last-3d without another copy, and so is their normalised float
    version (element-wise operations keep the layout of their input).
    """
    video = video.to(device, non_blocking=True)
    if channels_last and device.type == "cuda":
        video = channels_last_clips(video)
    return video


def channels_last_clips(video: torch.Tensor) -> torch.Tensor:
    """(B, N, C, T, H, W) with the same values, stored as (B, N, T, H, W, C)."""
    return video.permute(0, 1, 3, 4, 5, 2).contiguous().permute(0, 1, 5, 2, 3, 4)
