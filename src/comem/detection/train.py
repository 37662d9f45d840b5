"""``comem train --task ava``: keyframe action detection in the three modes, evaluated with the official
AVA frame mAP on a detections CSV.

- ``single``: each keyframe clip alone (its memory is itself), as the usual AVA baseline.
- ``joint``: the keyframe clip and the N - 1 memory clips of its movie in one graph.
- ``comem``: a no-grad pass builds the memory of all N clips, then the keyframe clip alone runs with
  gradients reading it; only the keyframe clip carries boxes, so the second pass is one clip and peak
  memory stays that of one clip for any N.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from comem.config import TrainConfig, comem_home
from comem.data.transforms import normalize
from comem.detection.ava_data import (
    AvaData,
    AvaKeyframeDataset,
    AvaSplit,
    ClipSpec,
    collate_keyframes,
    load_ava,
    write_detections,
)
from comem.detection.ava_eval import AvaFormatError, evaluate_files
from comem.detection.model import AvaDetector
from comem.detection.synthetic_ava import SyntheticAvaSpec, ensure_synthetic_ava
from comem.engine.checkpoint import load_checkpoint, save_checkpoint
from comem.engine.distributed import DistContext
from comem.engine.evaluate import autocast_for
from comem.engine.loaders import resolve_device
from comem.engine.modes import eval_batchnorm, preserved_batchnorm_stats
from comem.engine.provenance import write_run_record
from comem.engine.resume_check import check_resume
from comem.engine.stopping import StopSignals, TrainingStopped, stopped_message
from comem.engine.train import (
    EpochSampler,
    build_optimizer,
    load_pretrained_weights,
    restore_rng_state,
    rng_state,
    seed_everything,
    settle_normalization,
    warmup_cosine,
    write_json,
)
from comem.engine.trained import config_from_state, spec_from_state
from comem.models.build import ModelSpec, build_model

log = logging.getLogger(__name__)


def make_detector(spec: ModelSpec, num_classes: int, dropout: float) -> AvaDetector:
    return AvaDetector(build_model(spec), num_classes, dropout=dropout)


def clip_count(config: TrainConfig) -> int:
    """Clips per keyframe: the keyframe clip alone in ``single`` mode, N otherwise."""
    return config.train_clips


def make_keyframe_loader(
    split: AvaSplit, data: AvaData, config: TrainConfig, *, train: bool, epoch: int = 0, skip: int = 0
) -> DataLoader:
    """Training: the epoch's keyframe order (seeded by seed and epoch) less its first ``skip`` batches."""
    dataset = AvaKeyframeDataset(
        split.keyframes,
        split.movies,
        data.num_classes,
        ClipSpec(clip_count(config), config.clip_len, config.stride, config.crop_size),
        train=train,
        box_jitter=config.ava_box_jitter,
        seed=config.seed,
    )
    dataset.set_epoch(epoch)
    sampler = EpochSampler(len(dataset), seed=config.seed, epoch=epoch, skip=skip * config.batch_size)
    sampler = sampler if train else None
    return DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=sampler,
        drop_last=train and len(dataset) > config.batch_size,
        num_workers=config.workers,
        collate_fn=collate_keyframes,
        generator=torch.Generator().manual_seed(config.seed),
    )


def detection_step(
    detector: AvaDetector, batch: dict[str, Any], config: TrainConfig, device: torch.device, autocast: Any
) -> float:
    """Forward and backward of one batch in ``config.mode``; returns the BCE loss over its boxes."""
    video = normalize(batch["video"].to(device), *detector.video_model.normalization)
    boxes, box_index = batch["boxes"].to(device), batch["box_index"].to(device)
    targets = batch["targets"].to(device)
    if config.mode == "comem" and video.shape[1] > 1:
        model = detector.video_model
        guard = (
            preserved_batchnorm_stats(model) if config.memory_pass_bn == "batch" else eval_batchnorm(model)
        )
        with guard, autocast():
            banks = model.memory_bank(video)
        with autocast():
            logits = detector.forward_keyframe(video, boxes, box_index, banks)
    else:
        with autocast():
            logits = detector(video, boxes, box_index)
    loss = F.binary_cross_entropy_with_logits(logits.float(), targets)
    loss.backward()
    return float(loss.detach())


