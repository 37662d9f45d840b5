"""The one training loop, for every task: data -> the task's step in the run's mode -> optimizer, with
evaluation, logging, checkpoints and exact resume, in one process or data-parallel under torchrun.

The task (``comem.tasks.base.Task``) supplies its datasets, model, the loss of a batch and its
metrics; everything else is here and the same for all tasks.

Resume is exact because nothing random depends on process history: the epoch's item order is a
permutation seeded by (seed, epoch), an item's clips and augmentation are a function of
(seed, epoch, index), and the model-side RNG (dropout) is saved in the checkpoint. A checkpoint
records how many optimizer steps of the current epoch are done, and the sampler skips their batches.

With ``--accum-steps K`` an optimizer step sums the gradients of K consecutive batches (each
backward on its loss / K; under DDP only the last batch's backward all-reduces): a step sees
K x batch_size videos per process, and an epoch of M batches has ceil(M / K) steps, the last one
summing the M mod K batches left (each then weighed 1 / (M mod K)). Steps are the unit of
everything that counts: the learning-rate schedule, ``--save-every``, ``global_step`` in
TensorBoard, and checkpoints, which are only written between steps, so a resumed run never
starts inside one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Sampler
from tqdm import tqdm

from comem.checkpoint_state import checkpoint_config
from comem.config import TrainConfig
from comem.data.datasets import DatasetFormatError
from comem.engine.checkpoint import load_checkpoint, save_checkpoint
from comem.engine.distributed import (
    DistContext,
    RankStalledError,
    all_ranks,
    broadcast_buffers,
    broadcast_object,
    context_from_env,
    gather_objects,
    init_distributed,
    shutdown_distributed,
    stalled_message,
    sum_over_ranks,
    wrap_for_training,
)
from comem.engine.ema import WeightAverage
from comem.engine.evaluate import predict_dataset, to_device
from comem.engine.finite import NonFiniteError, nonfinite_in_model
from comem.engine.loaders import drops_last, make_loader, resolve_device
from comem.engine.loggers import RunLoggers, open_loggers, plot_training_curves
from comem.engine.performance import tune_model, uses_channels_last
from comem.engine.precision import grad_scaler
from comem.engine.provenance import write_run_record
from comem.engine.resume_check import check_resume
from comem.engine.rng import restore_rng_state, rng_state, seed_everything
from comem.engine.run_dir import claim_run_dir
from comem.engine.step_engine import StepEngine
from comem.engine.stopping import StopSignals, TrainingStopped, stopped_message
from comem.errors import UserError
from comem.files import write_json
from comem.tasks.base import StepResult, Task

log = logging.getLogger(__name__)


class EpochSampler(Sampler[int]):
    """A random order of the items seeded by (seed, epoch), optionally skipping its first items.

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


