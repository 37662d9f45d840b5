"""The ``comem`` command end to end on tiny real videos: train, eval, YAML config, make-synthetic."""

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import av
import matplotlib.image
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tinydata import TINY_TRAIN_FLAGS

from comem.cli import build_parser, main
from comem.config import TrainConfig
from comem.models.build import ModelSpec, build_model, load_pretrained

EPOCHS = 2


@pytest.fixture(scope="module")
def trained(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """OUT of one in-process ``comem train`` run (2 epochs, 1 step each) shared by this module."""
    out = tmp_path_factory.mktemp("train_out")
    argv = [
        "train",
        "--data",
        str(tiny_dataset),
        "--out",
        str(out),
        "--epochs",
        str(EPOCHS),
        *TINY_TRAIN_FLAGS,
    ]
    assert main(argv) == 0
    return out


def test_a_training_checkpoint_loads_as_pretrained_weights(trained: Path) -> None:
    # last.pt also holds numpy's RNG state, which torch.load(weights_only=True) refused.
    model = build_model(
        ModelSpec(backbone="tiny", num_classes=2, dropout=0.2, gate_hidden=TrainConfig().gate_hidden)
    )
    assert load_pretrained(model, trained / "last.pt") == []
    saved = torch.load(trained / "last.pt", map_location="cpu", weights_only=False)["model"]
    for key, value in model.state_dict().items():
        assert torch.equal(value, saved[key]), key


def test_train_writes_metrics_checkpoints_and_tensorboard(trained: Path, tiny_dataset: Path) -> None:
    metrics = json.loads((trained / "metrics.json").read_text())
    for key in ("val_top1", "val_top5"):
        assert 0.0 <= metrics[key] <= 100.0
    # 4 val videos: top-1 is a multiple of 25 %; with 2 classes top-5 counts every video right.
    assert metrics["val_top1"] % 25.0 == 0.0
    assert metrics["val_top5"] == 100.0
    assert metrics["mode"] == "comem"
    assert metrics["clips"] == 2
    assert metrics["epochs"] == EPOCHS
    assert metrics["skipped_videos"] == 0
    assert [entry["epoch"] for entry in metrics["history"]] == [1, 2]
    for entry in metrics["history"]:
        assert entry["train_loss"] > 0.0 and torch.isfinite(torch.tensor(entry["train_loss"]))
    assert metrics["history"][-1]["val_top1"] == metrics["val_top1"]

    last = torch.load(trained / "last.pt", map_location="cpu", weights_only=False)
    best = torch.load(trained / "best.pt", map_location="cpu", weights_only=False)
    assert last["epoch"] == EPOCHS and last["global_step"] == EPOCHS  # 4 videos, batch 4: 1 step/epoch
    assert best["epoch"] in (1, 2)
    assert Path(last["data_dir"]) == tiny_dataset.resolve()
    assert last["multi_label"] is False and last["class_names"] == ["gray", "ramp"]

    curves = matplotlib.image.imread(trained / "curves.png")  # a real PNG, not an empty file
    assert curves.ndim == 3 and curves.shape[0] > 200 and curves.shape[1] > 400

    events = sorted((trained / "tb").glob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file under OUT/tb"
    accumulator = EventAccumulator(str(trained / "tb"))
    accumulator.Reload()
    losses = accumulator.Scalars("train/loss")
    assert [event.step for event in losses] == list(range(EPOCHS))
    assert [event.value for event in losses] == pytest.approx([h["train_loss"] for h in metrics["history"]])
    epoch_losses = accumulator.Scalars("train/epoch_loss")
    assert [event.step for event in epoch_losses] == [1, 2]
    assert [event.step for event in accumulator.Scalars("val/top1")] == [1, 2]


def test_eval_reproduces_training_validation(trained: Path, capsys: pytest.CaptureFixture) -> None:
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(trained / "last.pt"), "--workers", "0", "--device", "cpu"]) == 0
    printed = json.loads(capsys.readouterr().out.splitlines()[0])
    written = json.loads((trained / "eval_val_last" / "metrics.json").read_text())
    assert printed == {key: value for key, value in written.items() if not isinstance(value, list | dict)}
    metrics = json.loads((trained / "metrics.json").read_text())
    for key in ("val_top1", "val_top5", "val_mean_class_acc"):
        assert written[key] == pytest.approx(metrics[key], abs=1e-9), key
    assert written["videos"] == 4 and written["views"] == 2 and written["skipped_videos"] == 0


def test_eval_with_other_settings_writes_a_report_of_its_own(trained: Path, tiny_dataset: Path) -> None:
    common = ["eval", "--checkpoint", str(trained / "last.pt"), "--workers", "0", "--device", "cpu"]
    assert main(common) == 0
    default = (trained / "eval_val_last" / "metrics.json").read_text()
    assert main([*common, "--views", "1", "--aggregate", "max"]) == 0
    assert main([*common, "--data", str(tiny_dataset)]) == 0
    assert (trained / "eval_val_last" / "metrics.json").read_text() == default  # not replaced
    one_view = json.loads((trained / "eval_val_last_views1_max" / "metrics.json").read_text())
    assert one_view["views"] == 1 and one_view["aggregate"] == "max"
    (other_data,) = trained.glob(f"eval_val_last_{tiny_dataset.name}-*")
    assert len(other_data.name.rsplit("-", 1)[1]) == 6 and (other_data / "metrics.json").is_file()


