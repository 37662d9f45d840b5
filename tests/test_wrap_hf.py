"""A Hugging Face video transformer through ``comem.wrap``: ``VideoMAEForVideoClassification`` from a
small config (random weights, nothing downloaded), memories after two encoder layers."""

import pytest
import torch

import comem

transformers = pytest.importorskip("transformers")


def test_videomae_wrapped_at_two_encoder_layers_trains_in_comem_mode() -> None:
    torch.manual_seed(0)
    config = transformers.VideoMAEConfig(
        image_size=16, patch_size=8, num_frames=4, tubelet_size=2, hidden_size=32, num_hidden_layers=3,
        num_attention_heads=2, intermediate_size=64, num_labels=3, use_mean_pooling=True,
    )  # fmt: skip
    net = transformers.VideoMAEForVideoClassification(config)
    video = torch.randn(2, 3, 4, 3, 16, 16)  # (B, N, T, C, H, W): VideoMAE takes frames first
    targets = torch.tensor([0, 2])
    stages = ["videomae.encoder.layer.0", "videomae.encoder.layer.2"]
    # the encoder's tokens have no class token and no grid beside them: the layout is named
    wrapped = comem.wrap(net, stages, example=video[:, 0], layout="tokens")
    assert wrapped.layouts == {stage: ("tokens", 32) for stage in stages}
    wrapped.eval()
    with torch.no_grad():
        expected = net(pixel_values=video.flatten(0, 1)).logits.view(2, 3, -1)
        assert torch.equal(wrapped(video), expected)
    prediction = comem.load(wrapped, device="cpu").predict(video[0])
    assert {stage: read.shape for stage, read in prediction.attention.items()} == {s: (3, 3) for s in stages}
    wrapped.train()
    optimizer = torch.optim.AdamW(wrapped.parameters(), lr=1e-3)
    losses = []
    for _ in range(4):
        optimizer.zero_grad()
        losses.append(float(comem.step(wrapped, video, targets, mode="comem", cross_clip=True)))
        optimizer.step()
    assert losses[-1] < losses[0], losses
    assert all(memory.out.weight.abs().sum() > 0 for memory in wrapped.memories.values())  # they learned
