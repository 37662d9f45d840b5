"""A video stored as a folder of JPEG/PNG frames (Something-Something V1, PySlowFast Charades frames).

Frames are the folder's image files in name order (``00001.jpg``, ``vid-000002.jpg``, ...), so
frame ``i`` is the ``i``-th file. Only the frames asked for are read and decoded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from comem.data.source import ClosingReader, VideoDecodeError, check_indices, gather

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})


class FrameFolderReader(ClosingReader):
    """Same interface as :class:`comem.data.decode.VideoReader`; ``fps`` is given, not stored."""

    def __init__(self, path: str | Path, *, fps: float = 30.0) -> None:
        self.path = str(path)
        folder = Path(path)
        if not folder.exists():
            raise VideoDecodeError(path, "frame folder not found")
        if not folder.is_dir():
            raise VideoDecodeError(path, "not a folder of frames (--decoder frames reads JPEG folders)")
        self.files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise VideoDecodeError(path, "no .jpg/.png frames in folder")
        self.num_frames = len(self.files)
        self.fps = fps

    def frame_times(self) -> np.ndarray:
        return np.arange(self.num_frames) / self.fps

    def _decode(self, index: int) -> np.ndarray:
        file = self.files[index]
        try:
            with Image.open(file) as image:
                return np.asarray(image.convert("RGB"))
        except (OSError, ValueError) as error:
            raise VideoDecodeError(file, f"cannot decode frame ({' '.join(str(error).split())})") from error

    def read(self, indices: np.ndarray) -> np.ndarray:
        """RGB frames at ``indices``: uint8 ``indices.shape + (H, W, 3)``; each file decoded once."""
        indices = check_indices(self.path, indices, self.num_frames)
        if indices.size == 0:
            return np.empty(indices.shape + (0, 0, 3), dtype=np.uint8)
        frames = {int(i): self._decode(int(i)) for i in np.unique(indices)}
        shapes = {frame.shape for frame in frames.values()}
        if len(shapes) > 1:
            raise VideoDecodeError(self.path, f"frames differ in size: {sorted(shapes)}")
        return gather(self.path, indices, frames)
