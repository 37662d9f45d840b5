"""Small datasets in the official layouts of Kinetics, Charades and Something-Something, written
with real encoded videos (PyAV) or JPEG frames, for format and end-to-end training tests.

Every writer uses the two visual classes of :mod:`tinydata` (a rising gray level, a ramp), so a
tiny model can learn them; videos alternate between the two patterns.
"""

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image
from tinydata import FRAMES, PATTERNS, SIZE, write_video
from videos import _frame, write_test_video

KINETICS_CLASSES = ("ramp", "gray")  # written in this order; indices must follow sorted names
SS_TEMPLATES = ("Moving [something] up", "Holding [something]")


def write_frames(folder: Path, pattern: str, num_frames: int = FRAMES, name: str = "{:05d}.jpg") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(num_frames):
        Image.fromarray(_frame(i, SIZE, SIZE, pattern)).save(folder / name.format(i + 1), quality=95)
    return folder


def write_kinetics_official(root: Path, *, num_train: int = 4, num_val: int = 4, missing: int = 1) -> Path:
    """``annotations/{train,validate}.csv`` + ``{train,val}/{id}_{start:06d}_{end:06d}.mp4``.

    The last ``missing`` train rows name videos that are not on disk (as in every real download).
    """
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split, folder, count in (("train", "train", num_train + missing), ("validate", "val", num_val)):
        rows = [["label", "youtube_id", "time_start", "time_end", "split"]]
        for i in range(count):
            pattern_index = i % 2
            youtube_id, start = f"{split[:2]}Id{i:04d}-x", 10 * i
            rows.append([KINETICS_CLASSES[pattern_index], youtube_id, str(start), str(start + 10), split])
            if i < count - (missing if split == "train" else 0):
                name = f"{youtube_id}_{start:06d}_{start + 10:06d}.mp4"
                write_video(root / folder / name, 1 - pattern_index)  # "ramp" -> gradient pattern
        with (root / "annotations" / f"{split}.csv").open("w", newline="") as file:
            csv.writer(file).writerows(rows)
    return root


CHARADES_CLASSES = ("c000 Holding a gray thing", "c001 Looking at a ramp", "c002 Sitting somewhere")


def charades_actions(i: int) -> str:
    """Class 0 for gray videos, class 1 for ramps, class 2 in the first half of every third video."""
    actions = ["c000 0.0 1.0" if i % 2 == 0 else "c001 0.0 1.0"]
    if i % 3 == 0:
        actions.append("c002 0.0 0.4")
    return ";".join(actions)


def write_charades(root: Path, *, num_train: int = 6, num_val: int = 6) -> Path:
    """``Charades_v1_{train,test}.csv`` + ``Charades_v1_classes.txt`` + ``Charades_v1_480/{id}.mp4``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "Charades_v1_classes.txt").write_text("\n".join(CHARADES_CLASSES) + "\n")
    header = ["id", "subject", "scene", "quality", "relevance", "verified", "script", "objects"]
    header += ["descriptions", "actions", "length"]
    for split, count in (("train", num_train), ("test", num_val)):
        rows = [header]
        for i in range(count):
            video_id = f"{split[0].upper()}{i:04d}"
            write_video(root / "Charades_v1_480" / f"{video_id}.mp4", i % 2)
            script = "A person, holding something; then sits."
            rows.append(
                [video_id, "P1", "Kitchen", "6", "7", "Yes", script, "a;b", "x", charades_actions(i), "1.0"]
            )
        with (root / f"Charades_v1_{split}.csv").open("w", newline="") as file:
            csv.writer(file).writerows(rows)
    return root


def write_charades_frame_lists(root: Path, *, num_train: int = 4, num_val: int = 4) -> Path:
    """PySlowFast's ``frame_lists/{train,val}.csv`` over ``frames/{id}/{id}-{000001}.jpg``."""
    (root / "frame_lists").mkdir(parents=True, exist_ok=True)
    for split, count in (("train", num_train), ("val", num_val)):
        lines = ["original_vido_id video_id frame_id path labels"]
        for i in range(count):
            video_id = f"{split[0].upper()}F{i:03d}"
            write_frames(root / "frames" / video_id, PATTERNS[i % 2], name=video_id + "-{:06d}.jpg")
            for frame in range(FRAMES):
                labels = f'"{i % 2}"' if frame < FRAMES // 2 else ('"2"' if i % 3 == 0 else '""')
                lines.append(f"{video_id} {i} {frame} {video_id}/{video_id}-{frame + 1:06d}.jpg {labels}")
        (root / "frame_lists" / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return root


def write_ssv1(root: Path, *, num_train: int = 4, num_val: int = 4) -> Path:
    """``something-something-v1-{train,validation,labels}.csv`` + ``20bn-something-something-v1/{id}/``."""
    labels = [template.replace("[", "").replace("]", "") for template in SS_TEMPLATES]
    root.mkdir(parents=True, exist_ok=True)
    (root / "something-something-v1-labels.csv").write_text("\n".join(labels) + "\n")
    for split, count, offset in (("train", num_train, 1), ("validation", num_val, 1000)):
        rows = []
        for i in range(count):
            video_id = str(offset + i)
            write_frames(root / "20bn-something-something-v1" / video_id, PATTERNS[i % 2])
            rows.append(f"{video_id};{labels[i % 2]}")
        (root / f"something-something-v1-{split}.csv").write_text("\n".join(rows) + "\n")
    return root


def write_ssv2(root: Path, *, num_train: int = 4, num_val: int = 4) -> Path:
    """``something-something-v2-{train,validation,labels}.json`` + ``20bn-...-v2/{id}.webm``."""
    root.mkdir(parents=True, exist_ok=True)
    mapping = {template.replace("[", "").replace("]", ""): str(i) for i, template in enumerate(SS_TEMPLATES)}
    (root / "something-something-v2-labels.json").write_text(json.dumps(mapping))
    for split, count, offset in (("train", num_train, 1), ("validation", num_val, 5000)):
        items = []
        for i in range(count):
            video_id = str(offset + i)
            path = root / "20bn-something-something-v2" / f"{video_id}.webm"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_test_video(path, FRAMES, SIZE, SIZE, codec="libvpx-vp9", pattern=PATTERNS[i % 2])
            template = SS_TEMPLATES[i % 2]
            items.append(
                {"id": video_id, "label": template.lower(), "template": template, "placeholders": ["x"]}
            )
        (root / f"something-something-v2-{split}.json").write_text(json.dumps(items))
    return root


def multi_hot(labels: tuple[int, ...], num_classes: int) -> np.ndarray:
    target = np.zeros(num_classes, dtype=np.float32)
    target[list(labels)] = 1
    return target
