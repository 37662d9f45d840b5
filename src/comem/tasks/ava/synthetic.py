"""A generated AVA-format data dir: short movies of moving "actors" whose boxes and actions are known.

Each movie starts at second 900 (frame 0) and shows two square actors, one in each half of the frame,
on a textured grey background. Per keyframe second an actor may

- ``walk`` (class 1): move back and forth horizontally,
- ``jump`` (class 2): move up and down,
- ``cued`` (class 3, the long-range action): every actor of a movie has it when the movie *opened*
  with a bright cue (its first ``cue_seconds``), which no keyframe clip shows: only a memory that
  spans the movie can tell.

Class 4 ``hidden`` appears in the ground truth but not in the label map (AVA's CSVs carry 80 classes,
60 are evaluated). Proposals are the ground-truth boxes slightly moved with scores above the
default threshold, plus one false box per keyframe with a score around it. The last keyframe of each
validation movie is listed as excluded (and has no ground truth).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from PIL import Image

from comem.tasks.ava.data import FIRST_SECOND, FPS, AvaLayout, frame_of_second

CLASS_NAMES = ("walk", "jump", "cued")
HIDDEN_CLASS = 4
ACTOR = 0.3  # actor side as a fraction of the frame


@dataclass(frozen=True)
class SyntheticAvaSpec:
    train_movies: int = 16
    val_movies: int = 8
    size: int = 64  # frame side in pixels
    keyframes: int = 6  # keyframe seconds per movie, from 904 on
    cue_seconds: int = 3  # the opening that shows (or not) the cue
    version: str = "2.2"
    seed: int = 0
    movies: bool = False  # also write videos_15min/ID.mp4 (H.264, 30 fps), the raw-movie layout

    @property
    def seconds(self) -> int:
        """Movie length in seconds from second 900: the keyframes plus one second of tail."""
        return 4 + self.keyframes + 1

    @property
    def keyframe_seconds(self) -> list[int]:
        return [FIRST_SECOND + 4 + i for i in range(self.keyframes)]


def _labelmap_text(version: str) -> str:
    if version == "2.1":
        return "".join(f'item {{\n  name: "{name}"\n  id: {i}\n}}\n' for i, name in enumerate(CLASS_NAMES, 1))
    return "".join(
        f'label {{\n  name: "{name}"\n  label_id: {i}\n  label_type: PERSON_MOVEMENT\n}}\n'
        for i, name in enumerate(CLASS_NAMES, 1)
    )


def _triangle(t: float, period: float) -> float:
    """A wave in [-1, 1] of the given period (frames)."""
    phase = (t / period) % 1.0
    return 4 * phase - 1 if phase < 0.5 else 3 - 4 * phase


class _Actor:
    def __init__(self, half: int, rng: random.Random, seconds: int) -> None:
        self.half = half
        self.color = np.array([rng.randint(40, 220) for _ in range(3)], dtype=np.float32)
        self.base_x = 0.25 + 0.5 * half + rng.uniform(-0.03, 0.03)
        self.base_y = 0.5 + rng.uniform(-0.1, 0.1)
        self.walk = [rng.random() < 0.5 for _ in range(seconds)]
        self.jump = [rng.random() < 0.5 for _ in range(seconds)]
        self.hidden = [rng.random() < 0.3 for _ in range(seconds)]
        self.phase = rng.uniform(0, 40)

    def center(self, frame: int) -> tuple[float, float]:
        second = min(frame // FPS, len(self.walk) - 1)
        x, y = self.base_x, self.base_y
        if self.walk[second]:
            x += 0.08 * _triangle(frame + self.phase, 20)
        if self.jump[second]:
            y += 0.15 * _triangle(frame + self.phase, 20)
        return x, y

    def box(self, frame: int) -> tuple[float, float, float, float]:
        x, y = self.center(frame)
        return (x - ACTOR / 2, y - ACTOR / 2, x + ACTOR / 2, y + ACTOR / 2)


def _render(actors: list[_Actor], frame: int, size: int, background: np.ndarray, cue: bool) -> Image.Image:
    image = background.copy()
    if cue:
        image = np.clip(image + 110.0, 0, 255)
    for actor in actors:
        x1, y1, x2, y2 = (round(v * size) for v in actor.box(frame))
        image[max(y1, 0) : min(y2, size), max(x1, 0) : min(x2, size)] = actor.color
    return Image.fromarray(image.astype(np.uint8))


def _write_movie(path: Path, images: list[Image.Image]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = images[0].width, images[0].height, "yuv420p"
        stream.options = {"crf": "12", "preset": "ultrafast", "g": str(FPS)}
        for image in images:
            container.mux(stream.encode(av.VideoFrame.from_image(image)))
        container.mux(stream.encode(None))


def _fmt(box: tuple[float, ...]) -> str:
    return ",".join(f"{min(max(v, 0.0), 1.0):.3f}" for v in box)


def write_synthetic_ava(root: str | Path, spec: SyntheticAvaSpec = SyntheticAvaSpec()) -> Path:
    """Write the data dir (frames, frame lists, annotations, proposals, label map, exclusions)."""
    root = Path(root)
    layout = AvaLayout(root, spec.version)
    layout.annotations.mkdir(parents=True, exist_ok=True)
    (root / "frame_lists").mkdir(exist_ok=True)
    layout.labelmap.write_text(_labelmap_text(spec.version))
    rng = random.Random(spec.seed)
    texture = np.random.default_rng(spec.seed)
    for split, count in (("train", spec.train_movies), ("val", spec.val_movies)):
        frame_rows = ["original_vido_id video_id frame_id path labels"]
        gt_rows, proposal_rows, excluded = [], [], []
        for movie in range(count):
            video_id = f"{split}_{movie:03d}"
            cued = movie % 2 == 0  # balanced: half the movies open with the cue
            actors = [_Actor(half, rng, spec.seconds) for half in (0, 1)]
            background = np.repeat(
                texture.integers(70, 110, size=(spec.size, spec.size, 1)).astype(np.float32), 3, axis=2
            )
            movie_dir = root / "frames" / video_id
            movie_dir.mkdir(parents=True, exist_ok=True)
            images = []
            for frame in range(spec.seconds * FPS):
                cue = cued and frame < spec.cue_seconds * FPS
                name = f"{video_id}/{video_id}_{frame + 1:06d}.jpg"
                images.append(_render(actors, frame, spec.size, background, cue))
                images[-1].save(root / "frames" / name, quality=95)
                frame_rows.append(f'{video_id} {movie} {frame} {name} ""')
            if spec.movies:
                _write_movie(root / "videos_15min" / f"{video_id}.mp4", images)
            seconds = spec.keyframe_seconds
            for second in seconds:
                if split == "val" and second == seconds[-1]:
                    excluded.append(f"{video_id},{second:04d}")
                    for actor in actors:
                        proposal_rows.append(
                            f"{video_id},{second:04d},{_fmt(actor.box(frame_of_second(second)))},,0.99"
                        )
                    continue
                frame = frame_of_second(second)
                index = second - FIRST_SECOND
                for person, actor in enumerate(actors):
                    box = _fmt(actor.box(frame))
                    labels = [1] * actor.walk[index] + [2] * actor.jump[index] + [3] * cued
                    labels += [HIDDEN_CLASS] * actor.hidden[index]
                    gt_rows += [f"{video_id},{second:04d},{box},{label},{person}" for label in labels]
                    moved = tuple(v + rng.uniform(-0.02, 0.02) for v in actor.box(frame))
                    proposal_rows.append(
                        f"{video_id},{second:04d},{_fmt(moved)},,{rng.uniform(0.9, 1.0):.6f}"
                    )
                x = rng.uniform(0.0, 0.6)
                false_box = (x, 0.0, x + 0.4, 0.25)
                proposal_rows.append(
                    f"{video_id},{second:04d},{_fmt(false_box)},,{rng.uniform(0.8, 0.95):.6f}"
                )
        (root / "frame_lists" / f"{split}.csv").write_text("\n".join(frame_rows) + "\n")
        layout.groundtruth(split).write_text("".join(row + "\n" for row in gt_rows))
        layout.proposals(split).write_text("".join(row + "\n" for row in proposal_rows))
        layout.exclusions(split).write_text("".join(row + "\n" for row in excluded))
    return root


def ensure_synthetic_ava(home: Path, spec: SyntheticAvaSpec = SyntheticAvaSpec()) -> Path:
    """The default synthetic AVA dir under ``home``, generated on first use."""
    name = (
        f"synthetic_ava_v1_{spec.train_movies}x{spec.val_movies}_{spec.size}px_{spec.keyframes}k_s{spec.seed}"
    )
    root = home / name
    done = root / ".complete"
    if not done.exists():
        write_synthetic_ava(root, spec)
        done.write_text("ok\n")
    return root
