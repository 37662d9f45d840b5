"""Train torchvision's R3D-18 with collaborative memories on your own videos, in a plain loop.

``comem.VideoClips`` reads any data directory ``comem train`` reads (e.g. ``train.csv`` lines
``path label``) or a list of ``(path, label)``: N clips per video, each video decoded once, the
same sampling and crops as ``comem train``, and each clip's time in its video.

    python examples/train_video_clips.py path/to/data --steps 20
"""

import argparse

import torch
from torch.utils.data import DataLoader
from torchvision.models.video import r3d_18

import comem

MEAN, STD = torch.tensor([0.43216, 0.394666, 0.37645]), torch.tensor([0.22803, 0.22145, 0.216989])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    args = parser.parse_args()
    torch.manual_seed(0)
    videos = comem.VideoClips(args.data, clips=3, clip_len=4, stride=2, crop_size=32, train=True)
    loader = DataLoader(
        videos, batch_size=4, shuffle=True, num_workers=args.workers, collate_fn=videos.collate
    )
    model = comem.wrap(r3d_18(num_classes=len(videos.class_names)), ["layer3", "layer4"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    step = 0
    while step < args.steps:
        for batch in loader:
            for message in batch["skipped"]:
                print("skipped", message)  # a video that cannot be decoded
            # uint8 (B, N, C, T, H, W) -> floats normalised as the network's weights expect
            video = (batch["video"].float() / 255 - MEAN.view(3, 1, 1, 1)) / STD.view(3, 1, 1, 1)
            optimizer.zero_grad()
            loss = comem.step(model, video, batch["label"], mode="comem", times=batch["times"])
            optimizer.step()
            print(f"step {step}  loss {loss.item():.4f}", flush=True)
            step += 1
            if step == args.steps:
                break


if __name__ == "__main__":
    main()
