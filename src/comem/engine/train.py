"""The training loop: data -> mode step -> optimizer, with evaluation, logging and exact resume.

Resume is exact because nothing random depends on process history: the epoch's video order is a
permutation seeded by (seed, epoch), a video's clips and augmentation are a function of
(seed, epoch, index), and the model-side RNG (dropout) is saved in the checkpoint. A checkpoint
records how many batches of the current epoch are done, and the sampler skips them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Sampler
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from comem.config import TrainConfig, comem_home
from comem.data.datasets import DatasetFormatError, VideoSplits
from comem.data.formats import load_splits, require_training_labels
from comem.data.synthetic import SyntheticSpec, ensure_synthetic
from comem.engine.checkpoint import load_checkpoint, save_checkpoint
from comem.engine.distributed import (
    DistContext,
    DistributedSetupError,
    NullWriter,
    ShardSampler,
    all_ranks,
    broadcast_buffers,
    context_from_env,
    gather_objects,
    gather_video_scores,
    init_distributed,
    shutdown_distributed,
    sum_over_ranks,
    wrap_for_training,
)
from comem.engine.evaluate import autocast_for, predict_scores, video_scores
from comem.engine.loaders import drops_last, make_dataset, make_loader, resolve_device
from comem.engine.performance import prepare_video, tune_model
from comem.engine.provenance import write_run_record
from comem.engine.reports import plot_training_curves
from comem.engine.resume_check import check_resume
from comem.engine.rng import restore_rng_state, rng_state, seed_everything
from comem.engine.run_dir import claim_run_dir
from comem.engine.step import train_step
from comem.engine.stopping import StopSignals, TrainingStopped, stopped_message
from comem.metrics import classification_metrics
from comem.models.build import ModelSpec, VideoModel, build_model, load_pretrained
from comem.models.normalization import normalization

log = logging.getLogger(__name__)


class EpochSampler(Sampler[int]):
    """A random order of the videos seeded by (seed, epoch), optionally skipping its first items.

    Under DDP each rank takes its strided share of the same order (``DistContext.shard``), and
    ``skip`` counts items of that share.
    """

    def __init__(
        self, size: int, *, seed: int, epoch: int, skip: int = 0, context: DistContext | None = None
    ) -> None:
        generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
        self.order = (context or DistContext()).shard(torch.randperm(size, generator=generator))[skip:]

    def __iter__(self) -> Iterator[int]:
        return iter(self.order.tolist())

    def __len__(self) -> int:
        return len(self.order)


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD+momentum or AdamW; no weight decay on norms and biases (1-D parameters).

    The collaborative memories' parameters (``memories.`` in their names) learn at
    ``memory_lr_scale`` times the backbone's rate: they start at the identity, from which the
    gate must grow before the memory can say anything, while the backbone may be pretrained.
    """
    groups = []
    for is_memory in (False, True):
        named = [
            (name, p)
            for name, p in model.named_parameters()
            if p.requires_grad and ("memories." in name) == is_memory
        ]
        lr = config.lr * (config.memory_lr_scale if is_memory else 1.0)
        decay = [p for _, p in named if p.ndim > 1]
        no_decay = [p for _, p in named if p.ndim <= 1]
        groups += [
            {"params": decay, "weight_decay": config.weight_decay, "lr": lr},
            {"params": no_decay, "weight_decay": 0.0, "lr": lr},
        ]
    groups = [group for group in groups if group["params"]]
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


def settle_normalization(model: VideoModel, spec: ModelSpec, config: TrainConfig) -> ModelSpec:
    """``spec`` recording the model's input normalisation: ``config.mean/std`` when given, else that
    of the loaded weights' source (or the backbone's), so checkpoints, eval and predict use it."""
    if config.mean is not None and config.std is not None:
        model.normalization = normalization(config.mean, config.std)
    return spec.with_normalization(model.normalization)


def load_pretrained_weights(model: VideoModel, config: TrainConfig) -> None:
    """``--pretrained``, warning in one line about tensors a non-strict load left at their init."""
    missing = load_pretrained(model, config.pretrained, strict=config.pretrained_strict)
    if missing:
        log.warning(
            f"{config.pretrained}: {len(missing)} tensors of the model are not in the file "
            f"and keep their initialisation (first: {missing[0]})"
        )


