"""Where a run's numbers go. The trainer calls one :class:`RunLoggers` (rank 0 only) per step and
per epoch; each logger writes the same numbers its own way:

- TensorBoard (``OUT/tb``): ``train/loss``, ``train/lr``, ``train/clips_per_s``,
  ``train/loader_wait_ms`` (and fp16's ``train/loss_scale``) per step; ``train/epoch_loss``,
  ``val/top1``, ... per epoch.
- CSV: ``OUT/steps.csv`` one row per step; ``OUT/metrics.csv`` one row per epoch, the records of
  ``metrics.json``'s ``history``.
- Weights & Biases (``--wandb``): the TensorBoard tags, at the same steps.

A resumed run continues the files of the run: rows and scalars after the step the checkpoint holds
(written before the run stopped, and about to be computed again) are dropped first, so no step
appears twice; a W&B run is resumed by its id, stored in the checkpoint.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from matplotlib.figure import Figure
from torch.utils.tensorboard import SummaryWriter

from comem.config import TrainConfig
from comem.errors import UserError
from comem.files import save_figure

# ``loss_scale``: fp16's gradient scale (empty in other precisions)
STEP_COLUMNS: tuple[str, ...] = ("step", "epoch", "loss", "lr", "clips_per_s", "loader_wait_ms", "loss_scale")


class LoggerError(UserError, RuntimeError):
    """A logger that cannot start (one-line message)."""


def epoch_tag(key: str) -> str:
    """The TensorBoard / W&B tag of an epoch record's key: ``train_loss`` -> ``train/epoch_loss``
    (``train/loss`` is the per-step series), ``val_top1`` -> ``val/top1``, ``lr`` -> ``lr``."""
    return key.replace("_", "/epoch_" if key.startswith("train_") else "/", 1)


class Logger(Protocol):
    def log_step(self, step: int, epoch: int, values: Mapping[str, float]) -> None:
        """Step ``step`` (0-based over the run) of epoch ``epoch`` (1-based): ``STEP_COLUMNS`` values."""
        ...

    def log_epoch(self, step: int, history: Sequence[Mapping[str, Any]]) -> None:
        """The epoch that ended after ``step`` steps: its record is ``history[-1]``."""
        ...

    def close(self) -> None: ...


class TensorBoardLogger:
    def __init__(self, directory: Path, *, purge_step: int) -> None:
        self.writer = SummaryWriter(str(directory), purge_step=purge_step)

    def log_step(self, step: int, epoch: int, values: Mapping[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(f"train/{key}", value, step)

    def log_epoch(self, step: int, history: Sequence[Mapping[str, Any]]) -> None:
        record = history[-1]  # at the run's step count, the x of the per-step series (as in W&B)
        for key, value in record.items():
            self.writer.add_scalar(epoch_tag(key) if key != "epoch" else key, value, step)

    def close(self) -> None:
        self.writer.close()


def _write_rows(path: Path, columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> None:
    """Atomic CSV write (header + rows; a missing value is an empty cell)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(columns), restval="")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


class CsvLogger:
    """``steps.csv`` appended per step; ``metrics.csv`` rewritten from the history per epoch (its
    columns grow when validation first reports)."""

    def __init__(self, out: Path, *, purge_step: int) -> None:
        self.steps_path, self.epochs_path = out / "steps.csv", out / "metrics.csv"
        kept: list[dict[str, str]] = []
        if self.steps_path.is_file() and purge_step > 0:
            with self.steps_path.open(newline="") as stream:
                kept = [row for row in csv.DictReader(stream) if int(row["step"]) < purge_step]
        _write_rows(self.steps_path, STEP_COLUMNS, kept)
        self.stream = self.steps_path.open("a", newline="")
        self.writer = csv.DictWriter(self.stream, fieldnames=list(STEP_COLUMNS), restval="")

    def log_step(self, step: int, epoch: int, values: Mapping[str, float]) -> None:
        self.writer.writerow({"step": step, "epoch": epoch, **values})
        self.stream.flush()

    def log_epoch(self, step: int, history: Sequence[Mapping[str, Any]]) -> None:
        columns = list(dict.fromkeys(key for record in history for key in record))
        _write_rows(self.epochs_path, columns, history)

    def close(self) -> None:
        self.stream.close()


