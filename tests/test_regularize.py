"""Mixup/CutMix of whole videos, label smoothing and the EMA of the weights, on real decoded videos and
real training steps, each checked against a computation written out here."""

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from formatdata import write_charades
from tinydata import TINY_TRAIN_FLAGS, tiny_train_config

import comem
from comem.cli import main
from comem.config import ConfigError, TrainConfig
from comem.data.mixing import VideoMix, VideoMixer
from comem.engine.checkpoint import load_checkpoint, save_checkpoint
from comem.engine.step_engine import StepEngine
from comem.engine.trainer import Trainer
from comem.inference.trained import load_trained
from comem.tasks.classification import ClassificationTask


def tiny_config(data: Path, out: Path, **changes) -> TrainConfig:
    defaults = {"clips": 3, "batch_size": 4, "epochs": 1, "dropout": 0.0}
    return tiny_train_config(data, out, **{**defaults, **changes})


def real_batch(task: ClassificationTask) -> dict:
    task.train_set.set_epoch(0)
    return task.collate([task.train_set[index] for index in range(4)])


def soft_targets(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    one_hot = torch.zeros(len(labels), num_classes)
    for row, label in enumerate(labels.tolist()):
        one_hot[row, label] = 1.0
    return one_hot * (1 - smoothing) + smoothing / num_classes


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return -(targets * logits.log_softmax(dim=-1)).sum(dim=-1).mean()


@pytest.mark.parametrize("kind", ["mixup", "cutmix"])
def test_every_clip_of_a_video_mixes_with_the_same_partner_weight_and_box(kind: str) -> None:
    torch.manual_seed(0)
    video = torch.randint(0, 256, (5, 3, 3, 4, 16, 12), dtype=torch.uint8)  # (B, N, C, T, H, W)
    mixer = VideoMixer(
        mixup_alpha=0.8 if kind == "mixup" else 0.0, cutmix_alpha=1.0 if kind == "cutmix" else 0.0
    )
    mix = mixer.draw(5, 16, 12)
    assert mix is not None and (mix.box is None) == (kind == "mixup")
    mixed = mix.videos(video)
    assert mixed.dtype == torch.uint8 and mixed.shape == video.shape
    for b in range(5):
        partner = 4 - b
        assert int(mix.partner[b]) == partner
        for clip in range(3):
            own, other = video[b, clip].double(), video[partner, clip].double()
            if kind == "mixup":
                want = (mix.weight * own + (1 - mix.weight) * other).round()
            else:
                top, bottom, left, right = mix.box
                inside = torch.zeros(16, 12, dtype=torch.bool)
                inside[top:bottom, left:right] = True
                want = torch.where(inside, other, own)
                assert mix.weight == pytest.approx(1 - inside.sum().item() / (16 * 12))
            torch.testing.assert_close(mixed[b, clip].double(), want, rtol=0, atol=0)
    if kind == "cutmix":
        assert 0 < mix.weight < 1  # a box with pixels of the partner and without all of them
    targets = torch.eye(4)[torch.tensor([0, 1, 2, 3, 1])]
    soft = mix.targets(targets)
    for b in range(5):
        torch.testing.assert_close(soft[b], mix.weight * targets[b] + (1 - mix.weight) * targets[4 - b])


def test_mixing_is_off_by_default_and_prob_skips_batches() -> None:
    assert VideoMixer().draw(4, 8, 8) is None
    torch.manual_seed(0)
    drawn = [VideoMixer(mixup_alpha=1.0, prob=0.5).draw(4, 8, 8) for _ in range(200)]
    assert 60 < sum(mix is None for mix in drawn) < 140
    switched = [
        VideoMixer(mixup_alpha=1.0, cutmix_alpha=1.0, switch_prob=0.25).draw(4, 8, 8) for _ in range(400)
    ]
    assert 60 < sum(mix.box is not None for mix in switched) < 140


@pytest.mark.parametrize("mode", ["single", "tsn", "joint", "comem"])
def test_mixed_step_trains_on_the_mixed_video_against_soft_targets(
    mode: str, tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The step's model input is the batch mixed video by video, and its loss is that of the clip
    logits against each video's mixed, smoothed target (every clip of a video the same)."""
    smoothing = 0.1
    config = tiny_config(tiny_dataset, tmp_path, mode=mode, mixup_alpha=1.0, label_smoothing=smoothing)
    task = ClassificationTask(config)
    model = task.build_model().train()
    batch = real_batch(task)
    draws: list[VideoMix] = []
    real_draw = VideoMixer.draw

    def recording_draw(self: VideoMixer, *args: int) -> VideoMix | None:
        draws.append(real_draw(self, *args))
        return draws[-1]

    monkeypatch.setattr(VideoMixer, "draw", recording_draw)
    engine = StepEngine(config, model, model, torch.device("cpu"))
    seen: dict[str, torch.Tensor] = {}

    def to_input(video: torch.Tensor) -> torch.Tensor:
        seen["video"] = video
        return engine.to_input(video)

    def run_mode(video: torch.Tensor, targets: torch.Tensor, loss_fn=None, times=None):
        output = engine.run_mode(video, targets, loss_fn=loss_fn, times=times)
        seen["targets"], seen["logits"] = targets, output.logits
        return output

    result = task.train_step(
        batch, dataclasses.replace(engine.context(), to_input=to_input, run_mode=run_mode)
    )
    (mix,) = draws
    video, labels, partner = batch["video"], batch["label"], [3, 2, 1, 0]
    weight = mix.weight
    want_video = torch.stack(
        [(weight * video[b].double() + (1 - weight) * video[partner[b]].double()).round() for b in range(4)]
    )
    torch.testing.assert_close(seen["video"].double(), want_video, rtol=0, atol=0)
    one_hot = soft_targets(labels, 2, 0.0)
    torch.testing.assert_close(seen["targets"], weight * one_hot + (1 - weight) * one_hot[partner])
    targets = soft_targets(labels, 2, smoothing)
    targets = weight * targets + (1 - weight) * targets[partner]
    logits = seen["logits"]  # (B, N, K): N = 1 in single mode
    if mode == "tsn":
        want = soft_cross_entropy(logits.mean(dim=1), targets)
    else:
        want = torch.stack([soft_cross_entropy(logits[:, i], targets) for i in range(logits.shape[1])]).mean()
    assert result.loss == pytest.approx(float(want), rel=1e-5)
    assert logits.shape[1] == (1 if mode == "single" else 3)
    if mode == "joint":  # the logits are those of the independently mixed video (no dropout)
        torch.testing.assert_close(
            logits, model(engine.to_input(want_video.to(torch.uint8))), rtol=1e-5, atol=1e-6
        )


def test_multi_label_videos_mix_their_multi_hot_targets(tmp_path: Path) -> None:
    config = tiny_config(
        write_charades(tmp_path / "charades"), tmp_path / "out", mode="joint", cutmix_alpha=1.0
    )
    task = ClassificationTask(config)
    model = task.build_model().train()
    batch = real_batch(task)
    engine = StepEngine(config, model, model, torch.device("cpu"))
    seen = {}

    def run_mode(video: torch.Tensor, targets: torch.Tensor, loss_fn=None, times=None):
        output = engine.run_mode(video, targets, loss_fn=loss_fn, times=times)
        seen.update(video=video, targets=targets, logits=output.logits)
        return output

    torch.manual_seed(1)
    result = task.train_step(batch, dataclasses.replace(engine.context(), run_mode=run_mode))
    torch.manual_seed(1)
    mix = VideoMixer(cutmix_alpha=1.0).draw(4, 32, 32)
    labels = batch["label"]  # (B, K) multi-hot
    want = mix.weight * labels + (1 - mix.weight) * labels.flip(0)
    torch.testing.assert_close(seen["targets"], want)
    assert set(torch.unique(want).tolist()) - {0.0, 1.0}  # soft where the two videos' actions differ
    logits = seen["logits"].flatten(0, 1)
    bce = F.binary_cross_entropy_with_logits(logits, want.repeat_interleave(3, dim=0))
    assert result.loss == pytest.approx(float(bce), rel=1e-5)
    assert result.correct == 0  # multi-label steps count no top-1


def test_label_smoothing_is_cross_entropy_against_smoothed_one_hot(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    config = tiny_config(tiny_dataset, tmp_path, mode="joint", label_smoothing=0.2)
    task = ClassificationTask(config)
    model = task.build_model().train()
    batch = real_batch(task)
    engine = StepEngine(config, model, model, torch.device("cpu"))
    result = task.train_step(batch, engine.context())
    with torch.no_grad():  # the step's forward again (no dropout; train-mode BatchNorm, batch statistics)
        logits = model(engine.to_input(batch["video"])).flatten(0, 1)
    labels = batch["label"].repeat_interleave(3)
    want = F.cross_entropy(logits, labels, label_smoothing=0.2)
    assert result.loss == pytest.approx(float(want), rel=1e-5)
    assert result.loss == pytest.approx(
        float(soft_cross_entropy(logits, soft_targets(labels, 2, 0.2))), rel=1e-5
    )
    assert result.loss != pytest.approx(float(F.cross_entropy(logits, labels)), rel=1e-3)


def test_label_smoothing_and_mixing_refusals(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = write_charades(tmp_path / "charades")
    code = main(["train", "--data", str(data), "--out", str(tmp_path / "out"), "--label-smoothing", "0.1",
                 *TINY_TRAIN_FLAGS])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert f"{data}: --label-smoothing applies to single-label cross-entropy" in err
    with pytest.raises(ConfigError, match="AVA detection trains on person boxes"):
        TrainConfig(task="ava", cutmix_alpha=1.0).validate()
    for field, value in [
        ("mix_prob", 1.5),
        ("ema_decay", 1.0),
        ("mixup_alpha", -1.0),
        ("label_smoothing", 1.0),
    ]:
        with pytest.raises(ConfigError, match=field):
            TrainConfig(**{field: value}).validate()


def test_ema_is_the_hand_computed_average_of_the_weights_after_each_step(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    decay = 0.6
    config = tiny_config(tiny_dataset, tmp_path, batch_size=2, epochs=2, ema_decay=decay)
    trainer = Trainer(config, ClassificationTask(config))
    snapshots: list[dict[str, torch.Tensor]] = []
    real_step = Trainer.train_step

    def recording_step(self: Trainer, batch: dict):
        result = real_step(self, batch)
        snapshots.append({name: p.detach().clone() for name, p in self.model.named_parameters()})
        return result

    monkeypatch.setattr(Trainer, "train_step", recording_step)
    trainer.run()
    assert len(snapshots) == 4
    want = dict(snapshots[0])
    for weights in snapshots[1:]:
        want = {name: decay * want[name] + (1 - decay) * weights[name] for name in want}
    averaged = dict(trainer.ema.module.named_parameters())
    for name, value in want.items():
        torch.testing.assert_close(averaged[name], value, rtol=1e-6, atol=1e-7, msg=name)
    assert any(not torch.allclose(averaged[name], snapshots[-1][name]) for name in want)  # not a copy
    for (name, mine), theirs in zip(trainer.ema.module.named_buffers(), trainer.model.buffers(), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=0, msg=name)  # BatchNorm statistics copied
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["ema_updates"] == 4
    for name, value in want.items():
        torch.testing.assert_close(state["ema"][name], value, rtol=1e-6, atol=1e-7)
    assert trainer.selection_key == "val_ema_top1"
    assert {"val_top1", "val_ema_top1"} <= set(trainer.history[-1])


@pytest.fixture(scope="module")
def ema_checkpoint(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ema_run")
    flags = [*TINY_TRAIN_FLAGS, "--batch-size", "2", "--epochs", "1", "--ema-decay", "0.5"]
    assert main(["train", "--data", str(tiny_dataset), "--out", str(out), *flags]) == 0
    return out / "last.pt"


def test_eval_and_predict_use_the_ema_weights(
    ema_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    state = load_checkpoint(ema_checkpoint)
    plain = dict(state, model=state["ema"])  # a checkpoint whose weights are the average
    del plain["ema"], plain["ema_updates"]
    plain_path = tmp_path / "plain.pt"
    save_checkpoint(plain, plain_path)
    reports = {}
    for name, checkpoint, flags in [
        ("default", ema_checkpoint, []),
        ("raw", ema_checkpoint, ["--weights", "raw"]),
        ("ema_state", plain_path, []),
    ]:
        out = tmp_path / name
        assert (
            main(["eval", "--checkpoint", str(checkpoint), "--out", str(out), "--device", "cpu", *flags]) == 0
        )
        reports[name] = (out / "predictions.csv").read_text()
    capsys.readouterr()
    assert reports["default"] == reports["ema_state"]
    assert reports["default"] != reports["raw"]

    clip = torch.randn(2, 3, 3, 4, 32, 32)
    ema, raw = (load_trained(ema_checkpoint, torch.device("cpu"), weights=w) for w in (None, "raw"))
    assert (ema.weights, raw.weights) == ("ema", "raw")
    independent = load_trained(plain_path, torch.device("cpu")).model
    with torch.no_grad():
        torch.testing.assert_close(ema.model(clip), independent(clip), rtol=0, atol=0)
        assert not torch.allclose(ema.model(clip), raw.model(clip))
    scores = {
        name: comem.load(path, device="cpu", **options).predict(clip[0]).scores
        for name, path, options in [
            ("ema", ema_checkpoint, {}),
            ("raw", ema_checkpoint, {"weights": "raw"}),
            ("ema_state", plain_path, {}),
        ]
    }
    assert (scores["ema"] == scores["ema_state"]).all() and not np.allclose(scores["ema"], scores["raw"])
    code = main(["eval", "--checkpoint", str(plain_path), "--weights", "ema", "--device", "cpu"])
    assert code == 2 and "has no EMA weights" in capsys.readouterr().err


def test_resume_is_exact_with_mixing_smoothing_and_ema(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = dict(batch_size=2, epochs=2, dropout=0.5, mixup_alpha=0.8, cutmix_alpha=1.0, ema_decay=0.7)
    options["label_smoothing"] = 0.1
    straight = Trainer(*_task(tiny_config(tiny_dataset, tmp_path / "straight", **options)))
    straight.run()

    class Crash(Exception):
        pass

    config = tiny_config(tiny_dataset, tmp_path / "resumed", **options)
    real_step, steps = Trainer.train_step, 0

    def crashing_step(self: Trainer, batch: dict):
        nonlocal steps
        if steps == 3:  # after epoch 1's checkpoint (step 2) and one more step, which is lost
            raise Crash()
        steps += 1
        return real_step(self, batch)

    monkeypatch.setattr(Trainer, "train_step", crashing_step)
    with pytest.raises(Crash):
        Trainer(*_task(config)).run()
    monkeypatch.undo()
    resumed = Trainer(*_task(dataclasses.replace(config, resume=True)))
    resumed.run()
    for got, want in ((resumed.model, straight.model), (resumed.ema.module, straight.ema.module)):
        for (name, tensor), other in zip(got.state_dict().items(), want.state_dict().values(), strict=True):
            torch.testing.assert_close(tensor, other, rtol=0, atol=0, msg=name)
    assert resumed.history == straight.history
    steps_csv = (tmp_path / "resumed" / "steps.csv").read_text().splitlines()
    assert [row.split(",")[:3] for row in steps_csv] == [
        row.split(",")[:3] for row in (tmp_path / "straight" / "steps.csv").read_text().splitlines()
    ]  # step, epoch and loss of each step once, the step lost in the crash included
    assert (tmp_path / "resumed" / "metrics.csv").read_text() == (
        tmp_path / "straight" / "metrics.csv"
    ).read_text()


def _task(config: TrainConfig) -> tuple[TrainConfig, ClassificationTask]:
    return config, ClassificationTask(config)


def test_ema_and_mixing_train_from_the_command_line(tiny_dataset: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    flags = ["--mixup-alpha", "0.8", "--cutmix-alpha", "1", "--mix-prob", "0.9", "--ema-decay", "0.9"]
    out = tmp_path / "out"
    assert (
        main(["train", "--data", str(data), "--out", str(out), "--epochs", "1", *TINY_TRAIN_FLAGS, *flags])
        == 0
    )
    state = load_checkpoint(out / "best.pt")
    assert state["config"]["cutmix_alpha"] == 1.0 and state["ema_updates"] == 1
