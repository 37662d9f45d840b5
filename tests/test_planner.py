"""The planner: its meta-device estimate, the chunks it picks under a budget, and its plan line."""

from pathlib import Path

import pytest
import torch
from tinydata import TINY_TRAIN_FLAGS

from comem.cli import main
from comem.engine.planner import GIB, StepMemory, plan_chunks, step_memory
from comem.models.build import ModelSpec, build_model

SHAPE = (4, 4, 3, 8, 32, 32)  # B, N, C, T, H, W


def tiny_memory(half: bool = False) -> StepMemory:
    model = build_model(ModelSpec(backbone="tiny", num_classes=5, memory_stages=("layer3", "layer4")))
    return step_memory(model, SHAPE, half_precision=half)


def test_the_estimate_counts_what_a_clip_saves_and_the_training_state() -> None:
    model = build_model(ModelSpec(backbone="tiny", num_classes=5, memory_stages=("layer3", "layer4")))
    memory = step_memory(model, SHAPE, half_precision=False)
    parameters = sum(p.numel() for p in model.parameters())
    assert memory.state == 16 * parameters  # float32 weights, gradients, two AdamW moments
    assert memory.video == 4 * 4 * 3 * 8 * 32 * 32  # uint8
    # a clip's saved activations: at least the float32 input of the first convolution of 4 clips
    assert memory.clip_saved >= 4 * 3 * 8 * 32 * 32 * 4
    assert memory.clip_largest < memory.clip_saved and 0 < memory.clip_carried <= memory.clip_largest
    half = step_memory(model, SHAPE, half_precision=True)
    assert half.clip_saved == memory.clip_saved // 2 and half.state == memory.state
    assert next(model.parameters()).device.type == "cpu"  # the model itself is untouched
    # the modes: joint holds N clips' activations, comem one, K = N none of the memory pass
    assert memory.peak("joint") - memory.peak("single") == 3 * memory.clip_saved + 3 * memory.video // 4
    assert (
        memory.peak("single") < memory.peak("comem", 1, 1) < memory.peak("comem", 1, 2) < memory.peak("joint")
    )
    assert memory.peak("comem", 1, 4) == memory.peak("joint")


def test_the_planner_picks_the_largest_chunks_that_fit_and_keeps_given_ones() -> None:
    memory = tiny_memory()
    for grad in (1, 2, 3, 4):  # a budget just above K clips' peak gives grad chunk K
        budget = (memory.peak("comem", 1, grad) + 1) / GIB
        plan = plan_chunks(memory, "comem", 1, "auto", budget, "cpu")
        assert plan.grad_chunk == grad and plan.peak_gib <= budget
    plan = plan_chunks(memory, "comem", "auto", 1, 100.0, "cpu")
    assert (plan.memory_chunk, plan.grad_chunk) == (4, 1)
    tight = plan_chunks(memory, "comem", "auto", "auto", 1e-6, "cpu")  # nothing fits: 1 and 1, said
    assert (tight.memory_chunk, tight.grad_chunk) == (1, 1) and "over the budget" in tight.line()
    kept = plan_chunks(memory, "comem", 3, 2, 100.0, "cuda")
    assert kept.line() == f"plan: memory chunk 3, grad chunk 2, est. peak {kept.peak_gib:.3g} GiB of 100"
    assert plan_chunks(memory, "joint", 1, 1, 100.0, "cpu").line().startswith("plan: mode joint, est. peak")


def test_train_says_the_plan_at_start_and_runs_the_chunks_it_picked(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    argv = ["train", "--data", str(tiny_dataset), "--out", str(out), "--epochs", "1", *TINY_TRAIN_FLAGS]
    assert main([*argv, "--grad-chunk", "auto", "--memory-chunk", "auto", "--memory-budget", "64"]) == 0
    log = (out / "train.log").read_text()
    assert "plan: memory chunk 2, grad chunk 2, est. peak " in log and "GiB of 64 (the CPU's memory)" in log
    saved = torch.load(out / "last.pt", map_location="cpu", weights_only=False)["config"]
    assert saved["grad_chunk"] == "auto"  # the run's options as given; the plan is re-made on resume


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--grad-chunk", "some"], "--grad-chunk must be a positive integer or auto; got 'some'"),
        (["--memory-chunk", "0"], "--memory-chunk must be >= 1; got 0"),
        (["--memory-budget", "0"], "--memory-budget must be > 0; got 0.0"),
        (["--task", "ava", "--grad-chunk", "2"], "--grad-chunk must be 1 for AVA detection"),
    ],
)
def test_bad_chunk_options_are_one_line_errors(flags: list[str], message: str, capsys) -> None:
    assert main(["train", *TINY_TRAIN_FLAGS, *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_bench_plan_prints_every_mode_and_chunk(capsys) -> None:
    argv = [
        "bench",
        "plan",
        "--backbone",
        "tiny",
        "--batch-size",
        "2",
        "--clip-len",
        "4",
        "--crop-size",
        "32",
    ]
    assert main([*argv, "--clips", "4", "--precision", "fp32"]) == 0
    out = capsys.readouterr().out
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [(r[0], r[2], r[3]) for r in rows] == [
        ("| single", "—", "—"),
        ("| joint", "—", "—"),
        ("| comem", "1", "1"),
        ("| comem", "2", "2"),
        ("| comem", "— (no memory pass)", "4"),
    ]
    peaks = [float(r[4]) for r in rows]
    speeds = [float(r[5].rstrip(" |")) for r in rows]
    assert peaks[0] <= peaks[2] < peaks[3] < peaks[4] == peaks[1]  # comem K=1 about single, K=N as joint
    assert speeds[0] == speeds[1] == 1.0 and speeds[4] > 0.99  # K = N: joint's FLOPs
    assert 0.6 < speeds[2] < 0.8 and speeds[3] == pytest.approx(speeds[2], abs=0.005)