class Trainer:
    """Owns one training run: model, optimizer, schedule, data, logs and checkpoints under ``out``."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config.validate()
        self.out = Path(config.out)
        self.dist, self.device = init_distributed(resolve_device(config.device))
        seed_everything(config.seed)
        self.data_dir = resolve_data(config)
        self.splits: VideoSplits = load_splits(self.data_dir, config.data_format)
        require_training_labels(self.splits, self.data_dir)
        if self.splits.missing:
            log.warning(
                f"{len(self.splits.missing)} listed videos not found, left out "
                f"(first: {self.splits.missing[0]}); `comem check-data` lists them all"
            )
        # Multi-label data (Charades) is scored and checkpointed by mAP, single-label by top-1.
        self.selection_metric = "val_mAP" if self.splits.multi_label else "val_top1"
        classes = self.splits.num_classes
        self.train_set = make_dataset(
            self.splits.train, config, train=True, num_classes=classes, splits=self.splits
        )
        self.val_set = make_dataset(self.splits.val, config, train=False, num_classes=classes)
        self.model_spec = ModelSpec(
            backbone=config.backbone,
            num_classes=self.splits.num_classes,
            memory_stages=tuple(config.memory_stages),
            memory=config.memory,
            fusion=config.fusion,
            key_dim=config.key_dim,
            gate_hidden=config.gate_hidden,
            dropout=config.dropout,
        )
        self.model: VideoModel = build_model(self.model_spec)
        if config.pretrained:
            load_pretrained_weights(self.model, config)
        self.model_spec = settle_normalization(self.model, self.model_spec, config)
        self.model.to(self.device)
        tune_model(self.model, self.device, channels_last=config.channels_last, compile=config.compile)
        self.train_model = wrap_for_training(
            self.model,
            self.dist,
            self.device,
            sync_bn=config.sync_bn,
            find_unused_parameters=config.memory == "average",  # its query/key are never used
        )
        if self.dist.enabled:  # different dropout on every rank; the weights were broadcast from rank 0
            torch.manual_seed(config.seed + self.dist.rank)
        self.optimizer = build_optimizer(self.model, config)
        shard_size = self.dist.shard_size(len(self.train_set))  # batch_size is per process
        rounding = math.floor if drops_last(shard_size, config) else math.ceil
        self.steps_per_epoch = rounding(shard_size / config.batch_size)
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
        self.stop = StopSignals()

    # --- checkpoints -------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "model_spec": dataclasses.asdict(self.model_spec),
            "config": dataclasses.asdict(self.config),
            "class_names": self.splits.class_names,
            "multi_label": self.splits.multi_label,
            "data_dir": str(self.data_dir.resolve()),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "history": self.history,
            "skipped": self.skipped,
            "epoch_running": [self.epoch_loss_sum, self.epoch_correct, self.epoch_videos],
            "rng": rng_state(),
            **self.rank_states(),
        }

    def rank_states(self) -> dict[str, Any]:
        """Under DDP, what differs between ranks (RNG, epoch sums so far), gathered from all of them."""
        if not self.dist.enabled:
            return {}
        own = {
            "rng": rng_state(),
            "epoch_running": [self.epoch_loss_sum, self.epoch_correct, self.epoch_videos],
        }
        return {"rank_states": gather_objects(own, self.dist)}

    def save(self, name: str = "last.pt") -> None:
        state = self.state()  # under DDP every rank takes part (gathering rank states), rank 0 writes
        if self.dist.is_main:
            save_checkpoint(state, self.out / name)

    def resume(self) -> bool:
        """Continue from ``out/last.pt`` if it exists; returns whether it did."""
        path = self.out / "last.pt"
        if not path.exists():
            return False
        state = load_checkpoint(path)
        accepted = check_resume(state["config"], dataclasses.asdict(self.config), path)
        if accepted and self.dist.is_main:
            log.info(f"--resume: accepted changes: {'; '.join(accepted)}")
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
        ranks = state.get("rank_states")
        if ranks and len(ranks) == self.dist.world_size:
            self.epoch_loss_sum, self.epoch_correct, self.epoch_videos = ranks[self.dist.rank][
                "epoch_running"
            ]
            restore_rng_state(ranks[self.dist.rank]["rng"])
        return True

    # --- the loop ----------------------------------------------------------------------------
    def note_skipped(self, messages: list[str]) -> None:
        for message in messages:
            path = message.split(": ", 1)[0]
            if path not in self.skipped:
                self.skipped[path] = message
                log.warning(f"skipping unreadable video {message}")

    def train_step(self, batch: dict[str, Any]) -> tuple[float, int]:
        config = self.config
        video = prepare_video(
            batch["video"],
            self.device,
            amp=config.amp,
            channels_last=config.channels_last,
            normalization=self.model.normalization,
        )
        targets = batch["label"].to(self.device, non_blocking=True)
        self.train_model.train()
        self.optimizer.zero_grad(set_to_none=True)
        output = train_step(
            self.train_model,
            video,
            targets,
            mode=config.mode,
            autocast=self.autocast,
            memory_pass_bn=config.memory_pass_bn,
            memory_chunk=config.memory_chunk,
            cross_clip=config.cross_clip,
        )
        if self.config.clip_grad:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_grad)
        self.optimizer.step()
        self.scheduler.step()
        correct = 0
        if not targets.is_floating_point():
            correct = int((video_scores(output.logits, multi_label=False).argmax(-1) == targets).sum())
        return float(output.loss), correct

    def evaluate(self) -> dict[str, float]:
        sampler = ShardSampler(len(self.val_set), self.dist) if self.dist.enabled else None
        broadcast_buffers(self.model, self.dist)  # score the model the checkpoint stores on every rank
        loader = make_loader(self.val_set, self.config, sampler, self.device, drop_last=False)
        result = predict_scores(
            self.model,
            loader,
            self.device,
            share_memory=self.config.shares_eval_memory,
            amp=self.config.amp,
            progress=self.dist.is_main,
        )
        result = gather_video_scores(result, self.dist)
        self.note_skipped(result.skipped)
        # videos: those scored (a val video that could not be read is skipped and not counted)
        return {**classification_metrics(result.scores, result.targets), "videos": len(result.targets)}

    def run(self) -> dict[str, Any]:
        config = self.config
        self.out.mkdir(parents=True, exist_ok=True)
        if config.resume and self.resume() and self.dist.is_main:  # first: it may refuse the settings
            log.info(
                f"resumed from {self.out / 'last.pt'} at epoch {self.epoch + 1}, step {self.step_in_epoch}"
            )
        if self.dist.is_main:
            (self.out / "classes.txt").write_text("\n".join(self.splits.class_names) + "\n")
            write_run_record(self.out, config, self.dist.world_size)
        main = self.dist.is_main
        writer = SummaryWriter(str(self.out / "tb"), purge_step=self.global_step) if main else NullWriter()
        try:
            with self.stop:
                while self.epoch < config.epochs:
                    self.train_epoch(writer)
                    if not self.stop.signum:
                        self.finish_epoch(writer)
                    if self.stop.signum or self.stop.due(self.dist, self.device):
                        self.stop_at_step_boundary()
        except KeyboardInterrupt:  # mid-step: the state is not consistent, so it is not saved
            if main:
                log.info(f"interrupted mid-step: not saved; {self.out / 'last.pt'} holds the last saved step")
            raise
        finally:
            writer.close()
        return self.metrics()

    def stop_at_step_boundary(self) -> None:
        """Save the state after the last whole step and end the run for the signal received."""
        self.save()
        if self.dist.is_main:
            log.info(stopped_message(self.stop.signum, str(self.out / "last.pt")))
        raise TrainingStopped(self.stop.signum)

    def train_epoch(self, writer: SummaryWriter) -> None:
        config = self.config
        self.train_set.set_epoch(self.epoch)
        sampler = EpochSampler(
            len(self.train_set),
            seed=config.seed,
            epoch=self.epoch,
            skip=self.step_in_epoch * config.batch_size,
            context=self.dist,
        )
        shard_size = self.dist.shard_size(len(self.train_set))
        loader = make_loader(
            self.train_set, config, sampler, self.device, drop_last=drops_last(shard_size, config)
        )
        bar = tqdm(
            loader,
            desc=f"epoch {self.epoch + 1}/{config.epochs} [{config.mode}]",
            initial=self.step_in_epoch,
            total=self.steps_per_epoch,
            dynamic_ncols=True,
            **({} if self.dist.is_main else {"disable": True}),  # TQDM_DISABLE=1 still works
        )
        started, clips_seen = time.perf_counter(), 0
        waiting_since = started
        for batch in bar:
            loader_wait = time.perf_counter() - waiting_since  # > 0: the loader starves the model
            self.note_skipped(batch["skipped"])
            # A batch left with one video by unreadable ones would break train-mode BatchNorm: skip it
            # (on every rank together, or DDP's gradient all-reduce would wait forever).
            if all_ranks(batch["label"].shape[0] >= min(2, config.batch_size), self.dist, self.device):
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
                writer.add_scalar("train/loader_wait_ms", 1000.0 * loader_wait, self.global_step)
            else:  # (almost) every video of the batch was unreadable: keep the schedule on time
                with warnings.catch_warnings():  # PyTorch warns when no optimizer step came first
                    warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
                    self.scheduler.step()
            self.step_in_epoch += 1
            self.global_step += 1
            if config.save_every and self.global_step % config.save_every == 0:
                self.save()
            if self.stop.due(self.dist, self.device):
                break
            waiting_since = time.perf_counter()
        bar.close()

    def finish_epoch(self, writer: SummaryWriter) -> None:
        config = self.config
        if self.dist.enabled:
            running = [self.epoch_loss_sum, self.epoch_correct, self.epoch_videos]
            self.epoch_loss_sum, self.epoch_correct, self.epoch_videos = sum_over_ranks(running, self.dist)
            for skipped in gather_objects(self.skipped, self.dist):
                self.skipped.update(skipped)
        if self.epoch_videos == 0 and self.skipped:  # every video unreadable: nothing was trained
            first = sorted(self.skipped.values())[0]
            raise DatasetFormatError(
                f"no training video of {self.data_dir} could be read "
                f"({len(self.skipped)} skipped; first: {first})"
            )
        record: dict[str, Any] = {
            "epoch": self.epoch + 1,
            "train_loss": self.epoch_loss_sum / max(self.epoch_videos, 1),
            "train_top1": 100.0 * self.epoch_correct / max(self.epoch_videos, 1),
            "lr": self.scheduler.get_last_lr()[0],
        }
        if self.splits.multi_label:
            del record["train_top1"]
        if (self.epoch + 1) % config.eval_every == 0 or self.epoch + 1 == config.epochs:
            record.update({f"val_{key}": value for key, value in self.evaluate().items()})
        for key, value in record.items():
            if key != "epoch":  # train/loss is the per-step series: epoch means go to train/epoch_*
                tag = key.replace("_", "/epoch_" if key.startswith("train_") else "/", 1)
                writer.add_scalar(tag, value, self.epoch + 1)
        self.history.append(record)
        summary = ", ".join(f"{k} {v:.4g}" for k, v in record.items() if k != "epoch")
        if self.dist.is_main:
            log.info(f"epoch {self.epoch + 1}/{config.epochs}: {summary}")
        self.epoch += 1
        self.step_in_epoch = 0
        self.epoch_loss_sum, self.epoch_correct, self.epoch_videos = 0.0, 0, 0
        key = self.selection_metric
        best = max((h.get(key, -1.0) for h in self.history[:-1]), default=-1.0)
        self.save()
        if record.get(key, -1.0) > best:
            self.save("best.pt")
        if self.dist.is_main:
            write_json(self.out / "metrics.json", self.metrics())
            plot_training_curves(self.out / "curves.png", self.history)

    def metrics(self) -> dict[str, Any]:
        last_eval = next((h for h in reversed(self.history) if any(k.startswith("val_") for k in h)), {})
        return {
            **{key: value for key, value in last_eval.items() if key.startswith("val_")},
            f"best_{self.selection_metric}": max(
                (h[self.selection_metric] for h in self.history if self.selection_metric in h), default=None
            ),
            "data_format": self.splits.data_format,
            "multi_label": self.splits.multi_label,
            "mode": self.config.mode,
            "clips": self.config.clips,
            "train_clips_per_video": self.config.train_clips,
            "eval_views": self.config.eval_views * self.config.crops,
            "epochs": self.epoch,
            "backbone": self.config.backbone,
            "data": str(self.data_dir),
            "num_classes": self.splits.num_classes,
            "train_videos": len(self.splits.train),
            "skipped_videos": len(self.skipped),
            "skipped": sorted(self.skipped.values()),
            "history": self.history,
        }


def train(config: TrainConfig) -> dict[str, Any]:
    config.validate()
    claim = claim_run_dir(
        config.out, resume=config.resume, overwrite=config.overwrite, main=context_from_env().is_main
    )
    with claim:
        try:
            if config.task == "ava":
                from comem.detection.train import train_ava

                if context_from_env().enabled:  # each rank would run the whole job into the same --out
                    raise DistributedSetupError(
                        "--task ava runs in one process; start it without torchrun "
                        "(no multi-process AVA training)"
                    )

                return train_ava(config)
            return Trainer(config).run()
        finally:
            shutdown_distributed()
