"""The training loop: data -> mode step -> optimizer, with evaluation, logging and exact resume.

Resume is exact because nothing random depends on process history: the epoch's video order is a
permutation seeded by (seed, epoch), a video's clips and augmentation are a function of
(seed, epoch, index), and the model-side RNG (dropout) is saved in the checkpoint. A checkpoint
records how many batches of the current epoch are done, and the sampler skips them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from comem.config import TrainConfig, comem_home
from comem.data.datasets import VideoSplits, load_kinetics_csv_dir
from comem.data.synthetic import SyntheticSpec, ensure_synthetic
from comem.data.transforms import normalize
from comem.engine.checkpoint import load_checkpoint, save_checkpoint
from comem.engine.evaluate import autocast_for, predict_scores, video_scores
from comem.engine.loaders import drops_last, make_dataset, make_loader, resolve_device
from comem.engine.modes import comem_step, joint_step, single_step
from comem.metrics import classification_metrics
from comem.models.build import ModelSpec, VideoModel, build_model, load_pretrained


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class EpochSampler(Sampler[int]):
    """A random order of the videos seeded by (seed, epoch), optionally skipping its first items."""

    def __init__(self, size: int, *, seed: int, epoch: int, skip: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
        self.order = torch.randperm(size, generator=generator)[skip:]

    def __iter__(self) -> Iterator[int]:
        return iter(self.order.tolist())

    def __len__(self) -> int:
        return len(self.order)


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD+momentum or AdamW; no weight decay on norms and biases (1-D parameters)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=config.lr)


def warmup_cosine(total_steps: int, warmup_steps: int) -> Any:
    """LR multiplier: linear warm-up from ~0 to 1, then cosine decay to 0 at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def resolve_data(config: TrainConfig) -> Path:
    """The user's data dir, or the built-in synthetic dataset (generated into the cache once)."""
    if config.data is not None:
        return Path(config.data)
    return ensure_synthetic(comem_home(), SyntheticSpec(task=config.synthetic_task))


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Atomic JSON write (a reader never sees a half-written metrics file)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)