class WandbLogger:
    """A Weights & Biases run (imported only when asked for); ``run_id`` resumes that run."""

    def __init__(self, config: TrainConfig, out: Path, *, run_id: str | None) -> None:
        try:
            import wandb
        except ImportError:
            raise LoggerError(
                "--wandb needs the wandb package: pip install 'comem[wandb]' (or run without --wandb)"
            ) from None
        self.run_id = run_id or secrets.token_hex(4)  # W&B run ids: lowercase letters and digits
        try:
            self.run = wandb.init(
                project=config.wandb_project,
                name=config.wandb_name or out.resolve().name,
                id=self.run_id,
                resume="allow",
                mode=config.wandb_mode,
                dir=str(out),
                config=dataclasses.asdict(config),
                settings=wandb.Settings(console="off"),
            )
        except Exception as error:  # wandb raises its own types (no login, no network, ...)
            message = " ".join(str(error).split()) or type(error).__name__
            raise LoggerError(f"--wandb: cannot start the W&B run ({message})") from None

    def log_step(self, step: int, epoch: int, values: Mapping[str, float]) -> None:
        self.run.log({f"train/{key}": value for key, value in values.items()}, step=step)

    def log_epoch(self, step: int, history: Sequence[Mapping[str, Any]]) -> None:
        record = history[-1]
        self.run.log(
            {epoch_tag(key) if key != "epoch" else key: value for key, value in record.items()}, step=step
        )

    def close(self) -> None:
        self.run.finish()


class RunLoggers:
    """Every logger of a run, called together; ``state()`` is what a checkpoint keeps for resume."""

    def __init__(self, loggers: Sequence[Logger] = ()) -> None:
        self.loggers = list(loggers)

    def log_step(self, step: int, epoch: int, values: Mapping[str, float]) -> None:
        for logger in self.loggers:
            logger.log_step(step, epoch, values)

    def log_epoch(self, step: int, history: Sequence[Mapping[str, Any]]) -> None:
        for logger in self.loggers:
            logger.log_epoch(step, history)

    def state(self) -> dict[str, Any]:
        runs = [logger.run_id for logger in self.loggers if isinstance(logger, WandbLogger)]
        return {"wandb_id": runs[0]} if runs else {}

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()


def open_loggers(
    config: TrainConfig, out: Path, *, step: int, saved: Mapping[str, Any], main: bool
) -> RunLoggers:
    """The run's loggers, continuing from step ``step`` (``saved``: the checkpoint's logger state);
    none on ranks other than 0."""
    if not main:
        return RunLoggers()
    loggers: list[Logger] = []
    if config.wandb:  # first: if it cannot start, no file has been opened
        loggers.append(WandbLogger(config, out, run_id=saved.get("wandb_id")))
    loggers += [TensorBoardLogger(out / "tb", purge_step=step), CsvLogger(out, purge_step=step)]
    return RunLoggers(loggers)


# Words of an epoch record's keys whose values are percentages (top-1, mean class accuracy, mAP).
PERCENT_WORDS = ("top1", "top5", "acc", "mAP")


def plot_training_curves(path: Path, history: Sequence[dict[str, Any]]) -> None:
    """Loss and accuracy/mAP per epoch from the trainer's history (one dict per finished epoch); other
    values of the records (learning rate, video counts) are not drawn."""
    figure = Figure(figsize=(10.0, 4.0))
    loss_axes, score_axes = figure.subplots(1, 2)
    epochs = [record["epoch"] for record in history]
    keys = sorted({key for record in history for key in record if key.startswith(("train_", "val_"))})
    for key in [key for key in keys if key.endswith("loss") or any(word in key for word in PERCENT_WORDS)]:
        points = [(record["epoch"], record[key]) for record in history if key in record]
        x, y = zip(*points, strict=True)
        axes = loss_axes if key.endswith("loss") else score_axes
        axes.plot(x, y, "--" if key.startswith("train_") else "-", marker="o", label=key)
    loss_axes.set_xlabel("epoch")
    loss_axes.set_ylabel("loss")
    loss_axes.set_title("Loss")
    score_axes.set_xlabel("epoch")
    score_axes.set_ylabel("%")
    score_axes.set_ylim(0, 100)
    score_axes.set_title("Accuracy / mAP")
    for axes in (loss_axes, score_axes):
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
        if epochs:
            axes.set_xticks(np.unique(np.linspace(min(epochs), max(epochs), min(len(epochs), 10)).round()))
    figure.tight_layout()
    save_figure(figure, path)
