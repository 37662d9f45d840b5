"""``comem.wrap`` on networks comem did not build: identity at init, state-dict names, the same
numbers as comem's own ``VideoModel`` of the same network, pathways, and ``comem.step`` in each mode."""

import contextlib
import copy

import pytest
import torch
import torch.nn.functional as F
from tinydata import randomise_norms
from torch import nn
from torchvision.models import video as tv_video

import comem
from comem.engine.modes import comem_step, single_step
from comem.models.build import MemoryStageError, ModelSpec, build_model
from comem.models.layouts import PathwayMemory

no_autocast = contextlib.nullcontext


def video(batch: int = 2, clips: int = 3, frames: int = 4, size: int = 32, seed: int = 42) -> torch.Tensor:
    return torch.randn(batch, clips, 3, frames, size, size, generator=torch.Generator().manual_seed(seed))


CLIP = torch.randn(1, 3, 4, 8, 8, generator=torch.Generator().manual_seed(1))  # a trial clip batch


def randomise_memories(model: nn.Module, seed: int = 0) -> None:
    """Move the memories away from the identity, so clips change each other's outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.memories.named_parameters():
            parameter.copy_(
                torch.randn(parameter.shape, generator=generator) * (0.3 if "out" in name else 0.1)
            )


class BlocksNet(nn.Module):
    """A PyTorchVideo-style network: ``blocks.N`` run in order, the last one the head; it also has a
    root-level parameter and buffer, which a wrapper must share with it."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            [
                nn.Sequential(nn.Conv3d(3, 8, 3, padding=1), nn.BatchNorm3d(8), nn.ReLU()),
                nn.Sequential(nn.Conv3d(8, 16, 3, stride=2, padding=1), nn.BatchNorm3d(16), nn.ReLU()),
                nn.Sequential(nn.Conv3d(16, 16, 3, padding=1), nn.BatchNorm3d(16), nn.ReLU()),
                nn.Sequential(nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(16, num_classes)),
            ]
        )
        self.scale = nn.Parameter(torch.tensor(1.5))
        self.register_buffer("offset", torch.tensor(0.25))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x * self.scale + self.offset


class TwoPathwayNet(nn.Module):
    """A SlowFast-like network: the stem splits a clip into [slow, fast] pathways, ``pathways.1``
    returns the list of both maps, the head pools and concatenates them."""

    class Stem(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.slow = nn.Sequential(nn.Conv3d(3, 12, 3, padding=1), nn.BatchNorm3d(12), nn.ReLU())
            self.fast = nn.Sequential(nn.Conv3d(3, 4, 3, padding=1), nn.BatchNorm3d(4), nn.ReLU())

        def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
            return [self.slow(x[:, :, ::2]), self.fast(x)]

    class Stage(nn.Module):
        def __init__(self, slow: int, fast: int) -> None:
            super().__init__()
            self.slow = nn.Conv3d(slow, slow, 3, padding=1)
            self.fast = nn.Conv3d(fast, fast, 3, padding=1)

        def forward(self, x: list[torch.Tensor]) -> list[torch.Tensor]:
            return [torch.relu(self.slow(x[0])), torch.relu(self.fast(x[1]))]

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.pathways = nn.ModuleList([self.Stem(), self.Stage(12, 4)])
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.pathways:
            x = stage(x)
        return self.fc(torch.cat([part.mean(dim=(2, 3, 4)) for part in x], dim=1))


@pytest.mark.parametrize(
    ("build", "stages"),
    [
        (lambda: tv_video.r3d_18(num_classes=5), ["layer3", "layer4"]),
        (lambda: tv_video.mc3_18(num_classes=5), ["layer2", "layer4"]),
        (BlocksNet, ["blocks.1", "blocks.2"]),
    ],
    ids=["r3d_18", "mc3_18", "blocks"],
)
def test_wrapped_model_equals_the_model_at_init(build, stages) -> None:
    torch.manual_seed(0)
    model = build()
    randomise_norms(model)
    wrapped = comem.wrap(model, stages, example=video()[:, 0]).eval()
    clips = video()
    with torch.no_grad():
        expected = model(clips.flatten(0, 1)).view(2, 3, -1)
        assert torch.equal(wrapped(clips), expected)
        banks = wrapped.memory_bank(clips)
        assert list(banks) == stages
        for index in range(3):  # the two-pass route at identity init too
            assert torch.equal(wrapped.forward_clip(clips[:, index], index, banks), expected[:, index])
        assert torch.equal(model(clips[:, 0]), expected[:, 0])  # the model on its own is unchanged
    own = set(model.state_dict())
    state = wrapped.state_dict()
    assert own < set(state) and all(key.startswith("memories.") for key in set(state) - own)
    assert dict(wrapped.named_parameters()).keys() >= dict(model.named_parameters()).keys()
    fresh = comem.wrap(build(), stages, example=video()[:, 0])
    missing, unexpected = fresh.load_state_dict(model.state_dict(), strict=False)  # a plain checkpoint
    assert unexpected == [] and missing and all(key.startswith("memories.") for key in missing)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(clips), expected)


