"""Train torchvision's R3D-18 at video level with collaborative memories, in a plain PyTorch loop.

Each generated video has N clips of noise; one clip is brighter, and the label is WHICH clip it is.
A clip alone cannot tell (it does not know its position or the others' brightness): the memory
after layer3 and layer4 lets every clip see the others. `comem.step` runs the memory-flat two-pass
step (peak memory of one clip); your loop keeps its optimizer, schedule, logging.

    python examples/train_r3d18.py --steps 30
"""

import argparse

import torch
from torchvision.models.video import r3d_18

import comem


def make_videos(count: int, clips: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(count, clips, 3, 4, 16, 16) normalised noise with one brighter clip per video, and its index."""
    video = torch.randn(count, clips, 3, 4, 16, 16, generator=generator)
    label = torch.randint(clips, (count,), generator=generator)
    video[torch.arange(count), label] += 1.0
    return video, label


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--mode", default="comem", choices=["single", "tsn", "joint", "comem"])
    parser.add_argument("--out", help="save the trained weights here (the model's own keys + memories.*)")
    args = parser.parse_args()
    torch.manual_seed(0)
    clips = 3
    model = comem.wrap(r3d_18(num_classes=clips), ["layer3", "layer4"])  # pretrained weights work too
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    video, label = make_videos(4, clips, torch.Generator().manual_seed(0))
    model.train()
    for step in range(args.steps):
        optimizer.zero_grad()
        loss = comem.step(model, video, label, mode=args.mode)  # forward + backward, detached loss
        optimizer.step()
        print(f"step {step}  loss {loss.item():.4f}", flush=True)
    if args.out:
        torch.save(model.state_dict(), args.out)


if __name__ == "__main__":
    main()
