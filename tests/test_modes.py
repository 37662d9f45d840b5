"""The three training modes: what must be equal between them, and what comem keeps out of BatchNorm."""

import contextlib

import pytest
import torch

from comem.data.transforms import normalize
from comem.engine.modes import comem_step, joint_step, preserved_batchnorm_stats, single_step, tsn_step
from comem.engine.performance import channels_last_clips
from comem.models.build import ModelSpec, build_model

NO_AUTOCAST = contextlib.nullcontext


def make_model(memory_stages=("last",), seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(ModelSpec(backbone="tiny", num_classes=5, memory_stages=memory_stages, dropout=0.0))
    with torch.no_grad():  # leave identity init and the plain-mean first read, so the memory mixes clips
        for memory in model.memories.values():
            memory.out.weight.normal_(0, 0.3)
            memory.out.bias.normal_(0, 0.3)
            memory.query.weight.normal_(0, 0.3)
    return model


def video(batch: int = 2, clips: int = 3) -> torch.Tensor:
    torch.manual_seed(42)
    return torch.randn(batch, clips, 3, 4, 32, 32)


def grads(model) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_comem_with_one_clip_equals_single() -> None:
    clip, targets = video(clips=1), torch.tensor([1, 3])
    single_model, comem_model = make_model(), make_model()
    single = single_step(single_model, clip, targets, NO_AUTOCAST)
    comem = comem_step(comem_model, clip, targets, NO_AUTOCAST)
    torch.testing.assert_close(comem.loss, single.loss)
    torch.testing.assert_close(comem.logits, single.logits)
    single_grads, comem_grads = grads(single_model), grads(comem_model)
    assert single_grads.keys() == comem_grads.keys() and len(single_grads) > 10
    for name in single_grads:
        torch.testing.assert_close(comem_grads[name], single_grads[name], msg=name)
    for name, buffer in single_model.state_dict().items():  # BN running stats updated identically
        torch.testing.assert_close(comem_model.state_dict()[name], buffer, msg=name)


@pytest.mark.parametrize("memory_stages", [("last",), ("layer3", "layer4")])
def test_joint_and_comem_agree_on_outputs_and_loss(memory_stages) -> None:
    clips, targets = video(), torch.tensor([0, 4])
    joint_model, comem_model = make_model(memory_stages), make_model(memory_stages)
    joint_model.eval()  # eval-mode BN: both see identical normalisation
    comem_model.eval()
    joint = joint_step(joint_model, clips, targets, NO_AUTOCAST)
    comem = comem_step(comem_model, clips, targets, NO_AUTOCAST)
    torch.testing.assert_close(comem.logits, joint.logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(comem.loss, joint.loss, rtol=1e-5, atol=1e-6)
    comem_grads = grads(comem_model)
    memory_grads = [g for name, g in comem_grads.items() if name.startswith("memories.")]
    assert memory_grads and all(g.abs().sum() > 0 for g in memory_grads)
    assert comem_grads["backbone.stages.stem.0.weight"].abs().sum() > 0


def test_clips_influence_each_other_in_comem_outputs() -> None:
    model = make_model()
    model.eval()
    clips, targets = video(), torch.tensor([0, 4])
    base = comem_step(model, clips, targets, NO_AUTOCAST).logits
    changed = clips.clone()
    changed[0, 2] = torch.randn_like(changed[0, 2])
    out = comem_step(model, changed, targets, NO_AUTOCAST).logits
    assert not torch.allclose(out[0, 0], base[0, 0])
    torch.testing.assert_close(out[1], base[1])


def test_memory_pass_does_not_touch_batchnorm_running_stats() -> None:
    model = make_model()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}
    with preserved_batchnorm_stats(model), torch.no_grad():
        model.memory_bank(video())
    after = model.state_dict()
    for name, value in before.items():
        assert torch.equal(after[name], value), name


def test_comem_updates_batchnorm_once_per_clip() -> None:
    """After a comem step the running stats equal those of running each clip once (pass 2 only)."""
    clips, targets = video(), torch.tensor([0, 4])
    stepped, reference = make_model(), make_model()
    comem_step(stepped, clips, targets, NO_AUTOCAST)
    with preserved_batchnorm_stats(reference), torch.no_grad():
        banks = reference.memory_bank(clips)
    with torch.no_grad():
        for index in range(clips.shape[1]):
            reference.forward_clip(clips[:, index], index, banks)
    for name, value in reference.state_dict().items():
        if "running" in name or "num_batches" in name:
            torch.testing.assert_close(stepped.state_dict()[name], value, msg=name)


def test_single_mode_rejects_several_clips() -> None:
    with pytest.raises(ValueError, match="one clip per video"):
        single_step(make_model(), video(), torch.tensor([0, 1]), NO_AUTOCAST)


@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_memory_bank_equals_the_summaries_of_a_joint_forward(chunk: int) -> None:
    """One pass over the stages gives every bank the joint graph computes (eval-mode BN, so batch
    composition does not matter), whatever the number of clips per no-grad forward."""
    model = make_model(("layer2", "layer3", "layer4"))
    model.eval()
    clips = video(batch=2, clips=3)
    seen: dict[str, torch.Tensor] = {}
    for name in model.memory_stage_names:
        model.memories[name].register_forward_pre_hook(
            lambda module, inputs, name=name: seen.update({name: module.summarize(inputs[0]).view(2, 3, -1)})
        )
    with torch.no_grad():
        model(clips)
        banks = model.memory_bank(clips, chunk=chunk)
    assert banks.keys() == seen.keys() == {"layer2", "layer3", "layer4"}
    for name, bank in banks.items():
        torch.testing.assert_close(bank, seen[name], rtol=1e-4, atol=1e-5, msg=name)


def test_channels_last_clips_keep_values_and_give_convolutions_channels_last_input() -> None:
    """The GPU input layout (checked here on the CPU, where training does not use it)."""
    clips = torch.randint(0, 256, (2, 3, 3, 4, 8, 8), dtype=torch.uint8)
    laid_out = normalize(channels_last_clips(clips))  # element-wise ops keep the layout
    assert torch.equal(laid_out, normalize(clips))
    assert laid_out.flatten(0, 1).is_contiguous(memory_format=torch.channels_last_3d)  # joint input
    assert laid_out[:, 1].stride()[1] == 1  # a comem clip: channels innermost
    model = make_model()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(laid_out), model(normalize(clips)), rtol=1e-4, atol=1e-5)


