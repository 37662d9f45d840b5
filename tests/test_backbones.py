"""Every backbone builds and trains a step in each mode; SlowFast's two pathways each get a memory."""

import contextlib

import pytest
import torch

from comem.engine.modes import comem_step, joint_step, single_step
from comem.memory import CollaborativeMemory
from comem.models.backbones import BACKBONES
from comem.models.build import ModelSpec, build_model
from comem.models.layouts import PathwayMemory, TokenMemory

NUM_CLASSES = 3
# Two videos: the deep nets end at 1x1x1 on these clips, and train-mode BatchNorm needs two values.
CLIP = {"s3d": (8, 32)}  # S3D's temporal pools need 8 frames; everything else runs 4x32x32
# One memory (after the last stage) keeps the 152-layer nets quick; MViT also gets one on tokens.
MEMORY_STAGES = {"mvit_v2_s": ("stage3", "stage4")}


def tiny_video(name: str, clips: int = 2) -> torch.Tensor:
    frames, size = CLIP.get(name, (4, 32))
    return torch.randn(2, clips, 3, frames, size, size)


def gradient_names(model: torch.nn.Module) -> set[str]:
    return {key for key, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


@pytest.mark.parametrize("name", list(BACKBONES))
def test_backbone_trains_a_step_in_every_mode(name: str) -> None:
    torch.manual_seed(0)
    stages = MEMORY_STAGES.get(name, ("last",))
    model = build_model(ModelSpec(backbone=name, num_classes=NUM_CLASSES, memory_stages=stages))
    model.train()
    video, targets = tiny_video(name), torch.tensor([0, 2])
    first_stage = model.backbone.stage_names[0]

    output = comem_step(model, video, targets, contextlib.nullcontext)
    assert output.logits.shape == (2, 2, NUM_CLASSES) and torch.isfinite(output.loss)
    grads = gradient_names(model)
    assert any(key.startswith(f"backbone.stages.{first_stage}.") for key in grads)
    # The memory's output projection starts at zero, so only it gets a gradient at step 0.
    for stage, memory in model.memories.items():
        parts = [f"{stage}.pathways.{i}" for i in range(2)] if isinstance(memory, PathwayMemory) else [stage]
        for part in parts:  # SlowFast: the memory of each pathway
            assert any(key.startswith(f"memories.{part}.") for key in grads), part

    model.zero_grad()
    output = joint_step(model, video, targets, contextlib.nullcontext)
    assert output.logits.shape == (2, 2, NUM_CLASSES) and torch.isfinite(output.loss)
    assert any(key.startswith("head.fc.") for key in gradient_names(model))

    model.zero_grad()
    output = single_step(model, video[:, :1], targets, contextlib.nullcontext)
    assert output.logits.shape == (2, 1, NUM_CLASSES) and torch.isfinite(output.loss)
    assert any(key.startswith(f"backbone.stages.{first_stage}.") for key in gradient_names(model))


def test_slowfast_runs_two_pathways_each_with_its_own_memory() -> None:
    torch.manual_seed(0)
    model = build_model(
        ModelSpec(backbone="slowfast_r50", num_classes=NUM_CLASSES, memory_stages=("res4", "res5"))
    )
    memory = model.memories["res5"]
    assert isinstance(memory, PathwayMemory)
    assert [m.channels for m in memory.pathways] == [2048, 256]
    assert [m.channels for m in model.memories["res4"].pathways] == [1024 + 2 * 128, 128]

    model.eval()
    video = torch.randn(1, 2, 3, 8, 32, 32)  # fast rate: 8 frames; the slow pathway sees 2
    with torch.no_grad():
        slow, fast = model.features(video)
        assert slow.shape == (2, 2048, 2, 1, 1) and fast.shape == (2, 256, 8, 1, 1)
        assert model.backbone.out_channels == 2048 + 256
        banks = model.memory_bank(video)
        assert [b.shape for b in banks["res5"]] == [(1, 2, 2048), (1, 2, 256)]
        # The clip-by-clip path reproduces the joint one, pathway by pathway.
        clip = model.clip_features(video[:, 1], 1, banks)
        torch.testing.assert_close(clip[0], slow[1:2], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(clip[1], fast[1:2], rtol=1e-4, atol=1e-5)


def test_mvit_stages_take_memories_in_their_own_layout() -> None:
    mvit = build_model(
        ModelSpec(backbone="mvit_v2_s", num_classes=NUM_CLASSES, memory_stages=("stage3", "stage4"))
    )
    assert isinstance(mvit.memories["stage3"], TokenMemory)  # tokens with a class token
    assert type(mvit.memories["stage4"]) is CollaborativeMemory  # the last stage returns a map


@pytest.mark.parametrize("chunk", [1, 3])
def test_slowfast_memory_bank_matches_the_joint_graph_with_mixing_memories(chunk: int) -> None:
    """Per-pathway banks built in one no-grad pass (any clips per forward) equal the joint graph's,
    with memories that really mix clips (random gates), so a wrong read at res4 would show at res5."""
    torch.manual_seed(0)
    model = build_model(
        ModelSpec(backbone="slowfast_r50", num_classes=NUM_CLASSES, memory_stages=("res4", "res5"))
    )
    with torch.no_grad():
        for memory in model.memories["res4"].pathways:  # sharp attention, strong gates
            for layer in (memory.query, memory.key, memory.out):
                layer.weight.normal_(0, 3.0 / layer.weight.shape[1] ** 0.5)
    model.eval()
    video = torch.randn(1, 3, 3, 8, 32, 32)
    seen: dict[str, list[torch.Tensor]] = {}
    for name in ("res4", "res5"):
        model.memories[name].register_forward_pre_hook(
            lambda module, inputs, name=name: seen.update({name: module.summarize(inputs[0])})
        )
    with torch.no_grad():
        model(video)
        banks = model.memory_bank(video, chunk=chunk)
    for name in ("res4", "res5"):
        for pathway, (bank, joint) in enumerate(zip(banks[name], seen[name], strict=True)):
            torch.testing.assert_close(
                bank, joint.view(1, 3, -1), rtol=1e-4, atol=1e-5, msg=f"{name}/{pathway}"
            )