def test_wrapped_torchvision_r3d_computes_what_comem_r3d_computes() -> None:
    """The same weights in comem's own VideoModel (explicit stages, one-forward memory pass) and in
    the wrapped torchvision network (hooks, prefix-per-stage memory pass): outputs, memory banks,
    two-pass logits and two-pass gradients agree."""
    torch.manual_seed(0)
    network = tv_video.r3d_18(num_classes=5)
    randomise_norms(network)
    wrapped = comem.wrap(network, ["layer3", "layer4"])
    randomise_memories(wrapped)
    reference = build_model(
        ModelSpec(backbone="r3d_18", num_classes=5, memory_stages=("layer3", "layer4"), dropout=0.0)
    )
    renames = reference.backbone.torchvision_keys
    reference.load_state_dict({renames.get(key, key): value for key, value in wrapped.state_dict().items()})
    clips, targets = video(clips=3), torch.tensor([1, 4])
    with torch.no_grad():
        wrapped.eval(), reference.eval()
        torch.testing.assert_close(wrapped(clips), reference(clips), rtol=1e-4, atol=1e-5)
        ours, theirs = wrapped.memory_bank(clips), reference.memory_bank(clips)
        for stage in ("layer3", "layer4"):
            torch.testing.assert_close(ours[stage], theirs[stage], rtol=1e-4, atol=1e-5)
    wrapped.train(), reference.train()
    mine = comem_step(wrapped, clips, targets, no_autocast)
    expected = comem_step(reference, clips, targets, no_autocast)
    torch.testing.assert_close(mine.logits, expected.logits, rtol=1e-4, atol=1e-5)
    grads = {name: p.grad for name, p in wrapped.named_parameters()}
    named = dict(reference.named_parameters())
    for key in (
        "layer1.0.conv1.0.weight",
        "layer4.1.conv2.1.weight",
        "fc.weight",
        "memories.layer3.key.weight",
    ):
        torch.testing.assert_close(
            grads[key], named[renames.get(key, key)].grad, rtol=1e-3, atol=1e-6, msg=key
        )


def test_two_pass_equals_one_graph_with_pathway_lists() -> None:
    """A stage that returns a list gets one memory per pathway (widths measured on an example);
    in eval mode the two-pass route reads exactly what the one-graph route reads."""
    torch.manual_seed(0)
    model = TwoPathwayNet()
    clips = video(clips=4, frames=4, size=16)
    wrapped = comem.wrap(model, ["pathways.0", "pathways.1"], example=clips[:, 0])
    memory = wrapped.memories["pathways_1"]
    assert isinstance(memory, PathwayMemory) and [m.channels for m in memory.pathways] == [12, 4]
    with torch.no_grad():
        wrapped.eval()
        assert torch.equal(wrapped(clips), model(clips.flatten(0, 1)).view(2, 4, -1))
        randomise_memories(wrapped)
        joint = wrapped(clips)
        assert not torch.allclose(joint, model(clips.flatten(0, 1)).view(2, 4, -1), atol=1e-3)
        for chunk in (1, 3):
            banks = wrapped.memory_bank(clips, chunk=chunk)
            assert [tuple(part.shape) for part in banks["pathways.1"]] == [(2, 4, 12), (2, 4, 4)]
            two_pass = torch.stack([wrapped.forward_clip(clips[:, i], i, banks) for i in range(4)], dim=1)
            torch.testing.assert_close(two_pass, joint, rtol=1e-5, atol=1e-6)


