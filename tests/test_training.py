"""comem training actually learns: it overfits a batch of four real videos in a few dozen steps."""

import contextlib
from pathlib import Path

import torch

from comem.data.datasets import MultiClipVideoDataset, collate_clips, load_kinetics_csv_dir
from comem.data.transforms import normalize
from comem.engine.modes import comem_step
from comem.models.build import ModelSpec, build_model

STEPS = 25


def test_comem_steps_overfit_a_tiny_batch(tiny_dataset: Path) -> None:
    records = load_kinetics_csv_dir(tiny_dataset).train
    dataset = MultiClipVideoDataset(records, num_clips=2, clip_len=4, stride=2, crop_size=32, train=False)
    batch = collate_clips([dataset[i] for i in range(len(dataset))])
    video, targets = normalize(batch["video"]), batch["label"]
    assert video.shape == (4, 2, 3, 4, 32, 32) and targets.tolist() == [0, 1, 0, 1]

    torch.manual_seed(0)
    model = build_model(ModelSpec(backbone="tiny", num_classes=2, memory_stages=("last",), dropout=0.0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    losses = []
    for _ in range(STEPS):
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(comem_step(model, video, targets, contextlib.nullcontext).loss))
        optimizer.step()
    assert losses[-1] < 0.5 * losses[0], losses
    model.eval()
    with torch.no_grad():
        predicted = model(video).softmax(-1).mean(1).argmax(-1)
    assert predicted.tolist() == targets.tolist()


def test_grad_chunk_2_trains_to_the_weights_of_grad_chunk_1(tiny_dataset: Path) -> None:
    """A few optimizer steps on real videos through ``comem.step``: two clips per gradient-pass
    forward give the weights one clip at a time gives (BatchNorm on running statistics, so both
    normalise alike), and the loss drops."""
    import comem

    records = load_kinetics_csv_dir(tiny_dataset).train
    dataset = MultiClipVideoDataset(records, num_clips=4, clip_len=4, stride=2, crop_size=32, train=False)
    batch = collate_clips([dataset[i] for i in range(len(dataset))])
    weights, losses = {}, {}
    for grad_chunk in (1, 2):
        torch.manual_seed(0)
        model = build_model(ModelSpec(backbone="tiny", num_classes=2, memory_stages=("all",), dropout=0.0))
        model.eval()  # BatchNorm on its running statistics
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        losses[grad_chunk] = []
        for _ in range(4):
            optimizer.zero_grad(set_to_none=True)
            loss = comem.step(model, batch["video"], batch["label"], grad_chunk=grad_chunk)
            losses[grad_chunk].append(float(loss))
            optimizer.step()
        weights[grad_chunk] = model.state_dict()
    assert losses[2][-1] < losses[2][0]
    for name, value in weights[1].items():
        torch.testing.assert_close(weights[2][name], value, rtol=1e-4, atol=1e-5, msg=name)
