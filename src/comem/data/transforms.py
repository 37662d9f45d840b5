"""Spatial clip transforms kept in uint8 until the last step.

Clips stay uint8 through scaling and cropping (4x less memory and host-to-device traffic than
float32); :func:`normalize` converts on whatever device the batch lives on. Scale-then-crop is done as
one ``resized_crop`` of the matching region of the original frame, so only the kept pixels are
resampled.
"""

import re
from collections.abc import Sequence

import numpy as np
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

KINETICS_MEAN = (0.45, 0.45, 0.45)
KINETICS_STD = (0.225, 0.225, 0.225)


def short_side_scale_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """``(height, width)`` after scaling so the shorter side equals ``short_side``, keeping aspect."""
    if min(height, width, short_side) < 1:
        raise ValueError(f"sizes must be >= 1, got height={height}, width={width}, short_side={short_side}")
    if height <= width:
        return short_side, max(short_side, round(width * short_side / height))
    return max(short_side, round(height * short_side / width)), short_side


def _scaled_crop(
    clip: torch.Tensor, top: int, left: int, crop_size: int, scaled: tuple[int, int]
) -> torch.Tensor:
    """The ``crop_size`` square at ``(top, left)`` of ``clip`` resized to ``scaled``, resampled once."""
    height, width = clip.shape[-2:]
    scale_y, scale_x = height / scaled[0], width / scaled[1]
    region_h = min(height, round(crop_size * scale_y))
    region_w = min(width, round(crop_size * scale_x))
    region_top = min(round(top * scale_y), height - region_h)
    region_left = min(round(left * scale_x), width - region_w)
    return F.resized_crop(
        clip, region_top, region_left, region_h, region_w, [crop_size, crop_size], antialias=True
    )


def _check_clip(clip: torch.Tensor, crop_size: int, short_side: int) -> tuple[int, int]:
    if clip.ndim != 4:
        raise ValueError(f"clip must be (T, C, H, W), got shape {tuple(clip.shape)}")
    if crop_size < 1 or short_side < crop_size:
        raise ValueError(
            f"need 1 <= crop_size <= short_side, got crop_size={crop_size}, short_side={short_side}"
        )
    return short_side_scale_size(clip.shape[-2], clip.shape[-1], short_side)


def train_crop(
    clip: torch.Tensor, *, crop_size: int, short_side: int, flip: bool, rng: np.random.Generator
) -> torch.Tensor:
    """Random ``crop_size`` square of ``clip`` scaled to ``short_side``; mirrored if ``flip``.

    ``clip`` is uint8 ``(T, C, H, W)``; returns ``(T, C, crop_size, crop_size)``. The caller draws
    ``short_side`` and ``flip`` so that every random choice of a sample comes from one generator;
    ``rng`` picks the crop position. All frames of the clip share the crop, keeping motion intact.
    """
    scaled = _check_clip(clip, crop_size, short_side)
    top = int(rng.integers(0, scaled[0] - crop_size + 1))
    left = int(rng.integers(0, scaled[1] - crop_size + 1))
    out = _scaled_crop(clip, top, left, crop_size, scaled)
    return out.flip(-1) if flip else out