def test_yaml_config_sets_options_and_flags_override_it(tiny_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    config = tmp_path / "run.yaml"
    config.write_text(f"data: {tiny_dataset}\nmode: joint\nepochs: 3\nclip-len: 3\ndropout: 0.0\n")
    argv = ["train", "--config", str(config), "--out", str(out), "--epochs", "1", *TINY_TRAIN_FLAGS]
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["mode"] == "joint"  # from the YAML file
    assert metrics["epochs"] == 1 and len(metrics["history"]) == 1  # the flag beats the YAML's 3
    saved = torch.load(out / "last.pt", map_location="cpu", weights_only=False)["config"]
    assert saved["dropout"] == 0.0 and saved["epochs"] == 1
    assert saved["clip_len"] == 4  # TINY_TRAIN_FLAGS has --clip-len 4, overriding the YAML's 3


def test_yaml_unknown_option_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = tmp_path / "typo.yaml"
    config.write_text("epochs: 1\nlearning_rate: 0.1\n")
    code = main(["train", "--config", str(config), "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert str(config) in lines[0] and "learning_rate" in lines[0]
    assert not (tmp_path / "out").exists()


def test_make_synthetic_writes_readable_balanced_dataset(tmp_path: Path) -> None:
    out = tmp_path / "synthetic"
    argv = [
        "make-synthetic",
        str(out),
        "--num-train",
        "6",
        "--num-val",
        "3",
        "--size",
        "32",
        "--frames",
        "24",
    ]
    assert main(argv) == 0
    class_names = (out / "classes.txt").read_text().split()
    assert len(class_names) == 3  # distinct colours among 3 parts: 1, 2 or 3
    for split, count in (("train", 6), ("val", 3)):
        rows = [line.split() for line in (out / f"{split}.csv").read_text().splitlines()]
        assert len(rows) == count and all(len(row) == 2 for row in rows)
        labels = Counter(int(label) for _, label in rows)
        assert labels == Counter({c: count // 3 for c in range(3)})
        for relative, _ in rows:
            with av.open(str(out / relative)) as container:
                frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
            assert len(frames) == 24 and frames[0].shape == (32, 32, 3)


def test_python_dash_m_comem_train_runs_end_to_end(tiny_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1"}
    argv = [sys.executable, "-m", "comem", "train", "--data", str(tiny_dataset), "--out", str(out)]
    result = subprocess.run(
        [*argv, "--epochs", "1", *TINY_TRAIN_FLAGS], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert "it/s" not in result.stderr and "s/it" not in result.stderr  # TQDM_DISABLE=1 silences the bars
    summary = json.loads(next(line for line in result.stdout.splitlines() if line.startswith("{")))
    assert summary == {
        key: value
        for key, value in json.loads((out / "metrics.json").read_text()).items()
        if key.startswith("val_") or key in ("mode", "clips", "epochs", "skipped_videos")
    }
    assert (out / "last.pt").is_file()


@pytest.mark.parametrize(
    ("text", "expected"), [("epochs: two\n", "epochs must be int"), ("lr: [0.1]\n", "lr must be float")]
)
def test_yaml_value_of_wrong_type_is_a_one_line_error(
    text: str, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    code = main(["train", "--config", str(config), "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert code == 2 and "Traceback" not in captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and str(config) in lines[0] and expected in lines[0], captured.err


def test_boolean_flags_take_true_or_false_only(capsys: pytest.CaptureFixture) -> None:
    parser = build_parser()
    assert parser.parse_args(["train", "--span-labels", "True"]).span_labels is True
    assert parser.parse_args(["train", "--span-labels", "no"]).span_labels is False
    with pytest.raises(SystemExit) as exit_info:  # a typo was silently taken as false
        parser.parse_args(["train", "--span-labels", "ture"])
    assert exit_info.value.code == 2
    assert "--span-labels takes true or false, not 'ture'" in capsys.readouterr().err


def test_learning_options_parse_and_the_video_loss_is_refused_for_detection() -> None:
    from comem.config import ConfigError

    args = build_parser().parse_args(["train", "--video-loss", "true", "--entry-hidden", "32"])
    assert args.video_loss is True and args.entry_hidden == 32
    assert TrainConfig().memory_stages == ["all"] and TrainConfig().video_loss is False
    with pytest.raises(ConfigError, match="video_loss averages clip scores"):
        TrainConfig(task="ava", video_loss=True).validate()


@pytest.mark.parametrize("command", [["train"], ["flops", "--backbone", "tiny"]])
@pytest.mark.parametrize("value", ["", ",", " , "])
def test_memory_stages_must_name_a_stage(
    command: list[str], value: str, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--memory-stages", value])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.endswith("argument --memory-stages: name at least one stage (e.g. last or layer3,layer4)")


def test_version_and_bare_command(capsys: pytest.CaptureFixture) -> None:
    import comem

    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"comem {comem.__version__}\n"
    assert main([]) == 0
    shown = capsys.readouterr().out
    assert shown.startswith("usage: comem") and "train" in shown and "eval" in shown