def _relative_error(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> float:
    assert got.keys() == want.keys()
    diff = sum(float((got[k] - want[k]).pow(2).sum()) for k in want)
    return (diff / sum(float(want[k].pow(2).sum()) for k in want)) ** 0.5


def test_comem_with_cross_clip_gradient_equals_joint_gradient() -> None:
    """One memory stage: the two-pass step with the cross-clip gradient is joint training's exact
    gradient (eval-mode BN, no dropout, so both see the same function); without it, it is not."""
    clips, targets = video(), torch.tensor([0, 4])
    joint_model = make_model()
    joint_model.eval()
    joint_step(joint_model, clips, targets, NO_AUTOCAST)
    want = grads(joint_model)
    errors = {}
    for cross_clip in (True, False):
        model = make_model()
        model.eval()
        comem_step(model, clips, targets, NO_AUTOCAST, cross_clip=cross_clip)
        errors[cross_clip] = _relative_error(grads(model), want)
    assert errors[True] < 1e-5
    assert errors[False] > 1e-2


def test_cross_clip_gradient_is_close_to_joint_with_several_memory_stages() -> None:
    """Several stages: only the (small) terms through other clips' later summaries are missing."""
    stages = ("layer2", "layer3", "layer4")
    clips, targets = video(), torch.tensor([0, 4])
    joint_model = make_model(stages)
    joint_model.eval()
    joint_step(joint_model, clips, targets, NO_AUTOCAST)
    want = grads(joint_model)
    errors = {}
    for cross_clip in (True, False):
        model = make_model(stages)
        model.eval()
        comem_step(model, clips, targets, NO_AUTOCAST, cross_clip=cross_clip)
        errors[cross_clip] = _relative_error(grads(model), want)
    assert errors[True] < 0.25 * errors[False]


@pytest.mark.parametrize("cross_clip", [True, False])
def test_comem_video_loss_is_the_loss_of_mean_scores_with_joints_gradient(cross_clip: bool) -> None:
    """The video-level loss: its value is the cross-entropy of the clips' mean logits (computed
    here independently from a no-grad joint forward), and with one memory stage the two-pass step's
    gradient equals joint training's on the same loss (exactly with the cross-clip gradient)."""
    clips, targets = video(), torch.tensor([0, 4])
    joint_model = make_model()
    joint_model.eval()
    with torch.no_grad():
        want_loss = torch.nn.functional.cross_entropy(joint_model(clips).mean(dim=1), targets)
    joint = joint_step(joint_model, clips, targets, NO_AUTOCAST, video_loss=True)
    torch.testing.assert_close(joint.loss, want_loss, rtol=1e-5, atol=1e-6)
    want = grads(joint_model)
    model = make_model()
    model.eval()
    out = comem_step(model, clips, targets, NO_AUTOCAST, cross_clip=cross_clip, video_loss=True)
    torch.testing.assert_close(out.loss, want_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.logits, joint.logits, rtol=1e-4, atol=1e-5)
    clip_level = make_model()
    clip_level.eval()
    joint_step(clip_level, clips, targets, NO_AUTOCAST)
    assert _relative_error(grads(clip_level), want) > 1e-3  # a different loss, a different gradient
    if cross_clip:
        assert _relative_error(grads(model), want) < 1e-5
    else:
        assert _relative_error(grads(model), want) > 1e-2


def test_comem_video_loss_keeps_dropout_masks_and_batchnorm_counted_once() -> None:
    """The no-grad pass that finds the video loss's score gradients replays the clips' forwards:
    the step draws the same dropout masks and updates BN running stats as a clip-loss step."""
    clips, targets = video(), torch.tensor([0, 4])
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        models.append(
            build_model(ModelSpec(backbone="tiny", num_classes=5, memory_stages=("last",), dropout=0.5))
        )
    torch.manual_seed(7)
    video_level = comem_step(models[0], clips, targets, NO_AUTOCAST, video_loss=True)
    after = torch.rand(1)
    torch.manual_seed(7)
    clip_level = comem_step(models[1], clips, targets, NO_AUTOCAST)
    torch.testing.assert_close(video_level.logits, clip_level.logits)
    assert torch.equal(after, torch.rand(1))
    for name, value in models[1].state_dict().items():
        if "running" in name or "num_batches" in name:
            torch.testing.assert_close(models[0].state_dict()[name], value, msg=name)


def test_cross_clip_gradient_keeps_the_step_reproducible_and_batchnorm_counted_once() -> None:
    """Dropout masks are rewound (same as a plain step's) and BN running stats see each clip once."""
    clips, targets = video(), torch.tensor([0, 4])
    torch.manual_seed(0)
    model = build_model(ModelSpec(backbone="tiny", num_classes=5, memory_stages=("last",), dropout=0.5))
    plain = make_model()
    plain.load_state_dict(model.state_dict())
    plain.head.dropout.p = 0.5
    torch.manual_seed(7)
    crossed = comem_step(model, clips, targets, NO_AUTOCAST, cross_clip=True)
    after_cross = torch.rand(1)
    torch.manual_seed(7)
    uncrossed = comem_step(plain, clips, targets, NO_AUTOCAST, cross_clip=False)
    torch.testing.assert_close(crossed.logits, uncrossed.logits)  # same dropout masks
    assert torch.equal(after_cross, torch.rand(1))  # same RNG consumption
    for name, value in plain.state_dict().items():
        if "running" in name or "num_batches" in name:
            torch.testing.assert_close(model.state_dict()[name], value, msg=name)


def test_tsn_averages_clip_scores_before_the_loss_and_clips_do_not_meet() -> None:
    model = make_model()
    model.eval()
    clips, targets = video(), torch.tensor([0, 4])
    out = tsn_step(model, clips, targets, NO_AUTOCAST)
    with torch.no_grad():
        alone = torch.stack([model(clips[:, i : i + 1])[:, 0] for i in range(clips.shape[1])], dim=1)
    torch.testing.assert_close(out.logits, alone, rtol=1e-4, atol=1e-5)
    want = torch.nn.functional.cross_entropy(alone.mean(dim=1), targets)
    torch.testing.assert_close(out.loss, want, rtol=1e-5, atol=1e-6)
    assert all(p.grad is not None for p in model.head.parameters())


@pytest.mark.parametrize("grad_chunk", [2, 4])
def test_grad_chunk_gives_the_gradients_of_one_clip_at_a_time(grad_chunk: int) -> None:
    """K clips per gradient-pass forward, each reading the bank with only its own entry live: the
    same logits, loss and gradients as chunk 1 (BN on running statistics, so both see the same
    normalisation). K = N = 4 skips the memory pass and builds each stage's bank from the same
    forward's detached summaries; the gradients are still the plain two-pass scheme's."""
    clips, targets = video(clips=4), torch.tensor([0, 4])
    stages = ("layer1", "layer3", "layer4")  # a later bank depends on the earlier stages' gating
    reference = make_model(stages)
    reference.eval()
    want = comem_step(reference, clips, targets, NO_AUTOCAST)
    model = make_model(stages)
    model.eval()
    got = comem_step(model, clips, targets, NO_AUTOCAST, grad_chunk=grad_chunk)
    torch.testing.assert_close(got.logits, want.logits)
    torch.testing.assert_close(got.loss, want.loss)
    assert _relative_error(grads(model), grads(reference)) < 1e-5
    # ... and not joint's: the other clips' entries are constants in each clip's read
    joint_model = make_model(stages)
    joint_model.eval()
    joint_step(joint_model, clips, targets, NO_AUTOCAST)
    assert _relative_error(grads(model), grads(joint_model)) > 1e-2


def test_grad_chunk_with_the_cross_clip_gradient_keeps_joints_gradient() -> None:
    clips, targets = video(clips=4), torch.tensor([0, 4])
    joint_model = make_model()
    joint_model.eval()
    joint_step(joint_model, clips, targets, NO_AUTOCAST)
    model = make_model()
    model.eval()
    comem_step(model, clips, targets, NO_AUTOCAST, grad_chunk=2, cross_clip=True)
    assert _relative_error(grads(model), grads(joint_model)) < 1e-5
