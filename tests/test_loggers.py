"""The run's loggers: CSV files that hold what metrics.json holds, and Weights & Biases (the real
package, offline) called with the same numbers at the same steps, resumed as the same run."""

import csv
import dataclasses
import json
import sys
from pathlib import Path

import pytest
from tinydata import TINY_TRAIN_FLAGS, tiny_train_config

from comem.cli import main
from comem.config import TrainConfig
from comem.engine.trainer import Trainer
from comem.tasks.classification import ClassificationTask


def tiny_config(data: Path, out: Path, **changes) -> TrainConfig:
    return tiny_train_config(data, out, **changes)


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as stream:
        reader = csv.DictReader(stream)
        return list(reader.fieldnames or []), list(reader)


def test_csv_rows_are_the_records_of_metrics_json(tiny_dataset: Path, tmp_path: Path) -> None:
    config = tiny_config(tiny_dataset, tmp_path, eval_every=2)  # epoch 1 has no val columns
    Trainer(config, ClassificationTask(config)).run()
    history = json.loads((tmp_path / "metrics.json").read_text())["history"]
    columns, rows = read_csv(tmp_path / "metrics.csv")
    assert len(rows) == len(history) == 2
    assert columns == list(history[-1])  # epoch, train_loss, train_top1, lr, val_...
    for row, record in zip(rows, history, strict=True):
        assert {key: float(value) for key, value in row.items() if value != ""} == pytest.approx(record)
        assert all(row[key] == "" for key in columns if key not in record)
    step_columns, steps = read_csv(tmp_path / "steps.csv")
    assert step_columns == ["step", "epoch", "loss", "lr", "clips_per_s", "loader_wait_ms", "loss_scale"]
    assert all(row["loss_scale"] == "" for row in steps)  # fp32: no gradient scaler
    assert [(int(s["step"]), int(s["epoch"])) for s in steps] == [(0, 1), (1, 1), (2, 2), (3, 2)]
    for epoch, record in enumerate(history, start=1):  # equal batches: the epoch loss is the steps' mean
        losses = [float(s["loss"]) for s in steps if int(s["epoch"]) == epoch]
        assert sum(losses) / len(losses) == pytest.approx(record["train_loss"], rel=1e-9)
    # TensorBoard: epoch scalars at the step count the epoch ended at, the x of the per-step series
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb")).Reload()
    assert [event.step for event in events.Scalars("train/loss")] == [0, 1, 2, 3]
    assert [(e.step, e.value) for e in events.Scalars("epoch")] == [(2, 1.0), (4, 2.0)]
    assert [e.step for e in events.Scalars("train/epoch_loss")] == [2, 4]
    assert [e.step for e in events.Scalars("val/top1")] == [4]


def test_curves_draw_only_losses_and_percentages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from matplotlib.axes import Axes

    from comem.engine.loggers import plot_training_curves

    drawn: list[str] = []
    real_plot = Axes.plot

    def plot(self: Axes, *args, label: str = "", **kwargs):
        drawn.append(label)
        return real_plot(self, *args, label=label, **kwargs)

    monkeypatch.setattr(Axes, "plot", plot)
    record = {"epoch": 1, "train_loss": 1.0, "train_top1": 50.0, "lr": 0.1, "val_top1": 25.0}
    record.update({"val_mAP": 30.0, "val_videos": 120, "val_ema_videos": 120, "val_mean_class_acc": 20.0})
    history = [record]
    plot_training_curves(tmp_path / "curves.png", history)
    assert sorted(drawn) == ["train_loss", "train_top1", "val_mAP", "val_mean_class_acc", "val_top1"]


def test_wandb_offline_gets_every_step_and_epoch_and_resumes_the_same_run(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for variable in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):  # nothing written into $HOME
        monkeypatch.setenv(variable, str(tmp_path / "wandb_home"))
    inits: list[dict] = []
    logged: list[tuple[int, dict]] = []
    real_init = wandb.init

    def recording_init(**kwargs):
        inits.append(kwargs)
        run = real_init(**kwargs)
        real_log = run.log

        def log(data: dict, step: int | None = None, **rest):
            logged.append((step, dict(data)))
            return real_log(data, step=step, **rest)

        run.log = log
        return run

    monkeypatch.setattr(wandb, "init", recording_init)
    config = tiny_config(tiny_dataset, tmp_path / "run", epochs=1, wandb=True, wandb_mode="offline")
    config = dataclasses.replace(config, wandb_project="tests")
    Trainer(config, ClassificationTask(config)).run()
    resumed = dataclasses.replace(config, epochs=2, resume=True)
    Trainer(resumed, ClassificationTask(resumed)).run()

    assert len(inits) == 2
    first, second = inits
    assert first["id"] == second["id"] and first["resume"] == second["resume"] == "allow"
    assert (first["mode"], first["project"], first["name"], first["dir"]) == (
        "offline",
        "tests",
        "run",
        str(tmp_path / "run"),
    )
    assert first["config"]["wandb"] is True
    runs = list((tmp_path / "run" / "wandb").glob(f"offline-run-*-{first['id']}"))
    assert len(runs) == 2 and all(run.is_dir() for run in runs)

    _, steps = read_csv(tmp_path / "run" / "steps.csv")
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())["history"]
    step_logs = [(step, data) for step, data in logged if "train/loss" in data]
    epoch_logs = [(step, data) for step, data in logged if "epoch" in data]
    assert [step for step, _ in step_logs] == [int(row["step"]) for row in steps] == [0, 1, 2, 3]
    for (_, data), row in zip(step_logs, steps, strict=True):
        assert data["train/loss"] == pytest.approx(float(row["loss"]), rel=1e-12)
        assert set(data) == {"train/loss", "train/lr", "train/clips_per_s", "train/loader_wait_ms"}
    assert [step for step, _ in epoch_logs] == [2, 4]
    for (_, data), record in zip(epoch_logs, history, strict=True):
        assert data["epoch"] == record["epoch"]
        assert data["train/epoch_loss"] == record["train_loss"]
        assert data["val/top1"] == record["val_top1"]


def test_wandb_missing_is_one_line(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    out = tmp_path / "out"
    code = main(["train", "--data", str(tiny_dataset), "--out", str(out), "--wandb", *TINY_TRAIN_FLAGS])
    err = capsys.readouterr().err
    assert code == 2
    message = "--wandb needs the wandb package: pip install 'comem[wandb]' (or run without --wandb)"
    assert err == f"comem train: error: {message}\n"
    assert not (out / "steps.csv").exists()
