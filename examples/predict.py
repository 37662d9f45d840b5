"""Predict with a trained model from tensors: decoded frames or ready clips, with the memory's read
weights (which clips each clip drew on).

    comem train --epochs 1 --out runs/demo && python examples/predict.py runs/demo/best.pt
"""

import sys

import torch

import comem


def main(checkpoint: str) -> None:
    predictor = comem.load(checkpoint, device="cpu")  # model, class names, clip settings: all stored
    config = predictor.config
    # a decoded video: (T, H, W, 3) uint8 frames, e.g. from torchvision.io or PyAV
    frames = torch.randint(
        0, 256, (72, 64, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    prediction = predictor.predict(frames, clips=4)  # sampled and cropped as `comem eval` does
    for index, score in prediction.top(2):
        print(f"{predictor.class_names[index]:<12} {score:.3f}")
    print("per-clip scores (clips x classes):\n", prediction.clip_scores.round(3))
    for stage, weights in prediction.attention.items():
        print(f"memory after {stage}: row i = how much clip i read from each clip\n", weights.round(2))
    # clips already cut and normalised as in training: (N, C, T, H, W) float, scored as they are
    clips = torch.randn(3, 3, config.clip_len, config.crop_size, config.crop_size)
    print("video scores from clips:", predictor.predict(clips).scores.round(3))


if __name__ == "__main__":
    main(sys.argv[1])
