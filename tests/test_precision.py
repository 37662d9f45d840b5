"""``--precision`` and ``--accum-steps``: autocast on a CPU, fp16's loss scaling through every
backward of a step, gradient accumulation, and exact resume with both."""

import dataclasses
import os
import signal
from pathlib import Path

import pytest
import torch
import yaml
from test_resume import assert_same_run, classification_trainer, tiny_config
from tinydata import TINY_TRAIN_FLAGS, write_dataset
from torch import nn

from comem.checkpoint_state import config_from_state
from comem.cli import main
from comem.config import MODES, load_config
from comem.engine.checkpoint import load_checkpoint, save_checkpoint
from comem.engine.precision import autocast_for, grad_scaler, resolve_precision
from comem.engine.step import train_step
from comem.engine.step_engine import StepEngine
from comem.engine.stopping import TrainingStopped
from comem.engine.trainer import Trainer
from comem.models.build import ModelSpec, build_model
from comem.tasks.ava.model import AvaDetector
from comem.tasks.ava.task import detection_step

CPU = torch.device("cpu")


def test_auto_is_bf16_on_cuda_and_fp32_on_a_cpu_and_asked_precisions_run_as_asked() -> None:
    assert resolve_precision("auto", torch.device("cuda")) == "bf16"
    assert resolve_precision("auto", CPU) == "fp32"
    assert resolve_precision("fp16", CPU) == "fp16"
    for precision, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        with autocast_for(CPU, precision)():
            assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == dtype
    for precision in ("auto", "fp32"):
        with autocast_for(CPU, precision)():
            assert not torch.is_autocast_enabled("cpu")
    assert grad_scaler(CPU, "fp16") is not None
    assert grad_scaler(CPU, "bf16") is None and grad_scaler(CPU, "auto") is None


def model_and_batch(seed: int = 0, batch: int = 2, clips: int = 3):
    torch.manual_seed(seed)
    model = build_model(ModelSpec(backbone="tiny", num_classes=4, dropout=0.0))
    with torch.no_grad():  # away from the identity init, so the memory mixes the clips
        for memory in model.memories.values():
            memory.out.weight.normal_(0, 0.3)
    model.eval()  # BatchNorm on running statistics: batches can be split and compared
    video = torch.randint(0, 256, (batch, clips, 3, 4, 32, 32), dtype=torch.uint8)
    return model, video, torch.tensor([1, 3, 0, 2][:batch])