@torch.no_grad()
def predict_boxes(
    detector: AvaDetector, loader: DataLoader, device: torch.device, autocast: Any
) -> list[tuple[str, int, list[float], np.ndarray]]:
    """Class probabilities of every box: (video_id, second, box x1,y1,x2,y2, scores over ids 1..K).

    The memory of each keyframe is built from all its clips (two passes, so memory stays flat in N).
    """
    detector.eval()
    rows = []
    for batch in tqdm(loader, desc="eval", leave=False, dynamic_ncols=True):
        video = normalize(batch["video"].to(device), *detector.video_model.normalization)
        boxes, box_index = batch["boxes"].to(device), batch["box_index"].to(device)
        with autocast():
            if video.shape[1] > 1:
                banks = detector.video_model.memory_bank(video)
                logits = detector.forward_keyframe(video, boxes, box_index, banks)
            else:
                logits = detector(video, boxes, box_index)
        scores = logits.float().sigmoid().cpu().numpy()
        items, boxes_list = batch["box_index"].tolist(), batch["original_boxes"].tolist()
        for row, (item, box) in enumerate(zip(items, boxes_list, strict=True)):
            video_id, second = batch["keys"][item]
            rows.append((video_id, second, box, scores[row]))
    return rows


def evaluate_detections(
    detector: AvaDetector, data: AvaData, config: TrainConfig, device: torch.device, out: Path
) -> dict[str, Any]:
    """Write ``out/detections_val.csv`` (official format) and score it with the official rules."""
    loader = make_keyframe_loader(data.val, data, config, train=False)
    rows = predict_boxes(detector, loader, device, autocast_for(device, config.amp))
    out.mkdir(parents=True, exist_ok=True)
    path = out / "detections_val.csv"
    write_detections(path, rows, [category.id for category in data.categories])
    exclusions = data.layout.exclusions("val")
    result, categories = evaluate_files(
        data.layout.labelmap,
        data.layout.groundtruth("val"),
        path,
        exclusions if exclusions.is_file() else None,
    )
    metrics: dict[str, Any] = {"val_frame_mAP": 100.0 * result.mean_ap}
    for category in categories:
        metrics[f"val_AP_{category.name}"] = 100.0 * result.per_class[category.id]
    return metrics


def resolve_ava_data(config: TrainConfig) -> Path:
    if config.data is not None:
        return Path(config.data)
    return ensure_synthetic_ava(comem_home(), SyntheticAvaSpec(version=config.ava_version))


