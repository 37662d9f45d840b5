"""Tiny real videos written with PyAV, so decode and dataset tests run on genuine codec output.

With ``pattern="index"`` frame ``i`` is a flat gray image of level ``gray_level(i)``, so a test can
tell from a decoded frame's mean which frame it is (H.264 moves a flat level by a unit or two).
"""

from pathlib import Path
from typing import Literal

import av
import numpy as np

GRAY_BASE = 16
GRAY_STEP = 4


def gray_level(frame_index: int) -> int:
    """Gray level written into frame ``frame_index`` by the ``"index"`` pattern."""
    return GRAY_BASE + GRAY_STEP * frame_index


def frame_index_of(frame: np.ndarray) -> int:
    """Inverse of :func:`gray_level` for a decoded ``(H, W, 3)`` frame; robust to codec noise."""
    return round((float(frame.mean()) - GRAY_BASE) / GRAY_STEP)


def _frame(i: int, height: int, width: int, pattern: str) -> np.ndarray:
    if pattern == "index":
        return np.full((height, width, 3), gray_level(i), dtype=np.uint8)
    # "gradient": a horizontal ramp whose left/right halves differ, to check flips and crops.
    ramp = np.linspace(0, 255, width, dtype=np.float32)
    image = np.broadcast_to(ramp[None, :, None], (height, width, 3))
    return np.ascontiguousarray(image).astype(np.uint8)


def write_test_video(
    path: str | Path,
    num_frames: int,
    height: int,
    width: int,
    fps: int = 24,
    codec: str = "libx264",
    pattern: Literal["index", "gradient"] = "index",
    faststart: bool = False,
) -> Path:
    """Encode ``num_frames`` frames of ``pattern`` to ``path`` (yuv420p) and return the path.

    ``index`` levels must stay below 256, so ``num_frames`` is limited to 60 for that pattern.
    """
    if pattern == "index" and gray_level(num_frames - 1) > 255:
        raise ValueError(f"pattern 'index' supports at most 60 frames, got {num_frames}")
    path = Path(path)
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width, stream.pix_fmt = height, width, "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "10", "preset": "ultrafast"}
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(_frame(i, height, width, pattern), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def write_textured_video(path: str | Path, num_frames: int, height: int, width: int, seed: int) -> Path:
    """A colour texture that changes along both axes and over time, so every crop of it differs."""
    y, x = np.mgrid[0:height, 0:width]
    offsets = np.random.default_rng(seed).integers(0, 255, 3)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.height, stream.width, stream.pix_fmt = height, width, "yuv420p"
        stream.options = {"crf": "10", "preset": "ultrafast"}
        for i in range(num_frames):
            image = np.stack([(5 * y + 2 * x + 9 * i + o) % 256 for o in offsets], axis=-1).astype(np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))
    return path


def write_audio_only(path: str | Path, codec: str = "aac", seconds: float = 0.5) -> Path:
    """Encode a short sine tone with no video stream, to check the "no video stream" error."""
    path = Path(path)
    rate = 44100
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate, layout="mono")
        t = np.arange(int(rate * seconds)) / rate
        samples = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :]
        frame = av.AudioFrame.from_ndarray(samples, format="flt", layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            container.mux(packet)
        container.mux(stream.encode(None))
    return path