def gradients(model: nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("mode", MODES)
def test_every_backward_of_a_step_runs_on_the_scaled_loss(mode: str) -> None:
    """fp16 relies on it: comem's per-clip backwards and its cross-clip gradient, like joint's one
    backward, all see the same scale, so unscaling once gives the step's gradient."""
    results = []
    for scale in (None, 1024.0):
        model, video, targets = model_and_batch()
        torch.manual_seed(1)
        scale_loss = None if scale is None else (lambda loss, scale=scale: loss * scale)
        loss = train_step(model, video, targets, mode=mode, scale_loss=scale_loss).loss
        results.append((loss, gradients(model)))
    (plain_loss, plain), (scaled_loss, scaled) = results
    torch.testing.assert_close(scaled_loss, plain_loss)  # the reported loss is unscaled
    assert len(plain) == len(scaled) > 10
    for want, got in zip(plain, scaled, strict=True):
        torch.testing.assert_close(got, 1024.0 * want, rtol=1e-5, atol=1e-7)


def test_ava_detection_backward_goes_through_the_engine_scaler() -> None:
    results = []
    for precision in ("fp32", "fp16"):
        torch.manual_seed(0)
        detector = AvaDetector(build_model(ModelSpec(backbone="tiny", num_classes=1, dropout=0.0)), 5)
        detector.eval()
        config = tiny_config(Path("."), Path("."), mode="comem", precision=precision)
        scaler = grad_scaler(CPU, precision)
        engine = StepEngine(config, detector, detector, CPU, scaler)
        generator = torch.Generator().manual_seed(0)
        batch = {
            "video": torch.randint(0, 256, (2, 3, 3, 4, 32, 32), dtype=torch.uint8, generator=generator),
            "boxes": torch.tensor([[0.1, 0.1, 0.5, 0.6], [0.4, 0.2, 0.9, 0.9], [0.0, 0.0, 1.0, 1.0]]),
            "box_index": torch.tensor([0, 0, 1]),
            "targets": torch.tensor([[1.0, 0, 0, 1, 0], [0, 1, 0, 0, 0], [0, 0, 1, 1, 1]]),
        }
        detection_step(detector, batch, engine.context())
        scale = 1.0 if scaler is None else scaler.get_scale()
        results.append([g / scale for g in gradients(detector)])
    assert scale == 2.0**16  # GradScaler's initial scale: the backward ran on the scaled loss
    assert len(results[0]) == len(results[1]) > 10
    total = torch.cat([g.flatten() for g in results[0]])
    difference = torch.cat([(b - a).flatten() for a, b in zip(*results, strict=True)])
    assert 0 < float(difference.norm() / total.norm()) < 0.05  # fp16 rounding, not another gradient


def test_uint8_batch_gives_the_logits_of_the_normalised_float_batch() -> None:
    """The model converts uint8 clips itself (``VideoModel.prepare``), clip by clip in comem mode."""
    from comem.data.transforms import normalize

    model, video, targets = model_and_batch()
    floats = normalize(video, *model.normalization)
    with torch.no_grad():
        torch.testing.assert_close(model(video), model(floats), rtol=0, atol=0)
        banks = model.memory_bank(video, chunk=2)
        for index in range(video.shape[1]):
            torch.testing.assert_close(
                model.forward_clip(video[:, index], index, banks),
                model.forward_clip(floats[:, index], index, model.memory_bank(floats, chunk=2)),
                rtol=0,
                atol=0,
            )
        with autocast_for(CPU, "bf16")():
            assert model.prepare(video[:, 0]).dtype == torch.bfloat16
            torch.testing.assert_close(model(video), model(floats), rtol=0, atol=0)
    converted: list[tuple[int, ...]] = []
    prepare = model.prepare
    model.prepare = lambda clips: converted.append(tuple(clips.shape)) or prepare(clips)
    train_step(model, video, targets, mode="comem")
    assert converted and all(shape[0] == video.shape[0] for shape in converted)  # one clip at a time
    uint8 = gradients(model)
    model.zero_grad()
    model.prepare = prepare
    train_step(model, floats, targets, mode="comem")
    for got, want in zip(uint8, gradients(model), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_bf16_autocast_on_a_cpu_trains_close_to_fp32_but_not_equal() -> None:
    results, nonfinite = [], {}
    for precision in ("fp32", "bf16"):
        model, video, targets = model_and_batch()
        train_step(model, video, targets, mode="comem", autocast=autocast_for(CPU, precision))
        results.append(torch.cat([g.flatten() for g in gradients(model)]))
        nonfinite[precision] = [
            name for name, p in model.named_parameters() if p.grad is not None and not p.grad.isfinite().all()
        ]
    relative = float((results[1] - results[0]).norm() / results[0].norm())
    # Measured: 4.7% with a linear gate, 10.8% with the default hidden gate layer, whose random
    # N(0, 0.3) output weights over 64 units push many gates to saturation (2026-11-29). A run
    # in CI once gave a non-finite bf16 gradient that no rerun reproduced: the message says where.
    assert 0 < relative < 0.15, (relative, {key: names[:8] for key, names in nonfinite.items()})


def frozen_batchnorm(trainer: Trainer) -> None:
    """BatchNorm on running statistics even in training, so split batches can equal a whole one."""
    for module in trainer.model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.train = lambda mode=True, module=module: nn.Module.train(module, False)


def recorded_step_gradients(trainer: Trainer) -> list[list[torch.Tensor]]:
    recorded: list[list[torch.Tensor]] = []
    step = trainer.optimizer_step

    def recording() -> bool:
        recorded.append([p.grad.clone() for p in trainer.model.parameters()])
        return step()

    trainer.optimizer_step = recording
    return recorded


@pytest.mark.parametrize("mode", ["comem", "joint"])
def test_two_accumulated_batches_give_the_gradient_of_one_twice_as_large(
    mode: str, tiny_dataset: Path, tmp_path: Path
) -> None:
    steps = []
    for name, batch_size, accum in (("whole", 4, 1), ("accumulated", 2, 2)):
        config = tiny_config(
            tiny_dataset, tmp_path / name, mode=mode, batch_size=batch_size, accum_steps=accum, dropout=0.0
        )
        trainer = classification_trainer(dataclasses.replace(config, epochs=1, eval_every=5))
        assert trainer.steps_per_epoch == 1
        frozen_batchnorm(trainer)
        recorded = recorded_step_gradients(trainer)
        trainer.run()
        assert trainer.global_step == 1 and len(recorded) == 1
        steps.append(recorded[0])
    for whole, accumulated in zip(*steps, strict=True):
        torch.testing.assert_close(accumulated, whole, rtol=1e-4, atol=1e-6)


def test_fp16_skips_a_step_with_inf_gradients_without_advancing_the_schedule(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    trainer = classification_trainer(tiny_config(tiny_dataset, tmp_path, precision="fp16"))
    assert trainer.scaler is not None
    batch = trainer.task.collate([trainer.task.train_set[0], trainer.task.train_set[1]])
    real_step = trainer.task.train_step

    def poisoned(batch: dict, context) -> object:
        result = real_step(batch, context)
        next(trainer.model.parameters()).grad.fill_(float("inf"))
        return result

    taken = []
    for poison in (True, False, False, False, False, False):
        trainer.task.train_step = poisoned if poison else real_step
        before = [p.detach().clone() for p in trainer.model.parameters()]
        scale, lr_step = trainer.scaler.get_scale(), trainer.scheduler.last_epoch
        lr = trainer.optimizer.param_groups[0]["lr"]
        trainer.train_step([batch])
        changed = not all(torch.equal(a, p) for a, p in zip(before, trainer.model.parameters(), strict=True))
        skipped = trainer.scaler.get_scale() < scale  # the scaler found an inf or nan (its own too)
        stepped = trainer.scheduler.last_epoch == lr_step + 1
        assert stepped != skipped and trainer.scheduler.last_epoch in (lr_step, lr_step + 1)
        assert changed == (stepped and lr > 0)  # the cosine schedule ends at lr 0: a step, no change
        if skipped:
            assert trainer.scaler.get_scale() == scale / 2
        taken.append(stepped)
    assert taken[0] is False and any(taken[1:])


@pytest.fixture(scope="module")
def eight_videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("eight"), num_train=8, num_val=2)


@pytest.fixture(scope="module")
def straight_fp16_accum(eight_videos: Path, tmp_path_factory: pytest.TempPathFactory) -> Trainer:
    """fp16 with two batches of two per step: 2 steps per epoch, 4 in all."""
    config = tiny_config(eight_videos, tmp_path_factory.mktemp("straight"), precision="fp16", accum_steps=2)
    trainer = classification_trainer(config)
    trainer.run()
    return trainer


@pytest.mark.parametrize("how", ["crash", "SIGTERM"])
def test_fp16_accumulated_run_resumes_exactly_and_stops_between_steps(
    how: str, straight_fp16_accum: Trainer, eight_videos: Path, tmp_path: Path, monkeypatch
) -> None:
    """``crash`` dies in the second batch of the second step and resumes from the ``save_every=1``
    checkpoint of the first; SIGTERM arrives in the first step's first batch: that step (both its
    batches) finishes, then the run saves and stops. Either way the run resumes after step 1."""
    config = tiny_config(
        eight_videos,
        tmp_path,
        precision="fp16",
        accum_steps=2,
        save_every=1 if how == "crash" else 0,
    )
    batches = 0
    real_step = Trainer.train_step

    def counting_step(self: Trainer, group: list) -> object:
        nonlocal batches
        real_task_step = self.task.train_step

        def task_step(batch: dict, context) -> object:
            nonlocal batches
            batches += 1
            if how == "crash" and batches == 4:
                raise RuntimeError("crash")
            if how == "SIGTERM" and batches == 1:
                os.kill(os.getpid(), signal.SIGTERM)
            return real_task_step(batch, context)

        self.task.train_step = task_step
        try:
            return real_step(self, group)
        finally:
            self.task.train_step = real_task_step

    monkeypatch.setattr(Trainer, "train_step", counting_step)
    with pytest.raises(RuntimeError if how == "crash" else TrainingStopped):
        classification_trainer(config).run()
    monkeypatch.undo()
    state = load_checkpoint(tmp_path / "last.pt")
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (0, 1, 1)
    assert set(state["scaler"]) >= {"scale", "_growth_tracker"}
    resumed = classification_trainer(dataclasses.replace(config, resume=True))
    resumed.run()
    assert_same_run(resumed, straight_fp16_accum)
    assert resumed.scaler.state_dict() == straight_fp16_accum.scaler.state_dict()


def test_configs_and_checkpoints_with_amp_read_as_precision(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "old.yaml").write_text("amp: false\nclips: 2\n")
    assert load_config(tmp_path / "old.yaml").precision == "fp32"
    (tmp_path / "old.yaml").write_text("amp: true\n")
    assert load_config(tmp_path / "old.yaml").precision == "auto"
    state = load_checkpoint(tiny_checkpoint)
    assert state["config"]["precision"] == "auto"
    del state["config"]["precision"], state["config"]["accum_steps"]
    state["config"]["amp"] = False
    assert config_from_state(state).precision == "fp32"
    # A run saved by an earlier comem resumes with the precision it had.
    out = tmp_path / "run"
    out.mkdir()
    save_checkpoint(state, out / "last.pt")
    (out / "config.yaml").write_text(yaml.safe_dump(state["config"]))
    flags = ["train", "--data", state["data_dir"], "--out", str(out), "--resume", "--epochs", "2"]
    assert main([*flags, *TINY_TRAIN_FLAGS]) != 0  # auto is not the fp32 the run trained in
    assert "--precision fp32 -> auto" in capsys.readouterr().err
    assert main([*flags, *TINY_TRAIN_FLAGS, "--precision", "fp32"]) == 0
    assert load_checkpoint(out / "last.pt")["epoch"] == 2