def accumulation_groups(batches: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    """Consecutive groups of ``size`` batches (the last one may be shorter): one optimizer step each."""
    group: list[dict[str, Any]] = []
    for batch in batches:
        group.append(batch)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def warmup_cosine(total_steps: int, warmup_steps: int) -> Any:
    """LR multiplier: linear warm-up from ~0 to 1, then cosine decay to 0 at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return factor


class Trainer:
    """Owns one training run of ``task``: model, optimizer, schedule, data, logs and checkpoints under
    ``config.out``."""

    def __init__(self, config: TrainConfig, task: Task) -> None:
        self.config = config.validate()
        self.task = task
        self.out = Path(config.out)
        self.dist, self.device = init_distributed(
            resolve_device(config.device), timeout_minutes=config.dist_timeout
        )
        seed_everything(config.seed)
        self.model = task.build_model()
        self.model.to(self.device)
        # the average is copied before compiling: it is only evaluated
        self.ema = WeightAverage(self.model, config.ema_decay) if config.ema_decay else None
        tune_model(self.model, self.device, channels_last=config.channels_last, compile=config.compile)
        if self.ema is not None:
            layout = uses_channels_last(channels_last=config.channels_last, compile=config.compile)
            tune_model(self.ema.module, self.device, channels_last=layout, compile=False)
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
        self.scaler = grad_scaler(self.device, config.precision)  # fp16 only
        shard_size = self.dist.shard_size(len(task.train_set))  # batch_size is per process
        rounding = math.floor if drops_last(shard_size, config) else math.ceil
        self.steps_per_epoch = math.ceil(rounding(shard_size / config.batch_size) / config.accum_steps)
        total = self.steps_per_epoch * config.epochs
        warmup = min(round(config.warmup_epochs * self.steps_per_epoch), total)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_cosine(total, max(warmup, 1))
        )
        self.step_engine = StepEngine(config, self.model, self.train_model, self.device, self.scaler)
        self.step_context = self.step_engine.context()
        self.epoch = 0
        self.step_in_epoch = 0
        self.global_step = 0
        self.history: list[dict[str, Any]] = []
        self.skipped: dict[str, str] = {}
        self.epoch_loss_sum = 0.0
        self.epoch_correct = 0
        self.epoch_items = 0
        self.logger_state: dict[str, Any] = {}  # what resumes the loggers (the W&B run id)
        self.stop = StopSignals()
        self.nonfinite_losses = 0  # steps in a row whose loss was nan or inf (on any rank)
        self.saved_step: int | None = None  # the global step out/last.pt holds

    # --- checkpoints -------------------------------------------------------------------------
    def running(self) -> list[float]:
        return [self.epoch_loss_sum, self.epoch_correct, self.epoch_items]

    def state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "model_spec": dataclasses.asdict(self.task.model_spec),
            "config": dataclasses.asdict(self.config),
            **self.task.checkpoint_fields(),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "history": self.history,
            "skipped": self.skipped,
            "epoch_running": self.running(),
            "rng": rng_state(),
            **({"scaler": self.scaler.state_dict()} if self.scaler is not None else {}),
            "loggers": self.logger_state,
            **(self.ema.state_dict() if self.ema is not None else {}),
            **self.rank_states(),
        }

    def rank_states(self) -> dict[str, Any]:
        """Under DDP, what differs between ranks (RNG, epoch sums so far), gathered from all of them."""
        if not self.dist.enabled:
            return {}
        own = {"rng": rng_state(), "epoch_running": self.running()}
        return {"rank_states": gather_objects(own, self.dist)}

    def save(self, name: str = "last.pt") -> None:
        state = self.state()  # under DDP every rank takes part (gathering rank states), rank 0 writes
        if self.dist.is_main:
            save_checkpoint(state, self.out / name)
        if name == "last.pt":
            self.saved_step = self.global_step

    def resume(self) -> bool:
        """Continue from ``out/last.pt`` if it exists; returns whether it did."""
        path = self.out / "last.pt"
        if not path.exists():
            return False
        state = load_checkpoint(path)
        accepted = check_resume(checkpoint_config(state["config"]), dataclasses.asdict(self.config), path)
        if accepted and self.dist.is_main:
            log.info(f"--resume: accepted changes: {'; '.join(accepted)}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step_in_epoch = state["epoch"], state["step_in_epoch"]
        self.global_step, self.history = state["global_step"], state["history"]
        self.saved_step = self.global_step
        self.skipped = state.get("skipped", {})
        self.logger_state = state.get("loggers", {})
        if self.ema is not None and "ema" in state:  # else the average starts from these weights
            self.ema.load_state_dict(state)
        running, rng = state["epoch_running"], state["rng"]
        ranks = state.get("rank_states")
        if ranks and len(ranks) == self.dist.world_size:
            running, rng = ranks[self.dist.rank]["epoch_running"], ranks[self.dist.rank]["rng"]
        self.epoch_loss_sum, self.epoch_correct, self.epoch_items = running
        restore_rng_state(rng)
        return True

    # --- the loop ----------------------------------------------------------------------------
    def note_skipped(self, messages: list[str]) -> None:
        for message in messages:
            path = message.split(": ", 1)[0]
            if path not in self.skipped:
                self.skipped[path] = message
                log.warning(f"skipping unreadable video {message}")

    def train_step(self, batches: list[dict[str, Any]]) -> StepResult:
        """One optimizer step on the summed gradients of ``batches`` (``--accum-steps``); returns
        their results together."""
        self.train_model.train()
        self.optimizer.zero_grad(set_to_none=True)
        self.step_engine.accumulated = len(batches)
        results = []
        for index, batch in enumerate(batches):
            last = index == len(batches) - 1
            no_sync = getattr(self.train_model, "no_sync", None)  # DDP: all-reduce on the last one only
            with contextlib.nullcontext() if last or no_sync is None else no_sync():
                results.append(self.task.train_step(to_device(batch, self.device), self.step_context))
        if self.optimizer_step():
            self.scheduler.step()
        items = sum(result.items for result in results)
        loss = sum(result.loss * result.items for result in results) / max(items, 1)
        return StepResult(loss, items, sum(result.correct for result in results))

    def optimizer_step(self) -> bool:
        """Unscale (fp16), clip and step; returns whether the parameters were updated.

        fp16's scaler skips a step whose gradients hold an inf or nan (and lowers its scale); the
        learning-rate schedule then does not advance either, so the step it skipped is taken later
        at the rate it would have had (as Hugging Face Accelerate does; PyTorch warns of a
        schedule stepped before its optimizer).
        """
        scaler = self.scaler
        if scaler is not None:
            scaler.unscale_(self.optimizer)  # once, after every backward of the step
        if self.config.clip_grad:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_grad)
        if scaler is None:
            self.optimizer.step()
            updated = True
        else:
            scale = scaler.get_scale()
            scaler.step(self.optimizer)
            scaler.update()
            updated = scaler.get_scale() >= scale  # a skipped step backs the scale off
        if updated and self.ema is not None:
            self.ema.update(self.model)
        return updated

    def check_finite(self, loss: float) -> None:
        """Stop the run, saving nothing, when the weights or BatchNorm statistics (of the model or its
        weight average) turned non-finite, or after ``nonfinite_steps`` steps in a row with a
        non-finite loss on any rank. Called after every step, before any checkpoint of it is
        written, so no checkpoint ever holds a non-finite model."""
        self.nonfinite_losses = 0 if math.isfinite(loss) else self.nonfinite_losses + 1
        tensor = nonfinite_in_model(self.model)
        if tensor is None and self.ema is not None:
            tensor = nonfinite_in_model(self.ema.module)
            tensor = None if tensor is None else f"the weight average's {tensor}"
        losses, broken = self.nonfinite_losses, tensor is not None
        if self.dist.enabled:  # every rank stops at the same step
            vote = torch.tensor([losses, int(broken)], device=self.device)
            torch.distributed.all_reduce(vote, op=torch.distributed.ReduceOp.MAX)
            losses, broken = int(vote[0]), bool(vote[1])
        if not broken and losses < self.config.nonfinite_steps:
            return
        if broken:
            what = f"{tensor or 'a tensor of another rank'} holds nan or inf"
        else:
            what = f"the loss was nan or inf for {losses} steps in a row (last: {loss})"
        kept = (
            f"{self.out / 'last.pt'} holds step {self.saved_step}, the last finite state"
            if self.saved_step is not None and (self.out / "last.pt").exists()
            else "nothing was saved"
        )
        raise NonFiniteError(
            f"step {self.global_step} (epoch {self.epoch + 1}): {what}; the run diverged and stopped "
            f"without saving this step ({kept}); try a lower --lr or --clip-grad"
        )

    def evaluate(self) -> dict[str, float]:
        """Validation metrics of the model and, with ``ema_decay``, of the weight average
        (``ema_``-prefixed; its files under ``out/ema``)."""
        metrics = self.evaluate_model(self.model, self.out)
        if self.ema is not None:
            ema = self.evaluate_model(self.ema.module, self.out / "ema")
            metrics.update({f"ema_{key}": value for key, value in ema.items()})
        return metrics

    def evaluate_model(self, model: torch.nn.Module, out: Path) -> dict[str, float]:
        """Validation metrics of every rank's share together (the same on every rank)."""
        broadcast_buffers(model, self.dist)  # score the model the checkpoint stores on every rank
        predictions = predict_dataset(
            self.task, model, self.task.val_set, self.config, self.device, self.dist
        )
        self.note_skipped(predictions.skipped)
        metrics = self.task.val_metrics(predictions, out) if self.dist.is_main else None
        return broadcast_object(metrics, self.dist)

    def run(self) -> dict[str, Any]:
        config = self.config
        self.out.mkdir(parents=True, exist_ok=True)
        main = self.dist.is_main
        if config.resume and self.resume() and main:  # first: it may refuse the settings
            log.info(
                f"resumed from {self.out / 'last.pt'} at epoch {self.epoch + 1}, step {self.step_in_epoch}"
            )
        if main:
            self.task.prepare_output(self.out)
            write_run_record(self.out, config, self.dist.world_size)
        loggers = open_loggers(config, self.out, step=self.global_step, saved=self.logger_state, main=main)
        self.logger_state = loggers.state()
        try:
            with self.stop:
                while self.epoch < config.epochs:
                    self.train_epoch(loggers)
                    if not self.stop.signum:
                        self.finish_epoch(loggers)
                    if self.stop.signum or self.stop.due(self.dist, self.device):
                        self.stop_at_step_boundary()
        except KeyboardInterrupt:  # mid-step: the state is not consistent, so it is not saved
            if main:
                log.info(f"interrupted mid-step: not saved; {self.out / 'last.pt'} holds the last saved step")
            raise
        finally:
            loggers.close()
        return self.metrics()

    def stop_at_step_boundary(self) -> None:
        """Save the state after the last whole step and end the run for the signal received."""
        self.save()
        if self.dist.is_main:
            log.info(stopped_message(self.stop.signum, str(self.out / "last.pt")))
        raise TrainingStopped(self.stop.signum)

    def train_epoch(self, loggers: RunLoggers) -> None:
        config, train_set = self.config, self.task.train_set
        train_set.set_epoch(self.epoch)
        sampler = EpochSampler(
            len(train_set),
            seed=config.seed,
            epoch=self.epoch,
            skip=self.step_in_epoch * config.accum_steps * config.batch_size,
            context=self.dist,
        )
        shard_size = self.dist.shard_size(len(train_set))
        loader = make_loader(
            train_set,
            self.task.collate,
            config,
            sampler,
            self.device,
            drop_last=drops_last(shard_size, config),
        )
        bar = tqdm(
            desc=f"epoch {self.epoch + 1}/{config.epochs} [{config.mode}]",
            initial=self.step_in_epoch,
            total=self.steps_per_epoch,
            dynamic_ncols=True,
            **({} if self.dist.is_main else {"disable": True}),  # TQDM_DISABLE=1 still works
        )
        started, clips_seen = time.perf_counter(), 0
        waiting_since = started
        for group in accumulation_groups(loader, config.accum_steps):
            loader_wait = time.perf_counter() - waiting_since  # > 0: the loader starves the model
            for batch in group:
                self.note_skipped(batch.get("skipped", []))
            # A batch the task cannot step on (e.g. unreadable videos left too few) is skipped on
            # every rank together, or DDP's gradient all-reduce would wait forever.
            usable = [batch for batch in group if all_ranks(self.task.usable(batch), self.dist, self.device)]
            if usable:
                result = self.train_step(usable)
                clips_seen += sum(math.prod(batch["video"].shape[:2]) for batch in usable)
                self.epoch_loss_sum += result.loss * result.items
                self.epoch_correct += result.correct
                self.epoch_items += result.items
                clips_per_s = clips_seen / max(time.perf_counter() - started, 1e-9)
                bar.set_postfix(loss=f"{result.loss:.3f}", clips_s=f"{clips_per_s:.1f}")
                values = {
                    "loss": result.loss,
                    "lr": self.scheduler.get_last_lr()[0],
                    "clips_per_s": clips_per_s,
                    "loader_wait_ms": 1000.0 * loader_wait,
                }
                if self.scaler is not None:
                    values["loss_scale"] = self.scaler.get_scale()
                loggers.log_step(self.global_step, self.epoch + 1, values)
            else:  # keep the schedule on time
                with warnings.catch_warnings():  # PyTorch warns when no optimizer step came first
                    warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
                    self.scheduler.step()
            self.step_in_epoch += 1
            self.global_step += 1
            bar.update(1)
            if usable:
                self.check_finite(result.loss)
            if config.save_every and self.global_step % config.save_every == 0:
                self.save()
            if self.stop.due(self.dist, self.device):
                break
            waiting_since = time.perf_counter()
        bar.close()

    def finish_epoch(self, loggers: RunLoggers) -> None:
        config = self.config
        if self.dist.enabled:
            self.epoch_loss_sum, self.epoch_correct, self.epoch_items = sum_over_ranks(
                self.running(), self.dist
            )
            for skipped in gather_objects(self.skipped, self.dist):
                self.skipped.update(skipped)
        if self.epoch_items == 0 and self.skipped:  # every video unreadable: nothing was trained
            first = sorted(self.skipped.values())[0]
            raise DatasetFormatError(
                f"no training video of {self.task.data_dir} could be read "
                f"({len(self.skipped)} skipped; first: {first})"
            )
        record: dict[str, Any] = {
            "epoch": self.epoch + 1,
            "train_loss": self.epoch_loss_sum / max(self.epoch_items, 1),
        }
        if self.task.train_accuracy:
            record["train_top1"] = 100.0 * self.epoch_correct / max(self.epoch_items, 1)
        record["lr"] = self.scheduler.get_last_lr()[0]
        if (self.epoch + 1) % config.eval_every == 0 or self.epoch + 1 == config.epochs:
            record.update({f"val_{key}": value for key, value in self.evaluate().items()})
        self.history.append(record)
        loggers.log_epoch(self.global_step, self.history)
        headline = [f"val_{key}" for key in self.task.headline_metrics]
        shown = (
            "train_loss",
            "train_top1",
            "lr",
            *headline,
            *(key.replace("val_", "val_ema_") for key in headline),
        )
        summary = ", ".join(f"{key} {record[key]:.4g}" for key in shown if key in record)
        if self.dist.is_main:
            log.info(f"epoch {self.epoch + 1}/{config.epochs}: {summary}")
        self.epoch += 1
        self.step_in_epoch = 0
        self.epoch_loss_sum, self.epoch_correct, self.epoch_items = 0.0, 0, 0
        key = self.selection_key
        best = max((h.get(key, -1.0) for h in self.history[:-1]), default=-1.0)
        # best.pt first: a stop between the two writes leaves last.pt at an earlier step, whose
        # resumed run repeats this epoch exactly and writes best.pt again
        if record.get(key, -1.0) > best:
            self.save("best.pt")
        self.save()
        if self.dist.is_main:
            write_json(self.out / "metrics.json", self.metrics())
            plot_training_curves(self.out / "curves.png", self.history)

    @property
    def selection_key(self) -> str:
        """The val metric that picks ``best.pt``: the weight average's when there is one."""
        return f"val_{'ema_' if self.ema is not None else ''}{self.task.selection_metric}"

    def metrics(self) -> dict[str, Any]:
        last_eval = next((h for h in reversed(self.history) if any(k.startswith("val_") for k in h)), {})
        key = self.selection_key
        return {
            **{name: value for name, value in last_eval.items() if name.startswith("val_")},
            f"best_{key}": max((h[key] for h in self.history if key in h), default=None),
            **self.task.summary(),
            "mode": self.config.mode,
            "epochs": self.epoch,
            "backbone": self.config.backbone,
            "skipped_videos": len(self.skipped),
            "skipped": sorted(self.skipped.values()),
            "history": self.history,
        }


def train(config: TrainConfig, task: Task) -> dict[str, Any]:
    """Run ``task`` to the end in its claimed ``config.out``; returns what ``metrics.json`` holds."""
    config.validate()
    context = context_from_env()
    claim = claim_run_dir(
        config.out,
        resume=config.resume,
        overwrite=config.overwrite,
        main=context.is_main,
        data=config.data,
    )
    with claim:
        try:
            return Trainer(config, task).run()
        except RuntimeError as error:
            if not context.enabled or isinstance(error, UserError):
                raise
            # a collective failed (timed out, or its peer is gone): not a bug of this rank
            raise RankStalledError(stalled_message(error, context, config.dist_timeout)) from error
        finally:
            shutdown_distributed()
