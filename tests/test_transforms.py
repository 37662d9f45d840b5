import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as F

from comem.data.transforms import (
    KINETICS_MEAN,
    KINETICS_STD,
    center_crop_views,
    normalize,
    short_side_scale_size,
    train_crop,
)


def column_clip(height: int, width: int, frames: int = 4) -> torch.Tensor:
    """uint8 (T, C, H, W) whose value at column x is 3*x (and row y in channel 1), to locate crops."""
    cols = (3 * torch.arange(width)).to(torch.uint8).expand(height, width)
    rows = (3 * torch.arange(height)).to(torch.uint8)[:, None].expand(height, width)
    return torch.stack([cols, rows, cols]).expand(frames, 3, height, width).contiguous()


def test_short_side_scale_size() -> None:
    assert short_side_scale_size(240, 320, 128) == (128, 171)
    assert short_side_scale_size(320, 240, 128) == (171, 128)
    assert short_side_scale_size(100, 100, 64) == (64, 64)


def test_train_crop_shape_dtype_and_range() -> None:
    clip = column_clip(48, 64)
    out = train_crop(clip, crop_size=32, short_side=36, flip=False, rng=np.random.default_rng(0))
    assert out.shape == (4, 3, 32, 32) and out.dtype == torch.uint8


def test_train_crop_matches_resize_then_crop() -> None:
    clip = column_clip(48, 64)
    rng_state = np.random.default_rng(3)
    top, left = (int(v) for v in (rng_state.integers(0, 32 - 32 + 1), rng_state.integers(0, 43 - 32 + 1)))
    out = train_crop(clip, crop_size=32, short_side=32, flip=False, rng=np.random.default_rng(3))
    reference = F.resize(clip, [32, 43], antialias=True)[..., top : top + 32, left : left + 32]
    assert (out.int() - reference.int()).abs().max() <= 3


def test_flip_mirrors_the_same_crop() -> None:
    clip = column_clip(48, 64)
    plain = train_crop(clip, crop_size=32, short_side=40, flip=False, rng=np.random.default_rng(7))
    flipped = train_crop(clip, crop_size=32, short_side=40, flip=True, rng=np.random.default_rng(7))
    torch.testing.assert_close(flipped, torch.flip(plain, dims=[-1]))
    assert not torch.equal(flipped, plain)


def test_three_crops_cover_left_centre_right() -> None:
    clip = column_clip(32, 64)  # short side already 32, so views are exact slices
    views = center_crop_views(clip, crop_size=32, short_side=32, num_crops=3)
    for view, left in zip(views, [0, 16, 32], strict=True):
        torch.testing.assert_close(view, clip[..., :, left : left + 32])


def test_three_crops_cover_top_centre_bottom_for_portrait() -> None:
    clip = column_clip(64, 32)
    views = center_crop_views(clip, crop_size=32, short_side=32, num_crops=3)
    for view, top in zip(views, [0, 16, 32], strict=True):
        torch.testing.assert_close(view, clip[..., top : top + 32, :])


def test_center_crop_is_centred_after_scaling() -> None:
    clip = column_clip(48, 64)
    (view,) = center_crop_views(clip, crop_size=24, short_side=24, num_crops=1)
    assert view.shape == (4, 3, 24, 24)
    reference = F.center_crop(F.resize(clip, [24, 32], antialias=True), [24, 24])
    assert (view.int() - reference.int()).abs().max() <= 3


def test_bad_arguments_raise() -> None:
    clip = column_clip(48, 64)
    with pytest.raises(ValueError, match="num_crops"):
        center_crop_views(clip, crop_size=32, short_side=32, num_crops=2)
    with pytest.raises(ValueError, match="crop_size"):
        train_crop(clip, crop_size=40, short_side=32, flip=False, rng=np.random.default_rng(0))


def test_normalize_matches_hand_computation() -> None:
    video = torch.randint(0, 256, (2, 5, 3, 4, 6, 6), dtype=torch.uint8)
    out = normalize(video)
    assert out.dtype == torch.float32 and out.shape == video.shape
    x = video[1, 2, 0, 3, 4, 5].item()
    assert out[1, 2, 0, 3, 4, 5].item() == pytest.approx((x / 255 - KINETICS_MEAN[0]) / KINETICS_STD[0])
    custom = normalize(video, mean=(0.0, 0.5, 1.0), std=(1.0, 0.5, 2.0))
    torch.testing.assert_close(custom[:, :, 2], (video[:, :, 2].float() / 255 - 1.0) / 2.0)
    with pytest.raises(ValueError, match="C=3"):
        normalize(video[:, :, :2])