def test_comem_with_one_clip_equals_single_and_keeps_batchnorm_counts() -> None:
    torch.manual_seed(0)
    models = [comem.wrap(BlocksNet(), ["blocks.1", "blocks.2"], example=CLIP) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    for model in models:
        randomise_memories(model)
    clip, targets = video(clips=1), torch.tensor([1, 3])
    single = single_step(models[0], clip, targets, no_autocast)
    two_pass = comem_step(models[1], clip, targets, no_autocast)
    torch.testing.assert_close(two_pass.loss, single.loss)
    for (name, a), b in zip(models[0].named_parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, msg=name)
    for (name, a), b in zip(models[0].state_dict().items(), models[1].state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, msg=name)  # BatchNorm statistics updated once, identically
    model = comem.wrap(BlocksNet(), ["blocks.1", "blocks.2"], example=CLIP)
    comem.step(model, video(clips=3), targets, mode="comem")
    assert int(model.blocks[0][1].num_batches_tracked) == 3  # the 3 per-clip passes, not the bank passes


@pytest.mark.parametrize("mode", ["single", "tsn", "joint", "comem"])
def test_step_trains_a_wrapped_torchvision_network_in_each_mode(mode: str) -> None:
    torch.manual_seed(0)
    model = comem.wrap(tv_video.mc3_18(num_classes=3), ["layer3", "layer4"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    clips, targets = video(batch=3, clips=2, size=24), torch.tensor([0, 1, 2])
    losses = []
    for _ in range(3):
        optimizer.zero_grad()
        loss = comem.step(model, clips, targets, mode=mode)
        assert loss.ndim == 0 and not loss.requires_grad
        optimizer.step()
        losses.append(float(loss))
    assert losses[-1] < losses[0], losses


def test_step_uses_the_given_loss_per_clip() -> None:
    torch.manual_seed(0)
    model = comem.wrap(
        BlocksNet(), ["blocks.2"], example=CLIP
    ).eval()  # eval: the forward below sees the same stats
    randomise_memories(model)
    clips, targets = video(clips=2), torch.tensor([2, 0])

    def smoothed(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, target, label_smoothing=0.2)

    with torch.no_grad():
        logits = model(clips)
    expected = smoothed(logits.flatten(0, 1), targets.repeat_interleave(2))
    for mode in ("joint", "comem"):
        loss = comem.step(model, clips, targets, mode=mode, loss_fn=smoothed)
        torch.testing.assert_close(loss, expected)
    multi_hot = torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 0]])  # default loss: BCE for multi-hot targets
    torch.testing.assert_close(
        comem.step(model, clips, multi_hot, mode="joint"),
        F.binary_cross_entropy_with_logits(logits.flatten(0, 1), multi_hot.repeat_interleave(2, dim=0)),
    )
    with pytest.raises(ValueError, match="mode must be one of"):
        comem.step(model, clips, targets, mode="video")


