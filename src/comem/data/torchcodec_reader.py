"""The torchcodec backend (optional: ``pip install torchcodec``), behind the same reader interface.

torchcodec scans the file on open (``seek_mode="exact"``) and ``get_frames_at`` decodes a batch of
indices in one pass, which is the decode-once plan comem uses with PyAV.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from comem.data.source import ClosingReader, DecoderUnavailableError, VideoDecodeError, check_indices


def video_decoder_class() -> type:
    try:
        from torchcodec.decoders import VideoDecoder
    except ImportError as error:
        raise DecoderUnavailableError(
            f"--decoder torchcodec needs the torchcodec package ({error}); "
            "install it (pip install torchcodec) or use --decoder pyav"
        ) from None
    return VideoDecoder


class TorchCodecReader(ClosingReader):
    """Same interface as :class:`comem.data.decode.VideoReader`, decoding with torchcodec."""

    def __init__(self, path: str | Path, *, threads: int = 0) -> None:
        decoder_class = video_decoder_class()
        self.path = str(path)
        file = Path(path)
        if not file.is_file():
            raise VideoDecodeError(path, "file not found" if not file.exists() else "not a regular file")
        if file.stat().st_size == 0:
            raise VideoDecodeError(path, "empty file (0 bytes)")
        try:
            self._decoder = decoder_class(
                self.path, dimension_order="NHWC", num_ffmpeg_threads=max(threads, 1), seek_mode="exact"
            )
        except (RuntimeError, ValueError) as error:
            raise VideoDecodeError(path, f"cannot open ({' '.join(str(error).split())})") from error
        metadata = self._decoder.metadata
        self.num_frames = int(metadata.num_frames or 0)
        if self.num_frames < 1:
            raise VideoDecodeError(path, "no frames in stream")
        self.fps = float(metadata.average_fps or 0.0)
        self.height, self.width = int(metadata.height), int(metadata.width)

    def frame_times(self) -> np.ndarray:
        return np.arange(self.num_frames) / (self.fps or 30.0)

    def read(self, indices: np.ndarray) -> np.ndarray:
        indices = check_indices(self.path, indices, self.num_frames)
        if indices.size == 0:
            return np.empty(indices.shape + (self.height, self.width, 3), dtype=np.uint8)
        unique, inverse = np.unique(indices, return_inverse=True)
        try:
            batch = self._decoder.get_frames_at(indices=unique.tolist())
        except (RuntimeError, ValueError, IndexError) as error:
            raise VideoDecodeError(self.path, f"cannot decode ({' '.join(str(error).split())})") from error
        frames = batch.data.numpy()
        return frames[inverse.reshape(indices.shape)]

    def close(self) -> None:
        self._decoder = None
