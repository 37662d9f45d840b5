"""No file comem reads can run code: crafted pickles are refused in one line, before anything runs."""

import dataclasses
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from tinydata import TINY_TRAIN_FLAGS

from comem.cli import main
from comem.engine.checkpoint import load_checkpoint
from comem.engine.rng import restore_rng_state, rng_state


class Payload:
    """Unpickling this calls ``open(marker, "w")``: the marker file appears if the pickle ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def write_evil(path: Path, marker: Path, kind: str) -> Path:
    """A file named like a checkpoint whose ``model`` entry is the payload: torch's zip format, or a
    raw pickle (what ``torch.save`` wrote before 1.6, and what ``pickle.dump`` writes)."""
    content = {"model": Payload(marker), "config": {}}
    if kind == "zip":
        torch.save(content, path)
    else:
        path.write_bytes(pickle.dumps(content, protocol=2))
    return path


def run_cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    capsys.readouterr()
    code = main(argv)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("kind", ["zip", "raw"])
@pytest.mark.parametrize("command", ["eval", "predict", "resume", "pretrained"])
def test_a_crafted_pickle_runs_nothing_and_is_one_line(
    command: str,
    kind: str,
    tiny_dataset: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    marker = tmp_path / "MARKER"
    out = tmp_path / "out"
    out.mkdir()
    evil = write_evil(out / ("last.pt" if command == "resume" else "evil.pt"), marker, kind)
    train = ["train", "--data", str(tiny_dataset), "--out", str(out), "--epochs", "1", *TINY_TRAIN_FLAGS]
    argv = {
        "eval": ["eval", "--checkpoint", str(evil)],
        "predict": ["predict", str(tiny_dataset / "videos" / "val_0.mp4"), "--checkpoint", str(evil)],
        "resume": [*train, "--resume"],
        "pretrained": [*train, "--out", str(tmp_path / "fresh"), "--pretrained", str(evil)],
    }[command]
    code, err = run_cli(argv, capsys)
    assert not marker.exists()
    assert code == 2
    assert err.count("\n") == 1, err
    assert str(evil) in err and "refused" in err
    if kind == "zip":  # the zip format names what the pickle wanted
        assert "builtins.open" in err or "io.open" in err


def test_checkpoint_content_is_tensors_and_plain_values(tiny_checkpoint: Path) -> None:
    """What makes ``weights_only=True`` enough: random states, config and class names included."""
    state = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)

    def plain(value) -> bool:
        if isinstance(value, dict):
            return all(isinstance(k, str | int) and plain(v) for k, v in value.items())
        if isinstance(value, list | tuple):
            return all(plain(v) for v in value)
        return value is None or isinstance(value, str | int | float | bool | torch.Tensor)

    assert plain(state)
    assert isinstance(state["rng"]["numpy"]["keys"], torch.Tensor)
    assert state["class_names"] == ["gray", "ramp"]


def test_random_state_round_trips_through_a_checkpoint(tmp_path: Path) -> None:
    from comem.engine.checkpoint import save_checkpoint

    np.random.seed(3)
    np.random.standard_normal()  # a cached Gaussian in numpy's state
    save_checkpoint({"model": {}, "rng": rng_state()}, tmp_path / "last.pt")
    want = (np.random.standard_normal(4), torch.rand(3), __import__("random").random())
    np.random.seed(99)
    torch.manual_seed(99)
    restore_rng_state(load_checkpoint(tmp_path / "last.pt")["rng"])
    got = (np.random.standard_normal(4), torch.rand(3), __import__("random").random())
    np.testing.assert_array_equal(got[0], want[0])
    assert torch.equal(got[1], want[1]) and got[2] == want[2]


def test_a_checkpoint_of_the_earlier_format_still_evaluates(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Earlier comem versions stored numpy's random state as a tuple holding an ndarray."""
    state = load_checkpoint(tiny_checkpoint)
    np.random.seed(5)
    state["rng"]["numpy"] = np.random.get_state()
    old = tmp_path / "old.pt"
    torch.save(state, old)
    shutil.copy(tiny_checkpoint.parent / "classes.txt", tmp_path / "classes.txt")
    with pytest.raises(pickle.UnpicklingError):  # what a plain weights-only load says
        torch.load(old, weights_only=True)

    upgraded = load_checkpoint(old)
    keys = upgraded["rng"]["numpy"]["keys"]
    assert torch.equal(keys, torch.from_numpy(np.random.get_state()[1].astype(np.int64)))
    code, err = run_cli(["eval", "--checkpoint", str(old), "--out", str(tmp_path / "report")], capsys)
    assert code == 0, err
    new = run_cli(["eval", "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "r2")], capsys)
    assert new[0] == 0
    assert (tmp_path / "report" / "predictions.csv").read_text() == (
        tmp_path / "r2" / "predictions.csv"
    ).read_text()


def test_config_dataclass_round_trips(tiny_checkpoint: Path) -> None:
    from comem.checkpoint_state import config_from_state

    state = load_checkpoint(tiny_checkpoint)
    config = config_from_state(state)
    assert dataclasses.asdict(config) == state["config"]