def test_wrapper_shares_parts_with_the_model_through_copies_and_conversions() -> None:
    torch.manual_seed(0)
    model = BlocksNet()
    wrapped = comem.wrap(model, ["blocks.2"], example=CLIP)
    randomise_memories(wrapped)
    clips = video(clips=2, size=16)
    twin = copy.deepcopy(wrapped)  # hooks follow the copy: its own memories, not the original's
    with torch.no_grad():
        twin.memories["blocks_2"].out.bias.add_(1.0)
        assert not torch.allclose(twin.eval()(clips), wrapped.eval()(clips))
    wrapped.to(torch.float64)  # .to() makes new root-level tensors: the wrapped model gets them too
    assert model.offset.dtype == torch.float64 and model.offset is wrapped.offset
    assert model.scale is wrapped.scale and model.scale.dtype == torch.float64
    wrapped.float()
    wrapped.blocks[3][2] = nn.Linear(16, 7)  # a new head is the model's head
    assert wrapped(clips).shape == (2, 2, 7)
    wrapped.train(False)
    assert not model.training
    assert wrapped.unwrap() is model and model(clips[:, 0]).shape == (2, 7)


def test_bad_stages_and_layouts_are_one_line_errors() -> None:
    nearest = r"VideoResNet has no submodule 'layer5' \(nearest: layer4, layer3.*stem, layer1"
    with pytest.raises(MemoryStageError, match=nearest):
        comem.wrap(tv_video.r3d_18(), ["layer5"])
    with pytest.raises(MemoryStageError, match=r"'features\.9' \(nearest: features\.\d"):
        comem.wrap(tv_video.swin3d_t(), ["features.9"])
    with pytest.raises(MemoryStageError, match=r"trial clip batch for BlocksNet: pass example="):
        comem.wrap(BlocksNet(), ["blocks.1"])
    with pytest.raises(
        MemoryStageError, match=r"Sequential.0 returned Tensor \(1, 768\): not a map.*layout="
    ):
        comem.wrap(nn.Sequential(nn.Flatten()), ["0"], example=CLIP)
    tokens = nn.Sequential(nn.Flatten(2), nn.Identity())  # (B, C, T·H·W): tokens of unknown kind
    with pytest.raises(
        MemoryStageError, match=r"1 returned Tensor \(1, 3, 256\): cannot tell whether the tokens"
    ):
        comem.wrap(tokens, ["1"], example=CLIP)
    assert comem.wrap(tokens, ["1"], example=CLIP, layout="tokens").layouts == {"1": ("tokens", 256)}
    with pytest.raises(
        MemoryStageError, match=r"pathways.1 returned list\(Tensor.*a list of maps, not tokens"
    ):
        comem.wrap(TwoPathwayNet(), ["pathways.1"], example=CLIP, layout={"pathways.1": "tokens"})
    with pytest.raises(MemoryStageError, match=r"layout names blocks.3, which is not among the stages"):
        comem.wrap(BlocksNet(), ["blocks.1"], example=CLIP, layout={"blocks.3": "tokens"})
    with pytest.raises(
        MemoryStageError, match=r"unknown option\(s\) gate_width; the memory's options are memory"
    ):
        comem.wrap(BlocksNet(), ["blocks.1"], example=CLIP, gate_width=3)
    wrapped = comem.wrap(TwoPathwayNet(), ["pathways.1"], example=CLIP)
    assert wrapped.layouts == {"pathways.1": ("pathways", (12, 4))}
    wrapped.pathways[1].fast = nn.Conv3d(4, 5, 3, padding=1)  # the stage changed after wrapping
    with pytest.raises(
        MemoryStageError, match=r"pathways.1 returned list\(Tensor.*built for pathways of \(12, 4\)"
    ):
        wrapped(video(size=16))
    with pytest.raises(ValueError, match="wrapped already"):
        comem.wrap(comem.wrap(BlocksNet(), ["blocks.1"], example=CLIP), ["blocks.2"], example=CLIP)
    with pytest.raises(comem.UserError, match=r"wrap option fusion='mul': not one of gate, add"):
        comem.wrap(BlocksNet(), ["blocks.1"], example=CLIP, fusion="mul")


