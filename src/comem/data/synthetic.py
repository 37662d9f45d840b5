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
  clips' order does. The events are short flashes laid out for the clips a sampler draws
  (``event_windows``): event ``i`` sits inside the ``i``-th of ``num_parts`` equal segments of the
  clip starts (where ``train_clip_starts`` draws clip ``i`` and ``eval_clip_starts`` puts it), all
  shifted by one random amount per video, so where an event shows inside a clip is distributed the
  same in every part and a clip cannot tell which part it is in; and consecutive events are at
  least one clip span apart, so no clip sees two events and their order inside it.

A model that sees one short clip is therefore at chance; a model that combines the clips of the
video (collaborative memory) can be right. Written in the PySlowFast CSV layout that
``comem train --data`` reads, so the same command trains on it and on a user's own videos.
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import itertools
import json
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import av
import numpy as np

from comem.choices import SYNTHETIC_TASKS
from comem.data.sampling import clip_span, eval_clip_starts

log = logging.getLogger(__name__)

GENERATOR_VERSION = 3  # bump when the rendering changes, so cached copies are regenerated
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
    clip_len: int = 8  # order: the clips (frames, stride) the events are laid out for; comem train's defaults
    stride: int = 2
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


def _event_length(starts: list[int], span: int) -> int:
    """Frames of one ``order`` event whose clips start at ``starts``: at least one clip span between
    consecutive events, and at most a third of a clip span plus one (``event_layout``); below 2 the
    videos are too short."""
    closest = min(b - a for a, b in zip(starts, starts[1:], strict=False))
    return min(closest - span + 1, -(-span // 3) + 1)


def event_layout(spec: SyntheticSpec) -> tuple[list[int], int, int]:
    """Where the ``order`` events may go: (first frame of each event with no shift, event length in
    frames, largest shift either way).

    Event ``i`` is centred in the clip ``eval_clip_starts`` puts in segment ``i`` of
    ``num_parts``, and every shift up to the largest keeps it inside that clip.
    """
    span = clip_span(spec.clip_len, spec.stride)
    starts = eval_clip_starts(spec.num_frames, spec.num_parts, span)
    length = _event_length(starts, span)
    if length < 2:
        needed = next(
            frames
            for frames in itertools.count(spec.num_frames + 1)
            if _event_length(eval_clip_starts(frames, spec.num_parts, span), span) >= 2
        )
        raise ValueError(
            f"order videos of {spec.num_frames} frames are too short for {spec.num_parts} events more than a "
            f"{span}-frame clip apart (clip_len {spec.clip_len}, stride {spec.stride}): use {needed} frames "
            "or more, or shorter clips"
        )
    offset = (span - length) // 2
    return [start + offset for start in starts], length, offset


def event_windows(spec: SyntheticSpec, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Frames ``[first, end)`` that show each part's event in one video: the whole part, or for
    ``order`` the flashes of ``event_layout`` shifted together by one random amount (module docstring)."""
    if spec.task != "order":  # frame t is in part t * num_parts // num_frames
        bounds = [-(-part * spec.num_frames // spec.num_parts) for part in range(spec.num_parts + 1)]
        return list(zip(bounds, bounds[1:], strict=False))
    firsts, length, most = event_layout(spec)
    shift = int(rng.integers(-most, most + 1))
    return [(first + shift, first + shift + length) for first in firsts]


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
    event_paths = [_trajectory(num_frames, size, square, rng) for _ in colours]
    event_of_frame = np.full(num_frames, -1)
    for part, (first, end) in enumerate(event_windows(spec, rng)):
        event_of_frame[first:end] = part
    frames = np.empty((num_frames, size, size, 3), dtype=np.uint8)
    for t in range(num_frames):
        frame = background.copy()
        for path in grey:
            y, x = path[t]
            frame[y : y + square, x : x + square] = 128
        for path, colour in tinted:
            y, x = path[t]
            frame[y : y + small, x : x + small] = colour
        part = event_of_frame[t]
        if part >= 0:
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
    if spec.task == "order":
        event_layout(spec)  # refuses videos too short for their events
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
