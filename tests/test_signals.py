"""Every stop signal, at any moment, leaves a last.pt from which the run resumes bit for bit."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tinydata import TINY_TRAIN_FLAGS

from comem.cli import main

TESTS = Path(__file__).parent
SRC = TESTS.parent / "src"
# 4 train videos in batches of 2, 3 epochs: 6 steps; dropout on, so the random state must be exact too.
FLAGS = [*TINY_TRAIN_FLAGS, "--batch-size", "2", "--epochs", "3", "--save-every", "0", "--dropout", "0.5"]


def environment() -> dict[str, str]:
    paths = [str(SRC), str(TESTS), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p), "OMP_NUM_THREADS": "1",
            "TQDM_DISABLE": "1"}  # fmt: skip


def test_signals_at_random_moments_resume_bit_for_bit(tiny_dataset: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(TESTS / "signal_driver.py"),
            str(tiny_dataset),
            str(tmp_path),
            "12",
            "7",
            *FLAGS,
        ],
        capture_output=True,
        text=True,
        env=environment(),
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    records = json.loads(done.stdout.split("RESULT ", 1)[1])
    stopped = [r for r in records if r["stopped"]]
    assert len(stopped) >= 5, records  # most moments fall inside the run
    assert {r["signal"] for r in stopped} == {"SIGINT", "SIGTERM", "SIGUSR1"}, records
    for record in records:
        assert record["code"] in (0, 128 + getattr(signal, record["signal"])), record
        assert record["history_equal"] and record["state_equal"], record
    for record in stopped:
        assert record["stop_lines"] == 1 and record["resume_code"] == 0, record


@pytest.fixture(scope="module")
def straight(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("straight")
    assert main(["train", "--data", str(tiny_dataset), "--out", str(out), *FLAGS]) == 0
    return out


@pytest.mark.parametrize("name", ["SIGTERM", "SIGHUP"])
def test_a_stop_signal_from_outside_saves_says_one_line_and_resumes_exactly(
    name: str, straight: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    """What SLURM and Kubernetes do (SIGTERM to ``comem train`` while it trains), and what a closed
    terminal or ssh session does (SIGHUP)."""
    signum = getattr(signal, name)
    out = tmp_path / "stopped"
    argv = [sys.executable, "-m", "comem", "train", "--data", str(tiny_dataset), "--out", str(out), *FLAGS]
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment()
    )
    shown = [process.stdout.readline() for _ in range(3)]  # the command, the plan, "epoch 1/3: ...":
    assert shown[1].startswith("plan: ") and shown[2].startswith("epoch 1/3:"), shown  # in epoch 2 now
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signum, stderr
    lines = stdout.splitlines()
    assert [line for line in lines if name in line] == [
        f"{name}: stopped at a step boundary; saved {out / 'last.pt'}; continue with --resume"
    ]
    assert "Traceback" not in stderr
    saved = torch.load(out / "last.pt", weights_only=True)
    assert 2 <= saved["global_step"] <= 6
    assert main(["train", "--data", str(tiny_dataset), "--out", str(out), *FLAGS, "--resume"]) == 0
    assert (
        json.loads((out / "metrics.json").read_text())["history"]
        == json.loads((straight / "metrics.json").read_text())["history"]
    )
    a, b = torch.load(out / "last.pt", weights_only=True), torch.load(straight / "last.pt", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in b["model"])
