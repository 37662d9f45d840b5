"""Train a comem-wrapped network with PyTorch Lightning: manual optimisation around ``comem.step``.

``comem.step`` runs the step's backward passes itself (the two-pass step backpropagates clip by
clip, which is what keeps its memory that of one clip), so the module turns Lightning's automatic
optimisation off and hands it ``self.manual_backward``; Lightning still owns the loop, devices,
logging and checkpoints. Data as in ``train_r3d18.py``: the label is which clip is brighter.

    python examples/lightning_comem.py --steps 10
"""

import argparse

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset
from torchvision.models.video import r3d_18

import comem


class VideoLevelModule(L.LightningModule):
    def __init__(self, clips: int) -> None:
        super().__init__()
        self.automatic_optimization = False  # comem.step runs the backward passes
        self.model = comem.wrap(r3d_18(num_classes=clips), ["layer3", "layer4"])

    def training_step(self, batch: list[torch.Tensor], batch_index: int) -> torch.Tensor:
        video, label = batch  # (B, N, C, T, H, W), (B,)
        optimizer = self.optimizers()
        optimizer.zero_grad()
        loss = comem.step(self.model, video, label, mode="comem", backward=self.manual_backward)
        print(f"step {self.global_step}  loss {loss.item():.4f}", flush=True)
        optimizer.step()
        self.log("loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    L.seed_everything(0, verbose=False)
    clips, generator = 3, torch.Generator().manual_seed(0)
    video, label = torch.randn(4, clips, 3, 4, 16, 16, generator=generator), torch.tensor([0, 1, 2, 1])
    video[torch.arange(4), label] += 1.0
    data = DataLoader(TensorDataset(video, label), batch_size=4)
    trainer = L.Trainer(max_steps=args.steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(VideoLevelModule(clips), data)


if __name__ == "__main__":
    main()
