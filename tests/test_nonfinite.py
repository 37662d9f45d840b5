"""Non-finite values never pass silently: options, diverged runs, checkpoints and JSON outputs."""

import json
import math
from pathlib import Path

import pytest
import torch
from tinydata import TINY_TRAIN_FLAGS

from comem.cli import main
from comem.engine.checkpoint import load_checkpoint, save_checkpoint
from comem.engine.finite import NonFiniteError
from comem.files import json_text


def strict_json(path: Path) -> dict:
    """``path`` parsed as standard JSON (NaN and Infinity refused, as other languages' parsers do)."""

    def refuse(constant: str) -> None:
        raise ValueError(f"{path}: {constant} is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--lr", "inf"], "--lr must be a finite number; got inf"),
        (["--weight-decay", "-5"], "--weight-decay must be >= 0; got -5.0"),
        (["--clip-grad", "-1"], "--clip-grad must be > 0; got -1.0"),
        (["--save-every", "-1"], "--save-every must be >= 0; got -1"),
        (["--momentum", "nan"], "--momentum must be a finite number; got nan"),
        (["--warmup-epochs", "nan"], "--warmup-epochs must be a finite number; got nan"),
        (["--dropout", "1"], "--dropout must be in [0, 1); got 1.0"),
        (["--mean", "0.4,nan,0.4", "--std", "1,1,1"], "--mean must be a finite number; got [0.4, nan, 0.4]"),
        (["--nonfinite-steps", "0"], "--nonfinite-steps must be >= 1; got 0"),
        (["--dist-timeout", "0"], "--dist-timeout must be > 0; got 0.0"),
    ],
)
def test_every_numeric_option_is_checked_in_one_line_naming_it(
    flags: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["train", "--out", str(tmp_path / "run"), *flags]) == 2
    assert capsys.readouterr().err == f"comem train: error: {message}\n"
    assert not (tmp_path / "run").exists()


def test_a_yaml_config_gets_the_same_checks(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("ema_decay: .inf\n")
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "run")]) == 2
    expected = f"comem train: error: {config}: ema_decay must be a finite number; got inf\n"
    assert capsys.readouterr().err == expected


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_a_diverged_run_stops_in_one_line_keeping_only_finite_checkpoints(
    precision: str, tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # --lr 1e6: fp32 weights turn nan within steps; under fp16 the scaler skips the inf steps but the
    # BatchNorm running statistics turn nan. Either way the run stops at that step, saving nothing.
    out = tmp_path / precision
    argv = ["train", "--data", str(tiny_dataset), "--out", str(out), *TINY_TRAIN_FLAGS, "--batch-size", "2"]
    argv += ["--epochs", "6", "--save-every", "0", "--lr", "1e6", "--precision", precision]
    capsys.readouterr()
    assert main(argv) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "comem train: error" in line]
    assert len(errors) == 1  # (the rest of stderr is the progress bar)
    err = errors[0][errors[0].index("comem train: error") :]
    assert "the run diverged and stopped without saving this step" in err
    assert "holds nan or inf" in err or "the loss was nan or inf" in err
    assert "error: " + err.split("error: ", 1)[1].strip() in (out / "train.log").read_text()  # logged too
    for name in ("last.pt", "best.pt"):
        if (out / name).exists():  # only ever a finite model
            state = load_checkpoint(out / name)
            assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())
    if (out / "metrics.json").exists():
        strict_json(out / "metrics.json")


def test_a_checkpoint_with_nonfinite_weights_is_refused_by_resume_eval_and_predict(
    tiny_checkpoint: Path, tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    state = load_checkpoint(tiny_checkpoint)
    name = next(key for key in state["model"] if key.endswith("running_var"))
    state["model"][name] = torch.full_like(state["model"][name], math.nan)
    out = tmp_path / "run"
    save_checkpoint(state, out / "last.pt")
    (out / ".comem-train.lock").write_text("")
    message = f"{out / 'last.pt'}: the model holds non-finite values \\({name}\\)"
    with pytest.raises(NonFiniteError, match=message):
        load_checkpoint(out / "last.pt")
    commands = [
        ["eval", "--checkpoint", str(out / "last.pt"), "--device", "cpu", "--workers", "0"],
        ["predict", str(next(tiny_dataset.rglob("*.mp4"))), "--checkpoint", str(out / "last.pt")],
        ["train", "--data", str(tiny_dataset), "--out", str(out), *TINY_TRAIN_FLAGS, "--resume"],
    ]
    for argv in commands:
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "holds non-finite values" in err, err


def test_json_outputs_write_null_for_nonfinite_numbers() -> None:
    text = json_text({"a": math.nan, "b": [1.5, math.inf, {"c": -math.inf}], "d": "nan"})
    assert json.loads(text) == {"a": None, "b": [1.5, None, {"c": None}], "d": "nan"}
