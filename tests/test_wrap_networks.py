"""``comem.wrap`` on every torchvision video network, at the smallest inputs each takes: the layout
and width found by the trial forward, outputs bit-identical to the network's at init, ``comem.step``
lowering the loss, read maps from ``comem.load(...).predict``, and with one memory stage the
two-pass gradient (cross-clip) equal to joint training's."""

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import nn
from torchvision.models import video as tv_video
from torchvision.models.video.mvit import PositionalEncoding

import comem


def small_mvit(builder: Callable[..., nn.Module]) -> Callable[[], nn.Module]:
    """An MViT that takes 4x16x16 clips: torchvision fixes the token grid in its positional
    encoding (16x224² clips); the blocks themselves run any grid."""

    def build() -> nn.Module:
        net = builder(num_classes=4, stochastic_depth_prob=0.0)
        width = net.pos_encoding.class_token.shape[-1]
        absolute = hasattr(net.pos_encoding, "spatial_pos")  # v1: absolute positions; v2: relative
        net.pos_encoding = PositionalEncoding(width, (4, 4), 2, rel_pos_embed=not absolute)
        return net

    return build


def small_s3d() -> nn.Module:
    """S3D whose final 2x7x7 average pool is global, so that its 4x16x16 clips reach the classifier
    (the features, Inception blocks whose width is the sum of their branches, are torchvision's)."""
    net = tv_video.s3d(num_classes=4)
    net.avgpool = nn.AdaptiveAvgPool3d(1)
    return net


@dataclass
class Network:
    build: Callable[[], nn.Module]
    layouts: dict[str, tuple[str, int]]  # stage -> (layout, channels) the trial forward must find
    full: Callable[[], nn.Module]  # the network at its published size (built on the meta device)
    clip: tuple[int, int, int] = (4, 16, 16)  # (T, H, W) of the smallest clips it takes
    lr: float = 1e-3  # AdamW's; the transformers (no BatchNorm) need a smaller one


NETWORKS = {
    "r3d_18": Network(
        lambda: tv_video.r3d_18(num_classes=4),
        {"layer2": ("channels_first", 128), "layer4": ("channels_first", 512)},
        tv_video.r3d_18,
    ),
    "mc3_18": Network(
        lambda: tv_video.mc3_18(num_classes=4),
        {"layer1": ("channels_first", 64), "layer3": ("channels_first", 256)},
        tv_video.mc3_18,
    ),
    "r2plus1d_18": Network(
        lambda: tv_video.r2plus1d_18(num_classes=4),
        {"stem": ("channels_first", 64), "layer3": ("channels_first", 256)},
        tv_video.r2plus1d_18,
    ),
    "s3d": Network(
        small_s3d,
        {"features.6": ("channels_first", 480), "features.12": ("channels_first", 832)},
        tv_video.s3d,
        (8, 32, 32),
    ),
    "mvit_v1_b": Network(
        small_mvit(tv_video.mvit_v1_b),
        {"blocks.0": ("tokens_cls", 192), "blocks.14": ("tokens_cls", 768)},
        tv_video.mvit_v1_b,
        lr=1e-4,
    ),
    "mvit_v2_s": Network(
        small_mvit(tv_video.mvit_v2_s),
        {"blocks.1": ("tokens_cls", 192), "blocks.15": ("tokens_cls", 768)},
        tv_video.mvit_v2_s,
        lr=1e-4,
    ),
    "swin3d_t": Network(
        lambda: tv_video.swin3d_t(num_classes=4),
        {"features.0": ("channels_last", 96), "features.4": ("channels_last", 384)},
        tv_video.swin3d_t,
        lr=1e-4,
    ),
}


def randomise_memories(model: nn.Module, seed: int = 0) -> None:
    """Move the memories away from the identity, so clips change each other's outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.memories.named_parameters():
            parameter.copy_(
                torch.randn(parameter.shape, generator=generator) * (0.3 if "out" in name else 0.1)
            )


@pytest.mark.parametrize("name", NETWORKS)
def test_wrapped_torchvision_network(name: str) -> None:
    torch.manual_seed(0)
    network = NETWORKS[name]
    net = network.build()
    generator = torch.Generator().manual_seed(1)
    clips = torch.randn(2, 2, 3, *network.clip, generator=generator)  # (B, N, C, T, H, W)
    targets = torch.tensor([1, 3])
    stages = list(network.layouts)
    wrapped = comem.wrap(net, stages, example=clips[:, 0])
    assert wrapped.layouts == network.layouts
    assert [memory.channels for memory in wrapped.memories.values()] == [
        c for _, c in network.layouts.values()
    ]

    wrapped.eval()
    with torch.no_grad():
        expected = net(clips.flatten(0, 1)).view(2, 2, -1)
        assert torch.equal(wrapped(clips), expected)  # the memories start at the identity
        banks = wrapped.memory_bank(clips)
        for index in range(2):
            assert torch.equal(wrapped.forward_clip(clips[:, index], index, banks), expected[:, index])

    prediction = comem.load(wrapped, device="cpu").predict(clips[0])
    assert set(prediction.attention) == set(stages)
    for read in prediction.attention.values():
        assert read.shape == (2, 2)
        assert torch.allclose(torch.as_tensor(read).sum(dim=1), torch.ones(2))

    wrapped.train()
    optimizer = torch.optim.AdamW(wrapped.parameters(), lr=network.lr)
    losses = []
    for _ in range(5):  # S3D's loss first moves sideways (1.47, 1.43, 1.47, 1.0, 0.2)
        optimizer.zero_grad()
        losses.append(float(comem.step(wrapped, clips, targets, mode="comem")))
        optimizer.step()
    assert losses[-1] < losses[0], losses

    # one memory stage: the two-pass step with the cross-clip gradient is joint training exactly
    one = comem.wrap(network.build(), stages[:1], example=clips[:, 0])
    randomise_memories(one)
    one.eval()  # BatchNorm on running statistics and no dropout: both steps see the same network
    one.zero_grad(set_to_none=True)
    joint_loss = comem.step(one, clips[:1], targets[:1], mode="joint")
    joint = {key: p.grad.clone() for key, p in one.named_parameters() if p.grad is not None}
    one.zero_grad(set_to_none=True)
    two_pass_loss = comem.step(one, clips[:1], targets[:1], mode="comem", cross_clip=True)
    torch.testing.assert_close(two_pass_loss, joint_loss)
    two_pass = {key: p.grad for key, p in one.named_parameters() if p.grad is not None}
    assert two_pass.keys() == joint.keys() and any(key.startswith("memories.") for key in joint)
    for key, grad in joint.items():
        torch.testing.assert_close(two_pass[key], grad, rtol=1e-3, atol=1e-5, msg=key)


@pytest.mark.parametrize("name", NETWORKS)
def test_wrap_measures_full_size_networks_without_an_example(name: str) -> None:
    """At its published size, without ``example``: the wrapper's own trial clip (shapes only, on
    the meta device) finds the same layouts and widths."""
    network = NETWORKS[name]
    with torch.device("meta"):
        net = network.full()
    wrapped = comem.wrap(net, list(network.layouts))
    assert wrapped.layouts == network.layouts
    assert all(parameter.is_meta for parameter in wrapped.memories.parameters())
