"""Where a movie's frames come from: extracted JPEGs (PySlowFast's frame lists) or the movie file itself.

Both index frames on AVA's grid: frame ``i`` shows second ``900 + i / 30`` of the movie, as the
30-fps frames PySlowFast extracts from the 15th minute on. A movie file is read by seeking, so a
keyframe late in a full-length movie does not decode the movie from its start.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import av
import numpy as np
import torch
from PIL import Image

from comem.data.decode import RgbFrames
from comem.errors import UserError

GRID_FPS = 30
MOVIE_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".mov")


class FrameReadError(UserError, OSError):
    """A frame or movie that cannot be read (message names the file)."""


class FrameSource(Protocol):
    """A movie's frames on AVA's 30-fps grid."""

    def __len__(self) -> int: ...

    def read(self, indices: Sequence[int]) -> dict[int, torch.Tensor]:
        """(C, H, W) uint8 RGB frame of each index."""
        ...


class JpegFrames:
    """A movie as the list of its extracted frame files (frame ``i`` is ``paths[i]``)."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, indices: Sequence[int]) -> dict[int, torch.Tensor]:
        frames = {}
        for index in set(indices):
            path = self.paths[index]
            try:
                with Image.open(path) as file:
                    frames[index] = torch.from_numpy(np.array(file.convert("RGB"))).permute(2, 0, 1)
            except OSError as error:
                raise FrameReadError(f"{path}: cannot read frame ({error})") from None
        return frames


class MovieFrames:
    """A movie file read on AVA's 30-fps grid; ``start_second`` is the movie time of grid frame 0
    (900 for the original full-length movies, 0 for PySlowFast's 15-minute cuts)."""

    def __init__(self, path: Path, start_second: float) -> None:
        self.path = Path(path)
        self.start_second = start_second
        try:
            with av.open(str(self.path)) as container:
                if not container.streams.video:
                    raise FrameReadError(f"{self.path}: no video stream")
                stream = container.streams.video[0]
                if stream.duration and stream.time_base:
                    seconds = float(stream.duration * stream.time_base)
                else:
                    seconds = (container.duration or 0) / av.time_base
        except av.FFmpegError as error:
            raise FrameReadError(f"{self.path}: cannot open movie ({error})") from None
        self.num_frames = max(int((seconds - start_second) * GRID_FPS), 0)
        if self.num_frames == 0:
            raise FrameReadError(f"{self.path}: shorter than {start_second} s, no AVA frames")

    def __len__(self) -> int:
        return self.num_frames

    def read(self, indices: Sequence[int]) -> dict[int, torch.Tensor]:
        """The frame shown at each grid time (the last one starting at or before it)."""
        wanted = sorted(set(indices))
        frames: dict[int, torch.Tensor] = {}
        try:
            with av.open(str(self.path)) as container:
                stream = container.streams.video[0]
                stream.codec_context.thread_count = 1
                rgb = RgbFrames()
                position = 0
                while position < len(wanted):
                    target = self._time(wanted[position])
                    pts = int(target / stream.time_base) + (stream.start_time or 0)
                    container.seek(max(pts, 0), stream=stream, backward=True)
                    shown, before = None, position
                    for frame in container.decode(stream):
                        pts = (frame.pts or 0) - (stream.start_time or 0)
                        start = float(pts * stream.time_base)
                        while position < len(wanted) and start > self._time(wanted[position]) + 1e-6:
                            frames[wanted[position]] = self._tensor(rgb(frame if shown is None else shown))
                            position += 1
                        if position == len(wanted):
                            break
                        if position > before and self._time(wanted[position]) > start + 2.0:
                            break  # the next frame wanted is far ahead: seek instead of decoding there
                        shown = frame
                    else:  # the movie ended: its last frame stays on screen
                        if shown is None:
                            raise FrameReadError(f"{self.path}: no frame at {target:.2f} s")
                        while position < len(wanted):
                            frames[wanted[position]] = self._tensor(rgb(shown))
                            position += 1
        except av.FFmpegError as error:
            raise FrameReadError(f"{self.path}: cannot decode ({error})") from None
        return frames

    def _time(self, index: int) -> float:
        return self.start_second + index / GRID_FPS

    @staticmethod
    def _tensor(image: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(image).permute(2, 0, 1)


def find_movies(root: Path, video_ids: Sequence[str]) -> dict[str, MovieFrames]:
    """Movie files of ``video_ids``: ``root/videos_15min/ID.*`` (PySlowFast's cuts from second 900)
    or ``root/videos/ID.*`` (the original movies)."""
    movies = {}
    for video_id in video_ids:
        for folder, start in (("videos_15min", 0.0), ("videos", 900.0)):
            found = [root / folder / f"{video_id}{suffix}" for suffix in MOVIE_SUFFIXES]
            found = [path for path in found if path.is_file()]
            if found:
                movies[video_id] = MovieFrames(found[0], start)
                break
        else:
            raise FrameReadError(
                f"{root}: no frame list and no movie file for {video_id} in videos_15min/ or videos/"
            )
    return movies
