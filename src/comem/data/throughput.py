"""Data-loading throughput: comem's decode-once reader against one independent decode per clip.

``comem bench data`` runs both through the same dataset, crops and DataLoader, so the only
difference is how frames come out of the file. The independent way is what PySlowFast and
torchvision do per clip: open the file, seek to the keyframe before the clip, decode until the
clip's last frame; N clips of a video cost N opens and N overlapping decodes.
"""

from __future__ import annotations

import dataclasses
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from comem.data.datasets import MultiClipVideoDataset, VideoRecord
from comem.data.decode import (
    ClipSource,
    ClosingReader,
    RgbFrames,
    VideoDecodeError,
    check_indices,
    gather,
    open_video,
)
from comem.data.formats import load_splits
from comem.data.formats.common import index_videos


class IndependentClipReader(ClosingReader):
    """The naive baseline: ``read`` decodes each clip (row of ``indices``) on its own.

    Frame count and rate come from the container header, as PySlowFast reads them; a decoded
    frame's index is its timestamp times the frame rate.
    """

    def __init__(self, path: str | Path, *, decoder: str = "pyav", fps: float | None = None) -> None:
        self.path = str(path)
        try:
            with av.open(self.path) as container:
                stream = container.streams.video[0]
                self.fps = float(stream.average_rate or stream.guessed_rate)
                self.time_base = stream.time_base or Fraction(1, 1)
                self.start = stream.start_time or 0
                if stream.duration is not None:
                    seconds = float(stream.duration * self.time_base)
                else:  # Matroska/WebM (Something-Something V2) give the container's duration only
                    seconds = (container.duration or 0) / av.time_base
                self.num_frames = stream.frames or round(seconds * self.fps)
        except (av.FFmpegError, OSError, IndexError) as error:
            raise VideoDecodeError(path, f"cannot open ({error})") from error
        if self.num_frames < 1:
            raise VideoDecodeError(path, "the header gives no frame count or duration")

    def frame_times(self) -> np.ndarray:
        return np.arange(self.num_frames) / self.fps

    def _index(self, pts: int) -> int:
        return round(float((pts - self.start) * self.time_base) * self.fps)

    def _read_clip(self, clip: np.ndarray) -> dict[int, np.ndarray]:
        wanted, last = set(clip.tolist()), int(clip.max())
        frames: dict[int, np.ndarray] = {}
        with av.open(self.path) as container:
            stream = container.streams.video[0]
            stream.codec_context.thread_count = 1
            rgb = RgbFrames()
            first_pts = self.start + round(int(clip.min()) / self.fps / self.time_base)
            container.seek(first_pts, stream=stream, backward=True, any_frame=False)
            for frame in container.decode(stream):
                index = self._index(frame.pts)
                if index in wanted:
                    frames[index] = rgb(frame)
                if index >= last:
                    break
        return frames

    def read(self, indices: np.ndarray) -> np.ndarray:
        indices = check_indices(self.path, indices, self.num_frames)
        frames: dict[int, np.ndarray] = {}
        for clip in indices.reshape(-1, indices.shape[-1]):
            frames.update(self._read_clip(clip))
        return gather(self.path, indices, frames)


def open_independent(path: str | Path, *, decoder: str = "pyav", fps: float | None = None) -> ClipSource:
    return IndependentClipReader(path, decoder=decoder, fps=fps)


def bench_records(data: str | Path) -> list[VideoRecord]:
    """The videos to time: a dataset directory's train split, or every video file under a folder."""
    data = Path(data)
    videos = index_videos(data)
    has_annotations = any(p.suffix in (".csv", ".json") for p in data.iterdir())
    if has_annotations:  # labels play no part in decoding speed (multi-hot ones would need a class count)
        return [dataclasses.replace(record, label=0) for record in load_splits(data).train]
    return [VideoRecord(path, 0) for _, path in sorted(videos.items())]


def write_bench_video(
    path: Path, *, seconds: float = 10.0, fps: int = 30, short_side: int = 320, seed: int = 0
) -> Path:
    """A 16:9 H.264 file like a resized Kinetics clip: textured background panning, moving discs,
    sensor noise; x264 ``veryfast`` with its default GOP (keyframe every 250 frames) and B-frames."""
    rng = np.random.default_rng(seed)
    height, width = short_side, round(short_side * 16 / 9) // 2 * 2
    coarse = rng.uniform(30, 220, size=(height // 16 + 1, width // 16 + 1, 3))
    texture = np.kron(coarse, np.ones((16, 16, 1))).astype(np.int16)
    texture = np.concatenate([texture, texture], axis=1)[:height]  # wraps around while panning
    noise = rng.normal(0, 4, size=(8, height, width, 3)).astype(np.int16)
    radius = 30
    disc = np.add.outer(np.arange(-radius, radius) ** 2, np.arange(-radius, radius) ** 2) < radius**2
    centres = rng.uniform(0, 1, size=(4, 2)) * [height - 2 * radius, width - 2 * radius]
    velocity = rng.normal(0, 3, size=(4, 2))
    period = texture.shape[1] // 2
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width, stream.pix_fmt = height, width, "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "23"}
        for i in range(round(seconds * fps)):
            offset = (2 * i) % period
            image = texture[:, offset : offset + width] + noise[i % len(noise)]
            for (cy, cx), (vy, vx) in zip(centres, velocity, strict=True):
                y = int((cy + vy * i) % (height - 2 * radius))
                x = int((cx + vx * i) % (width - 2 * radius))
                image[y : y + 2 * radius, x : x + 2 * radius][disc] = (240, 80, 40)
            frame = av.VideoFrame.from_ndarray(np.clip(image, 0, 255).astype(np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def generate_bench_videos(folder: Path, count: int, **options: float) -> list[Path]:
    """``count`` bench videos in ``folder`` (kept if already there with the same name)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in range(count):
        path = folder / f"bench_{seed:03d}.mp4"
        if not path.is_file():
            write_bench_video(path.with_suffix(".tmp.mp4"), seed=seed, **options).rename(path)
        paths.append(path)
    return paths


def _drain(samples: list[dict]) -> int:
    return sum("error" not in sample for sample in samples)


def measure(
    records: list[VideoRecord],
    *,
    independent: bool,
    clips: int,
    clip_len: int,
    stride: int,
    crop_size: int,
    workers: int,
    decoder: str = "pyav",
    repeats: int = 1,
) -> dict[str, float]:
    """Steady-state videos and clips per second through a DataLoader of ``MultiClipVideoDataset``
    items (the second of two passes; a video that fails to decode is not counted)."""
    dataset = MultiClipVideoDataset(
        records * repeats,
        num_clips=clips,
        clip_len=clip_len,
        stride=stride,
        crop_size=crop_size,
        train=True,
        decoder=decoder,
        opener=open_independent if independent else open_video,
    )
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=1, num_workers=workers, collate_fn=_drain, persistent_workers=workers > 0
    )
    sum(loader)  # warm-up pass: worker start-up and the page cache are not what is measured
    started = time.perf_counter()
    videos = sum(loader)
    seconds = time.perf_counter() - started
    return {"videos_per_s": videos / seconds, "clips_per_s": videos * clips / seconds, "seconds": seconds}
