"""A run directory is never overwritten or shared by accident, and ``--out`` problems are one line."""

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tinydata import TINY_TRAIN_FLAGS

from comem.cli import main
from comem.engine import run_dir


def train_argv(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--out", str(out), "--epochs", "1", *TINY_TRAIN_FLAGS, *extra]


def run_cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def snapshot(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def finished(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("finished")
    assert main(train_argv(tiny_dataset, out)) == 0
    return out


def test_a_fresh_run_into_a_finished_run_refuses_and_touches_nothing(
    finished: Path, tiny_dataset: Path, capsys: pytest.CaptureFixture
) -> None:
    before = snapshot(finished)
    code, _, err = run_cli(train_argv(tiny_dataset, finished), capsys)
    assert code == 2
    assert err.count("\n") == 1
    assert f"{finished}: already holds a run (last.pt, best.pt, metrics.json)" in err
    assert "--resume" in err and "--overwrite" in err
    assert snapshot(finished) == before


def test_overwrite_replaces_the_run(
    finished: Path, tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    assert main(train_argv(tiny_dataset, out, "--seed", "1")) == 0
    old_events = sorted(p.name for p in (out / "tb").iterdir())
    code, stdout, err = run_cli(train_argv(tiny_dataset, out, "--overwrite"), capsys)
    assert code == 0, err
    assert f"--overwrite: removed the earlier run's files from {out}" in stdout
    new_events = sorted(p.name for p in (out / "tb").iterdir())
    assert len(new_events) == 1 and new_events != old_events  # no mixed TensorBoard logs
    # the same command and seed as the finished run: the same metrics, so nothing of run 1 was kept
    assert (out / "metrics.json").read_text() == (finished / "metrics.json").read_text().replace(
        str(finished), str(out)
    )


HOLDER = """
import sys
from comem.engine.run_dir import claim_run_dir
with claim_run_dir(sys.argv[1], resume=False, overwrite=False):
    print("holding", flush=True)
    sys.stdin.readline()
"""


def test_a_second_concurrent_run_refuses_naming_the_holder_and_a_dead_holder_does_not_block(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "shared"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(run_dir.__file__).parents[2]), *sys.path])}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "holding\n"
        code, _, err = run_cli(train_argv(tiny_dataset, out), capsys)
        assert code == 2
        assert err.count("\n") == 1
        assert f"another comem train (PID {holder.pid}) is running in this directory" in err
        assert sorted(p.name for p in out.iterdir()) == [".comem-train.lock"]
    finally:
        holder.kill()  # dies holding the lock: the kernel releases it, the lock file stays
        holder.wait()
    assert (out / ".comem-train.lock").read_text().strip() == str(holder.pid)
    code, _, err = run_cli(train_argv(tiny_dataset, out), capsys)
    assert code == 0, err
    assert (out / "last.pt").is_file()


def test_out_that_is_a_file_is_one_line(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "results.txt"
    out.write_text("notes\n")
    code, _, err = run_cli(train_argv(tiny_dataset, out), capsys)
    assert (code, err) == (
        2,
        f"comem train: error: {out}: --out is a file, not a directory; choose another --out\n",
    )
    assert out.read_text() == "notes\n"


def test_out_on_a_read_only_file_system_is_one_line(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open

    def read_only(path, flags, *args):
        if flags & os.O_CREAT:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(run_dir.os, "open", read_only)
    code, _, err = run_cli(train_argv(tiny_dataset, tmp_path), capsys)
    assert code == 2
    assert err == (
        f"comem train: error: {tmp_path}: cannot write into the --out directory (Read-only file system)\n"
    )


def test_resume_without_a_checkpoint_starts_fresh_in_one_line(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "job"
    code, stdout, err = run_cli(train_argv(tiny_dataset, out, "--resume"), capsys)
    assert code == 0, err
    assert f"--resume: no {out / 'last.pt'} yet; starting a fresh run\n" in stdout
    assert "resumed from" not in stdout
    code, stdout, _ = run_cli(train_argv(tiny_dataset, out, "--resume", "--epochs", "2"), capsys)
    assert code == 0
    assert f"resumed from {out / 'last.pt'} at epoch 2, step 0" in stdout


def test_temporary_checkpoints_of_a_killed_run_are_removed_at_the_next_start(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    tmp_path.joinpath(run_dir.LOCK_NAME).write_text("12345\n")  # the killed run's (no longer locked)
    tmp_path.joinpath(".last.pt.abc123.tmp").write_bytes(b"half a checkpoint")
    tmp_path.joinpath(".best.pt.x9.tmp").write_bytes(b"")
    assert main(train_argv(tiny_dataset, tmp_path)) == 0
    assert not list(tmp_path.glob(".*.pt.*.tmp"))


def test_a_fresh_run_refuses_an_out_holding_the_users_files_and_touches_nothing(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    out.joinpath("config.yaml").write_text("lr: 0.1  # my own\n")
    out.joinpath("notes.tmp").write_text("mine")
    before = snapshot(out)
    code, _, err = run_cli(train_argv(tiny_dataset, out), capsys)
    assert (code, err) == (
        2,
        f"comem train: error: {out}: holds files comem did not write (config.yaml, notes.tmp); choose an "
        "empty or new --out, or pass --overwrite to write the run beside them\n",
    )
    assert snapshot(out) == before and sorted(p.name for p in out.iterdir()) == ["config.yaml", "notes.tmp"]
    # in a directory a comem run claimed, only the names comem does not write are the user's
    out.joinpath(run_dir.LOCK_NAME).write_text("")
    assert run_dir.foreign_files(out) == ["notes.tmp"]
    assert main(train_argv(tiny_dataset, out, "--overwrite")) == 0
    assert out.joinpath("notes.tmp").read_text() == "mine" and (out / "last.pt").is_file()


def test_out_inside_the_dataset_folder_refuses(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    code, _, err = run_cli(train_argv(tiny_dataset, tiny_dataset / "runs" / "x"), capsys)
    assert code == 2 and "--out is inside the --data folder" in err and err.count("\n") == 1
    assert not (tiny_dataset / "runs").exists()


def test_resume_with_settings_that_break_exactness_lists_them(
    finished: Path, tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "copy"
    shutil.copytree(finished, out)
    before = snapshot(out)
    argv = train_argv(tiny_dataset, out, "--resume", "--batch-size", "2", "--mode", "joint", "--workers", "1")
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and err.count("\n") == 1
    assert err == (
        f"comem train: error: {out / 'last.pt'}: --resume with other settings than the run's "
        "(--mode comem -> joint; --batch-size 4 -> 2); use the run's settings, or a new --out for a new run\n"
    )
    before.pop("train.log")  # the refused command's line is appended to the run's log
    assert {name: data for name, data in snapshot(out).items() if name != "train.log"} == before


def test_resume_accepts_and_says_allowed_changes(
    finished: Path, tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "copy"
    shutil.copytree(finished, out)
    argv = train_argv(tiny_dataset, out, "--resume", "--epochs", "2", "--views", "3", "--save-every", "5")
    code, stdout, err = run_cli(argv, capsys)
    assert code == 0, err
    assert "--resume: accepted changes: --views None -> 3; --epochs 1 -> 2; --save-every 200 -> 5\n" in stdout
    assert [h["epoch"] for h in json.loads((out / "metrics.json").read_text())["history"]] == [1, 2]
