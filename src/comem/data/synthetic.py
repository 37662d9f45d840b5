"""A built-in long-range dataset: real H.264 files whose label no single short clip can know.

Each video is split into equal parts; every part shows one moving coloured square (its "event")
over a textured background with a grey distractor square that moves through the whole video.
The label is a function of the events of ALL parts, chosen so that the event of any one part is
independent of the label (every class is equally likely whatever a single part shows):

- ``distinct``: the number of distinct colours among the parts (classes "1 colour", "2 colours", …).
- ``parity``: each part's square is red or blue; the label is whether the number of red parts is
  odd (XOR over parts).
- ``order``: one part shows a red square, another a blue one, every other part a green one; the
  label is which of red and blue comes first. Every part shows one of the same three colours in
  both classes, so neither a single clip nor the set of clips tells the classes apart: only the
  clips' order does. Each square shows only in the middle third of its part (``event_frames``):
  the gap between two events, two thirds of a part (16 frames by default), is longer than a
  default clip (15 frames), so no clip sees two events and their order inside it.

A model that sees one short clip is therefore at chance; a model that combines the clips of the
video (collaborative memory) can be right. Written in the PySlowFast CSV layout that
``comem train --data`` reads, so the same command trains on it and on a user's own videos.
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import json
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import av
import numpy as np

from comem.choices import SYNTHETIC_TASKS

log = logging.getLogger(__name__)

GENERATOR_VERSION = 2  # bump when the rendering changes, so cached copies are regenerated
SyntheticTask = Literal["distinct", "parity", "order"]
CODECS: dict[str, tuple[str, str]] = {
    "h264": ("libx264", ".mp4"),
    "mpeg4": ("mpeg4", ".avi"),
    "vp9": ("libvpx-vp9", ".webm"),
}
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 80, 240),
    "yellow": (235, 215, 40),
}


@dataclass(frozen=True)
class SyntheticSpec:
    """What ``make_synthetic`` writes; saved as ``synthetic.json`` so a cache can be validated."""

    num_train: int = 480
    num_val: int = 120
    size: int = 64
    num_frames: int = 72
    num_parts: int = 3
    fps: int = 24
    task: str = "distinct"
    seed: int = 0
    distractors: int = 1  # grey squares moving through the whole video
    coloured_distractors: int = 0  # squares of palette colours present in every part (no label information)
    codec: str = "h264"  # h264 (.mp4) | mpeg4 (.avi) | vp9 (.webm)
    version: int = GENERATOR_VERSION


def class_names(spec: SyntheticSpec) -> list[str]:
    if spec.task == "parity":
        return ["even_red", "odd_red"]
    if spec.task == "order":
        return ["red_first", "blue_first"]
    max_distinct = min(spec.num_parts, len(PALETTE))
    return [f"{k}_colour{'s' if k > 1 else ''}" for k in range(1, max_distinct + 1)]


def _part_colours(task: str, label: int, num_parts: int, rng: np.random.Generator) -> list[str]:
    """Colours of the parts of one video with the given label, each valid assignment equally likely."""
    names = list(PALETTE)
    if task == "order":
        first, second = sorted(rng.choice(num_parts, size=2, replace=False).tolist())
        colours = ["green"] * num_parts
        colours[first], colours[second] = ("red", "blue") if label == 0 else ("blue", "red")
        return colours
    if task == "parity":
        while True:
            reds = rng.integers(0, 2, size=num_parts)
            if int(reds.sum()) % 2 == label:
                return ["red" if r else "blue" for r in reds]
    while True:
        colours = [names[i] for i in rng.integers(0, len(names), size=num_parts)]
        if len(set(colours)) == label + 1:
            return colours


def _background(size: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth random grey texture with a faint tint (so the model must find the squares)."""
    coarse = rng.uniform(50, 130, size=(4, 4, 1)) + rng.uniform(-8, 8, size=(4, 4, 3))
    fine = np.kron(coarse, np.ones((size // 4 + 1, size // 4 + 1, 1)))[:size, :size]
    return fine.astype(np.float32)


def _trajectory(num_frames: int, size: int, square: int, rng: np.random.Generator) -> np.ndarray:
    """Top-left corners (num_frames, 2) of a square bouncing around the frame."""
    position = rng.uniform(0, size - square, size=2)
    velocity = rng.uniform(-2.5, 2.5, size=2)
    corners = np.empty((num_frames, 2))
    for t in range(num_frames):
        corners[t] = position
        position = position + velocity
        for axis in range(2):
            if not 0 <= position[axis] <= size - square:
                velocity[axis] = -velocity[axis]
                position[axis] = np.clip(position[axis], 0, size - square)
    return corners.astype(int)


def event_frames(task: str, num_frames: int, num_parts: int) -> np.ndarray:
    """Which frames (bool, (num_frames,)) show their part's event: all of them, or for ``order`` the
    middle third of each part, so events are far apart in time (module docstring)."""
    if task != "order":
        return np.ones(num_frames, dtype=bool)
    position = (np.arange(num_frames) * num_parts) % num_frames  # where in its part, x num_frames
    return (3 * position >= num_frames) & (3 * position < 2 * num_frames)


def render_video(colours: list[str], spec: SyntheticSpec, rng: np.random.Generator) -> np.ndarray:
    """Frames (num_frames, size, size, 3) uint8 of one video whose parts show ``colours``.

    Distractors move through the whole video: grey squares, and ``coloured_distractors`` smaller
    squares of random palette colours, the same in every part, so they say nothing of the label.
    """
    size, num_frames = spec.size, spec.num_frames
    square = max(size // 4, 4)
    small = max(size // 8, 2)
    background = _background(size, rng)
    grey = [_trajectory(num_frames, size, square, rng) for _ in range(spec.distractors)]
    names = list(PALETTE)
    tinted = [
        (_trajectory(num_frames, size, small, rng), PALETTE[names[int(rng.integers(len(names)))]])
        for _ in range(spec.coloured_distractors)
    ]
    part_of_frame = np.minimum(np.arange(num_frames) * len(colours) // num_frames, len(colours) - 1)
    event_paths = [_trajectory(num_frames, size, square, rng) for _ in colours]
    shown = event_frames(spec.task, num_frames, len(colours))
    frames = np.empty((num_frames, size, size, 3), dtype=np.uint8)
    for t in range(num_frames):
        frame = background.copy()
        for path in grey:
            y, x = path[t]
            frame[y : y + square, x : x + square] = 128
        for path, colour in tinted:
            y, x = path[t]
            frame[y : y + small, x : x + small] = colour
        part = part_of_frame[t]
        if shown[t]:
            y, x = event_paths[part][t]
            frame[y : y + square, x : x + square] = PALETTE[colours[part]]
        frames[t] = np.clip(frame, 0, 255).astype(np.uint8)
    return frames


def write_video(path: Path, frames: np.ndarray, fps: int, codec: str = "h264") -> None:
    """Encode RGB frames (T, H, W, 3) with PyAV (yuv420p) in ``codec`` (see ``CODECS``)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(CODECS[codec][0], rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        if codec == "h264":
            stream.options = {"crf": "18", "preset": "veryfast"}
        else:
            stream.bit_rate = 2_000_000
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_mp4(path: Path, frames: np.ndarray, fps: int) -> None:
    """Encode RGB frames (T, H, W, 3) as H.264 (yuv420p) with PyAV."""
    write_video(path, frames, fps, "h264")


def make_synthetic(out_dir: str | Path, spec: SyntheticSpec = SyntheticSpec()) -> Path:
    """Write ``spec`` as mp4 files + ``train.csv``/``val.csv``/``classes.txt`` under ``out_dir``.

    Classes are balanced in both splits. Returns ``out_dir``.
    """
    if spec.task not in SYNTHETIC_TASKS:
        raise ValueError(f"task must be one of {SYNTHETIC_TASKS}, got {spec.task!r}")
    if spec.codec not in CODECS:
        raise ValueError(f"codec must be one of {tuple(CODECS)}, got {spec.codec!r}")
    if spec.task == "order" and spec.num_parts < 2:
        raise ValueError(f"the order task needs at least 2 parts, got {spec.num_parts}")
    if spec.num_frames < spec.num_parts:
        raise ValueError(f"num_frames ({spec.num_frames}) must be at least num_parts ({spec.num_parts})")
    out = Path(out_dir)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    names = class_names(spec)
    rng = np.random.default_rng(spec.seed)
    for split, count in (("train", spec.num_train), ("val", spec.num_val)):
        rows = []
        for index in range(count):
            label = index % len(names)
            colours = _part_colours(spec.task, label, spec.num_parts, rng)
            relative = Path("videos") / f"{split}_{index:05d}{CODECS[spec.codec][1]}"
            write_video(out / relative, render_video(colours, spec, rng), spec.fps, spec.codec)
            rows.append((relative.as_posix(), label))
        with open(out / f"{split}.csv", "w", newline="") as handle:
            csv.writer(handle, delimiter=" ").writerows(rows)
    (out / "classes.txt").write_text("\n".join(names) + "\n")
    (out / "synthetic.json").write_text(json.dumps(asdict(spec), indent=2) + "\n")
    return out


def ensure_synthetic(cache_dir: str | Path, spec: SyntheticSpec = SyntheticSpec()) -> Path:
    """The built-in dataset under ``cache_dir``, generated on first use (and again if the spec changed)."""
    name = f"synthetic-{spec.task}-{spec.size}px-seed{spec.seed}-v{spec.version}"
    default = SyntheticSpec(task=spec.task, size=spec.size, seed=spec.seed)
    if spec != default:  # other variants get a directory of their own
        name += "-" + hashlib.sha1(json.dumps(asdict(spec), sort_keys=True).encode()).hexdigest()[:8]
    out = Path(cache_dir) / name
    marker = out / "synthetic.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two runs starting at once generate it once
        if marker.exists() and json.loads(marker.read_text()) == asdict(spec):
            return out
        tmp = out.with_name(out.name + ".partial")
        if tmp.exists():
            shutil.rmtree(tmp)
        log.info(f"generating the built-in dataset ({spec.num_train} + {spec.num_val} videos) in {out}")
        make_synthetic(tmp, spec)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    return out
