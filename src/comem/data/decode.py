"""PyAV video decoding: plan every clip's frame indices first, then decode the file once.

Video-level training reads N clips per video; seeking per clip would re-decode from the nearest
keyframe N times, so a reader makes one forward pass and keeps only the frames asked for. Every
failure (missing, empty, corrupt, truncated, audio-only) surfaces as :class:`VideoDecodeError` with
a one-line message, so a dataset can skip a bad video without masking programming errors.
"""

from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType

import av
import numpy as np

from comem.errors import UserError


class VideoDecodeError(UserError):
    """A video that cannot be decoded; ``str(e)`` is one line, ``"<path>: <problem>"``."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = " ".join(reason.split())
        super().__init__(f"{self.path}: {self.reason}")

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        # DataLoader workers pickle exceptions; the default would call __init__ with one argument.
        return type(self), (self.path, self.reason)


def _describe(error: Exception) -> str:
    return getattr(error, "strerror", None) or str(error) or type(error).__name__


class VideoReader:
    """One open video file; ``read`` returns RGB frames by index in a single decoding pass.

    ``threads=0`` keeps FFmpeg single-threaded, which is right inside DataLoader workers (they
    already use every core); ``threads > 0`` enables frame+slice threading with that many threads.
    """

    def __init__(self, path: str | Path, *, threads: int = 0) -> None:
        if threads < 0:
            raise ValueError(f"threads must be >= 0, got {threads}")
        self.path = str(path)
        self._threads = threads
        file = Path(path)
        if not file.exists():
            raise VideoDecodeError(path, "file not found")
        if not file.is_file():
            raise VideoDecodeError(path, "not a regular file")
        if file.stat().st_size == 0:
            raise VideoDecodeError(path, "empty file (0 bytes)")
        self._open()
        self._cache: list[av.VideoFrame] | None = None
        try:
            self.num_frames = self._count_frames()
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        try:
            self._container = av.open(self.path)
        except (av.FFmpegError, OSError) as error:
            raise VideoDecodeError(self.path, f"cannot open ({_describe(error)})") from error
        if not self._container.streams.video:
            self._container.close()
            raise VideoDecodeError(self.path, "no video stream")
        self._stream = self._container.streams.video[0]
        if self._threads > 0:
            self._stream.thread_type = "AUTO"
            self._stream.codec_context.thread_count = self._threads
        else:
            self._stream.codec_context.thread_count = 1
        self.fps = float(self._stream.average_rate or self._stream.guessed_rate or 0.0)
        self.height = self._stream.codec_context.height
        self.width = self._stream.codec_context.width
        if self.height <= 0 or self.width <= 0:
            self._container.close()
            raise VideoDecodeError(self.path, "unknown frame size in stream header")
        self._decoded = False

    def _count_frames(self) -> int:
        """Frame count from metadata when present; else decode once and keep the frames for ``read``."""
        if self._stream.frames > 0:
            return self._stream.frames
        if self._stream.duration and self._stream.time_base:
            seconds = float(self._stream.duration * self._stream.time_base)
        else:
            seconds = (self._container.duration or 0) / av.time_base
        estimate = round(seconds * self.fps)
        if estimate > 0:
            return estimate
        self._cache = list(self._frames())
        if not self._cache:
            raise VideoDecodeError(self.path, "no frames decoded")
        return len(self._cache)

    def _rewind(self) -> None:
        """Return to the first frame; reopen if the container cannot seek (e.g. raw bitstreams)."""
        try:
            self._container.seek(0)
        except av.FFmpegError:
            self._container.close()
            self._open()

    def _frames(self) -> Iterator[av.VideoFrame]:
        """Frames from the start of the file, in decoder output order; FFmpeg errors become ours."""
        if self._decoded:
            self._rewind()
        self._decoded = True
        count = 0
        try:
            for frame in self._container.decode(self._stream):
                yield frame
                count += 1
        except av.FFmpegError as error:
            raise VideoDecodeError(
                self.path, f"truncated or corrupt at frame {count} ({_describe(error)})"
            ) from error

    def _to_rgb(self, frame: av.VideoFrame) -> np.ndarray:
        return frame.to_ndarray(format="rgb24", width=self.width, height=self.height)

    def read(
        self, indices: np.ndarray, transform: Callable[[np.ndarray], np.ndarray] | None = None
    ) -> np.ndarray:
        """RGB frames at ``indices``: uint8 of shape ``indices.shape + (H, W, 3)``.

        ``indices`` may have any shape (typically ``(num_clips, clip_len)``), repeat and be unsorted.
        Decoding stops after the largest index. If the stream ends early without an error (frame
        counts in metadata are estimates), missing indices repeat the last decoded frame.
        ``transform`` maps each kept RGB frame ``(H, W, 3)`` to what is stored for it (e.g. a
        downscaled copy, so many clips of a long high-resolution video fit in memory); the result
        is then ``indices.shape + transform's output shape``.
        """
        indices = np.asarray(indices)
        if not np.issubdtype(indices.dtype, np.integer):
            raise ValueError(f"{self.path}: frame indices must be integers, got dtype {indices.dtype}")
        if indices.size == 0:
            return np.empty(indices.shape + (self.height, self.width, 3), dtype=np.uint8)
        lowest, highest = int(indices.min()), int(indices.max())
        if lowest < 0 or highest >= self.num_frames:
            raise ValueError(
                f"{self.path}: frame indices must lie in [0, {self.num_frames - 1}], "
                f"got [{lowest}, {highest}]"
            )
        wanted = set(np.unique(indices).tolist())
        keep = self._to_rgb if transform is None else lambda frame: transform(self._to_rgb(frame))
        rgb: dict[int, np.ndarray] = {}
        last_index, last_frame = -1, None
        for last_index, last_frame in enumerate(self._cache if self._cache is not None else self._frames()):
            if last_index in wanted:
                rgb[last_index] = keep(last_frame)
            if last_index >= highest:
                break
        if last_frame is None:
            raise VideoDecodeError(self.path, "no frames decoded")
        if last_index not in rgb:
            rgb[last_index] = keep(last_frame)
        unique, inverse = np.unique(np.minimum(indices, last_index), return_inverse=True)
        frames = np.stack([rgb[i] for i in unique.tolist()])
        return frames[inverse.reshape(indices.shape)]

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def read_clips(path: str | Path, plan: Callable[[int], np.ndarray], *, threads: int = 0) -> np.ndarray:
    """Open ``path`` once, plan indices from its frame count, return ``reader.read(plan(num_frames))``."""
    with VideoReader(path, threads=threads) as reader:
        return reader.read(plan(reader.num_frames))