def test_memory_options_travel_as_one_record_to_every_memory() -> None:
    """wrap's keyword arguments, a config's memory fields and a ModelSpec give the same record,
    and every memory (any layout) is built with it."""
    options = comem.MemoryOptions(memory="sigmoid", key_dim=12, gate_hidden=None, summary="max")
    config = comem.TrainConfig(memory="sigmoid", key_dim=12, gate_hidden=None, memory_summary="max")
    assert config.memory_options == options
    spec = ModelSpec(backbone="tiny", num_classes=3, **options.as_kwargs())
    assert spec.memory_options == options
    wrapped = comem.wrap(TwoPathwayNet(), ["pathways.1"], example=CLIP, **options.as_kwargs())
    built = build_model(spec)
    memories = [*wrapped.memories["pathways_1"].pathways, *built.memories.values()]
    for memory in memories:
        assert (memory.memory, memory.key_dim, memory.summary) == ("sigmoid", 12, "max")
        assert isinstance(memory.hidden, nn.Identity)  # gate_hidden=None: the linear gate


def test_two_pass_gradients_equal_joint_gradients_with_one_memory_stage() -> None:
    """With the cross-clip gradient, the memory-flat step's gradients are joint training's exactly
    for one memory stage (BatchNorm on running statistics, so both see the same normalisation)."""
    torch.manual_seed(0)
    models = [comem.wrap(BlocksNet(), ["blocks.2"], example=CLIP) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    clips, targets = video(clips=3), torch.tensor([1, 3])
    for model in models:
        randomise_memories(model)
        model.eval()
    joint = comem.step(models[0], clips, targets, mode="joint")
    two_pass = comem.step(models[1], clips, targets, mode="comem", cross_clip=True)
    torch.testing.assert_close(two_pass, joint)
    for (name, a), b in zip(models[0].named_parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("mode", ["joint", "tsn", "comem"])
def test_clip_times_reach_every_memory_read(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``comem.step(..., times=)`` hands the clips' times to every memory call of both models (the
    two-pass pass, cross-clip gradient and clip passes in comem mode), and predict's too."""
    from comem.memory import CollaborativeMemory

    seen: list[torch.Tensor | None] = []
    original = CollaborativeMemory._times

    def spy(times: torch.Tensor | None, bank: torch.Tensor) -> torch.Tensor:
        seen.append(times)
        return original(times, bank)

    monkeypatch.setattr(CollaborativeMemory, "_times", staticmethod(spy))
    times = torch.tensor([[0.1, 0.5, 0.9], [0.2, 0.3, 0.4]])
    clips, targets = video(size=8), torch.tensor([1, 3])
    own = build_model(ModelSpec(backbone="tiny", num_classes=4, memory_stages=("stem", "layer2")))
    for model in (comem.wrap(TwoPathwayNet(4), ["pathways.1"], example=CLIP), own):
        seen.clear()
        comem.step(model, clips, targets, mode=mode, cross_clip=True, times=times)
        assert seen and all(t is not None for t in seen)
        # tsn: each clip a video of its own, at its own time; a read's queries carry their own
        # clips' times (a column of the bank's)
        expected = times.reshape(-1, 1) if mode == "tsn" else times
        assert any(torch.equal(t, expected) for t in seen)
        assert all(torch.equal(t, expected) or _columns_of(t, expected) for t in seen)
    predictor = comem.load(own, device="cpu")
    seen.clear()
    predictor.predict(clips[0], times=times[0])
    assert any(torch.equal(t, times[:1]) for t in seen)
    assert all(torch.equal(t, times[:1]) or _columns_of(t, times[:1]) for t in seen)


def _columns_of(part: torch.Tensor, whole: torch.Tensor) -> bool:
    """Whether each column of ``part`` (B', Q) is a column of ``whole`` (B, N), rows matched in order
    (B' = B, or B' = B·Q when a chunk's queries are flattened)."""
    rows = part.reshape(whole.shape[0], -1) if part.shape[0] != whole.shape[0] else part
    return all(any(torch.equal(column, whole[:, j]) for j in range(whole.shape[1])) for column in rows.T)
