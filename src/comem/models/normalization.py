"""The input normalisation each source of weights was trained with.

A network only predicts as published when its input is prepared as it was in training: pixels in
[0, 1], minus a per-channel mean, divided by a per-channel std. The values differ between sources
(torchvision's Kinetics video models, PySlowFast/PyTorchVideo, VMZ, ImageNet-initialised
transformers), so each backbone declares the one of its usual weights (``backbones.py``), a loaded
file brings the one of its source (``pretrained.py``), and checkpoints store it (``ModelSpec``).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import NamedTuple

import torch


class Normalization(NamedTuple):
    """Per-channel (R, G, B) mean and std of pixels scaled to [0, 1]: ``(x / 255 - mean) / std``."""

    mean: tuple[float, ...]
    std: tuple[float, ...]


# PySlowFast's DATA.MEAN/DATA.STD defaults and PyTorchVideo's hub transforms (also torchvision's MViT).
PYSLOWFAST = Normalization((0.45, 0.45, 0.45), (0.225, 0.225, 0.225))
# torchvision's Kinetics-400 video ResNets and S3D (``R2Plus1D_18_Weights.KINETICS400_V1.transforms()``);
# VMZ's PyTorch training and test transforms use the same values (vmz/func/train.py).
TORCHVISION_KINETICS = Normalization((0.43216, 0.394666, 0.37645), (0.22803, 0.22145, 0.216989))
VMZ = TORCHVISION_KINETICS


def normalization(mean: Iterable[float], std: Iterable[float]) -> Normalization:
    """A ``Normalization`` from any sequences of three numbers (lists read from YAML or a checkpoint)."""
    mean_t = tuple(float(v) for v in mean)
    std_t = tuple(float(v) for v in std)
    if len(mean_t) != 3 or len(std_t) != 3:
        raise ValueError(f"mean and std need one value per RGB channel, got {mean_t} and {std_t}")
    if min(std_t) <= 0:
        raise ValueError(f"std must be > 0, got {std_t}")
    return Normalization(mean_t, std_t)


@functools.lru_cache(maxsize=16)
def normalization_tensors(norm: Normalization, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``norm``'s mean and std as (C, 1, 1, 1) float32 tensors on ``device``, made once per device:
    building them from Python floats for every clip is a blocking host-to-device copy on a GPU."""
    shape = (len(norm.mean), 1, 1, 1)
    mean = torch.tensor(norm.mean, device=device).view(shape)
    return mean, torch.tensor(norm.std, device=device).view(shape)
