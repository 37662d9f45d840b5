"""Tiny real videos written with PyAV, so decode and dataset tests run on genuine codec output.

With ``pattern="index"`` frame ``i`` is a flat gray image of level ``gray_level(i)``, so a test can
tell from a decoded frame's mean which frame it is (H.264 moves a flat level by a unit or two).
"""

from fractions import Fraction
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
    keyint: int | None = None,
    bframes: int = 0,
    rotation: int = 0,
) -> Path:
    """Encode ``num_frames`` frames of ``pattern`` to ``path`` (yuv420p) and return the path.

    ``index`` levels must stay below 256, so ``num_frames`` is limited to 60 for that pattern.
    ``keyint`` fixes the H.264 keyframe interval, ``bframes`` the number of B-frames, ``rotation``
    stores a display-matrix rotation (counter-clockwise degrees).
    """
    if pattern == "index" and gray_level(num_frames - 1) > 255:
        raise ValueError(f"pattern 'index' supports at most 60 frames, got {num_frames}")
    path = Path(path)
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width, stream.pix_fmt = height, width, "yuv420p"
        if codec == "libx264":
            params = [f"bframes={bframes}"] + (
                [f"keyint={keyint}:min-keyint={keyint}:scenecut=0"] * bool(keyint)
            )
            stream.options = {"crf": "10", "preset": "ultrafast", "x264-params": ":".join(params)}
        if rotation:
            stream.set_display_rotation(rotation)
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


def write_vfr_video(path: str | Path, times: list[float], size: int) -> Path:
    """H.264 mp4 whose frame ``i`` (``index`` pattern) is shown at ``times[i]`` seconds (variable rate)."""
    path = Path(path)
    time_base = Fraction(1, 1000)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.height, stream.width, stream.pix_fmt = size, size, "yuv420p"
        stream.codec_context.time_base = stream.time_base = time_base
        stream.options = {"crf": "10", "preset": "ultrafast"}
        for i, seconds in enumerate(times):
            frame = av.VideoFrame.from_ndarray(_frame(i, size, size, "index"), format="rgb24")
            frame.pts, frame.time_base = round(seconds * 1000), time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def write_corrupt_corpus(root: str | Path, good: Path) -> dict[str, str]:
    """Broken and odd videos next to each other, named by what is wrong with them.

    Returns ``{file name: expected outcome}``: ``"unreadable"`` for files no decoder can use,
    ``"readable"`` for unusual files that must decode (1 frame, variable rate, rotated).
    ``good`` is a normal mp4 whose bytes the damaged copies start from.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    data = good.read_bytes()
    (root / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (root / "zero_bytes.mp4").touch()
    (root / "text_as_mp4.mp4").write_text("this is not a video\n")
    (root / "garbage.webm").write_bytes(bytes(range(256)) * 40)
    write_audio_only(root / "audio_only.m4a")
    write_test_video(root / "one_frame.mp4", 1, 32, 32)
    write_vfr_video(root / "variable_rate.mp4", [0.0, 0.05, 0.3, 0.32, 0.6, 0.61, 0.9, 1.0], 32)
    write_test_video(root / "rotated.mp4", 12, 32, 48, pattern="gradient", rotation=90)
    faststart = write_test_video(root / "cut_faststart.mp4", 60, 32, 32, faststart=True).read_bytes()
    (root / "cut_faststart.mp4").write_bytes(faststart[: len(faststart) // 2])
    return {
        "truncated.mp4": "unreadable",
        "zero_bytes.mp4": "unreadable",
        "text_as_mp4.mp4": "unreadable",
        "garbage.webm": "unreadable",
        "audio_only.m4a": "unreadable",
        "missing.mp4": "unreadable",
        "one_frame.mp4": "readable",
        "variable_rate.mp4": "readable",
        "rotated.mp4": "readable",
        "cut_faststart.mp4": "readable",  # the frames before the cut decode; check-data says "cut off"
    }
