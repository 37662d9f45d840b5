"""Video decoding: plan every clip's frame indices first, then decode the file once.

Video-level training reads N clips per video; decoding each clip on its own re-decodes from the
nearest keyframe N times. A :class:`VideoReader` indexes the file's packets (a demux pass, no
decoding), seeks to the keyframe before the first wanted frame, decodes forward (seeking again only
where a keyframe lets it skip a gap) and keeps only the frames asked for; non-reference frames that
no clip needs are not decoded at all. Every failure (missing, empty, corrupt, truncated, audio-only)
surfaces as :class:`VideoDecodeError` with a one-line message, so a dataset can skip a bad video
without masking programming errors.

:func:`open_video` picks the backend: PyAV (default), torchcodec (optional) or a folder of JPEG frames.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from comem.choices import DECODERS
from comem.data.frame_folder import FrameFolderReader
from comem.data.source import (
    ClipSource,
    ClosingReader,
    DecoderUnavailableError,
    VideoDecodeError,
    check_indices,
    gather,
)
from comem.data.torchcodec_reader import TorchCodecReader, video_decoder_class

__all__ = [
    "DECODERS",
    "ClipSource",
    "ClosingReader",
    "DecoderUnavailableError",
    "VideoDecodeError",
    "VideoReader",
    "check_decoder",
    "check_indices",
    "gather",
    "open_video",
    "read_clips",
]

Decoder = Literal["pyav", "torchcodec", "frames"]


def _describe(error: Exception) -> str:
    return getattr(error, "strerror", None) or str(error) or type(error).__name__


# Decoders known to honour ``skip_frame=NONREF`` per packet without changing the other frames.
_SKIP_NONREF_CODECS = frozenset({"h264", "hevc"})


class RgbFrames:
    """Converts decoded frames to RGB arrays, (H, W, 3) uint8, through one reused swscale context.

    ``VideoFrame.to_ndarray(format="rgb24")`` builds a new conversion context for every frame,
    which costs more than decoding the frame (about 3 ms for a 64x64 H.264 frame, 7x the decode);
    a :class:`VideoReformatter` kept for the whole file builds it once and returns the same pixels.
    """

    def __init__(self) -> None:
        self._reformatter = VideoReformatter()

    def __call__(self, frame: av.VideoFrame) -> np.ndarray:
        return self._reformatter.reformat(frame, format="rgb24").to_ndarray()


def _rotate(image: np.ndarray, degrees: float) -> np.ndarray:
    """Apply a display-matrix rotation (counter-clockwise degrees, as FFmpeg reports it)."""
    turns = round(degrees / 90) % 4
    return np.ascontiguousarray(np.rot90(image, k=turns)) if turns else image


class VideoReader(ClosingReader):
    """One open video file (PyAV); ``read`` returns RGB frames by index in one decoding pass.

    ``threads=0`` keeps FFmpeg single-threaded, which is right inside DataLoader workers (they
    already use every core); ``threads > 0`` enables frame+slice threading with that many threads.
    Frames are indexed in presentation order. ``num_frames`` counts the packets of the stream (exact
    for variable-frame-rate files and files whose header lies); streams whose packets carry no
    timestamps fall back to the header's count and a sequential decode.
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
        self._rgb = RgbFrames()
        self._cache: list[av.VideoFrame] | None = None
        try:
            self._pts = self._scan_packets()
            self.num_frames = len(self._pts) if self._pts is not None else self._count_frames()
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

    def _scan_packets(self) -> np.ndarray | None:
        """Sorted presentation timestamps of every frame, and the keyframe positions among them.

        A demux pass reads packet headers without decoding (a few ms for a 10 s clip). Returns None
        when some packet has no timestamp (raw bitstreams); then frames are counted by decoding.
        """
        pts, keyframes = [], []
        try:
            for packet in self._container.demux(self._stream):
                if packet.size == 0:
                    continue
                if packet.is_corrupt:  # cut short by the end of the file: the frames end here
                    break
                if packet.pts is None:
                    return None
                pts.append(packet.pts)
                if packet.is_keyframe:
                    keyframes.append(packet.pts)
        except av.FFmpegError:
            pass  # a damaged tail: index what came before it; decoding reports the damage
        finally:
            self._decoded = True  # the demuxer is at the end: the next pass must rewind
        if not pts:
            return None
        order = np.unique(np.asarray(pts, dtype=np.int64))
        self._index_of = {int(p): i for i, p in enumerate(order.tolist())}
        key_positions = sorted({self._index_of[int(p)] for p in keyframes})
        self._keyframes = np.asarray(key_positions or [0], dtype=np.int64)
        if self._keyframes[0] != 0:
            self._keyframes = np.concatenate([[0], self._keyframes])
        return order

    @property
    def header_frames(self) -> int:
        """The frame count the container header states or implies (0 if unknown); more than
        ``num_frames`` means frames are missing from the file (truncated download)."""
        if self._stream.frames > 0:
            return self._stream.frames
        if self._stream.duration and self._stream.time_base:
            seconds = float(self._stream.duration * self._stream.time_base)
        else:
            seconds = (self._container.duration or 0) / av.time_base
        return max(round(seconds * self.fps), 0)

    def _count_frames(self) -> int:
        """Frame count from metadata when present; else decode once and keep the frames for ``read``."""
        if self.header_frames > 0:
            return self.header_frames
        self._cache = list(self._frames())
        if not self._cache:
            raise VideoDecodeError(self.path, "no frames decoded")
        return len(self._cache)

    def frame_times(self) -> np.ndarray:
        """Presentation time of every frame in seconds from the first, float64 ``(num_frames,)``."""
        if self._pts is not None and self._stream.time_base:
            return (self._pts - self._pts[0]) * float(self._stream.time_base)
        return np.arange(self.num_frames) / (self.fps or 30.0)

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
        return _rotate(self._rgb(frame), frame.rotation or 0.0)

    def read(
        self, indices: np.ndarray, transform: Callable[[np.ndarray], np.ndarray] | None = None
    ) -> np.ndarray:
        """RGB frames at ``indices``: uint8 of shape ``indices.shape + (H, W, 3)``.

        ``indices`` may have any shape (typically ``(num_clips, clip_len)``), repeat and be unsorted.
        Frames of a rotated video come out upright (display-matrix rotation applied). If the
        stream ends early without an error, missing indices repeat the last decoded frame.
        ``transform`` maps each kept RGB frame ``(H, W, 3)`` to what is stored for it (e.g. a
        downscaled copy, so many clips of a long high-resolution video fit in memory); the result
        is then ``indices.shape + transform's output shape``.
        """
        indices = check_indices(self.path, indices, self.num_frames)
        if indices.size == 0:
            return np.empty(indices.shape + (self.height, self.width, 3), dtype=np.uint8)
        keep = self._to_rgb if transform is None else lambda frame: transform(self._to_rgb(frame))
        wanted = np.unique(indices)
        if self._pts is None:
            frames = self._read_sequential(wanted, keep)
        else:
            frames = {}
            for keyframe, group in self.plan_segments(wanted):
                self._decode_segment(keyframe, group, frames, keep)
        return gather(self.path, indices, frames)

    def plan_segments(self, wanted: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """Split sorted wanted indices into runs decoded from one keyframe each.

        A new run starts where a keyframe lies after the previous wanted frame and at or before the
        next one: seeking there skips the frames in between instead of decoding them.
        """
        keyframe_of = self._keyframes[np.searchsorted(self._keyframes, wanted, side="right") - 1]
        segments: list[tuple[int, list[int]]] = []
        for index, keyframe in zip(wanted.tolist(), keyframe_of.tolist(), strict=True):
            if not segments or keyframe > segments[-1][1][-1]:
                segments.append((keyframe, [index]))
            else:
                segments[-1][1].append(index)
        return [(keyframe, np.asarray(group)) for keyframe, group in segments]

    def _decode_segment(
        self,
        keyframe: int,
        wanted: np.ndarray,
        frames: dict[int, np.ndarray],
        keep: Callable[[av.VideoFrame], np.ndarray],
    ) -> None:
        """Seek to ``keyframe`` and decode forward until the last of ``wanted`` has come out."""
        stream, context = self._stream, self._stream.codec_context
        wanted_set, last = set(wanted.tolist()), int(wanted[-1])
        if keyframe > 0 or self._decoded:
            try:
                self._container.seek(int(self._pts[keyframe]), stream=stream, backward=True)
            except av.FFmpegError as error:
                raise VideoDecodeError(self.path, f"cannot seek ({_describe(error)})") from error
            context.flush_buffers()
        self._decoded = True
        skippable = context.name in _SKIP_NONREF_CODECS
        count = 0
        try:
            for packet in self._container.demux(stream):
                if packet.size == 0:  # the demuxer's end-of-stream marker: drain the decoder
                    context.skip_frame = "DEFAULT"
                    decoded = context.decode(None)
                else:
                    index = self._index_of.get(packet.pts) if packet.pts is not None else None
                    # A frame no clip needs and no other frame references need not be decoded at all.
                    skip = skippable and index is not None and index not in wanted_set
                    context.skip_frame = "NONREF" if skip else "DEFAULT"
                    decoded = packet.decode()
                for frame in decoded:
                    count += 1
                    position = self._frame_index(frame)
                    if position in wanted_set:
                        frames[position] = keep(frame)
                    if position >= last:
                        return
        except av.FFmpegError as error:
            raise VideoDecodeError(
                self.path, f"truncated or corrupt at frame {keyframe + count} ({_describe(error)})"
            ) from error
        finally:
            context.skip_frame = "DEFAULT"

    def _frame_index(self, frame: av.VideoFrame) -> int:
        index = self._index_of.get(frame.pts) if frame.pts is not None else None
        if index is None and frame.pts is not None:  # timestamp rewritten by the decoder: nearest
            index = int(np.clip(np.searchsorted(self._pts, frame.pts), 0, len(self._pts) - 1))
        return -1 if index is None else index

    def _read_sequential(
        self, wanted: np.ndarray, keep: Callable[[av.VideoFrame], np.ndarray]
    ) -> dict[int, np.ndarray]:
        """Decode from the start, counting frames (streams whose packets have no timestamps)."""
        wanted_set, highest = set(wanted.tolist()), int(wanted[-1])
        frames: dict[int, np.ndarray] = {}
        last_index, last_frame = -1, None
        for last_index, last_frame in enumerate(self._cache if self._cache is not None else self._frames()):
            if last_index in wanted_set:
                frames[last_index] = keep(last_frame)
            if last_index >= highest:
                break
        if last_frame is not None and last_index not in frames:
            frames[last_index] = keep(last_frame)
        return frames

    def close(self) -> None:
        self._container.close()


def check_decoder(decoder: str) -> None:
    """Fail up front (one line) if ``decoder`` is unknown or its package is not installed."""
    if decoder not in DECODERS:
        raise DecoderUnavailableError(f"decoder must be one of {', '.join(DECODERS)}; got {decoder!r}")
    if decoder == "torchcodec":
        video_decoder_class()


def open_video(
    path: str | Path, *, decoder: str = "pyav", threads: int = 0, fps: float | None = None
) -> ClipSource:
    """The reader for ``path``: a directory is a folder of frames whatever ``decoder`` says.

    ``fps`` is the frame rate of a frame folder (files carry their own).
    """
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {', '.join(DECODERS)}; got {decoder!r}")
    if decoder == "frames" or Path(path).is_dir():
        return FrameFolderReader(path, fps=fps or 30.0)
    if decoder == "torchcodec":
        return TorchCodecReader(path, threads=threads)
    return VideoReader(path, threads=threads)


def read_clips(
    path: str | Path, plan: Callable[[int], np.ndarray], *, threads: int = 0, decoder: str = "pyav"
) -> np.ndarray:
    """Open ``path`` once, plan indices from its frame count, return ``reader.read(plan(num_frames))``."""
    with open_video(path, decoder=decoder, threads=threads) as reader:
        return reader.read(plan(reader.num_frames))
