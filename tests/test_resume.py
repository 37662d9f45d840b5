"""Exact resume: an interrupted run continued from last.pt ends where an uninterrupted one does."""

import dataclasses
import errno
import io
import os
import signal
from pathlib import Path

import pytest
import torch
from tinydata import tiny_train_config

from comem.config import TrainConfig
from comem.engine import checkpoint
from comem.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from comem.engine.loggers import open_loggers
from comem.engine.stopping import TrainingStopped
from comem.engine.trainer import Trainer
from comem.tasks.base import StepResult
from comem.tasks.classification import ClassificationTask


class Crash(Exception):
    """Stands for the process dying mid-run (not a KeyboardInterrupt: nothing gets saved)."""


def tiny_config(data: Path, out: Path, **changes) -> TrainConfig:
    # 4 train videos, batch 2: 2 steps per epoch, 4 in all. Dropout stays on, so the model-side RNG
    # state must be restored too for the runs to agree.
    return tiny_train_config(data, out, **{"dropout": 0.5, **changes})


def classification_trainer(config: TrainConfig) -> Trainer:
    return Trainer(config, ClassificationTask(config))


def assert_same_run(resumed: Trainer, straight: Trainer) -> None:
    assert resumed.global_step == straight.global_step == 4
    assert resumed.epoch == straight.epoch == 2
    assert len(resumed.history) == 2
    for got, want in zip(resumed.history, straight.history, strict=True):
        assert got.keys() == want.keys()
        for key in want:
            assert got[key] == pytest.approx(want[key], rel=1e-6, abs=1e-9), key
    want_state = straight.model.state_dict()
    for name, tensor in resumed.model.state_dict().items():
        torch.testing.assert_close(tensor, want_state[name], rtol=0, atol=1e-6, msg=name)
    torch.testing.assert_close(
        resumed.optimizer.state_dict()["state"], straight.optimizer.state_dict()["state"]
    )


@pytest.fixture(scope="module")
def straight(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Trainer:
    """Run A: 2 epochs without interruption."""
    trainer = classification_trainer(tiny_config(tiny_dataset, tmp_path_factory.mktemp("straight")))
    trainer.run()
    return trainer


def test_resume_at_epoch_boundary_matches_straight_run(
    straight: Trainer, tiny_dataset: Path, tmp_path: Path
) -> None:
    config = tiny_config(tiny_dataset, tmp_path)
    first = classification_trainer(config)
    first.out.mkdir(parents=True, exist_ok=True)
    loggers = open_loggers(config, first.out, step=0, saved={}, main=True)
    first.train_epoch(loggers)
    first.finish_epoch(loggers)
    loggers.close()
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 1

    resumed = classification_trainer(
        dataclasses.replace(config, resume=True)
    )  # a fresh process: new model, new RNG
    resumed.run()
    assert_same_run(resumed, straight)


@pytest.mark.parametrize("stop_after", [1, 3])
@pytest.mark.parametrize("how", ["crash", "SIGINT", "SIGTERM", "SIGUSR1"])
def test_resume_mid_epoch_matches_straight_run(
    how: str,
    stop_after: int,
    straight: Trainer,
    tiny_dataset: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Stop after ``stop_after`` optimizer steps (1: inside epoch 1, 3: inside epoch 2).

    ``crash`` dies at the start of the next step and relies on the ``save_every=1`` checkpoint; a
    signal arrives at the start of the next step, which finishes, and the run saves after it.
    """
    config = tiny_config(tiny_dataset, tmp_path, save_every=1 if how == "crash" else 0)
    steps = 0
    real_step = Trainer.train_step

    def stopping_step(self: Trainer, batch: dict) -> StepResult:
        nonlocal steps
        if steps == stop_after:
            if how == "crash":
                raise Crash()
            os.kill(os.getpid(), getattr(signal, how))
        steps += 1
        return real_step(self, batch)

    monkeypatch.setattr(Trainer, "train_step", stopping_step)
    with pytest.raises(Crash if how == "crash" else TrainingStopped) as stopped:
        classification_trainer(config).run()
    monkeypatch.undo()
    done = stop_after + (how != "crash")
    if how != "crash":
        assert stopped.value.signum == getattr(signal, how)
    state = load_checkpoint(tmp_path / "last.pt")
    # saved after step ``done`` of 2 per epoch (at an epoch's last step: before that epoch's evaluation)
    assert (state["global_step"], state["epoch"], state["step_in_epoch"]) == (
        done,
        (done - 1) // 2,
        (done - 1) % 2 + 1,
    )

    resumed = classification_trainer(dataclasses.replace(config, resume=True))
    resumed.run()
    assert_same_run(resumed, straight)


class FullDisk(io.FileIO):
    """A file on a device that fills up after ``room`` bytes (what ENOSPC looks like to a writer)."""

    room = 4096

    def write(self, data) -> int:
        if self.tell() + len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(data)


def test_checkpoint_write_failure_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "last.pt"
    old = {"model": {"weight": torch.arange(6.0)}, "epoch": 1}
    save_checkpoint(old, path)
    old_bytes = path.read_bytes()

    monkeypatch.setattr(checkpoint.os, "fdopen", lambda handle, mode: FullDisk(handle, "w"))
    with pytest.raises(CheckpointError) as raised:
        save_checkpoint({"model": {"weight": torch.zeros(100_000)}, "epoch": 2}, path)
    monkeypatch.undo()
    assert (
        str(raised.value)
        == f"{path}: cannot write checkpoint: no space left on the device; the previous last.pt is kept"
    )

    assert path.read_bytes() == old_bytes
    state = load_checkpoint(path)
    assert state["epoch"] == 1 and torch.equal(state["model"]["weight"], old["model"]["weight"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temp file left behind


def test_checkpoint_write_replaces_the_file(tmp_path: Path) -> None:
    path = tmp_path / "ckpt" / "last.pt"
    save_checkpoint({"model": {}, "epoch": 1}, path)
    save_checkpoint({"model": {}, "epoch": 2}, path)
    assert load_checkpoint(path)["epoch"] == 2
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]


@pytest.mark.parametrize(
    "stop", [Crash("killed"), CheckpointError("last.pt: cannot write checkpoint: no space left on device")]
)
def test_the_best_model_survives_a_stop_between_the_two_checkpoint_writes(
    stop: Exception, tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Checkpoints every step: last.pt at steps 1 and 2, then epoch 1's end writes best.pt and last.pt
    # (its 3rd and 4th writes). A kill or a full disk stops the 4th; the resumed run ends with both.
    from comem.engine import trainer as trainer_module

    writes: list[str] = []

    def failing_save(state: dict, path: Path) -> None:
        writes.append(Path(path).name)
        if len(writes) == 4:
            raise stop
        save_checkpoint(state, path)

    monkeypatch.setattr(trainer_module, "save_checkpoint", failing_save)
    config = tiny_config(tiny_dataset, tmp_path, save_every=1)
    with pytest.raises(type(stop)):
        classification_trainer(config).run()
    assert writes == ["last.pt", "last.pt", "best.pt", "last.pt"]  # best.pt first
    assert load_checkpoint(tmp_path / "last.pt")["history"] == []  # epoch 1's steps, not its end
    monkeypatch.setattr(trainer_module, "save_checkpoint", save_checkpoint)
    resumed = classification_trainer(dataclasses.replace(config, resume=True))
    metrics = resumed.run()
    best = load_checkpoint(tmp_path / "best.pt")
    key = resumed.selection_key
    assert (tmp_path / "last.pt").is_file() and best["history"][-1][key] == metrics[f"best_{key}"]