class AvaTrainer:
    """One ``--task ava`` run: data, detector, optimizer, schedule; checkpoints, metrics and TensorBoard
    logs under ``out``.

    ``--resume`` continues exactly where ``last.pt`` stopped, inside an epoch too (written every
    ``--save-every`` steps and on Ctrl-C): the keyframe order and augmentation are functions of
    (seed, epoch, index) and the model-side random state is saved.
    """

    def __init__(self, config: TrainConfig) -> None:
        self.config = config.validate()
        self.out = Path(config.out)
        self.device = resolve_device(config.device)
        seed_everything(config.seed)
        self.data_dir = resolve_ava_data(config)
        self.data = load_ava(self.data_dir, config.ava_version, detection_thresh=config.ava_detection_thresh)
        self.spec = ModelSpec(
            backbone=config.backbone,
            num_classes=1,  # the clip head is unused; the RoI head predicts the actions
            memory_stages=tuple(config.memory_stages),
            memory=config.memory,
            fusion=config.fusion,
            key_dim=config.key_dim,
            gate_hidden=config.gate_hidden,
            dropout=0.0,
        )
        self.detector = make_detector(self.spec, self.data.num_classes, config.dropout)
        if config.pretrained:
            load_pretrained_weights(self.detector.video_model, config)
        self.spec = settle_normalization(self.detector.video_model, self.spec, config)
        self.detector.to(self.device)
        self.optimizer = build_optimizer(self.detector, config)
        size = len(self.data.train.keyframes)
        self.steps_per_epoch = size // config.batch_size if size > config.batch_size else 1
        total = self.steps_per_epoch * config.epochs
        warmup = max(min(round(config.warmup_epochs * self.steps_per_epoch), total), 1)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, warmup_cosine(total, warmup))
        self.autocast = autocast_for(self.device, config.amp)
        self.epoch = 0
        self.step_in_epoch = 0
        self.global_step = 0
        self.epoch_loss = [0.0, 0]  # sum of step losses, steps, of the current epoch
        self.history: list[dict[str, Any]] = []
        self.stop = StopSignals()

    def state(self) -> dict[str, Any]:
        return {
            "model": self.detector.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "model_spec": dataclasses.asdict(self.spec),
            "config": dataclasses.asdict(self.config),
            "num_classes": self.data.num_classes,
            "data_dir": str(self.data_dir.resolve()),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "epoch_loss": self.epoch_loss,
            "history": self.history,
            "rng": rng_state(),
        }

    def save(self, name: str = "last.pt") -> None:
        save_checkpoint(self.state(), self.out / name)

    def resume(self) -> bool:
        path = self.out / "last.pt"
        if not path.exists():
            return False
        state = load_checkpoint(path)
        accepted = check_resume(state["config"], dataclasses.asdict(self.config), path)
        if accepted:
            log.info(f"--resume: accepted changes: {'; '.join(accepted)}")
        self.detector.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.step_in_epoch, self.global_step = (
            state["epoch"],
            state["step_in_epoch"],
            state["global_step"],
        )
        self.epoch_loss, self.history = state["epoch_loss"], state["history"]
        restore_rng_state(state["rng"])
        return True

    def run(self) -> dict[str, Any]:
        config = self.config
        if config.resume and self.resume():  # first: it may refuse the settings
            log.info(
                f"resumed from {self.out / 'last.pt'} at epoch {self.epoch + 1}, step {self.step_in_epoch}"
            )
        write_run_record(self.out, config)
        writer = SummaryWriter(str(self.out / "tb"), purge_step=self.global_step)
        try:
            with self.stop:
                while self.epoch < config.epochs:
                    self.train_epoch(writer)
                    if not self.stop.signum:
                        self.finish_epoch(writer)
                    if self.stop.signum or self.stop.due(DistContext(), self.device):
                        self.save()
                        log.info(stopped_message(self.stop.signum, str(self.out / "last.pt")))
                        raise TrainingStopped(self.stop.signum)
        except KeyboardInterrupt:  # mid-step: the state is not consistent, so it is not saved
            log.info(f"interrupted mid-step: not saved; {self.out / 'last.pt'} holds the last saved step")
            raise
        finally:
            writer.close()
        return self.metrics()

    def train_epoch(self, writer: SummaryWriter) -> None:
        config = self.config
        loader = make_keyframe_loader(
            self.data.train, self.data, config, train=True, epoch=self.epoch, skip=self.step_in_epoch
        )
        self.detector.train()
        started, steps = time.perf_counter(), 0
        bar = tqdm(loader, desc=f"epoch {self.epoch + 1}/{config.epochs} [ava {config.mode}]",
                   initial=self.step_in_epoch, total=self.steps_per_epoch, dynamic_ncols=True)  # fmt: skip
        for batch in bar:
            if len(batch["boxes"]) > 0:
                self.optimizer.zero_grad(set_to_none=True)
                loss = detection_step(self.detector, batch, config, self.device, self.autocast)
                if config.clip_grad:
                    torch.nn.utils.clip_grad_norm_(self.detector.parameters(), config.clip_grad)
                self.optimizer.step()
                self.epoch_loss = [self.epoch_loss[0] + loss, self.epoch_loss[1] + 1]
                steps += 1
                bar.set_postfix(
                    loss=f"{loss:.3f}", s_per_step=f"{(time.perf_counter() - started) / steps:.2f}"
                )
                writer.add_scalar("train/loss", loss, self.global_step)
                writer.add_scalar("train/lr", self.scheduler.get_last_lr()[0], self.global_step)
            self.scheduler.step()
            self.step_in_epoch += 1
            self.global_step += 1
            if config.save_every and self.global_step % config.save_every == 0:
                self.save()
            if self.stop.due(DistContext(), self.device):
                break
        bar.close()

    def finish_epoch(self, writer: SummaryWriter) -> None:
        config = self.config
        record: dict[str, Any] = {
            "epoch": self.epoch + 1,
            "train_loss": self.epoch_loss[0] / max(self.epoch_loss[1], 1),
            "lr": self.scheduler.get_last_lr()[0],
        }
        if (self.epoch + 1) % config.eval_every == 0 or self.epoch + 1 == config.epochs:
            record.update(evaluate_detections(self.detector, self.data, config, self.device, self.out))
        writer.add_scalar("train/epoch_loss", record["train_loss"], self.epoch + 1)
        for key, value in record.items():
            if key.startswith("val_"):
                writer.add_scalar(key.replace("_", "/", 1), value, self.epoch + 1)
        self.history.append(record)
        log.info(f"epoch {self.epoch + 1}/{config.epochs}: " + ", ".join(
            f"{k} {v:.4g}" for k, v in record.items() if k in ("train_loss", "val_frame_mAP")
        ))  # fmt: skip
        self.epoch += 1
        self.step_in_epoch = 0
        self.epoch_loss = [0.0, 0]
        best = max((h.get("val_frame_mAP", -1.0) for h in self.history[:-1]), default=-1.0)
        self.save()
        if record.get("val_frame_mAP", -1.0) > best:
            self.save("best.pt")
        write_json(self.out / "metrics.json", self.metrics())

    def metrics(self) -> dict[str, Any]:
        last_eval = next((h for h in reversed(self.history) if "val_frame_mAP" in h), {})
        return {
            **{key: value for key, value in last_eval.items() if key.startswith("val_")},
            "best_val_frame_mAP": max(
                (h["val_frame_mAP"] for h in self.history if "val_frame_mAP" in h), default=None
            ),  # fmt: skip
            "task": "ava",
            "ava_version": self.config.ava_version,
            "mode": self.config.mode,
            "clips": clip_count(self.config),
            "epochs": self.epoch,
            "backbone": self.config.backbone,
            "data": str(self.data_dir),
            "train_keyframes": len(self.data.train.keyframes),
            "val_keyframes": len(self.data.val.keyframes),
            "detections": str(self.out / "detections_val.csv"),
            "history": self.history,
        }


