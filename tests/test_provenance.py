"""Every run records what ran (config.yaml, train.log, env.json); flags come from the config dataclass."""

import argparse
import dataclasses
import json
import logging
import os
import re
import sys
from pathlib import Path

import pytest
import torch
import yaml
from tinydata import TINY_TRAIN_FLAGS

from comem.cli import build_parser, main
from comem.config import TrainConfig, config_fields, load_config
from comem.engine.trainer import train
from comem.tasks.classification import ClassificationTask


def help_text(capsys: pytest.CaptureFixture) -> str:
    with pytest.raises(SystemExit):
        main(["train", "-h"])
    return capsys.readouterr().out


def test_every_config_field_is_a_flag_with_its_default(capsys: pytest.CaptureFixture) -> None:
    shown = help_text(capsys)
    (commands,) = [action for action in build_parser()._actions if action.dest == "command"]
    actions = commands.choices["train"]._actions
    helps = {action.dest: action.help for action in actions if action.help not in (None, argparse.SUPPRESS)}
    for name, value in dataclasses.asdict(TrainConfig()).items():
        flag = "--" + name.replace("_", "-")
        assert re.search(rf"^\s+{flag}\b", shown, re.M), f"{flag} not in comem train -h"
        if isinstance(value, list):
            value = ",".join(map(str, value))
        default = "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
        assert f"[{default}]" in helps[name], (flag, helps[name])
        assert " ".join(helps[name].split()[:3]) in " ".join(shown.split()), flag


def test_flags_parse_to_config_values_and_old_spellings_work() -> None:
    parser = build_parser()
    args = parser.parse_args(
        ["train", "--momentum", "0.5", "--key-dim", "16", "--mean", "0.1,0.2,0.3", "--clip-grad", "none"]
    )
    assert (args.momentum, args.key_dim, args.mean, args.clip_grad) == (0.5, 16, [0.1, 0.2, 0.3], None)
    switches = parser.parse_args(
        ["train", "--precision", "fp16", "--compile", "--no-channels-last", "--sync-bn", "--resume"]
    )
    assert (switches.precision, switches.compile, switches.channels_last, switches.sync_bn) == (
        "fp16",
        True,
        False,
        True,
    )
    assert switches.resume is True
    assert parser.parse_args(["train", "--compile", "false"]).compile is False
    assert parser.parse_args(["train", "--memory-stages", "layer3,last"]).memory_stages == ["layer3", "last"]


def test_print_config_is_a_config_file_that_reads_back(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = tmp_path / "base.yaml"
    config.write_text("mode: joint\nlr: 0.01\n")
    capsys.readouterr()
    assert main(["train", "--config", str(config), "--epochs", "3", "--print-config"]) == 0
    printed = capsys.readouterr().out
    values = yaml.safe_load(printed)
    assert set(values) == set(config_fields())
    assert (values["mode"], values["lr"], values["epochs"]) == ("joint", 0.01, 3)
    (tmp_path / "printed.yaml").write_text(printed)
    assert load_config(tmp_path / "printed.yaml") == load_config(config, {"epochs": 3})


def test_run_writes_config_log_env_and_rerun_from_config_repeats_it(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = tmp_path / "first"
    monkeypatch.chdir(tmp_path)  # relative --data and --out: config.yaml holds them absolute
    data = os.path.relpath(tiny_dataset, tmp_path)
    argv = ["train", "--data", data, "--out", "first", "--epochs", "1", *TINY_TRAIN_FLAGS]
    assert main(argv) == 0
    for name in ("config.yaml", "train.log", "env.json"):
        assert (first / name).is_file(), name

    log = (first / "train.log").read_text()
    assert re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d epoch 1/1: train_loss ", log, re.M)
    assert '"val_top1"' in log and "it/s" not in log and "\r" not in log

    env = json.loads((first / "env.json").read_text())
    assert env["versions"]["torch"] and env["versions"]["torchvision"] and env["versions"]["av"]
    assert env["world_size"] == 1 and env["devices"]
    assert re.fullmatch(r"[0-9a-f]{40}", env["git"]["commit"])  # the tests run from a checkout

    assert yaml.safe_load((first / "config.yaml").read_text())["data"] == str(tiny_dataset)
    second = tmp_path / "second"
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # the config re-runs from any directory
    assert main(["train", "--config", str(first / "config.yaml"), "--out", str(second)]) == 0
    losses = [
        json.loads((out / "metrics.json").read_text())["history"][0]["train_loss"] for out in (first, second)
    ]
    assert losses[0] == losses[1]
    saved = yaml.safe_load((second / "config.yaml").read_text())
    assert saved == {**yaml.safe_load((first / "config.yaml").read_text()), "out": str(second)}


def test_library_runs_log_through_logging_not_stdout(
    tiny_dataset: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(logging.getLogger("comem"), "handlers", [])  # as before any CLI call configured it
    config = TrainConfig(
        data=str(tiny_dataset), out=str(tmp_path / "run"), epochs=1, backbone="tiny", crop_size=32,
        clip_len=4, clips=2, batch_size=4, workers=0, device="cpu",
    )  # fmt: skip
    capsys.readouterr()
    with caplog.at_level(logging.INFO, logger="comem"):
        train(config, ClassificationTask(config))
    assert "epoch 1/1:" not in capsys.readouterr().out
    assert any(
        record.name == "comem.engine.trainer" and "epoch 1/1:" in record.message for record in caplog.records
    )


def test_env_names_comems_version_when_it_runs_from_a_source_tree(monkeypatch: pytest.MonkeyPatch) -> None:
    # PYTHONPATH=src (no installed distribution): the version comes from the imported package
    import comem
    from comem.engine import provenance

    def not_installed(package: str) -> str:
        raise provenance.metadata.PackageNotFoundError(package)

    monkeypatch.setattr(provenance.metadata, "version", not_installed)
    versions = provenance.environment()["versions"]
    assert versions["comem"] == comem.__version__ and versions["torch"] == torch.__version__
    assert versions["torchcodec"] is None or "torchcodec" in sys.modules
