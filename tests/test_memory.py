"""The collaborative memory module: shapes, identity at init, equivariance, who influences whom."""

import math

import pytest
import torch

from comem.memory import CollaborativeMemory


def trained_like(module: CollaborativeMemory) -> CollaborativeMemory:
    """Give the zero-initialised output and query projections real weights (as after some training)."""
    torch.manual_seed(1)
    with torch.no_grad():
        module.out.weight.normal_(0, 0.5)
        module.out.bias.normal_(0, 0.5)
        module.query.weight.normal_(0, 0.5)
    return module


@pytest.mark.parametrize("memory", ["attention", "average"])
@pytest.mark.parametrize("fusion", ["gate", "add"])
def test_shapes_and_identity_at_init(memory: str, fusion: str) -> None:
    module = CollaborativeMemory(32, memory=memory, fusion=fusion)
    features = torch.randn(2 * 3, 32, 4, 5, 5)
    out = module(features, num_clips=3)
    assert out.shape == features.shape
    assert torch.equal(out, features)


@pytest.mark.parametrize("memory", ["attention", "sigmoid", "sink"])
def test_the_read_starts_near_the_mean_of_the_values_and_the_query_then_learns(memory: str) -> None:
    # a small query: every score starts near 0, so each clip first reads nearly the plain mean of
    # the values (the read that counts how many clips show a thing); PyTorch's default scale makes
    # the first read a random weighting of the clips. Keys and query learn from the first step.
    torch.manual_seed(0)
    module = CollaborativeMemory(64, memory=memory)
    bank = torch.randn(4, 3, 64).relu() * 2  # summaries of post-ReLU features

    def spread() -> float:
        with torch.no_grad():
            weights = module.attention(bank, bank)
        return float((weights - weights.mean(dim=-1, keepdim=True)).abs().max())

    small = spread()
    torch.nn.init.kaiming_uniform_(module.query.weight, a=math.sqrt(5))  # nn.Linear's own initialisation
    assert small < spread() / 5
    module.out.weight.data.normal_(0, 0.5)
    module(torch.randn(2 * 3, 64, 2, 3, 3), 3).square().sum().backward()
    assert module.query.weight.grad.abs().sum() > 0 and module.key.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("memory", ["attention", "average"])
def test_permutation_equivariance_over_clips(memory: str) -> None:
    module = trained_like(CollaborativeMemory(16, memory=memory))
    features = torch.randn(2, 4, 16, 2, 3, 3)
    permutation = torch.tensor([2, 0, 3, 1])
    out = module(features.flatten(0, 1), 4).view_as(features)
    out_permuted = module(features[:, permutation].flatten(0, 1), 4).view_as(features)
    torch.testing.assert_close(out_permuted, out[:, permutation])


def test_clip_sees_other_clips_of_its_video_only() -> None:
    module = trained_like(CollaborativeMemory(16))
    features = torch.randn(2, 3, 16, 2, 3, 3)
    base = module(features.flatten(0, 1), 3).view_as(features)
    changed = features.clone()
    changed[0, 2] += torch.randn_like(changed[0, 2])  # video 0, clip 2
    out = module(changed.flatten(0, 1), 3).view_as(features)
    assert not torch.allclose(out[0, 0], base[0, 0])  # same video, other clip: changed
    torch.testing.assert_close(out[1], base[1])  # other video: untouched


def test_gate_is_channelwise_and_bounded() -> None:
    module = trained_like(CollaborativeMemory(8))
    features = torch.ones(3, 8, 2, 2, 2)
    gates = module(features, 3)
    assert torch.all(gates > 0) and torch.all(gates < 2)
    assert torch.allclose(gates, gates[:, :, :1, :1, :1].expand_as(gates))


def test_forward_one_matches_full_forward() -> None:
    module = trained_like(CollaborativeMemory(16))
    features = torch.randn(2, 3, 16, 2, 3, 3)
    full = module(features.flatten(0, 1), 3).view_as(features)
    bank = torch.stack([module.summarize(features[:, i]) for i in range(3)], dim=1)
    for index in range(3):
        torch.testing.assert_close(module.forward_one(features[:, index], bank, index), full[:, index])