class Trainer:
    """Owns one training run: model, optimizer, schedule, data, logs and checkpoints under ``out``."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config.validate()
        self.out = Path(config.out)
        self.device = resolve_device(config.device)
        seed_everything(config.seed)
        self.data_dir = resolve_data(config)
        self.splits: VideoSplits = load_kinetics_csv_dir(self.data_dir)
        self.train_set = make_dataset(self.splits.train, config, train=True)
        self.val_set = make_dataset(self.splits.val, config, train=False)
        self.model_spec = ModelSpec(
            backbone=config.backbone,
            num_classes=self.splits.num_classes,
            memory_stages=tuple(config.memory_stages),
            memory=config.memory,
            fusion=config.fusion,
            key_dim=config.key_dim,
            dropout=config.dropout,
        )
        self.model: VideoModel = build_model(self.model_spec)
        if config.pretrained:
            load_pretrained(self.model, config.pretrained, strict=config.pretrained_strict)
        self.model.to(self.device)
        self.optimizer = build_optimizer(self.model, config)
        rounding = math.floor if drops_last(len(self.train_set), config) else math.ceil
        self.steps_per_epoch = rounding(len(self.train_set) / config.batch_size)
        total = self.steps_per_epoch * config.epochs
        warmup = min(round(config.warmup_epochs * self.steps_per_epoch), total)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_cosine(total, max(warmup, 1))
        )
        self.autocast = autocast_for(self.device, config.amp)
        self.epoch = 0
        self.step_in_epoch = 0
        self.global_step = 0
        self.history: list[dict[str, Any]] = []
        self.skipped: dict[str, str] = {}
        self.epoch_loss_sum = 0.0
        self.epoch_correct = 0
        self.epoch_videos = 0

    # --- checkpoints -------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "model_spec": dataclasses.asdict(self.model_spec),
            "config": dataclasses.asdict(self.config),
            "class_names": self.splits.class_names,
            "data_dir": str(self.data_dir.resolve()),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "history": self.history,
            "skipped": self.skipped,
            "epoch_running": [self.epoch_loss_sum, self.epoch_correct, self.epoch_videos],
            "rng": rng_state(),
        }

    def save(self, name: str = "last.pt") -> None:
        save_checkpoint(self.state(), self.out / name)

    def resume(self) -> bool:
        """Continue from ``out/last.pt`` if it exists; returns whether it did."""
        path = self.out / "last.pt"
        if not path.exists():
            return False
        state = load_checkpoint(path)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.step_in_epoch = state["epoch"], state["step_in_epoch"]
        self.global_step, self.history, self.skipped = (
            state["global_step"],
            state["history"],
            state["skipped"],
        )
        self.epoch_loss_sum, self.epoch_correct, self.epoch_videos = state["epoch_running"]
        restore_rng_state(state["rng"])
        return True

    # --- the loop ----------------------------------------------------------------------------
    def note_skipped(self, messages: list[str], bar: tqdm | None = None) -> None:
        for message in messages:
            path = message.split(": ", 1)[0]
            if path not in self.skipped:
                self.skipped[path] = message
                (bar.write if bar else print)(f"warning: skipping unreadable video {message}")

    def train_step(self, batch: dict[str, Any]) -> tuple[float, int]:
        video = normalize(batch["video"].to(self.device, non_blocking=True))
        targets = batch["label"].to(self.device, non_blocking=True)
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        if self.config.mode == "comem":
            output = comem_step(
                self.model, video, targets, self.autocast, memory_pass_bn=self.config.memory_pass_bn
            )
        elif self.config.mode == "joint":
            output = joint_step(self.model, video, targets, self.autocast)
        else:
            output = single_step(self.model, video, targets, self.autocast)
        if self.config.clip_grad:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_grad)
        self.optimizer.step()
        self.scheduler.step()
        correct = 0
        if not targets.is_floating_point():
            correct = int((video_scores(output.logits, multi_label=False).argmax(-1) == targets).sum())
        return float(output.loss), correct

    def evaluate(self) -> dict[str, float]:
        loader = make_loader(self.val_set, self.config, None, self.device)
        result = predict_scores(
            self.model,
            loader,
            self.device,
            share_memory=self.config.shares_eval_memory,
            amp=self.config.amp,
        )
        self.note_skipped(result.skipped)
        return classification_metrics(result.scores, result.targets)

    def run(self) -> dict[str, Any]:
        config = self.config
        self.out.mkdir(parents=True, exist_ok=True)
        if config.resume and self.resume():
            print(f"resumed from {self.out / 'last.pt'} at epoch {self.epoch + 1}, step {self.step_in_epoch}")
        writer = SummaryWriter(str(self.out / "tb"), purge_step=self.global_step)
        try:
            while self.epoch < config.epochs:
                self.train_epoch(writer)
                self.finish_epoch(writer)
        except KeyboardInterrupt:
            self.save()
            print(f"interrupted: saved {self.out / 'last.pt'}; continue with --resume")
            raise
        finally:
            writer.close()
        return self.metrics()

    def train_epoch(self, writer: SummaryWriter) -> None:
        config = self.config
        self.train_set.set_epoch(self.epoch)
        sampler = EpochSampler(
            len(self.train_set),
            seed=config.seed,
            epoch=self.epoch,
            skip=self.step_in_epoch * config.batch_size,
        )
        loader = make_loader(self.train_set, config, sampler, self.device)
        bar = tqdm(
            loader,
            desc=f"epoch {self.epoch + 1}/{config.epochs} [{config.mode}]",
            initial=self.step_in_epoch,
            total=self.steps_per_epoch,
            dynamic_ncols=True,
        )
        started, clips_seen = time.perf_counter(), 0
        for batch in bar:
            self.note_skipped(batch["skipped"], bar)
            if batch["label"].numel() > 0:
                loss, correct = self.train_step(batch)
                videos = int(batch["label"].shape[0])
                clips_seen += videos * batch["video"].shape[1]
                self.epoch_loss_sum += loss * videos
                self.epoch_correct += correct
                self.epoch_videos += videos
                clips_per_s = clips_seen / max(time.perf_counter() - started, 1e-9)
                bar.set_postfix(loss=f"{loss:.3f}", clips_s=f"{clips_per_s:.1f}")
                writer.add_scalar("train/loss", loss, self.global_step)
                writer.add_scalar("train/lr", self.scheduler.get_last_lr()[0], self.global_step)
                writer.add_scalar("train/clips_per_s", clips_per_s, self.global_step)
            else:  # every video of the batch was unreadable: keep the schedule on time
                self.scheduler.step()
            self.step_in_epoch += 1
            self.global_step += 1
            if config.save_every and self.global_step % config.save_every == 0:
                self.save()
        bar.close()

    def finish_epoch(self, writer: SummaryWriter) -> None:
        config = self.config
        record: dict[str, Any] = {
            "epoch": self.epoch + 1,
            "train_loss": self.epoch_loss_sum / max(self.epoch_videos, 1),
            "train_top1": 100.0 * self.epoch_correct / max(self.epoch_videos, 1),
            "lr": self.scheduler.get_last_lr()[0],
        }
        if (self.epoch + 1) % config.eval_every == 0 or self.epoch + 1 == config.epochs:
            record.update({f"val_{key}": value for key, value in self.evaluate().items()})
        for key, value in record.items():
            if key != "epoch":  # train/loss is the per-step series: epoch means go to train/epoch_*
                tag = key.replace("_", "/epoch_" if key.startswith("train_") else "/", 1)
                writer.add_scalar(tag, value, self.epoch + 1)
        self.history.append(record)
        summary = ", ".join(f"{k} {v:.4g}" for k, v in record.items() if k != "epoch")
        print(f"epoch {self.epoch + 1}/{config.epochs}: {summary}")
        self.epoch += 1
        self.step_in_epoch = 0
        self.epoch_loss_sum, self.epoch_correct, self.epoch_videos = 0.0, 0, 0
        best = max((h.get("val_top1", -1.0) for h in self.history[:-1]), default=-1.0)
        self.save()
        if record.get("val_top1", -1.0) > best:
            self.save("best.pt")
        write_json(self.out / "metrics.json", self.metrics())

    def metrics(self) -> dict[str, Any]:
        last_eval = next((h for h in reversed(self.history) if any(k.startswith("val_") for k in h)), {})
        return {
            **{key: value for key, value in last_eval.items() if key.startswith("val_")},
            "best_val_top1": max((h["val_top1"] for h in self.history if "val_top1" in h), default=None),
            "mode": self.config.mode,
            "clips": self.config.clips,
            "train_clips_per_video": self.config.train_clips,
            "eval_views": self.config.eval_views * self.config.crops,
            "epochs": self.epoch,
            "backbone": self.config.backbone,
            "data": str(self.data_dir),
            "num_classes": self.splits.num_classes,
            "train_videos": len(self.splits.train),
            "val_videos": len(self.splits.val),
            "skipped_videos": len(self.skipped),
            "skipped": sorted(self.skipped.values()),
            "history": self.history,
        }


def train(config: TrainConfig) -> dict[str, Any]:
    if config.task == "ava":
        from comem.detection.train import train_ava

        return train_ava(config)
    return Trainer(config).run()
