"""Video-level learning that can fail: on videos whose label only the combination of clips shows,
comem must beat the single-clip and the score-averaging (tsn) baselines by a wide margin.

The data: every video has two parts, each showing a red or a blue square (plus a grey distractor
moving through the whole video); the label is whether both parts show the same colour. Each part
alone is red or blue with probability 1/2 whatever the label, so one clip says nothing, and
averaging per-clip scores cannot compare the parts: single and tsn stay at chance (50%).
"""

import json
from pathlib import Path

import pytest

from comem.cli import main
from comem.data.synthetic import SyntheticSpec, make_synthetic

SPEC = SyntheticSpec(num_train=96, num_val=48, size=32, num_frames=24, num_parts=2, task="parity", seed=3)
FLAGS = ["--clips", "2", "--clip-len", "4", "--stride", "2", "--crop-size", "32", "--batch-size", "8"]
FLAGS += ["--epochs", "8", "--workers", "0", "--device", "cpu", "--seed", "0", "--save-every", "0"]


@pytest.fixture(scope="module")
def same_or_different(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("same_or_different"), SPEC)


def val_top1(data: Path, out: Path, mode: str) -> float:
    assert main(["train", "--data", str(data), "--out", str(out / mode), "--mode", mode, *FLAGS]) == 0
    return json.loads((out / mode / "metrics.json").read_text())["val_top1"]


def test_comem_learns_what_only_the_whole_video_shows(same_or_different: Path, tmp_path: Path) -> None:
    top1 = {mode: val_top1(same_or_different, tmp_path, mode) for mode in ("comem", "single", "tsn")}
    assert top1["single"] <= 70 and top1["tsn"] <= 70, top1  # chance is 50%
    assert top1["comem"] >= 85, top1
    assert top1["comem"] >= max(top1["single"], top1["tsn"]) + 25, top1