def test_forward_one_gradient_flows_through_own_clip_only() -> None:
    module = trained_like(CollaborativeMemory(16))
    features = torch.randn(2, 3, 16, 2, 3, 3)
    bank = torch.stack([module.summarize(features[:, i]) for i in range(3)], dim=1).requires_grad_(True)
    clip = features[:, 1].clone().requires_grad_(True)
    module.forward_one(clip, bank, 1).sum().backward()
    assert clip.grad is not None and clip.grad.abs().sum() > 0
    assert bank.grad[:, 1].abs().sum() == 0  # the own entry is replaced by the live summary
    assert bank.grad[:, [0, 2]].abs().sum() > 0


def test_bad_options_are_rejected() -> None:
    with pytest.raises(ValueError, match="memory must be one of"):
        CollaborativeMemory(8, memory="lstm")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fusion must be one of"):
        CollaborativeMemory(8, fusion="concat")  # type: ignore[arg-type]


def test_summaries_pool_as_named() -> None:
    features = torch.rand(4, 8, 2, 3, 3)
    means, peaks = features.mean(dim=(2, 3, 4)), features.flatten(2).max(dim=2).values
    assert torch.equal(CollaborativeMemory(8, summary="mean").summarize(features), means)
    assert torch.equal(CollaborativeMemory(8, summary="max").summarize(features), peaks)
    torch.testing.assert_close(CollaborativeMemory(8, summary="meanmax").summarize(features), means + peaks)
    with pytest.raises(ValueError, match="summary"):
        CollaborativeMemory(8, summary="median")  # type: ignore[arg-type]


def test_max_summary_sees_a_small_event_that_the_mean_hides() -> None:
    """One bright 1x1 spot in a 8x8 map: the max summary tells the clips apart by a margin
    64x larger than the mean does."""
    background = torch.rand(1, 4, 1, 8, 8).expand(2, 4, 1, 8, 8).clone()
    background[1, 0, 0, 3, 3] += 5.0
    for summary, expected in (("mean", 5.0 / 64), ("max", None)):
        bank = CollaborativeMemory(4, summary=summary).summarize(background)  # type: ignore[arg-type]
        gap = float((bank[1] - bank[0]).abs().max())
        if expected is None:
            assert gap > 4.0
        else:
            assert gap == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("summary", ["max", "meanmax"])
def test_forward_one_matches_full_forward_for_every_summary(summary: str) -> None:
    module = trained_like(CollaborativeMemory(16, summary=summary))  # type: ignore[arg-type]
    features = torch.randn(2, 3, 16, 2, 3, 3)
    full = module(features.flatten(0, 1), 3).view_as(features)
    bank = torch.stack([module.summarize(features[:, i]) for i in range(3)], dim=1)
    for i in range(3):
        torch.testing.assert_close(module.forward_one(features[:, i], bank, i), full[:, i])


def test_entry_hidden_tells_apart_sets_of_clips_whose_summaries_sum_alike() -> None:
    """Clips summarised as a=(1,0), b=(0,1), c=(1,1), d=(0,0): the videos {a, b, d} (3 distinct
    clips) and {c, d, d} (2) have the same summed summaries, so through linear projections every
    (average) read, and so every gate, is the same for both; a hidden ReLU layer on each entry before
    the projections tells them apart."""
    a, b, c, d = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), torch.tensor([1.0, 1.0]), torch.zeros(2)
    videos = torch.stack([torch.stack([a, b, d]), torch.stack([c, d, d])])  # (B=2, N=3, C=2)
    torch.manual_seed(0)
    linear = CollaborativeMemory(2, memory="average", key_dim=8)
    with_hidden = CollaborativeMemory(2, memory="average", key_dim=8, entry_hidden=16)
    linear_reads = linear.read(videos, videos)
    torch.testing.assert_close(linear_reads[0], linear_reads[1])
    hidden_reads = with_hidden.read(videos, videos)
    assert (hidden_reads[0] - hidden_reads[1]).abs().max() > 1e-3
    module = trained_like(CollaborativeMemory(16, entry_hidden=32))  # and the module stays per-clip
    features = torch.randn(2, 3, 16, 2, 3, 3)
    full = module(features.flatten(0, 1), 3).view_as(features)
    bank = torch.stack([module.summarize(features[:, i]) for i in range(3)], dim=1)
    for i in range(3):
        torch.testing.assert_close(module.forward_one(features[:, i], bank, i), full[:, i])
    assert torch.equal(
        CollaborativeMemory(16, entry_hidden=32)(features.flatten(0, 1), 3), features.flatten(0, 1)
    )
