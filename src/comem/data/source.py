"""What every frame reader shares: the reader interface, its one-line error, index checks.

The backends (:mod:`comem.data.decode` for PyAV, :mod:`comem.data.frame_folder`,
:mod:`comem.data.torchcodec_reader`) build on this module, and :func:`comem.data.decode.open_video`
picks one of them.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Protocol

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


class DecoderUnavailableError(UserError):
    """A decoder backend was asked for whose package is not installed."""


class ClipSource(Protocol):
    """What datasets need from any backend: a frame count, frame times and indexed reads."""

    path: str
    num_frames: int
    fps: float

    def frame_times(self) -> np.ndarray: ...

    def read(self, indices: np.ndarray) -> np.ndarray: ...

    def close(self) -> None: ...

    def __enter__(self) -> ClipSource: ...

    def __exit__(self, *exc: object) -> None: ...


class ClosingReader:
    """``with reader:`` closes it; readers holding no open resource need not define ``close``."""

    def close(self) -> None:
        pass

    def __enter__(self) -> ClosingReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def check_indices(path: str, indices: np.ndarray, num_frames: int) -> np.ndarray:
    """``indices`` as an integer array inside ``[0, num_frames)``, or a ValueError naming the file."""
    indices = np.asarray(indices)
    if not np.issubdtype(indices.dtype, np.integer):
        raise ValueError(f"{path}: frame indices must be integers, got dtype {indices.dtype}")
    if indices.size:
        lowest, highest = int(indices.min()), int(indices.max())
        if lowest < 0 or highest >= num_frames:
            raise ValueError(
                f"{path}: frame indices must lie in [0, {num_frames - 1}], got [{lowest}, {highest}]"
            )
    return indices


def gather(path: str, indices: np.ndarray, frames: dict[int, np.ndarray]) -> np.ndarray:
    """Stack ``frames[i]`` for every index; an index that was never decoded (stream ended early,
    damaged frame) takes the nearest decoded frame before it, or after it if there is none before."""
    if not frames:
        raise VideoDecodeError(path, "no frames decoded")
    have = np.array(sorted(frames))
    unique, inverse = np.unique(indices, return_inverse=True)
    position = np.searchsorted(have, unique, side="right") - 1
    chosen = have[np.maximum(position, 0)]
    stacked = np.stack([frames[int(i)] for i in chosen])
    return stacked[inverse.reshape(indices.shape)]