def center_crop_views(
    clip: torch.Tensor, *, crop_size: int, short_side: int, num_crops: int
) -> list[torch.Tensor]:
    """Deterministic test views of ``clip`` scaled to ``short_side``: the centre crop, or 3 crops.

    With ``num_crops=3`` the crops run along the long side (left/centre/right for landscape,
    top/centre/bottom for portrait) as in PySlowFast's 3-crop testing. ``clip`` is uint8
    ``(T, C, H, W)``; each view is ``(T, C, crop_size, crop_size)``.
    """
    if num_crops not in (1, 3):
        raise ValueError(f"num_crops must be 1 or 3, got {num_crops}")
    scaled = _check_clip(clip, crop_size, short_side)
    slack_y, slack_x = scaled[0] - crop_size, scaled[1] - crop_size
    mid_y, mid_x = -(-slack_y // 2), -(-slack_x // 2)  # rounded up, as PySlowFast's uniform_crop
    if num_crops == 1:
        corners = [(mid_y, mid_x)]
    elif scaled[0] > scaled[1]:
        corners = [(0, mid_x), (mid_y, mid_x), (slack_y, mid_x)]
    else:
        corners = [(mid_y, 0), (mid_y, mid_x), (mid_y, slack_x)]
    return [_scaled_crop(clip, top, left, crop_size, scaled) for top, left in corners]


def normalize(
    video: torch.Tensor, mean: Sequence[float] = KINETICS_MEAN, std: Sequence[float] = KINETICS_STD
) -> torch.Tensor:
    """uint8 ``(..., C, T, H, W)`` to float32 ``(x / 255 - mean) / std`` per channel.

    Runs on ``video``'s device, so the engine can normalize after moving the uint8 batch to the GPU.
    """
    channels = video.shape[-4] if video.ndim >= 4 else -1
    if channels != len(mean) or channels != len(std):
        raise ValueError(
            f"video must be (..., C, T, H, W) with C={len(mean)} matching mean/std, "
            f"got shape {tuple(video.shape)}"
        )
    shape = (channels, 1, 1, 1)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=video.device).view(shape)
    std_t = torch.tensor(std, dtype=torch.float32, device=video.device).view(shape)
    return (video.to(torch.float32) / 255 - mean_t) / std_t


def random_resized_crop(
    clip: torch.Tensor,
    *,
    crop_size: int,
    scale: tuple[float, float],
    rng: np.random.Generator,
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip: bool = False,
) -> torch.Tensor:
    """Inception-style crop: a region of ``scale`` of the frame area and aspect ``ratio``, resized to
    ``crop_size``², the same for every frame. ``clip`` is uint8 ``(T, C, H, W)``.

    Ten draws look for a region that fits (as torchvision's ``RandomResizedCrop``); otherwise the
    centred region of the clamped aspect ratio is used. Every random choice comes from ``rng``.
    """
    if clip.ndim != 4:
        raise ValueError(f"clip must be (T, C, H, W), got shape {tuple(clip.shape)}")
    height, width = clip.shape[-2:]
    area = height * width
    log_ratio = (np.log(ratio[0]), np.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = float(np.exp(rng.uniform(*log_ratio)))
        w, h = round((target * aspect) ** 0.5), round((target / aspect) ** 0.5)
        if 0 < w <= width and 0 < h <= height:
            top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
            break
    else:
        aspect = min(max(width / height, ratio[0]), ratio[1])
        w, h = (
            (width, min(height, round(width / aspect)))
            if width / height < aspect
            else (min(width, round(height * aspect)), height)
        )
        top, left = (height - h) // 2, (width - w) // 2
    out = F.resized_crop(clip, top, left, h, w, [crop_size, crop_size], antialias=True)
    return out.flip(-1) if flip else out


def rand_augment(clip: torch.Tensor, *, ops: int, magnitude: int, seed: int) -> torch.Tensor:
    """torchvision's ``RandAugment`` with the same operations and magnitudes on every frame of ``clip``
    (uint8 ``(T, C, H, W)``: the frames are one batch, for which it draws once).

    Its draws come from torch's generator, seeded here with ``seed`` inside a forked RNG state, so the
    result is a function of ``seed`` alone and the caller's torch RNG is untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return v2.RandAugment(num_ops=ops, magnitude=magnitude)(clip)


def mirrored_classes(class_names: Sequence[str]) -> list[int]:
    """For each class, the class a horizontally mirrored video shows: the one whose name swaps the
    words left and right (Something-Something's "Pushing something from left to right" and "...
    from right to left"), else the class itself."""
    swap = {"left": "right", "right": "left"}
    index = {name: i for i, name in enumerate(class_names)}

    def mirrored(name: str) -> str:
        return re.sub(r"\b(left|right)\b", lambda match: swap[match[1]], name)

    return [index.get(mirrored(name), i) for i, name in enumerate(class_names)]
