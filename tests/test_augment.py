"""Training augmentations: dataset-aware flips, Inception-style crops, RandAugment per clip."""

from pathlib import Path

import numpy as np
import pytest
import torch
from tinydata import write_video
from torchvision.transforms.v2 import functional as F

from comem.config import TrainConfig
from comem.data.datasets import MultiClipVideoDataset, VideoRecord, VideoSplits
from comem.data.transforms import mirrored_classes, rand_augment, random_resized_crop
from comem.tasks.classification import flip_policy, make_dataset

SSV2_NAMES = [
    "Pushing something from left to right",
    "Pushing something from right to left",
    "Turning the camera left while filming something",
    "Turning the camera right while filming something",
    "Holding something",
]


def test_mirrored_classes_swap_left_and_right_names_only() -> None:
    assert mirrored_classes(SSV2_NAMES) == [1, 0, 3, 2, 4]
    assert mirrored_classes(["leftover", "bright"]) == [0, 1]  # whole words only


def splits(data_format: str, names: list[str]) -> VideoSplits:
    return VideoSplits(train=[], val=[], test=None, class_names=names, data_format=data_format)


def test_flip_is_off_for_something_something_unless_asked() -> None:
    assert flip_policy(TrainConfig(), splits("ssv2", SSV2_NAMES)) == (False, None)
    assert flip_policy(TrainConfig(), splits("ssv1", SSV2_NAMES)) == (False, None)
    assert flip_policy(TrainConfig(), splits("kinetics", ["a", "b"])) == (True, None)
    assert flip_policy(TrainConfig(flip="off"), splits("kinetics", ["a", "b"])) == (False, None)
    assert flip_policy(TrainConfig(flip="on"), splits("ssv2", SSV2_NAMES)) == (True, None)
    assert flip_policy(TrainConfig(flip="swap-labels"), splits("ssv2", SSV2_NAMES)) == (True, [1, 0, 3, 2, 4])


@pytest.fixture(scope="module")
def ramp_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A horizontal ramp (dark left, bright right): a mirrored crop is bright on its left."""
    return write_video(tmp_path_factory.mktemp("ramp") / "ramp.mp4", label=1, num_frames=24, size=32)


def mirrored_clips(video: torch.Tensor) -> list[bool]:
    """Per clip of an item's ``video`` (N, C, T, H, W): whether its left half is brighter."""
    half = video.shape[-1] // 2
    return [bool(clip[..., :half].float().mean() > clip[..., half:].float().mean()) for clip in video]


def ramp_dataset(video: Path, label: int, **options: object) -> MultiClipVideoDataset:
    return MultiClipVideoDataset(
        [VideoRecord(video, label)], num_clips=3, clip_len=4, stride=2, crop_size=24, train=True, **options
    )


def test_swap_labels_mirrors_whole_videos_and_their_label(ramp_video: Path) -> None:
    dataset = ramp_dataset(ramp_video, 0, label_mirror=mirrored_classes(SSV2_NAMES))
    seen = set()
    for epoch in range(12):
        dataset.set_epoch(epoch)
        item = dataset[0]
        flips = mirrored_clips(item["video"])
        assert len(set(flips)) == 1, flips  # one decision for all clips of the video
        assert item["label"] == (1 if flips[0] else 0)
        seen.add(flips[0])
    assert seen == {True, False}


def test_flip_off_never_mirrors_and_keeps_the_same_crops(ramp_video: Path) -> None:
    on, off = ramp_dataset(ramp_video, 0), ramp_dataset(ramp_video, 0, flip=False)
    flipped_somewhere = False
    for epoch in range(6):
        on.set_epoch(epoch)
        off.set_epoch(epoch)
        with_flips, without = on[0]["video"], off[0]["video"]
        assert not any(mirrored_clips(without))
        for clip, flipped, plain in zip(mirrored_clips(with_flips), with_flips, without, strict=True):
            torch.testing.assert_close(flipped.flip(-1) if clip else flipped, plain)
            flipped_somewhere |= clip
    assert flipped_somewhere


def column_clip(height: int, width: int, frames: int = 3) -> torch.Tensor:
    cols = (2 * torch.arange(width)).to(torch.uint8).expand(height, width)
    rows = (2 * torch.arange(height)).to(torch.uint8)[:, None].expand(height, width)
    return torch.stack([cols, rows, cols]).expand(frames, 3, height, width).contiguous()


def test_random_resized_crop_covers_the_asked_area_and_is_reproducible() -> None:
    clip = column_clip(60, 80)
    whole = random_resized_crop(
        clip, crop_size=32, scale=(1.0, 1.0), ratio=(4 / 3, 4 / 3), rng=np.random.default_rng(0)
    )
    torch.testing.assert_close(whole, F.resize(clip, [32, 32], antialias=True))
    for seed in range(20):
        out = random_resized_crop(clip, crop_size=32, scale=(0.1, 0.3), rng=np.random.default_rng(seed))
        assert out.shape == (3, 3, 32, 32) and torch.equal(out[0], out[2])  # every frame the same crop
        # the crop's column (channel 0) and row (channel 1) ranges give the region it came from
        width = (out[0, 0].max() - out[0, 0].min()).item() / 2 + 1
        height = (out[0, 1].max() - out[0, 1].min()).item() / 2 + 1
        assert 0.1 * 0.75 <= width * height / (60 * 80) <= 0.3 * 1.25, (seed, width, height)
        again = random_resized_crop(clip, crop_size=32, scale=(0.1, 0.3), rng=np.random.default_rng(seed))
        assert torch.equal(out, again)


def test_rand_augment_is_the_same_for_every_frame_and_a_function_of_its_seed() -> None:
    frame = torch.randint(
        0, 256, (1, 3, 24, 24), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    clip = frame.expand(4, -1, -1, -1).contiguous()
    state = torch.get_rng_state()
    outputs = [rand_augment(clip, ops=2, magnitude=9, seed=seed) for seed in range(8)]
    assert torch.equal(torch.get_rng_state(), state)  # the caller's generator is untouched
    for out in outputs:
        assert out.shape == clip.shape and out.dtype == torch.uint8
        assert all(torch.equal(out[0], out[t]) for t in range(1, 4))
    assert any(not torch.equal(out, clip) for out in outputs)
    assert torch.equal(outputs[3], rand_augment(clip, ops=2, magnitude=9, seed=3))


def test_augmented_items_are_a_function_of_seed_epoch_and_index(ramp_video: Path) -> None:
    config = TrainConfig(
        crop_size=24, clip_len=4, clips=3, resized_crop_scale=[0.3, 1.0], randaug_ops=2, flip="swap-labels"
    )
    names = ["left", "right"]
    records = [VideoRecord(ramp_video, 0)]
    first, second = (
        make_dataset(records, config, train=True, splits=splits("slowfast", names)) for _ in range(2)
    )
    for dataset in (first, second):
        dataset.set_epoch(3)
    a, b = first[0], second[0]
    assert torch.equal(a["video"], b["video"]) and a["label"] == b["label"]
    first.set_epoch(4)
    assert not torch.equal(first[0]["video"], a["video"])
