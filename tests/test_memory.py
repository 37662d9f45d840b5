"""The collaborative memory module: shapes, identity at init, equivariance, who influences whom."""

import pytest
import torch

from comem.memory import CollaborativeMemory


def trained_like(module: CollaborativeMemory) -> CollaborativeMemory:
    """Give the zero-initialised output projection real weights (as after some training)."""
    torch.manual_seed(1)
    with torch.no_grad():
        module.out.weight.normal_(0, 0.5)
        module.out.bias.normal_(0, 0.5)
    return module


@pytest.mark.parametrize("memory", ["attention", "average"])
@pytest.mark.parametrize("fusion", ["gate", "add"])
def test_shapes_and_identity_at_init(memory: str, fusion: str) -> None:
    module = CollaborativeMemory(32, memory=memory, fusion=fusion)
    features = torch.randn(2 * 3, 32, 4, 5, 5)
    out = module(features, num_clips=3)
    assert out.shape == features.shape
    assert torch.equal(out, features)


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
