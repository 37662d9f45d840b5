"""``comem.VideoClips``: N clips of real encoded videos, decoded once, with each clip's time span;
in DataLoader workers, under a DistributedSampler, skipping a broken video by name."""

from pathlib import Path

import pytest
import torch
from tinydata import write_dataset
from torch.utils.data import DataLoader, DistributedSampler
from videos import frame_index_of, write_test_video

import comem
from comem.data.datasets import DatasetFormatError


def test_clips_of_a_list_carry_their_time_spans(tmp_path: Path) -> None:
    path = write_test_video(tmp_path / "index.mp4", 48, 24, 32, fps=24)  # frame i has gray level 16 + 4i
    clips = comem.VideoClips([(path, 2)], clips=3, clip_len=4, stride=2, crop_size=16, train=False)
    item = clips[0]
    assert item["video"].dtype == torch.uint8 and item["video"].shape == (3, 3, 4, 16, 16)
    assert item["label"] == 2 and clips.class_names == ["0", "1", "2"]
    first_frames = [frame_index_of(clip[:, 0].permute(1, 2, 0).numpy()) for clip in item["video"]]
    torch.testing.assert_close(item["span"][:, 0], torch.tensor(first_frames) / 24.0)  # seconds
    torch.testing.assert_close(item["span"][:, 1], (torch.tensor(first_frames) + 7) / 24.0)  # 7 frames on
    torch.testing.assert_close(item["times"], item["span"].mean(dim=1) / 2.0)  # the video lasts 2 s
    assert bool((item["times"].diff() > 0).all()) and 0 < float(item["times"][0]) < 0.5


def test_clips_of_a_directory_in_workers_and_shards(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "data", num_train=4, num_val=2)
    (root / "videos" / "train_3.mp4").write_bytes(b"not a video")
    clips = comem.VideoClips(root, clips=2, clip_len=4, stride=2, crop_size=16)
    assert len(clips) == 4 and clips.class_names == ["gray", "ramp"]
    sampler = DistributedSampler(clips, num_replicas=2, rank=0, shuffle=False)
    loader = DataLoader(clips, batch_size=2, sampler=sampler, num_workers=2, collate_fn=clips.collate)
    (batch,) = list(loader)  # rank 0's half: videos 0 and 2
    assert batch["video"].shape == (2, 2, 3, 4, 16, 16) and batch["times"].shape == (2, 2)
    assert batch["video_index"].tolist() == [0, 2] and batch["label"].tolist() == [0, 0]
    other = DistributedSampler(clips, num_replicas=2, rank=1, shuffle=False)
    (batch,) = list(DataLoader(clips, batch_size=2, sampler=other, collate_fn=clips.collate))
    assert batch["video_index"].tolist() == [1] and len(batch["skipped"]) == 1
    assert "train_3.mp4" in batch["skipped"][0]
    assert len(comem.VideoClips(root, train=False, clips=2, crop_size=16)) == 2  # the val split


def test_bad_sources_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetFormatError, match="data directory not found"):
        comem.VideoClips(tmp_path / "nowhere")
    with pytest.raises(DatasetFormatError, match=r"item 0: expected \(path, label\)"):
        comem.VideoClips([("a.mp4", "cat")])
