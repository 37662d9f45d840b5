"""The scripts in examples/ run as a user runs them: a plain loop, torchrun with DDP, prediction."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def run(args: list[str], cwd: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def losses(output: str) -> list[float]:
    return [float(value) for value in re.findall(r"^step \d+  loss ([0-9.]+)$", output, re.MULTILINE)]


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.py")), ids=lambda path: path.name)
def test_examples_are_short(path: Path) -> None:
    assert len(path.read_text().splitlines()) < 60


def test_plain_loop_trains_wrapped_r3d18_in_comem_mode(tmp_path: Path) -> None:
    import torch

    output = run(
        [sys.executable, str(EXAMPLES / "train_r3d18.py"), "--steps", "4", "--out", "w.pt"], tmp_path
    )
    values = losses(output)
    assert len(values) == 4 and values[-1] < 0.5 * values[0], output
    state = torch.load(tmp_path / "w.pt", weights_only=True)
    assert (
        "fc.weight" in state and "layer1.0.conv1.0.weight" in state and "memories.layer4.key.weight" in state
    )


def test_ddp_example_under_torchrun_keeps_ranks_in_step(tmp_path: Path) -> None:
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    output = run([*torchrun, str(EXAMPLES / "train_ddp.py")], tmp_path)
    values = losses(output)
    assert len(values) == 3 and values[-1] < values[0], output
    # both ranks write to one pipe, so one line may run into the next: match the number itself
    checksums = dict(re.findall(r"rank (\d) weights checksum ([-+]?\d\.\d+e[-+]\d+)", output))
    assert sorted(checksums) == ["0", "1"] and len(set(checksums.values())) == 1, output


def test_predict_example_on_a_trained_checkpoint(tiny_checkpoint: Path, tmp_path: Path) -> None:
    output = run([sys.executable, str(EXAMPLES / "predict.py"), str(tiny_checkpoint)], tmp_path)
    assert re.search(r"^(gray|ramp) +0\.\d{3}$", output, re.MULTILINE), output
    assert "memory after layer4: row i" in output and "video scores from clips: [" in output


def test_video_clips_example_trains_on_real_videos(tmp_path: Path) -> None:
    from tinydata import write_dataset

    root = write_dataset(tmp_path / "data", num_train=4, num_val=2)
    output = run(
        [sys.executable, str(EXAMPLES / "train_video_clips.py"), str(root), "--steps", "5"], tmp_path
    )
    values = losses(output)
    assert len(values) == 5 and values[-1] < values[0], output


def test_lightning_example_trains_with_manual_optimisation(tmp_path: Path) -> None:
    pytest.importorskip("lightning")
    output = run([sys.executable, str(EXAMPLES / "lightning_comem.py"), "--steps", "4"], tmp_path)
    values = losses(output)
    assert len(values) == 4 and values[-1] < values[0], output
