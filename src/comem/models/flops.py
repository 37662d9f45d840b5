"""Compute cost of a model, counted the way torchvision documents its video models' GFLOPS.

``torch.utils.flop_counter.FlopCounterMode`` counts convolutions and matrix products (including
attention's) as 2 FLOPs per multiply-accumulate; we report multiply-accumulates (``/ 2``), which is
fvcore's and torchvision's "GFLOPS" (our counts equal torchvision's ``meta["_ops"]`` for all six of
its video models). Element-wise work (BatchNorm, activations, pooling, softmax, the memory's gating
multiply) is not counted in that convention. fvcore run on a model in train mode instead counts 5
FLOPs per element of every normalisation; some PyTorchVideo zoo figures were made that way, so
``norm_flops`` can add that term to reproduce them.

Counting runs on the meta device: no memory is allocated and nothing is computed, so even
CSN-152 at 32x256² counts in about a second.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from comem.models.build import ModelSpec, build_model


@dataclass(frozen=True)
class FlopReport:
    """GFLOPs (multiply-accumulates / 1e9) per clip of one (frames x size x size) clip."""

    backbone: str
    input_shape: tuple[int, ...]  # (B, N, C, T, H, W) given to the model
    num_clips: int
    stage_names: tuple[str, ...]
    memory_stages: tuple[str, ...]
    backbone_gflops: float  # backbone and classification head
    norm_gflops: float  # the part of backbone_gflops charged to normalisation (0 unless norm_flops)
    memory_gflops: float  # all memory modules together
    params_m: float  # backbone and head parameters, millions
    memory_params_m: float

    @property
    def memory_percent(self) -> float:
        return 100.0 * self.memory_gflops / self.backbone_gflops

    def as_dict(self) -> dict:
        return {**asdict(self), "memory_percent": self.memory_percent}


def _norm_elements(model: nn.Module, run: Callable[[], object]) -> int:
    """Elements entering normalisation layers during ``run()``."""
    total = 0

    def count(module: nn.Module, inputs: tuple, output: object) -> None:
        nonlocal total
        total += inputs[0].numel()

    norms = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)
    handles = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, norms)]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return total


def count_flops(
    spec: ModelSpec, frames: int, size: int, *, num_clips: int = 1, norm_flops: int = 0
) -> FlopReport:
    """Count one forward pass of ``num_clips`` clips of one video through ``build_model(spec)``.

    ``norm_flops``: FLOPs charged per normalised element (0: torchvision's convention; 5: fvcore's
    train-mode count). Everything is reported per clip.
    """
    with torch.device("meta"):
        model = build_model(spec).eval()
        video = torch.empty(1, num_clips, 3, frames, size, size)
    counter = FlopCounterMode(display=False)
    with counter:
        norm_elements = _norm_elements(model, lambda: model(video))
    counts = counter.get_flop_counts()
    memory_flops = sum(
        sum(counts.get(f"VideoModel.memories.{name}", {}).values()) for name in model.memory_stage_names
    )
    total = counter.get_total_flops() / 2 + norm_flops * norm_elements
    params = sum(p.numel() for name, p in model.named_parameters() if not name.startswith("memories."))
    memory_params = sum(p.numel() for p in model.memories.parameters())
    return FlopReport(
        backbone=spec.backbone,
        input_shape=tuple(video.shape),
        num_clips=num_clips,
        stage_names=tuple(model.backbone.stage_names),
        memory_stages=tuple(model.memory_stage_names),
        backbone_gflops=(total - memory_flops / 2) / num_clips / 1e9,
        norm_gflops=norm_flops * norm_elements / num_clips / 1e9,
        memory_gflops=memory_flops / 2 / num_clips / 1e9,
        params_m=params / 1e6,
        memory_params_m=memory_params / 1e6,
    )