def train_ava(config: TrainConfig) -> dict[str, Any]:
    return AvaTrainer(config).run()


def is_ava_state(state: dict) -> bool:
    """Whether a loaded checkpoint is one of ``comem train --task ava``."""
    return state.get("config", {}).get("task") == "ava"


def evaluate_ava_command(args: Any, state: dict | None = None) -> int:
    """``comem eval`` of an AVA checkpoint (``args`` as ``comem eval`` parses them; ``state``: the
    checkpoint, if already read)."""
    metrics, path = evaluate_ava_checkpoint(
        args.checkpoint,
        data=args.data,
        split=args.split,
        views=args.views,
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        out=getattr(args, "out", None),
        state=state,
    )
    print(json.dumps(metrics))
    print(f"wrote {path} and {metrics['detections']}")
    return 0


def evaluate_ava_checkpoint(
    checkpoint: str | Path,
    *,
    data: str | Path | None = None,
    split: str = "val",
    views: int | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    device: str = "auto",
    out: str | Path | None = None,
    state: dict | None = None,
) -> tuple[dict[str, Any], Path]:
    """Score an AVA checkpoint: writes ``detections_val.csv`` and ``eval_val.json`` into ``out``
    (default: beside the checkpoint).

    ``views`` sets the clips per keyframe (memory clips + 1); frames are never cropped. AVA's test
    split has no public ground truth: only ``val`` is scored.
    """
    if split != "val":
        raise AvaFormatError(
            "AVA evaluation scores the val split (the test split has no public ground truth)"
        )
    out_dir = Path(out) if out is not None else Path(checkpoint).parent
    checkpoint = Path(checkpoint)
    state = load_checkpoint(checkpoint) if state is None else state
    config = config_from_state(state)
    overrides = {"views": views, "batch_size": batch_size, "workers": workers}
    config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None}).validate()
    if views is not None and config.mode != "single":
        config = dataclasses.replace(config, clips=views)
    spec = spec_from_state(state)
    data_dir = Path(data) if data is not None else Path(state["data_dir"])
    ava = load_ava(data_dir, config.ava_version, detection_thresh=config.ava_detection_thresh)
    torch_device = resolve_device(device)
    detector = make_detector(spec, state["num_classes"], config.dropout)
    detector.load_state_dict(state["model"])
    detector.to(torch_device)
    metrics = evaluate_detections(detector, ava, config, torch_device, out_dir)
    metrics.update({"mode": config.mode, "checkpoint": str(checkpoint), "data": str(data_dir)})
    metrics["detections"] = str(out_dir / "detections_val.csv")
    report = out_dir / "eval_val.json"
    write_json(report, metrics)
    return metrics, report
